"""Loading FLUX.1's components one at a time, so the pipeline can load, drop and reload each.

As for FLUX.2 (core/families/flux2/components.py): weights stay lazy in the checkpoint's dtype, quantization
is lazy, and the layers are materialized one by one, so loading peaks near the final size. The
text-encoder precision applies to both CLIP and T5. A folder saved by `quantbench save` is loaded
as it was saved. The transformer comes from transformer/ or from BFL's single file (single_file.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from ...checkpoint import LoadReport, open_component
from ...component_loading import ComponentLoading
from ...errors import CheckpointError
from ...quantize import KeepRule, LayerPolicy, QuantizationReport
from .clip import CLIPTextEncoder, load_clip
from .single_file import TransformerSource, open_transformer
from .t5 import T5Encoder, load_t5
from .transformer import TRANSFORMER_RULES, Flux1Transformer
from .vae import Flux1VAE, load_vae

# Layers kept in full precision in the transformer, and why (see core/quantize.py for the rest).
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"x_embedder|context_embedder", "input embedders"),
    KeepRule(r"time_text_embed\..*", "timestep, guidance and pooled-text embedders"),
    KeepRule(r"norm_out\.linear|proj_out", "output layers"),
))
CLIP_POLICY = LayerPolicy()
T5_POLICY = LayerPolicy(keep=(KeepRule(r".*relative_attention_bias", "relative position bias"),))

# Component folder -> what it holds; both text encoders follow the text-encoder precision.
TEXT_ENCODERS = {"text_encoder": "CLIP text encoder", "text_encoder_2": "T5 text encoder"}


@dataclass
class ComponentLoader(ComponentLoading):
    folder: Path
    dtype: mx.Dtype
    transformer_bits: int | dict | None
    text_encoder_bits: int | dict | None
    matmul: str  # "dense" or "native" for quantized layers
    reports: dict[str, LoadReport] = field(default_factory=dict)
    quantization: dict[str, QuantizationReport] = field(default_factory=dict)
    _source: TransformerSource | None = None

    @property
    def source(self) -> TransformerSource:
        """Where the transformer's weights are (headers only: nothing is loaded)."""
        if self._source is None:
            self._source = open_transformer(self.folder)
        return self._source

    def check(self) -> None:
        """What can be checked without reading weights: that the components fit together."""
        transformer = self.source.component.config
        clip = open_component(self.folder / "text_encoder").config
        clip = clip.get("text_config", clip)
        t5 = open_component(self.folder / "text_encoder_2").config
        vae = open_component(self.folder / "vae").config
        pairs = [("CLIP's hidden_size", clip.get("hidden_size"), "pooled_projection_dim", 768),
                 ("T5's d_model", t5.get("d_model"), "joint_attention_dim", 4096),
                 ("4 x the VAE's latent_channels", 4 * vae.get("latent_channels", 16), "in_channels", 64)]
        for what, value, key, default in pairs:
            if value != transformer.get(key, default):
                raise CheckpointError(f"{self.folder}: {what} is {value}, the transformer expects {key} "
                                      f"{transformer.get(key, default)}")

    def transformer(self) -> Flux1Transformer:
        component = self.source.component
        module = Flux1Transformer.from_config(component.config)
        return self._load_transformer(module, component, TRANSFORMER_RULES, TRANSFORMER_POLICY)

    def clip(self) -> CLIPTextEncoder:
        return self._load_text_encoder("text_encoder", TEXT_ENCODERS["text_encoder"], load_clip, CLIP_POLICY, None)

    def t5(self) -> T5Encoder:
        return self._load_text_encoder("text_encoder_2", TEXT_ENCODERS["text_encoder_2"], load_t5, T5_POLICY, None)

    def vae(self) -> Flux1VAE:
        return self._load_vae(load_vae)
