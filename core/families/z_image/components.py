"""Z-Image's components as the family contract declares them (core/family.py): how each is built from its
config.json, its checkpoint-key rules and which layers its quantization keeps in full precision.

Key layouts read:
- transformer/: the diffusers names (Tongyi-MAI/Z-Image-Turbo and Tongyi-MAI/Z-Image), or the original
  training code's (ComfyUI's z_image_turbo_bf16.safetensors: fused `attention.qkv`, `attention.out`,
  `q_norm`/`k_norm`, `x_embedder`, `final_layer`, optionally behind `model.diffusion_model.`);
- text_encoder/: Qwen3 with or without the `model.` prefix (a Qwen3Model or a Qwen3ForCausalLM
  checkpoint); only the layers before the penultimate hidden state are loaded;
- vae/: diffusers' AutoencoderKL (FLUX.1's 16-channel VAE), decoder only.
"""

from __future__ import annotations

from pathlib import Path

from ...blocks.autoencoder_kl import AUTOENCODER_KL_RULES, ScaledAutoencoderKL
from ...blocks.decoder_lm import DecoderLM, DecoderLMConfig, built_decoder_rules, decoder_lm_builder, resolve_layer
from ...checkpoint import Component, Rule, fused, map_component, open_component, reading_config
from ...errors import CheckpointError
from ...family import ComponentSpec
from ...quant import KeepRule, LayerPolicy
from .transformer import PATCH, ZImageTransformer

# The pipeline conditions on the text encoder's penultimate hidden state (transformers' hidden_states[-2]).
HIDDEN_STATE = -2

# Layers kept in full precision in the transformer, and why (see core/quant/policy.py for the rest): 1.0M of
# 6.15B weights (0.02%). Ranked alone at 4 bits on a random model at the released widths, they are the four
# most harmful layers, each at least twice the next one's error; the final modulation ranks 48th of 52 there
# and is quantized (README, "Z-Image's layer policy"; benchmarks/layer_policy.py).
TRANSFORMER_POLICY = LayerPolicy(keep=(
    KeepRule(rf"all_x_embedder\.{PATCH}|all_final_layer\.{PATCH}\.linear", "latent input and output layers"),
    KeepRule(r"t_embedder\..+", "timestep embedder"),
))
TEXT_ENCODER_POLICY = LayerPolicy()

# The original Z-Image code's names (and ComfyUI's single files), mapped to the diffusers ones.
ORIGINAL_KEY_PREFIX = "model.diffusion_model."
ORIGINAL_LAYOUT_RULES = [
    Rule(r"x_embedder\.(weight|bias)", rf"all_x_embedder.{PATCH}.\1"),
    Rule(r"final_layer\.(.+)", rf"all_final_layer.{PATCH}.\1"),
    *fused(r"(.+)\.attention\.qkv\.weight", tuple(rf"\1.attention.to_{p}.weight" for p in "qkv"), (1, 1, 1)),
    Rule(r"(.+)\.attention\.out\.(weight|bias)", r"\1.attention.to_out.0.\2"),
    Rule(r"(.+)\.attention\.q_norm\.weight", r"\1.attention.norm_q.weight"),
    Rule(r"(.+)\.attention\.k_norm\.weight", r"\1.attention.norm_k.weight"),
]
TRANSFORMER_RULES = [
    Rule(r"norm_final\.weight", None, reason="the final LayerNorm has no affine weights (unused in the original too)"),
    Rule(r"(.*)", r"\1"),
]


def is_original_layout(keys) -> bool:
    return any(k.removeprefix(ORIGINAL_KEY_PREFIX).endswith(".attention.qkv.weight") for k in keys)


def open_transformer(folder: Path) -> Component:
    """transformer/ of a model folder, with diffusers keys whichever layout it is stored in (headers only)."""
    component = open_component(Path(folder) / "transformer")
    if is_original_layout(component.tensors):
        return map_component(component, ORIGINAL_LAYOUT_RULES, ORIGINAL_KEY_PREFIX)
    return component


def qwen3_config(config: dict) -> DecoderLMConfig:
    """Qwen3-4B's config.json (query/key norms)."""
    return DecoderLMConfig.from_dict(config, qk_norm=True)


build_text_encoder = decoder_lm_builder(qwen3_config)


def penultimate_hidden_state(folder: Path) -> int:
    """The text encoder's HIDDEN_STATE counted from the start (saved model indexes hold layer numbers)."""
    encoder = open_component(Path(folder) / "text_encoder")
    with reading_config(encoder):
        layers = qwen3_config(encoder.config).num_hidden_layers
    return resolve_layer(HIDDEN_STATE, layers)


def text_encoder_rules(module: DecoderLM, config: dict) -> list[Rule]:
    """Qwen3's keys with `model.` (a causal-LM checkpoint) or without (Qwen3Model's save_pretrained), for the
    layers built."""
    return built_decoder_rules(module, (r"(?:model\.)?",))


COMPONENTS = (
    ComponentSpec("transformer", "transformer", lambda config, _: ZImageTransformer.from_config(config),
                  tuple(TRANSFORMER_RULES), TRANSFORMER_POLICY, module=ZImageTransformer),
    # Built up to the hidden state the pipeline reads (the penultimate: every layer but the last, no final norm).
    ComponentSpec("text_encoder", "text_encoder", build_text_encoder, text_encoder_rules, TEXT_ENCODER_POLICY),
    ComponentSpec("vae", "vae", lambda config, _: ScaledAutoencoderKL.from_config(config),
                  tuple(AUTOENCODER_KL_RULES), label="VAE"),
)


def check_components(folder: Path, hidden_states: tuple[int, ...]) -> None:
    """What can be checked without reading weights: that the components fit together."""
    transformer = open_transformer(folder).config
    text = open_component(folder / "text_encoder").config
    vae = open_component(folder / "vae").config
    pairs = [("the text encoder's hidden_size", text.get("hidden_size"), "cap_feat_dim", 2560),
             ("the VAE's latent_channels", vae.get("latent_channels", 16), "in_channels", 16)]
    for what, value, key, default in pairs:
        if value != transformer.get(key, default):
            raise CheckpointError(f"{folder}: {what} is {value}, the transformer expects {key} "
                                  f"{transformer.get(key, default)}")
