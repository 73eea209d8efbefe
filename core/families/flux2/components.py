"""FLUX.2's components as the family contract declares them (core/family.py): how each is built from its
config.json, its checkpoint-key rules and which layers its quantization keeps in full precision.

The text encoder is Qwen3 for Klein and Mistral-Small-3 for [dev], chosen by its config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...checkpoint import open_component
from ...errors import CheckpointError
from ...family import ComponentSpec
from ...quant import KeepRule, LayerPolicy
from .mistral_text_encoder import DEV_HIDDEN_STATE_LAYERS, build_mistral, is_mistral, mistral_config, mistral_rules
from .text_encoder import KLEIN_HIDDEN_STATE_LAYERS, build_qwen3, qwen3_config, qwen3_rules
from .tokenizer import MISTRAL_CHAT, QWEN3_CHAT, ChatFormat
from .transformer import TRANSFORMER_RULES, Flux2Transformer
from .vae import VAE_RULES, Flux2VAE

# Layers kept in full precision in the transformer, and why (see core/quant/policy.py for the rest).
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
    read_config: Callable
    build: Callable
    rules: Callable


QWEN3 = TextEncoderKind("Qwen3", KLEIN_HIDDEN_STATE_LAYERS, QWEN3_CHAT, qwen3_config, build_qwen3, qwen3_rules)
MISTRAL = TextEncoderKind("Mistral", DEV_HIDDEN_STATE_LAYERS, MISTRAL_CHAT, mistral_config, build_mistral,
                          mistral_rules)


def text_encoder_kind_for(config: dict) -> TextEncoderKind:
    """Chosen by the text encoder's config.json (model_type / architectures); Qwen3 unless it says Mistral."""
    return MISTRAL if is_mistral(config) else QWEN3


COMPONENTS = (
    ComponentSpec("transformer", "transformer", lambda config, _: Flux2Transformer.from_config(config),
                  tuple(TRANSFORMER_RULES), TRANSFORMER_POLICY, module=Flux2Transformer),
    ComponentSpec("text_encoder", "text_encoder",
                  lambda config, layers: text_encoder_kind_for(config).build(config, layers),
                  lambda module, config: text_encoder_kind_for(config).rules(module, config), TEXT_ENCODER_POLICY),
    ComponentSpec("vae", "vae", lambda config, _: Flux2VAE.from_config(config), tuple(VAE_RULES), label="VAE"),
)


def check_components(folder: Path, hidden_states: tuple[int, ...]) -> None:
    """Everything that can be checked without reading weights: headers, the width of the joint input."""
    transformer = open_component(folder / "transformer").config
    config = open_component(folder / "text_encoder").config
    text = config.get("text_config") or config  # Mistral3 nests the language model's config
    features = len(hidden_states) * text.get("hidden_size", 0)
    if features != transformer.get("joint_attention_dim"):
        raise CheckpointError(
            f"{folder}: the text encoder gives {len(hidden_states)} x {text.get('hidden_size')} "
            f"= {features} features per token, the transformer expects joint_attention_dim "
            f"{transformer.get('joint_attention_dim')}")
    open_component(folder / "vae")
