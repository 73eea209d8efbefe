"""FLUX.2 Klein's prompt encoder: Qwen3, the shared decoder language model (core/blocks/decoder_lm.py) with
per-head query/key norms.

Klein conditions on hidden states of intermediate layers (9, 18 and 27 of Qwen3's 36), concatenated per
token, so only the decoder layers up to the last one read are built, loaded and run; the final norm and
the LM head are skipped. Parameter names are the checkpoint keys without the leading `model.`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ...blocks.decoder_lm import DecoderLM, DecoderLMConfig, built_decoder_rules, decoder_lm_builder
from ...checkpoint import Component, LoadReport
from ...component_loading import build_and_fill

# The hidden states FLUX.2 Klein's pipeline stacks.
KLEIN_HIDDEN_STATE_LAYERS = (9, 18, 27)


def qwen3_config(config: dict) -> DecoderLMConfig:
    """A transformers `Qwen3Config` JSON (query/key norms; biases as `attention_bias` says)."""
    return DecoderLMConfig.from_dict(config, qk_norm=True)


build_qwen3 = decoder_lm_builder(qwen3_config)


def qwen3_rules(module: DecoderLM, config: dict) -> list:
    return built_decoder_rules(module)


def load_text_encoder(folder: Path | str, layers: tuple[int, ...] = KLEIN_HIDDEN_STATE_LAYERS,
                      dtype: mx.Dtype | None = mx.float32,
                      prepare: Callable[[nn.Module, Component], object] | None = None,
                      ) -> tuple[DecoderLM, LoadReport]:
    """Build and load just enough of the Qwen3 in `folder` to produce hidden states `layers`."""
    return build_and_fill(folder, lambda config: build_qwen3(config, layers), qwen3_rules, "text_encoder",
                          dtype, prepare)
