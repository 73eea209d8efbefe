"""Prompt tokenization for Qwen-Image 2.1, without transformers.

As `QwenImage21Pipeline._get_qwen_prompt_embeds` does for text-to-image: the prompt (" " when empty,
since Qwen has no BOS token to read) goes into a fixed template, a system turn asking the encoder to
comprehend the prompt, then the user turn and the assistant's opening, written out as text (the
checkpoint was trained on this string, not on the chat template's rendering of it). The encoder's
output then loses as many leading tokens as the *chat template* renders for the system turn alone:
that count comes from the processor folder's own template, as the pipeline computes it.

The folder is the `processor/` a Qwen3VLProcessor saves: tokenizer.json, tokenizer_config.json and the
chat template (chat_template.jinja, or the older chat_template.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...blocks.chat_template import ChatTokenizer
from ...errors import InvalidRequest

SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."
PROMPT_TEMPLATE = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                   "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
# Longest prompt read, in tokens after the template (diffusers sets no limit; the memory model needs one).
MAX_PROMPT_TOKENS = 1024
# Text-to-image prompts must not open vision slots: the transformer would expect a condition image there.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


class QwenImage21Tokenizer:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._tokenizer = ChatTokenizer(self.folder)
        system = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
        self.template_tokens = len(self._tokenizer.token_ids(self._tokenizer.render_messages(system, False)))
        self._vision_ids = {i for i in (self._tokenizer.token_id(t) for t in VISION_TOKENS) if i is not None}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    def encode(self, prompt: str, max_tokens: int = MAX_PROMPT_TOKENS) -> np.ndarray:
        """input_ids (1, L) int64 of the templated prompt; one prompt at a time, as the pipeline encodes."""
        ids = self._tokenizer.token_ids(PROMPT_TEMPLATE.format(prompt or " "))
        if self._vision_ids.intersection(ids):
            raise InvalidRequest("the prompt contains a vision token (such as <|image_pad|>): text-to-image "
                                 "prompts cannot open an image slot")
        if len(ids) - self.template_tokens > max_tokens:
            raise InvalidRequest(f"the prompt is {len(ids) - self.template_tokens} tokens long; Qwen-Image 2.1 "
                                 f"reads at most {max_tokens} here: shorten it")
        return np.array([ids], dtype=np.int64)
