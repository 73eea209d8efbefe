"""Writing a small byte-level BPE tokenizer folder in the layout Qwen's tokenizers use.

Used for checkpoints quantbench makes itself (random-weight models for benchmarks, the built-in
models): `tokenizer.json` from the `tokenizers` library, `tokenizer_config.json` with the special
tokens, and a Qwen3-style chat template in `chat_template.jinja`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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


def write_tokenizer_folder(tokenizer: Tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 1024, "padding_side": "right",
        "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "bos_token": None, "unk_token": None,
        "add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
