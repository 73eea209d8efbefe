"""FLUX.1's two prompt tokenizers, without transformers: CLIP's byte-level BPE and T5's Unigram.

Both reproduce what FluxPipeline asks of transformers: pad to max_length (77 for CLIP, 256 or 512
for T5) and truncate, with the end token kept.

CLIP: transformers rebuilds the tokenizer from its vocabulary and merges with CLIP's own normalizer
(NFC, collapsed whitespace, lowercase), pre-tokenizer (CLIP's word regex, then byte level) and
`<|startoftext|> ... <|endoftext|>` post-processor, whichever files hold them. We do the same, from
`tokenizer.json` when the folder has one, else from `vocab.json` and `merges.txt` (the layout of the
FLUX.1 repositories).

T5: `tokenizer.json` (a SentencePiece Unigram converted by transformers) is read as it is, with
the `</s>` post-processor transformers' T5 tokenizer always sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ...blocks.prompt_cut import PromptCut, prompt_cut, read_positions
from ...blocks.tokenizer_files import read_json, read_tokenizer_json, read_vocab_and_merges, token_text
from ...errors import CheckpointError
from ...model_files import present

CLIP_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        config = _tokenizer_config(self.folder)
        self.bos = _special(config, "bos_token", "<|startoftext|>")
        self.eos = _special(config, "eos_token", "<|endoftext|>")
        self.pad = _special(config, "pad_token", self.eos)
        unk = _special(config, "unk_token", self.eos)
        self.max_length = min(int(config.get("model_max_length", 77)), 77)
        vocab, merges = _clip_vocab_and_merges(self.folder)
        missing = [t for t in (self.bos, self.eos, self.pad, unk) if t not in vocab]
        if missing:
            raise CheckpointError(f"{self.folder}: the vocabulary lacks the special token(s) {', '.join(missing)}")
        self._tokenizer = _clip_tokenizer(vocab, merges, unk)
        self._tokenizer.add_special_tokens(list(dict.fromkeys([self.bos, self.eos, self.pad, unk])))
        self._tokenizer.post_processor = processors.RobertaProcessing(
            (self.eos, vocab[self.eos]), (self.bos, vocab[self.bos]), trim_offsets=False, add_prefix_space=False)
        self.pad_id = vocab[self.pad]

    def encode(self, prompts: list[str]) -> np.ndarray:
        """input_ids (len(prompts), max_length), int64."""
        return _encode_padded(self._tokenizer, prompts, self.max_length, self.pad_id, self.pad)

    def cut(self, prompt: str) -> PromptCut | None:
        """What `encode` leaves out of `prompt` (None: nothing), its start and end tokens counted."""
        return _cut(self._tokenizer, "CLIP", prompt, self.max_length)


class T5Tokenizer:
    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not present(path):
            raise CheckpointError(f"{self.folder}: no tokenizer.json (a T5 tokenizer folder saved by transformers has one)")
        self._tokenizer = read_tokenizer_json(path)
        config = _tokenizer_config(self.folder)
        eos = _special(config, "eos_token", "</s>")
        self.pad = _special(config, "pad_token", "<pad>")
        ids = {t: self._tokenizer.token_to_id(t) for t in (eos, self.pad)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise CheckpointError(f"{self.folder}: the vocabulary lacks the special token(s) {', '.join(missing)}")
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, ids[eos])])
        self.pad_id = ids[self.pad]

    def encode(self, prompts: list[str], max_length: int) -> np.ndarray:
        """input_ids (len(prompts), max_length), int64."""
        return _encode_padded(self._tokenizer, prompts, max_length, self.pad_id, self.pad)

    def cut(self, prompt: str, max_length: int) -> PromptCut | None:
        """What `encode` leaves out of `prompt` at `max_length` (None: nothing), its end token counted."""
        return _cut(self._tokenizer, "T5", prompt, max_length)


def _encode_padded(tokenizer: Tokenizer, prompts: list[str], length: int, pad_id: int, pad: str) -> np.ndarray:
    tokenizer.enable_truncation(length, stride=0, strategy="longest_first", direction="right")
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad, length=length)
    encodings = tokenizer.encode_batch(prompts, add_special_tokens=True)
    return np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(prompts), length)


def _cut(tokenizer: Tokenizer, encoder: str, prompt: str, length: int) -> PromptCut | None:
    tokenizer.no_truncation()
    tokenizer.no_padding()
    whole = tokenizer.encode(prompt, add_special_tokens=True)
    return prompt_cut(encoder, prompt, 0, len(prompt), whole.offsets, read_positions(whole.special_tokens_mask, length),
                      len(whole.ids), length)


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], unk: str) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                     end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _clip_vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    if present(folder / "tokenizer.json"):
        model = read_json(folder / "tokenizer.json").get("model", {})
        if model.get("type") != "BPE":
            raise CheckpointError(f"{folder}/tokenizer.json: not a BPE tokenizer, so not CLIP's")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return dict(model["vocab"]), merges
    if not present(folder / "vocab.json") or not present(folder / "merges.txt"):
        raise CheckpointError(f"{folder}: no tokenizer.json, and no vocab.json with merges.txt")
    return read_vocab_and_merges(folder)


def _tokenizer_config(folder: Path) -> dict:
    # transformers reads the legacy special_tokens_map.json too; tokenizer_config.json wins.
    return {**read_json(folder / "special_tokens_map.json"), **read_json(folder / "tokenizer_config.json")}


def _special(config: dict, name: str, default: str) -> str:
    text = token_text(config.get(name))
    return default if text is None else text
