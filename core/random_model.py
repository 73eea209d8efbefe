"""Random-weight models in the diffusers folder layout, written by our own engine: FLUX.2 here, other
families by their own module (FAMILY_ARCHITECTURES).

They have a real architecture's shapes (optionally narrowed with `width_scale`) and real files
(model_index.json, per-component configs, sharded safetensors with an index, a tokenizer with a chat
template), so loading, quantization, memory and speed can be measured at scale without downloading
anything. The pictures they draw are noise.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .atomic import staged_folder
from .disk_space import check_free_space
from .errors import InvalidRequest
from .families import FAMILIES, family_named
from .random_weights import (encoder_weights, module_weights, narrowed, tallying, write_component, write_index,
                             write_tokenizer)


@dataclass(frozen=True)
class RandomArchitecture:
    """The numbers that size a Klein-style FLUX.2 model."""

    heads: int
    double_blocks: int
    single_blocks: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vae_channels: tuple[int, ...]
    text_encoder_layers: tuple[int, ...]
    head_dim: int = 128
    text_head_dim: int = 128
    vocab_size: int = 1024


ARCHITECTURES = {
    "tiny": RandomArchitecture(heads=2, double_blocks=1, single_blocks=2, text_hidden=64, text_layers=3,
                               text_heads=4, text_kv_heads=2, text_intermediate=128, vae_channels=(16, 16, 32, 32),
                               text_encoder_layers=(1, 2, 3), head_dim=32, text_head_dim=16, vocab_size=512),
    # Qwen3-4B/8B have 36 layers; Klein reads up to layer 27, so the random encoder stops there.
    "klein-4b": RandomArchitecture(heads=24, double_blocks=5, single_blocks=20, text_hidden=2560, text_layers=27,
                                   text_heads=32, text_kv_heads=8, text_intermediate=9728,
                                   vae_channels=(128, 256, 512, 512), text_encoder_layers=(9, 18, 27)),
    "klein-9b": RandomArchitecture(heads=32, double_blocks=8, single_blocks=24, text_hidden=4096, text_layers=27,
                                   text_heads=32, text_kv_heads=8, text_intermediate=12288,
                                   vae_channels=(128, 256, 512, 512), text_encoder_layers=(9, 18, 27)),
}

# Architectures of other families, each written by its family (Family.random_models).
FAMILY_ARCHITECTURES = {name: write for family in FAMILIES for name, write in family.random_models}


def component_configs(arch: RandomArchitecture) -> dict[str, dict]:
    return {
        "transformer": {
            "_class_name": "Flux2Transformer2DModel", "in_channels": 128, "num_layers": arch.double_blocks,
            "num_single_layers": arch.single_blocks, "attention_head_dim": arch.head_dim,
            "num_attention_heads": arch.heads, "joint_attention_dim": len(arch.text_encoder_layers) * arch.text_hidden,
            "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [arch.head_dim // 4] * 4,
            "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": False, "patch_size": 1},
        "text_encoder": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": arch.vocab_size,
            "hidden_size": arch.text_hidden, "intermediate_size": arch.text_intermediate,
            "num_hidden_layers": arch.text_layers, "num_attention_heads": arch.text_heads,
            "num_key_value_heads": arch.text_kv_heads, "head_dim": arch.text_head_dim, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        "vae": {
            "_class_name": "AutoencoderKLFlux2", "in_channels": 3, "out_channels": 3, "latent_channels": 32,
            "block_out_channels": list(arch.vae_channels), "layers_per_block": 2,
            "up_block_types": ["UpDecoderBlock2D"] * len(arch.vae_channels),
            "down_block_types": ["DownEncoderBlock2D"] * len(arch.vae_channels),
            "norm_num_groups": 32 if min(arch.vae_channels) >= 32 else 8, "act_fn": "silu",
            "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
            "batch_norm_eps": 1e-4, "batch_norm_momentum": 0.1, "patch_size": [2, 2]},
    }


def write_random_model(out: Path | str, architecture: str = "tiny", width_scale: float = 1.0, seed: int = 0,
                       distilled: bool = True, dtype: mx.Dtype = mx.bfloat16, max_shard_bytes: int = 2 << 30,
                       overwrite: bool = False) -> Path:
    """Write a random-weight model folder; built in a temporary folder and renamed when complete. Refused first,
    in one line, when `out`'s disk lacks the room for the whole model's tensors (random_model_bytes).

    `architecture`: a FLUX.2 Klein shape (ARCHITECTURES) or another family's (FAMILY_ARCHITECTURES)."""
    check_free_space(Path(out), random_model_bytes(architecture, width_scale, distilled, dtype), "the random model")
    return _write(out, architecture, width_scale, seed, distilled, dtype, max_shard_bytes, overwrite)


def random_model_bytes(architecture: str = "tiny", width_scale: float = 1.0, distilled: bool = True,
                       dtype: mx.Dtype = mx.bfloat16) -> int:
    """The bytes of the model's tensors as write_random_model stores them (its safetensors headers, configs and
    tokenizer come on top: a lower bound). Counted by the writer itself, run with its weights left unwritten
    and undrawn (random_weights.tallying) into a scratch folder that holds only the small files."""
    with tempfile.TemporaryDirectory(prefix="quantbench-random-size-") as scratch, tallying() as sizes:
        _write(Path(scratch) / "model", architecture, width_scale, 0, distilled, dtype, 2 << 30, False)
    return sum(sizes)


def _write(out: Path | str, architecture: str, width_scale: float, seed: int, distilled: bool, dtype: mx.Dtype,
           max_shard_bytes: int, overwrite: bool) -> Path:
    if architecture in FAMILY_ARCHITECTURES:
        return FAMILY_ARCHITECTURES[architecture](out, width_scale, seed, distilled, dtype, max_shard_bytes, overwrite)
    if architecture not in ARCHITECTURES:
        raise InvalidRequest(f"unknown architecture '{architecture}': choose one of {', '.join(architecture_names())}")
    out = Path(out)
    mx.random.seed(seed)
    made = {"random_weights": architecture, "width_scale": width_scale, "seed": seed}
    with staged_folder(out, overwrite) as staging:
        _write_klein(staging, narrowed(ARCHITECTURES[architecture], width_scale), distilled, dtype, max_shard_bytes, made)
    return out


def architecture_names() -> list[str]:
    return sorted([*ARCHITECTURES, *FAMILY_ARCHITECTURES])


def _write_klein(staging: Path, arch: RandomArchitecture, distilled: bool, dtype: mx.Dtype, max_shard_bytes: int,
                 made: dict) -> None:
    configs = component_configs(arch)
    build = family_named("flux2").component  # modules built by the engine's own family, with its random init
    # Each module is built lazily and dropped at once: only its unevaluated weights are kept, and each is
    # made, written and freed in turn, so the peak is one tensor, not the model (klein-4b: a 16 GB Mac).
    write_component(staging / "transformer", configs["transformer"],
                    module_weights(build("transformer").build(configs["transformer"], None)), dtype, max_shard_bytes,
                    "diffusion_pytorch_model")
    write_component(staging / "text_encoder", configs["text_encoder"],
                    module_weights(build("text_encoder").build(configs["text_encoder"], None), "model."), dtype,
                    max_shard_bytes, "model")
    write_component(staging / "vae", configs["vae"], _vae_weights(configs["vae"], build("vae").build(configs["vae"], None)), dtype, max_shard_bytes,
                    "diffusion_pytorch_model")
    write_tokenizer(staging / "tokenizer", arch.vocab_size)
    index = {
        "_class_name": "Flux2KleinPipeline", "_diffusers_version": "0.42.1", "is_distilled": distilled,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"],
        "text_encoder_out_layers": list(arch.text_encoder_layers),
    }
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                 "use_dynamic_shifting": True, "time_shift_type": "exponential"}
    write_index(staging, index, scheduler, {**made, "architecture": asdict(arch)})


def _vae_weights(config: dict, vae: nn.Module) -> dict[str, mx.array]:
    """The whole AutoencoderKLFlux2: our decoder in PyTorch's conv layout (out, in, kh, kw) with neutral
    batch-norm statistics, then the encoder half."""
    weights = module_weights(vae, pytorch_convs=True)
    weights["bn.running_mean"] = mx.zeros_like(weights["bn.running_mean"])
    weights["bn.running_var"] = mx.ones_like(weights["bn.running_var"])
    weights["bn.num_batches_tracked"] = mx.array(0, dtype=mx.int64)
    return {**weights, **encoder_weights(config)}


def parameter_count(folder: Path) -> int:
    """The parameters of every component folder (FLUX.1 has two text encoders)."""
    from .checkpoint import open_component
    return sum(math.prod(t.shape) for config in sorted(folder.glob("*/config.json"))
               for t in open_component(config.parent).tensors.values())
