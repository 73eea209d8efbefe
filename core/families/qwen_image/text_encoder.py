"""Qwen2.5-VL's language model in MLX, run as Qwen-Image's prompt encoder.

Only the decoder stack is built: text-to-image prompts have no image tokens, so the vision tower's
weights are skipped. It is the shared decoder language model (core/blocks/decoder_lm.py) with q/k/v
biases and no query/key norms. Qwen2.5-VL rotates queries and keys with multimodal RoPE: three position
streams (time, height, width), each driving its own section of the frequencies. For text every
token has the same position on all three streams, so the sections recombine into ordinary RoPE
over the token index (non-interleaved halves, as Qwen2). Without image inputs transformers gives
the tokens positions 0..L-1 whatever the padding, and so does this encoder.

The pipeline reads the last hidden state (after the final norm); the LM head is skipped.
Module and parameter names are the language model's own, without `model.` (or
`model.language_model.`, the layout some transformers versions write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.decoder_lm import DecoderLM, DecoderLMConfig, decoder_lm_builder
from ...checkpoint import Component, LoadReport, Rule
from ...component_loading import build_and_fill


def qwen_text_config(config: dict) -> DecoderLMConfig:
    """Read a Qwen2.5-VL config.json: transformers 5 nests the language model under `text_config`, older
    files keep it flat (the released checkpoint has both; the nested values win). Qwen2's layers have biases
    on q, k and v (not o) and no per-head query/key norms; its RoPE is multimodal (see the module docstring)."""
    return DecoderLMConfig.from_dict(config, rms_norm_eps=1e-5, rope_types=("default", "mrope"),
                                     attention_bias=True, o_proj_bias=False, qk_norm=False)


build_qwen_text_encoder = decoder_lm_builder(qwen_text_config)


def drop_template(hidden: mx.array, attention_mask: np.ndarray, drop: int) -> list[mx.array]:
    """Each prompt's real tokens (mask nonzero), less the first `drop`: the template's system turn."""
    return [row[mx.array(np.flatnonzero(keep))][drop:] for row, keep in zip(hidden, attention_mask)]


_VISION = "vision tower: text-to-image prompts have no image tokens"

# transformers 5 and the released checkpoints write `model.layers.*` and `visual.*`; transformers 4.5x
# wrote `model.language_model.*` and `model.visual.*`. Both load.
TEXT_ENCODER_RULES = [
    Rule(r"(?:model\.)?visual\..+", None, reason=_VISION),
    Rule(r"lm_head\.weight", None, reason="LM head: not used for encoding"),
    Rule(r"model\.language_model\.(.+)", r"\1"),
    Rule(r"model\.(.+)", r"\1"),
]


def load_text_encoder(folder: Path | str, dtype: mx.Dtype | None = mx.float32,
                      prepare: Callable[[nn.Module, Component], object] | None = None,
                      ) -> tuple[DecoderLM, LoadReport]:
    """Build and load the whole language model in `folder` (its last hidden state is read)."""
    return build_and_fill(folder, lambda config: build_qwen_text_encoder(config, None), TEXT_ENCODER_RULES,
                          "text_encoder", dtype, prepare)
