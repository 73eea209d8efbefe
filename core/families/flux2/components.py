"""Loading FLUX.2's components one at a time, so the pipeline can load, drop and reload each.

Each load is streamed: weights stay lazy in the checkpoint's dtype, quantization is lazy, and the
layers are materialized one by one (see quantize.evaluate_in_units), so loading peaks near the
final size. A folder saved by `quantbench save` is recognised and loaded as it was saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import mlx.core as mx

from ...blocks.decoder_lm import DecoderLM
from ...checkpoint import LoadReport, open_component
from ...component_loading import ComponentLoading
from ...errors import CheckpointError
from ...quantize import KeepRule, LayerPolicy, QuantizationReport
from .mistral_text_encoder import DEV_HIDDEN_STATE_LAYERS, is_mistral, load_mistral_text_encoder
from .text_encoder import KLEIN_HIDDEN_STATE_LAYERS, load_text_encoder
from .tokenizer import MISTRAL_CHAT, QWEN3_CHAT, ChatFormat
from .transformer import TRANSFORMER_RULES, Flux2Transformer
from .vae import Flux2VAE, load_vae

# Layers kept in full precision in the transformer, and why (see core/quantize.py for the rest).
# Only small layers are kept (0.04% of Klein 4B's weights). The text projection and the output
# modulation are large (1%) and rank mid-table in `quantbench sensitivity --model demo --bits 4`,
# below the blocks' own modulation layers, so they are quantized like the rest.
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"x_embedder|proj_out", "latent input and output projections"),
    KeepRule(r"time_guidance_embed\.\w+\.linear_1", "first timestep/guidance layer (sinusoidal input)"),
))
TEXT_ENCODER_POLICY = LayerPolicy()


@dataclass(frozen=True)
class TextEncoderKind:
    """What differs between FLUX.2's text encoders: Qwen3 for Klein, Mistral-Small-3 for [dev]."""

    name: str
    default_layers: tuple[int, ...]  # the hidden states the diffusers pipeline stacks by default
    chat: ChatFormat
    load: Callable[..., tuple[DecoderLM, LoadReport]]


QWEN3 = TextEncoderKind("Qwen3", KLEIN_HIDDEN_STATE_LAYERS, QWEN3_CHAT, load_text_encoder)
MISTRAL = TextEncoderKind("Mistral", DEV_HIDDEN_STATE_LAYERS, MISTRAL_CHAT, load_mistral_text_encoder)


def text_encoder_kind_for(config: dict) -> TextEncoderKind:
    """Chosen by the text encoder's config.json (model_type / architectures); Qwen3 unless it says Mistral."""
    return MISTRAL if is_mistral(config) else QWEN3


@dataclass
class ComponentLoader(ComponentLoading):
    folder: Path
    dtype: mx.Dtype
    transformer_bits: int | dict | None
    text_encoder_bits: int | dict | None
    text_encoder_layers: tuple[int, ...]
    matmul: str  # "dense" or "native" for quantized layers
    reports: dict[str, LoadReport] = field(default_factory=dict)
    quantization: dict[str, QuantizationReport] = field(default_factory=dict)

    def check(self) -> None:
        """Everything that can be checked without reading weights: headers, shapes of the joint input."""
        transformer = open_component(self.folder / "transformer").config
        config = open_component(self.folder / "text_encoder").config
        text = config.get("text_config") or config  # Mistral3 nests the language model's config
        features = len(self.text_encoder_layers) * text.get("hidden_size", 0)
        if features != transformer.get("joint_attention_dim"):
            raise CheckpointError(
                f"{self.folder}: the text encoder gives {len(self.text_encoder_layers)} x {text.get('hidden_size')} "
                f"= {features} features per token, the transformer expects joint_attention_dim "
                f"{transformer.get('joint_attention_dim')}")
        open_component(self.folder / "vae")

    def transformer(self) -> Flux2Transformer:
        component = open_component(self.folder / "transformer")
        return self._load_transformer(Flux2Transformer.from_config(component.config), component, TRANSFORMER_RULES,
                                      TRANSFORMER_POLICY)

    @cached_property
    def text_encoder_kind(self) -> TextEncoderKind:
        return text_encoder_kind_for(open_component(self.folder / "text_encoder").config)

    def text_encoder(self) -> DecoderLM:
        return self._load_text_encoder("text_encoder", "text encoder", self.text_encoder_kind.load,
                                       TEXT_ENCODER_POLICY, self.text_encoder_layers, None)

    def vae(self) -> Flux2VAE:
        return self._load_vae(load_vae)
