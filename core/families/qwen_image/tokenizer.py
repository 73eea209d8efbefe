"""Prompt tokenization for Qwen-Image, without transformers.

Reproduces `QwenImagePipeline._get_qwen_prompt_embeds`' tokenization: the prompt is put into a
fixed template (a system turn asking for a detailed description, then the user turn and the
assistant's opening), truncated to 1024 tokens plus the template's first 34, which the encoder's
output later drops, and padded to the longest prompt of the batch.

The tokenizer folder is read as transformers' `Qwen2Tokenizer` reads it: `tokenizer.json` when the
folder has one, else `vocab.json` + `merges.txt` (what the released Qwen/Qwen-Image repository has)
rebuilt into the same byte-level BPE, with the added tokens of `tokenizer_config.json` and
`added_tokens.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ...blocks.prompt_cut import PromptCut, prompt_cut, prompt_span
from ...blocks.tokenizer_files import read_json, read_tokenizer_json, read_vocab_and_merges, token_text
from ...errors import CheckpointError
from ...model_files import present

PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
# Tokens of the template before the prompt, dropped from the encoder's output (the pipeline's figure:
# it is the real tokenizer's count, and a tiny test tokenizer drops the same number).
TEMPLATE_TOKENS = 34
MAX_PROMPT_TOKENS = 1024

# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation runs, newlines, spaces).
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")


class QwenImageTokenizer:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        config = read_json(self.folder / "tokenizer_config.json")
        self._tokenizer = _load(self.folder, config)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
        self.padding_side = config.get("padding_side", "right")
        self.truncation_side = config.get("truncation_side", "right")
        pad = token_text(config.get("pad_token")) or "<|endoftext|>"
        self.pad_token_id = self._tokenizer.token_to_id(pad)
        if self.pad_token_id is None:
            raise CheckpointError(f"{self.folder}: the pad token {pad!r} is not in the vocabulary")

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, prompts: list[str], max_length: int = MAX_PROMPT_TOKENS + TEMPLATE_TOKENS,
               ) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask (int64, (len(prompts), longest)) of the templated prompts."""
        ids = [self._truncate(e.ids, max_length)
               for e in self._tokenizer.encode_batch([PROMPT_TEMPLATE.format(p) for p in prompts])]
        longest = max(len(i) for i in ids)
        input_ids = np.full((len(ids), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, tokens in enumerate(ids):
            span = slice(longest - len(tokens), None) if self.padding_side == "left" else slice(0, len(tokens))
            input_ids[row, span], attention_mask[row, span] = tokens, 1
        return input_ids, attention_mask

    def cut(self, prompt: str, max_sequence_length: int) -> PromptCut | None:
        """What the pipeline leaves out of `prompt` (None: nothing): `encode` truncates the templated prompt, and the
        features keep `max_sequence_length` tokens after the template's first TEMPLATE_TOKENS. Counted as the features
        count them: the prompt's tokens and the template's closing ones."""
        text = PROMPT_TEMPLATE.format(prompt)
        whole = self._tokenizer.encode(text)
        read = self._truncate(list(range(len(whole.ids))), MAX_PROMPT_TOKENS + TEMPLATE_TOKENS)
        read = read[TEMPLATE_TOKENS:][:max_sequence_length]
        return prompt_cut("Qwen2.5-VL", text, *prompt_span(text, prompt), whole.offsets, read,
                          len(whole.ids) - TEMPLATE_TOKENS, min(max_sequence_length, MAX_PROMPT_TOKENS), template=True)

    def _truncate(self, ids: list[int], max_length: int) -> list[int]:
        if len(ids) <= max_length:
            return ids
        return ids[-max_length:] if self.truncation_side == "left" else ids[:max_length]


def _load(folder: Path, config: dict) -> Tokenizer:
    if present(folder / "tokenizer.json"):
        return read_tokenizer_json(folder / "tokenizer.json")
    if present(folder / "vocab.json") and present(folder / "merges.txt"):
        return _from_vocab_and_merges(folder, config)
    raise CheckpointError(f"{folder}: no tokenizer.json, and no vocab.json + merges.txt")


def _from_vocab_and_merges(folder: Path, config: dict) -> Tokenizer:
    """The byte-level BPE transformers' Qwen2Tokenizer builds from these files."""
    vocab, merges = read_vocab_and_merges(folder)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
                                     end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space")), use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    for token_id, token in sorted(_added_tokens(folder, config).items()):
        tokenizer.add_tokens([token])
        if tokenizer.token_to_id(token.content) != token_id:
            raise CheckpointError(f"{folder}: added token {token.content!r} should have id {token_id}, "
                                  f"but the vocabulary gives it {tokenizer.token_to_id(token.content)}")
    return tokenizer


def _added_tokens(folder: Path, config: dict) -> dict[int, AddedToken]:
    """Id -> token from tokenizer_config.json's added_tokens_decoder, and added_tokens.json for the rest."""
    tokens = {}
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        tokens[int(token_id)] = AddedToken(entry["content"], single_word=entry.get("single_word", False),
                                           lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                           normalized=entry.get("normalized", False),
                                           special=entry.get("special", True))
    for content, token_id in read_json(folder / "added_tokens.json").items():
        tokens.setdefault(int(token_id), AddedToken(content, normalized=False, special=True))
    return tokens
