"""Tiny random FLUX.1 pipelines (schnell and dev) built with diffusers + transformers and saved to disk.

They have the real architecture and file layout (model_index.json, transformer/, text_encoder/ with a
CLIP text model, text_encoder_2/ with a T5 encoder, tokenizer/ and tokenizer_2/, vae/, scheduler/) at
toy sizes, so the engine's loading, encoding, denoising and decoding run exactly as on a real checkpoint.
The tokenizers are trained offline on a short English text: a CLIP-style byte-level BPE with `</w>`
word ends, and a T5-style SentencePiece Unigram with `<pad>`, `</s>`, `<unk>` as ids 0, 1, 2.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .tokenizer import _CORPUS

CLIP_HIDDEN = 64  # = the transformer's pooled_projection_dim
T5_HIDDEN = 64  # = the transformer's joint_attention_dim
CLIP_VOCAB_SIZE = 400
T5_VOCAB_SIZE = 300
# Short T5 prompts keep the tests fast; real checkpoints use 256 (schnell) or 512 (dev).
MAX_SEQUENCE_LENGTH = 64

# Widths of 64 and more, so that quantization (groups of 64) has layers to quantize.
TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                   num_attention_heads=2, joint_attention_dim=T5_HIDDEN, pooled_projection_dim=CLIP_HIDDEN,
                   axes_dims_rope=(8, 12, 12))
# FLUX.1's transformer narrowed as `random-model --width-scale 0.0625` narrows the other families: its head size (128)
# and rotary axes, 24 x 0.0625 heads (rounded up), a few of each block: the memory model's figures per token and
# inner width are measured on it (tests/test_memory_model_prompts.py, benchmarks/memory_model.py).
NARROWED_TRANSFORMER = dict(attention_head_dim=128, num_attention_heads=2, num_layers=2, num_single_layers=4,
                            axes_dims_rope=(16, 56, 56))
# Four levels as in the real VAE (8x), at toy widths.
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
           latent_channels=16, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
           use_quant_conv=False, use_post_quant_conv=False)
CLIP = dict(hidden_size=CLIP_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
T5 = dict(d_model=T5_HIDDEN, d_kv=16, d_ff=128, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
          relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
          dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


def randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Default inits leave some projections at zero and norms at one; random weights everywhere make
    parity meaningful (a swapped or missing tensor changes the output)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE with CLIP's normalizer, pre-tokenizer and `</w>` word ends, learned from the corpus;
    the start and end tokens come last, as in the real vocabulary (the end token has the highest id).

    Learned here rather than by `tokenizers`' trainer, which numbers word-end symbols in hash order and so
    gives another vocabulary in every process: each round merges the most frequent pair, ties broken by text.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # Borrow CLIP's own normalizer and pre-tokenizer so words split as CLIP splits them.
    pipeline = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[]).backend_tokenizer
    counts: dict[tuple[str, ...], int] = {}
    for line in _CORPUS.splitlines():
        for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(pipeline.normalizer.normalize_str(line)):
            symbols = (*word[:-1], word[-1] + "</w>")
            counts[symbols] = counts.get(symbols, 0) + 1
    vocab = sorted(ByteLevel.alphabet()) + sorted({s for word in counts for s in word} - set(ByteLevel.alphabet()))
    merges: list[tuple[str, str]] = []
    while len(vocab) < CLIP_VOCAB_SIZE - 2:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.append(best[0] + best[1])
        counts = {_merge(word, best): count for word, count in counts.items()}
    ids = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    ids["<|startoftext|>"] = len(ids)
    ids["<|endoftext|>"] = len(ids)
    return ids, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


@functools.lru_cache(maxsize=1)
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """A SentencePiece-style Unigram vocabulary (Metaspace word starts), special ids 0, 1, 2: every character
    of the corpus, then its most frequent pieces of up to 8 characters, scored by log frequency.

    Counted here rather than by `tokenizers`' Unigram trainer, whose scores and tie order change from one
    process to the next; ties are broken by text, so the same corpus gives the same ids in every run.
    """
    import math

    counts: dict[str, int] = {}
    for word in _CORPUS.split():
        word = "\u2581" + word
        for start in range(len(word)):
            for end in range(start + 1, min(len(word), start + 8) + 1):
                counts[word[start:end]] = counts.get(word[start:end], 0) + 1
    chars = sorted(piece for piece in counts if len(piece) == 1)
    longer = sorted((piece for piece in counts if len(piece) > 1), key=lambda piece: (-counts[piece], piece))
    pieces = chars + longer[: T5_VOCAB_SIZE - 3 - len(chars)]
    total = sum(counts[piece] for piece in pieces)
    scored = sorted(((piece, math.log(counts[piece] / total)) for piece in pieces), key=lambda p: (-p[1], p[0]))
    return (("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *scored)


def build_tiny_t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(_t5_pieces()), extra_ids=0)


# ---------------------------------------------------------------------------------------------
# Components and the pipeline
# ---------------------------------------------------------------------------------------------

def build_clip(vocab_size: int, seed: int, eos_token_id: int = 2):
    """eos_token_id 2 is what the FLUX.1 repositories' CLIP config says (transformers then pools at the
    largest id, the end token); give the real end token's id to test the other rule."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    ids = dict(bos_token_id=0, pad_token_id=1, eos_token_id=eos_token_id)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **CLIP, **ids)).eval()
    randomize(model, 0.15, seed)
    return model


def build_t5(vocab_size: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(vocab_size=vocab_size, **T5)).eval()
    randomize(model, 0.15, seed)
    return model


def build_transformer(guidance_embeds: bool, seed: int, **overrides):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**{**TRANSFORMER, **overrides}, guidance_embeds=guidance_embeds).eval()
    randomize(model, 0.1, seed)
    return model


def build_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


def build_scheduler(dev: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dev:  # FLUX.1 [dev]'s scheduler_config.json
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                               max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def build_tiny_flux1(folder: Path, dev: bool, seed: int = 0, transformer: dict | None = None):
    """Save a tiny FluxPipeline (schnell, or dev with a guidance embedder) to `folder`; return it (float32, CPU).
    `transformer`: changes to the transformer's config (NARROWED_TRANSFORMER: the memory model's measurements).

    model_index.json gets `max_sequence_length` so the engine pads T5 prompts as the tests ask diffusers to.
    """
    from diffusers import FluxPipeline

    clip_tokenizer, t5_tokenizer = build_tiny_clip_tokenizer(), build_tiny_t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=build_scheduler(dev), vae=build_vae(seed + 3),
        text_encoder=build_clip(len(clip_tokenizer), seed + 1), tokenizer=clip_tokenizer,
        text_encoder_2=build_t5(len(t5_tokenizer), seed + 2), tokenizer_2=t5_tokenizer,
        transformer=build_transformer(dev, seed, **(transformer or {})))
    pipe.save_pretrained(folder, safe_serialization=True)
    index_path = Path(folder) / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "max_sequence_length": MAX_SEQUENCE_LENGTH}, indent=2))
    return pipe
