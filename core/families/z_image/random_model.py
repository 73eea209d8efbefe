"""Random-weight Z-Image models (Turbo or base) in the released diffusers layout, written by our own engine.

The transformer, the Qwen3-4B text encoder (all 36 layers, keys under `model.` as a causal-LM checkpoint)
and FLUX.1's VAE (the decoder and the encoder half diffusers loads) at the released shapes (optionally
narrowed with `width_scale`), a tokenizer with a Qwen3 chat template, and the scheduler config that tells
Turbo (shift 3.0) from base (6.0): loading, quantization, memory and speed measured at full size without
downloading anything. The pictures are noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx

from ...atomic import staged_folder
from ...blocks.autoencoder_kl import ScaledAutoencoderKL, flux1_vae_config
from ...random_weights import (encoder_weights, module_weights, narrowed, write_component, write_index,
                               write_tokenizer)
from .components import build_text_encoder
from .pipeline import SCHEDULES
from .transformer import ZImageTransformer


@dataclass(frozen=True)
class ZImageShape:
    """The numbers that size a Z-Image model (the released ones by default)."""

    heads: int = 30
    layers: int = 30
    refiner_layers: int = 2
    text_hidden: int = 2560
    text_layers: int = 36
    text_heads: int = 32
    text_kv_heads: int = 8
    text_intermediate: int = 9728
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    head_dim: int = 128
    text_head_dim: int = 128
    vocab_size: int = 1024  # the real one is 151,936: a random model's prompts need only a few words

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


ARCHITECTURES = {"z-image": ZImageShape()}


def write_random_z_image(out: Path | str, width_scale: float = 1.0, seed: int = 0, distilled: bool = True,
                         dtype: mx.Dtype = mx.bfloat16, max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> Path:
    """`random-model --arch z-image`: Turbo when `distilled`, else base; built in a temporary folder and renamed
    when complete."""
    shape = narrowed(ARCHITECTURES["z-image"], width_scale)
    mx.random.seed(seed)
    with staged_folder(Path(out), overwrite) as staging:
        write_z_image(staging, shape, distilled, dtype, max_shard_bytes,
                      {"random_weights": "z-image", "width_scale": width_scale, "seed": seed})
    return Path(out)


def component_configs(shape: ZImageShape) -> dict[str, dict]:
    axis = shape.head_dim // 4  # (32, 48, 48) for heads of 128, as released
    return {
        "transformer": {
            "_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
            "in_channels": 16, "dim": shape.dim, "n_layers": shape.layers, "n_refiner_layers": shape.refiner_layers,
            "n_heads": shape.heads, "n_kv_heads": shape.heads, "norm_eps": 1e-5, "qk_norm": True,
            "cap_feat_dim": shape.text_hidden, "siglip_feat_dim": None, "rope_theta": 256.0, "t_scale": 1000.0,
            "axes_dims": [axis, (shape.head_dim - axis) // 2, (shape.head_dim - axis) // 2],
            "axes_lens": [1536, 512, 512]},
        "text_encoder": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": shape.vocab_size,
            "hidden_size": shape.text_hidden, "intermediate_size": shape.text_intermediate,
            "num_hidden_layers": shape.text_layers, "num_attention_heads": shape.text_heads,
            "num_key_value_heads": shape.text_kv_heads, "head_dim": shape.text_head_dim, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": True, "max_position_embeddings": 40960,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        "vae": flux1_vae_config(shape.vae_channels),  # FLUX.1's VAE, as released
    }


def write_z_image(staging: Path, shape: ZImageShape, distilled: bool, dtype: mx.Dtype, max_shard_bytes: int,
                  metadata: dict, weights: bool = True) -> None:
    """Write the model's components, tokenizer, scheduler and model_index.json into `staging` (without
    `weights`, every file but the weights: a benchmark draws them in memory instead)."""
    configs = component_configs(shape)
    # Modules are built inline and not kept: a reference would hold every written value in memory.
    drawn = {
        "transformer": lambda: module_weights(ZImageTransformer.from_config(configs["transformer"])),
        "text_encoder": lambda: module_weights(build_text_encoder(configs["text_encoder"], None), "model."),
        "vae": lambda: {**module_weights(ScaledAutoencoderKL.from_config(configs["vae"]), pytorch_convs=True),
                        **encoder_weights(configs["vae"])},
    }
    for name, stem in (("transformer", "diffusion_pytorch_model"), ("text_encoder", "model"),
                       ("vae", "diffusion_pytorch_model")):
        write_component(staging / name, configs[name], drawn[name]() if weights else {}, dtype, max_shard_bytes, stem)
    write_tokenizer(staging / "tokenizer", shape.vocab_size)
    schedule = SCHEDULES[distilled]
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                 "shift": schedule.shift, "use_dynamic_shifting": False}
    index = {"_class_name": "ZImagePipeline", "_diffusers_version": "0.42.1", "is_distilled": distilled,
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
             "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    write_index(staging, index, scheduler, {**metadata, "architecture": asdict(shape)})
