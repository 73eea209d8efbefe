"""The Mistral language model, run as FLUX.2 [dev]'s prompt encoder.

FLUX.2 [dev] encodes prompts with Mistral-Small-3.x (`Mistral3ForConditionalGeneration`): a Pixtral
vision tower, a multimodal projector and a Mistral decoder. Text-to-image prompts are text only, so
only the decoder is built: its token embedding and the layers up to the last hidden state the
pipeline stacks (10, 20 and 30 of 40), concatenated per token exactly like Klein's Qwen3 features.

Mistral's decoder is the shared decoder language model (core/blocks/decoder_lm.py) without per-head
query/key norms (GQA, SwiGLU, RMSNorm, plain RoPE); what is Mistral's own is the config (nested under
`text_config`, sliding window switched by `sliding_window` itself) and the checkpoint key layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ...blocks.decoder_lm import UNUSED_HEAD, DecoderLM, DecoderLMConfig, built_decoder_rules, decoder_lm_builder
from ...checkpoint import Component, LoadReport, Rule
from ...component_loading import build_and_fill
from ...errors import CheckpointError

# The hidden states FLUX.2 [dev]'s pipeline stacks.
DEV_HIDDEN_STATE_LAYERS = (10, 20, 30)

# Where the decoder's own names (embed_tokens, layers.N..., norm) start, by checkpoint layout:
# transformers >= 4.52 in memory and on the Hub since then, transformers' older (and 5.x's saved)
# layout, and a text-only MistralForCausalLM (also what `quantbench save` writes).
DECODER_PREFIXES = (r"model\.language_model\.", r"language_model\.model\.", r"model\.")
VISION_PARTS = (
    Rule(r"(model\.)?vision_tower\..+", None, reason="vision tower: FLUX.2 prompts are text only"),
    Rule(r"(model\.)?multi_modal_projector\..+", None, reason="multimodal projector: FLUX.2 prompts are text only"),
    Rule(r"language_model\.lm_head\.weight", None, reason=UNUSED_HEAD),
)


def mistral_config(config: dict) -> DecoderLMConfig:
    """The decoder's config from a Mistral3 config (its `text_config`) or a plain Mistral one."""
    text = config.get("text_config", config)
    if text.get("sliding_window") is not None:
        raise CheckpointError(f"text encoder uses sliding-window attention ({text['sliding_window']} tokens), "
                              "which is not supported")
    return DecoderLMConfig.from_dict(config, qk_norm=False)


def is_mistral(config: dict) -> bool:
    """Whether a text encoder config.json describes a Mistral (FLUX.2 [dev]) rather than a Qwen3 (Klein)."""
    kinds = {config.get("model_type", ""), (config.get("text_config") or {}).get("model_type", "")}
    kinds |= set(config.get("architectures") or [])
    return any(kind.lower().startswith("mistral") for kind in kinds)


build_mistral = decoder_lm_builder(mistral_config)


def mistral_rules(module: DecoderLM, config: dict) -> list[Rule]:
    """Checkpoint-key rules for every Mistral layout, vision parts skipped with their reason."""
    return [*VISION_PARTS, *built_decoder_rules(module, DECODER_PREFIXES)]


def load_mistral_text_encoder(folder: Path | str, layers: tuple[int, ...] = DEV_HIDDEN_STATE_LAYERS,
                              dtype: mx.Dtype | None = mx.float32,
                              prepare: Callable[[nn.Module, Component], object] | None = None,
                              ) -> tuple[DecoderLM, LoadReport]:
    """Build and load just enough of the Mistral decoder in `folder` to produce hidden states `layers`."""
    return build_and_fill(folder, lambda config: build_mistral(config, layers), mistral_rules, "text_encoder",
                          dtype, prepare)
