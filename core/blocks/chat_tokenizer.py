"""Prompts rendered with a tokenizer folder's own chat template and tokenized to a fixed length, without
transformers: what the diffusers pipelines that encode prompts with a chat LLM (Qwen3, Mistral) do before
running the encoder. A family says how its pipeline builds the conversation with a ChatFormat.

The tokenizer folder and its chat template are read as transformers reads them (core/blocks/chat_template.py).
transformers rebuilds Qwen2 tokenizers from the vocab and merges with its own normalizer and
pre-tokenizer; Qwen's `tokenizer.json` files carry those same settings, so reading the file as-is
gives the same ids. Mistral's (Tekken, byte-level) load as the file says in transformers 5
(`TokenizersBackend`); the optional `fix_mistral_regex` patch is not applied (nor by default there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .chat_template import ChatTokenizer
from .prompt_cut import PromptCut, prompt_cut, prompt_span, read_positions

# Used when the folder has no chat template: the text Qwen3's own template renders for one user
# turn with `add_generation_prompt=True, enable_thinking=False`, i.e. what the encoder was used with.
FALLBACK_TEMPLATE = (
    "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@dataclass(frozen=True)
class ChatFormat:
    """How a pipeline turns one prompt into a conversation, and how it tokenizes the rendered text.

    system_message: text of a system turn before the user's (None: the user turn alone).
    text_blocks: message content as [{"type": "text", "text": ...}], the form processors take,
      instead of a plain string.
    add_generation_prompt, template_variables: what the pipeline passes to the chat template.
    removed_from_prompt: substrings the pipeline deletes from the prompt first.
    processor_special_tokens: tokenized the way a transformers processor does it: special tokens
      are added unless the rendered text already starts with the BOS token (Klein's pipeline calls
      the tokenizer on the text, which always adds them).
    fallback_template: str.format template ({bos}, {system}, {prompt}) for a folder with no chat template.
    """

    system_message: str | None = None
    text_blocks: bool = False
    add_generation_prompt: bool = True
    template_variables: tuple[tuple[str, object], ...] = ()
    removed_from_prompt: tuple[str, ...] = ()
    processor_special_tokens: bool = False
    fallback_template: str = FALLBACK_TEMPLATE

    def messages(self, prompt: str) -> list[dict]:
        turns = [("system", self.system_message)] if self.system_message is not None else []
        turns.append(("user", self.clean(prompt)))
        return [{"role": role, "content": [{"type": "text", "text": text}] if self.text_blocks else text}
                for role, text in turns]

    def fallback(self, prompt: str, special_tokens: dict[str, str]) -> str:
        return self.fallback_template.format(prompt=self.clean(prompt), system=self.system_message or "",
                                             bos=special_tokens.get("bos_token", ""))

    def clean(self, prompt: str) -> str:
        for text in self.removed_from_prompt:
            prompt = prompt.replace(text, "")
        return prompt


# Qwen3's template for one user turn, thinking disabled (FLUX.2 Klein), tokenized by the tokenizer.
QWEN3_CHAT = ChatFormat(template_variables=(("enable_thinking", False),))

class PromptTokenizer(ChatTokenizer):
    """Chat-template rendering and fixed-length tokenization of prompts, read from a tokenizer folder."""

    def __init__(self, folder: Path | str, chat: ChatFormat = QWEN3_CHAT):
        super().__init__(folder)
        self.chat = chat
        if self.pad_token_id is None:
            raise CheckpointError(f"{self.folder}: the tokenizer has no pad token, so prompts cannot be padded")

    def render(self, prompt: str) -> str:
        """The text the pipeline tokenizes for `prompt`."""
        if self._template is None:
            return self.chat.fallback(prompt, self.special_tokens)
        return self.render_messages(self.chat.messages(prompt), self.chat.add_generation_prompt,
                                    **dict(self.chat.template_variables))

    def encode(self, prompts: list[str], max_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask, both int64 of shape (len(prompts), max_length)."""
        self._tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first",
                                          direction=self.truncation_side)
        self._tokenizer.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id,
                                       pad_token=self.pad_token, length=max_length)
        texts = [self.render(p) for p in prompts]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=self._adds_special_tokens(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(prompts), max_length)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(prompts), max_length)
        return input_ids, attention_mask

    def cut(self, prompt: str, max_length: int, encoder: str) -> PromptCut | None:
        """What `encode` leaves out of `prompt` at `max_length` tokens, its chat template counted (None: nothing)."""
        text = self.render(prompt)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        whole = self._tokenizer.encode(text, add_special_tokens=self._adds_special_tokens([text]))
        read = read_positions(whole.special_tokens_mask, max_length, left=self.truncation_side == "left")
        return prompt_cut(encoder, text, *prompt_span(text, self.chat.clean(prompt)), whole.offsets, read,
                          len(whole.ids), max_length, template=True)

    def _adds_special_tokens(self, texts: list[str]) -> bool:
        """A processor decides once per batch, from the first text (transformers' ProcessorMixin)."""
        if not self.chat.processor_special_tokens:
            return True
        bos = self.special_tokens.get("bos_token")
        return not (bos is not None and texts and texts[0].startswith(bos))
