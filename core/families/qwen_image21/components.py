"""Qwen-Image 2.1's components as the family contract declares them (core/family.py): how each is built from
its config.json, its checkpoint-key rules and which layers its quantization keeps in full precision.

The transformer's weights come in two key layouts: diffusers' (the released Qwen/Qwen-Image-2.1 folders)
and ComfyUI's single file (Comfy-Org's repack, put in transformer/ with a config.json), which puts
`model.diffusion_model.` in front of every key and fuses each block's SwiGLU gate and up projections into
one `img_mlp.gate_up` (gate rows first).
"""

from __future__ import annotations

from pathlib import Path

from ...checkpoint import Component, Rule, fused, map_component, open_component, reading_config
from ...errors import CheckpointError
from ...family import ComponentSpec
from ...quant import KeepRule, LayerPolicy
from .text_encoder import build_text_encoder, qwen3_vl_text_config, text_encoder_rules
from .transformer import TRANSFORMER_RULES, QwenImage21Transformer
from .vae import VAE_RULES, QwenImage21VAE

# Layers kept in full precision in the transformer, and why (see core/quantize.py for the rest). Measured with
# `quantbench sensitivity` (README): alone at 4 bits, the timestep embedder's two layers and the one modulation
# every block shares are the three most harmful layers (the second timestep layer alone: a third of the error of
# quantizing everything); together with the latent projections they are 1.2% of the 7.1B weights.
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"img_in|proj_out", "latent input and output projections"),
    KeepRule(r"time_text_embed\.timestep_embedder\.linear_[12]", "timestep embedder"),
    KeepRule(r"modulation\.1", "shared modulation"),
))
TEXT_ENCODER_POLICY = LayerPolicy()

COMFY_PREFIX = "model.diffusion_model."
COMFY_TRANSFORMER_RULES = [
    *fused(r"transformer_blocks\.(\d+)\.img_mlp\.gate_up\.weight",
           (r"transformer_blocks.\1.img_mlp.gate_layer.weight", r"transformer_blocks.\1.img_mlp.proj.weight"), (1, 1)),
    Rule(r"(?!.*\.gate_up\.)(.*)", r"\1"),  # every rule that matches applies: the fused key only splits
]

COMPONENTS = (
    ComponentSpec("transformer", "transformer", lambda config, _: QwenImage21Transformer.from_config(config),
                  tuple(TRANSFORMER_RULES), TRANSFORMER_POLICY, module=QwenImage21Transformer),
    ComponentSpec("text_encoder", "text_encoder", build_text_encoder,
                  lambda module, config: text_encoder_rules(module), TEXT_ENCODER_POLICY),
    ComponentSpec("vae", "vae", lambda config, _: QwenImage21VAE.from_config(config), tuple(VAE_RULES), label="VAE"),
)


def open_transformer(folder: Path) -> Component:
    """transformer/ under diffusers keys, whichever layout its files use (headers only are read)."""
    component = open_component(Path(folder) / "transformer")
    if any(key.startswith(COMFY_PREFIX) or ".img_mlp.gate_up." in key for key in component.tensors):
        return map_component(component, COMFY_TRANSFORMER_RULES, COMFY_PREFIX)
    return component


def check_components(folder: Path, hidden_states: tuple[int, ...]) -> None:
    """What can be checked without reading weights: headers, and that the components fit together."""
    transformer = open_transformer(folder).config
    encoder = open_component(folder / "text_encoder")
    with reading_config(encoder):
        text = qwen3_vl_text_config(encoder.config)
    vae = open_component(folder / "vae").config
    pairs = [("the text encoder gives", text.hidden_size, "features per token", "context_in_dim", 4096),
             ("the VAE has", vae.get("z_dim", 64), "latent channels", "in_channels", 64)]
    for what, value, unit, key, default in pairs:
        if value != transformer.get(key, default):
            raise CheckpointError(f"{folder}: {what} {value} {unit}, the transformer expects {key} "
                                  f"{transformer.get(key, default)}")
