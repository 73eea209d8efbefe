"""FLUX.1's components as the family contract declares them (core/family.py): how each is built from its
config.json, its checkpoint-key rules and which layers its quantization keeps in full precision. The
text-encoder precision applies to both CLIP and T5. The transformer comes from transformer/ or from BFL's
single file (single_file.py).
"""

from __future__ import annotations

from pathlib import Path

from ...blocks.autoencoder_kl import AUTOENCODER_KL_RULES
from ...checkpoint import open_component
from ...errors import CheckpointError
from ...family import ComponentSpec
from ...quant import KeepRule, LayerPolicy
from .clip import CLIP_RULES, CLIPTextEncoder
from .single_file import open_transformer
from .t5 import T5_RULES, T5Encoder
from .transformer import TRANSFORMER_RULES, Flux1Transformer
from .vae import Flux1VAE

# Layers kept in full precision in the transformer, and why (see core/quant/policy.py for the rest).
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"x_embedder|context_embedder", "input embedders"),
    KeepRule(r"time_text_embed\..*", "timestep, guidance and pooled-text embedders"),
    KeepRule(r"norm_out\.linear|proj_out", "output layers"),
))
CLIP_POLICY = LayerPolicy()
T5_POLICY = LayerPolicy(keep=(KeepRule(r".*relative_attention_bias", "relative position bias"),))

COMPONENTS = (
    ComponentSpec("transformer", "transformer", lambda config, _: Flux1Transformer.from_config(config),
                  tuple(TRANSFORMER_RULES), TRANSFORMER_POLICY, module=Flux1Transformer),
    ComponentSpec("text_encoder", "text_encoder", lambda config, _: CLIPTextEncoder.from_config(config),
                  tuple(CLIP_RULES), CLIP_POLICY, label="CLIP text encoder"),
    ComponentSpec("text_encoder_2", "text_encoder", lambda config, _: T5Encoder.from_config(config),
                  tuple(T5_RULES), T5_POLICY, label="T5 text encoder"),
    ComponentSpec("vae", "vae", lambda config, _: Flux1VAE.from_config(config), tuple(AUTOENCODER_KL_RULES),
                  label="VAE"),
)


def transformer_checkpoint(folder: Path):
    """transformer/ in the diffusers or BFL layout, or a BFL single file at the top (mapped to our keys)."""
    return open_transformer(Path(folder)).component


def check_components(folder: Path, hidden_states: tuple[int, ...]) -> None:
    """What can be checked without reading weights: that the components fit together."""
    transformer = transformer_checkpoint(folder).config
    clip = open_component(folder / "text_encoder").config
    clip = clip.get("text_config", clip)
    t5 = open_component(folder / "text_encoder_2").config
    vae = open_component(folder / "vae").config
    pairs = [("CLIP's hidden_size", clip.get("hidden_size"), "pooled_projection_dim", 768),
             ("T5's d_model", t5.get("d_model"), "joint_attention_dim", 4096),
             ("4 x the VAE's latent_channels", 4 * vae.get("latent_channels", 16), "in_channels", 64)]
    for what, value, key, default in pairs:
        if value != transformer.get(key, default):
            raise CheckpointError(f"{folder}: {what} is {value}, the transformer expects {key} "
                                  f"{transformer.get(key, default)}")
