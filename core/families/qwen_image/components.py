"""Loading Qwen-Image's components one at a time, so the pipeline can load, drop and reload each.

As for FLUX.2 (core/families/flux2/components.py): every load is streamed (lazy weights in the checkpoint's
dtype, lazy quantization, materialized layer by layer), and a folder saved by `quantbench save` is
loaded as it was saved. The text encoder is not quantized unless asked: mflux found that
quantizing Qwen-Image's Qwen2.5-VL degrades how well images follow the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from ...blocks.decoder_lm import DecoderLM
from ...checkpoint import LoadReport, build_from_config, open_component, reading_config
from ...component_loading import ComponentLoading
from ...errors import CheckpointError
from ...quantize import KeepRule, LayerPolicy, QuantizationReport
from .text_encoder import load_text_encoder, qwen_text_config
from .transformer import TRANSFORMER_RULES, QwenImageTransformer
from .vae import QwenImageVAE, load_vae

# Layers kept in full precision in the transformer, and why (see core/quantize.py for the rest).
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"img_in|txt_in", "input embedders"),
    KeepRule(r"time_text_embed\..*", "timestep embedder"),
    KeepRule(r"norm_out\.linear|proj_out", "output layers"),
))
TEXT_ENCODER_POLICY = LayerPolicy()


@dataclass
class ComponentLoader(ComponentLoading):
    folder: Path
    dtype: mx.Dtype
    transformer_bits: int | dict | None
    text_encoder_bits: int | dict | None
    matmul: str  # "dense" or "native" for quantized layers
    reports: dict[str, LoadReport] = field(default_factory=dict)
    quantization: dict[str, QuantizationReport] = field(default_factory=dict)

    def check(self) -> None:
        """Everything that can be checked without reading weights: headers, the width of the prompt features."""
        transformer = open_component(self.folder / "transformer").config
        encoder = open_component(self.folder / "text_encoder")
        with reading_config(encoder):
            text = qwen_text_config(encoder.config)
        if text.hidden_size != transformer.get("joint_attention_dim"):
            raise CheckpointError(
                f"{self.folder}: the text encoder gives {text.hidden_size} features per token, the transformer "
                f"expects joint_attention_dim {transformer.get('joint_attention_dim')}")
        open_component(self.folder / "vae")

    def transformer(self) -> QwenImageTransformer:
        component = open_component(self.folder / "transformer")
        module = build_from_config(QwenImageTransformer.from_config, component)
        return self._load_transformer(module, component, TRANSFORMER_RULES, TRANSFORMER_POLICY)

    def text_encoder(self) -> DecoderLM:
        return self._load_text_encoder("text_encoder", "text encoder", load_text_encoder, TEXT_ENCODER_POLICY, None)

    def vae(self) -> QwenImageVAE:
        return self._load_vae(load_vae)
