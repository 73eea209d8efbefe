"""Qwen-Image's components as the family contract declares them (core/family.py): how each is built from its
config.json, its checkpoint-key rules and which layers its quantization keeps in full precision.

The text encoder is not quantized unless asked: mflux found that quantizing Qwen-Image's Qwen2.5-VL
degrades how well images follow the prompt.
"""

from __future__ import annotations

from pathlib import Path

from ...checkpoint import open_component, reading_config
from ...errors import CheckpointError
from ...family import ComponentSpec
from ...quant import KeepRule, LayerPolicy
from .text_encoder import TEXT_ENCODER_RULES, build_qwen_text_encoder, qwen_text_config
from .transformer import TRANSFORMER_RULES, QwenImageTransformer
from .vae import VAE_RULES, QwenImageVAE

# Layers kept in full precision in the transformer, and why (see core/quant/policy.py for the rest).
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(r"img_in|txt_in", "input embedders"),
    KeepRule(r"time_text_embed\..*", "timestep embedder"),
    KeepRule(r"norm_out\.linear|proj_out", "output layers"),
))
TEXT_ENCODER_POLICY = LayerPolicy()

COMPONENTS = (
    ComponentSpec("transformer", "transformer", lambda config, _: QwenImageTransformer.from_config(config),
                  tuple(TRANSFORMER_RULES), TRANSFORMER_POLICY, module=QwenImageTransformer),
    ComponentSpec("text_encoder", "text_encoder", lambda config, _: build_qwen_text_encoder(config, None),
                  tuple(TEXT_ENCODER_RULES), TEXT_ENCODER_POLICY),
    ComponentSpec("vae", "vae", lambda config, _: QwenImageVAE.from_config(config), tuple(VAE_RULES), label="VAE"),
)


def check_components(folder: Path, hidden_states: tuple[int, ...]) -> None:
    """Everything that can be checked without reading weights: headers, the width of the prompt features."""
    transformer = open_component(folder / "transformer").config
    encoder = open_component(folder / "text_encoder")
    with reading_config(encoder):
        text = qwen_text_config(encoder.config)
    if text.hidden_size != transformer.get("joint_attention_dim"):
        raise CheckpointError(
            f"{folder}: the text encoder gives {text.hidden_size} features per token, the transformer "
            f"expects joint_attention_dim {transformer.get('joint_attention_dim')}")
    open_component(folder / "vae")
