"""Hugging Face tokenizer folders: reading what every family's tokenizer reads (JSON files, special tokens,
`tokenizer.json`, `vocab.json` + `merges.txt`), and writing a small byte-level BPE folder in Qwen's layout.

The writer serves checkpoints quantbench makes itself (random-weight models for benchmarks, the built-in
models): `tokenizer.json` from the `tokenizers` library, `tokenizer_config.json` with the special tokens,
and a Qwen3-style (or Qwen3-VL-style) chat template in `chat_template.jinja`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..atomic import library_writes
from ..errors import CheckpointError
from ..json_text import parse_json
from ..model_files import present, read_text
from ..safetensors import check_regular_file


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """A JSON object file of the folder, {} when it is absent; CheckpointError when it is not a JSON object (or
    not a regular file: a FIFO, a folder or a device by that name)."""
    if not present(path):
        return {}
    try:
        data = parse_json(read_text(path))
    except ValueError:
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def token_text(value) -> str | None:
    """Special tokens are stored as plain strings or as serialized AddedToken dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_tokenizer_json(path: Path) -> Tokenizer:
    check_regular_file(path)  # the Rust reader would wait forever on a FIFO, and read /dev/zero until memory ran out
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception with a parser message
        raise CheckpointError(f"{path}: cannot be read ({one_line(exc)})") from None


def read_vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE's `vocab.json` and `merges.txt` (the "#version" line skipped)."""
    lines = read_text(folder / "merges.txt").splitlines()
    merges = [tuple(line.split(" ", 1)) for line in lines if line and not line.startswith("#version")]
    return read_json(folder / "vocab.json"), merges


def one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]

# A user turn and the generation prompt with thinking disabled, as Qwen3's template renders them.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Qwen3-VL's template reduced to what a text-to-image encoder exercises: turns whose content is a string or
# text/image blocks, and the generation prompt (Qwen-Image 2.1 counts the tokens of its system turn).
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for block in message.content %}"
    "{%- if block.type == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in block %}{{- block.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on `corpus`; Qwen's special tokens come after the learned vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(THINK_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.add_tokens(THINK_TOKENS)
    return tokenizer


def write_tokenizer_folder(tokenizer: Tokenizer, folder: Path, chat_template: str = CHAT_TEMPLATE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with library_writes(folder / "tokenizer.json"):  # a full disk: the library's Exception, as the OSError it is
        tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 1024, "padding_side": "right",
        "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "bos_token": None, "unk_token": None,
        "add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").write_text(chat_template)
