"""Prompts rendered with a tokenizer folder's own chat template and tokenized to a fixed length, without
transformers: what the diffusers pipelines that encode prompts with a chat LLM (Qwen3, Mistral) do before
running the encoder. A family says how its pipeline builds the conversation with a ChatFormat.

The tokenizer folder is the one `save_pretrained` writes: `tokenizer.json` (read with the
`tokenizers` library), `tokenizer_config.json` (special tokens, padding/truncation side) and the
chat template, in `chat_template.jinja` (transformers 5), `chat_template.json` (processors before
that) or under `chat_template` in `processor_config.json` or `tokenizer_config.json`.
transformers rebuilds Qwen2 tokenizers from the vocab and merges with its own normalizer and
pre-tokenizer; Qwen's `tokenizer.json` files carry those same settings, so reading the file as-is
gives the same ids. Mistral's (Tekken, byte-level) load as the file says in transformers 5
(`TokenizersBackend`); the optional `fix_mistral_regex` patch is not applied (nor by default there).
The template is rendered in the same sandboxed Jinja environment transformers uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, processors

from ..errors import CheckpointError
from .tokenizer_files import one_line, read_json, read_tokenizer_json, token_text

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

# The named special tokens transformers passes to every chat template as variables.
_NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class PromptTokenizer:
    """Chat-template rendering and fixed-length tokenization of prompts, read from a tokenizer folder."""

    def __init__(self, folder: Path | str, chat: ChatFormat = QWEN3_CHAT):
        self.folder = Path(folder)
        self.chat = chat
        self._tokenizer = _load_tokenizer_json(self.folder)
        config = read_json(self.folder / "tokenizer_config.json")
        self.special_tokens = _named_special_tokens(self.folder, config)
        file_padding = self._tokenizer.padding or {}
        file_truncation = self._tokenizer.truncation or {}
        self.padding_side = config.get("padding_side") or file_padding.get("direction") or "right"
        self.truncation_side = config.get("truncation_side") or file_truncation.get("direction") or "right"
        self.pad_token = self.special_tokens.get("pad_token") or file_padding.get("pad_token")
        self.pad_token_id = self._tokenizer.token_to_id(self.pad_token) if self.pad_token else None
        if self.pad_token_id is None:
            raise CheckpointError(f"{self.folder}: the tokenizer has no pad token, so prompts cannot be padded")
        self._tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
        if _rebuilds_post_processor(config, self._tokenizer):
            self._tokenizer.post_processor = _bos_eos_post_processor(config, self.special_tokens, self._tokenizer)
        self.chat_template = _find_chat_template(self.folder, config)
        self._template = _compile_template(self.chat_template, self.folder) if self.chat_template else None

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def render(self, prompt: str) -> str:
        """The text the pipeline tokenizes for `prompt`."""
        if self._template is None:
            return self.chat.fallback(prompt, self.special_tokens)
        try:
            return self._template.render(
                messages=self.chat.messages(prompt), tools=None, documents=None,
                add_generation_prompt=self.chat.add_generation_prompt,
                **{**self.special_tokens, **dict(self.chat.template_variables)})
        except jinja2.TemplateError as exc:
            raise CheckpointError(f"{self.folder}: the chat template failed to render: {one_line(exc)}") from None

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

    def _adds_special_tokens(self, texts: list[str]) -> bool:
        """A processor decides once per batch, from the first text (transformers' ProcessorMixin)."""
        if not self.chat.processor_special_tokens:
            return True
        bos = self.special_tokens.get("bos_token")
        return not (bos is not None and texts and texts[0].startswith(bos))


# ---------------------------------------------------------------------------------------------
# Folder reading
# ---------------------------------------------------------------------------------------------

def _load_tokenizer_json(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json")
    return read_tokenizer_json(path)


def _named_special_tokens(folder: Path, config: dict) -> dict[str, str]:
    # transformers reads the legacy special_tokens_map.json too; tokenizer_config.json wins.
    legacy = read_json(folder / "special_tokens_map.json")
    tokens = {}
    for name in _NAMED_SPECIAL_TOKENS:
        text = token_text(config.get(name, legacy.get(name)))
        if text is not None:
            tokens[name] = text
    return tokens


def _find_chat_template(folder: Path, config: dict) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    # A processor's template, as older transformers saved it, comes before the tokenizer's.
    template = (read_json(folder / "chat_template.json").get("chat_template")
                or read_json(folder / "processor_config.json").get("chat_template")
                or config.get("chat_template"))
    if isinstance(template, list):  # several named templates: the pipeline gets the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise CheckpointError(f"{folder}: tokenizer_config.json has several chat templates and no 'default'")
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{folder}: tokenizer_config.json has a chat_template that is not a string")
    return template


def _rebuilds_post_processor(config: dict, tokenizer: Tokenizer) -> bool:
    # transformers replaces the file's post-processor when the config sets add_bos/eos_token explicitly.
    return "add_bos_token" in config or "add_eos_token" in config or tokenizer.post_processor is None


def _bos_eos_post_processor(config: dict, special_tokens: dict[str, str], tokenizer: Tokenizer):
    bos, eos = special_tokens.get("bos_token"), special_tokens.get("eos_token")
    add_bos = bool(config.get("add_bos_token")) and bos is not None
    add_eos = bool(config.get("add_eos_token")) and eos is not None
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    specials = [(t, tokenizer.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


# ---------------------------------------------------------------------------------------------
# Chat template: the same Jinja environment transformers renders templates in
# ---------------------------------------------------------------------------------------------

class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it only renders."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def _compile_template(source: str, folder: Path) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise CheckpointError(f"{folder}: the chat template is not valid Jinja: {one_line(exc)}") from None
