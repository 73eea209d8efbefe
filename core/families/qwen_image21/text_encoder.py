"""Qwen3-VL's language model in MLX, run as Qwen-Image 2.1's prompt encoder.

Only the decoder stack is built: text-to-image prompts have no image tokens, so the vision tower (and
its DeepStack features, which are added to the first layers' image positions only) is skipped. It is the
shared decoder language model (core/blocks/decoder_lm.py) with Qwen3's layers: per-head query/key RMSNorm,
no biases, SwiGLU. Qwen3-VL rotates queries and keys with interleaved multimodal RoPE, three position
streams (time, height, width) sharing the frequencies; for text all three streams carry the token index,
so it is ordinary RoPE over the index (non-interleaved halves). Without image inputs transformers numbers
the tokens 0..L-1.

The pipeline reads the last decoder layer's output *before* the final norm (diffusers hooks the norm
away: that is what the transformer was trained on), so the final norm is never built, nor the LM head.
Checkpoint keys are `model.language_model.*` (transformers 5 and the released files), `model.visual.*`
and `lm_head.weight`.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from ...blocks.decoder_lm import DecoderLM, DecoderLMConfig, built_decoder_rules, decoder_lm_builder
from ...checkpoint import LoadReport, Rule
from ...component_loading import build_and_fill
from ...errors import CheckpointError


def qwen3_vl_text_config(config: dict) -> DecoderLMConfig:
    """Read a Qwen3-VL config.json (the language model's settings are under `text_config`)."""
    text = config.get("text_config") or config
    if text.get("attention_bias"):
        raise CheckpointError("text encoder sets attention_bias, which Qwen3-VL's language model does not have")
    return DecoderLMConfig.from_dict(config, rope_types=("default", "mrope"), qk_norm=True)


# The encoder as the pipeline runs it: the layers up to the last one read (all), never the final norm.
build_text_encoder = decoder_lm_builder(qwen3_vl_text_config, final_norm=False)


def text_encoder_rules(module: DecoderLM) -> list[Rule]:
    return [Rule(r"model\.visual\..+", None, reason="vision tower: text-to-image prompts have no image tokens"),
            *built_decoder_rules(module, (r"model\.language_model\.",))]


def text_encoder_module(config: dict) -> DecoderLM:
    """The encoder as the pipeline runs it: every layer, no final norm."""
    return build_text_encoder(config, None)


def load_text_encoder(folder: Path | str, dtype: mx.Dtype | None = mx.float32) -> tuple[DecoderLM, LoadReport]:
    """Build and load every layer of the language model in `folder`; its call returns the last layer's output."""
    return build_and_fill(folder, text_encoder_module, lambda module, config: text_encoder_rules(module),
                          "text_encoder", dtype)
