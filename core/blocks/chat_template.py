"""Hugging Face tokenizer folders with a chat template, read as transformers reads them, without transformers.

The folder is the one `save_pretrained` writes for a tokenizer or a processor: `tokenizer.json` (read with
the `tokenizers` library), `tokenizer_config.json` (special tokens, padding/truncation side, whether BOS/EOS
are added) and the chat template, in `chat_template.jinja` (transformers 5), `chat_template.json`
(processors before that) or under `chat_template` in `processor_config.json` or `tokenizer_config.json`.
Templates render in the same sandboxed Jinja environment transformers uses, with the same variables.
What conversation to render and how to pad: core/blocks/chat_tokenizer.py (FLUX.2, Z-Image) or the family.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, processors

from ..errors import CheckpointError
from ..model_files import present, read_text
from .tokenizer_files import one_line, read_json, read_tokenizer_json, token_text

# The named special tokens transformers passes to every chat template as variables.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTokenizer:
    """A tokenizer folder: its tokenizer, special tokens, padding and truncation sides, and chat template."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._tokenizer = load_tokenizer_json(self.folder)
        config = read_json(self.folder / "tokenizer_config.json")
        self.special_tokens = named_special_tokens(self.folder, config)
        file_padding = self._tokenizer.padding or {}
        file_truncation = self._tokenizer.truncation or {}
        self.padding_side = config.get("padding_side") or file_padding.get("direction") or "right"
        self.truncation_side = config.get("truncation_side") or file_truncation.get("direction") or "right"
        self.pad_token = self.special_tokens.get("pad_token") or file_padding.get("pad_token")
        self.pad_token_id = self._tokenizer.token_to_id(self.pad_token) if self.pad_token else None
        self._tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
        if rebuilds_post_processor(config, self._tokenizer):
            self._tokenizer.post_processor = bos_eos_post_processor(config, self.special_tokens, self._tokenizer)
        self.chat_template = find_chat_template(self.folder, config)
        self._template = compile_template(self.chat_template, self.folder) if self.chat_template else None

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def render_messages(self, messages: list[dict], add_generation_prompt: bool, **variables) -> str:
        """The folder's chat template rendered for `messages`, with the variables transformers passes."""
        if self._template is None:
            raise CheckpointError(f"{self.folder}: no chat template")
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self.special_tokens, **variables})
        except Exception as exc:  # the template is the folder's code ({{ 1/0 }}): whatever it raises is the folder's
            raise CheckpointError(f"{self.folder}: the chat template failed to render: {one_line(exc)}") from None

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`text` tokenized whole, as transformers' tokenizer call does (special tokens per its post-processor)."""
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)


# ---------------------------------------------------------------------------------------------
# Folder reading
# ---------------------------------------------------------------------------------------------

def load_tokenizer_json(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not present(path):
        raise CheckpointError(f"{folder}: no tokenizer.json")
    return read_tokenizer_json(path)


def named_special_tokens(folder: Path, config: dict) -> dict[str, str]:
    # transformers reads the legacy special_tokens_map.json too; tokenizer_config.json wins.
    legacy = read_json(folder / "special_tokens_map.json")
    tokens = {}
    for name in NAMED_SPECIAL_TOKENS:
        text = token_text(config.get(name, legacy.get(name)))
        if text is not None:
            tokens[name] = text
    return tokens


def find_chat_template(folder: Path, config: dict) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if present(jinja_file):
        return read_text(jinja_file)
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


def rebuilds_post_processor(config: dict, tokenizer: Tokenizer) -> bool:
    # transformers replaces the file's post-processor when the config sets add_bos/eos_token explicitly.
    return "add_bos_token" in config or "add_eos_token" in config or tokenizer.post_processor is None


def bos_eos_post_processor(config: dict, special_tokens: dict[str, str], tokenizer: Tokenizer):
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


def compile_template(source: str, folder: Path) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise CheckpointError(f"{folder}: the chat template is not valid Jinja: {one_line(exc)}") from None
