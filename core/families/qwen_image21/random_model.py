"""Random-weight Qwen-Image 2.1 models in the diffusers folder layout, written by our own engine.

The released architecture's shapes, optionally narrowed with `width_scale` (depth and head sizes stay):
the transformer, Qwen3-VL's language model (with the real 151,936-token embedding; the vision tower and
the LM head are never loaded, so they are left out of the files), the VAE decoder, and a processor folder
with a small tokenizer and a Qwen3-VL-style chat template. A distilled model gets Turbo's sampling grid
in model_index.json. The pictures are noise: this is for measuring loading, memory and speed at scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ... import __version__
from ...atomic import staged_folder
from ...blocks.tokenizer_files import QWEN3_VL_CHAT_TEMPLATE, train_tokenizer, write_tokenizer_folder
from ...errors import InvalidRequest
from ...random_weights import module_weights, write_component
from .text_encoder import text_encoder_module
from .transformer import QwenImage21Transformer
from .vae import QwenImage21VAE

# Qwen/Qwen-Image-2.1-Turbo's model_index.json `sample_sigmas` (the terminal 0 is appended by the scheduler).
TURBO_SIGMAS = (1.0, 0.978453, 0.95418, 0.926626, 0.89508, 0.845148, 0.704534, 0.414568)
VOCABULARY = "a an the small large red blue green star circle square sky cat photo of with and in on".split()


@dataclass(frozen=True)
class Shapes:
    """The numbers that size Qwen-Image 2.1 (the released configs' values)."""

    heads: int = 32
    layers: int = 32
    head_dim: int = 128
    text_hidden: int = 4096
    text_layers: int = 36
    text_heads: int = 32
    text_kv_heads: int = 8
    text_head_dim: int = 128
    text_intermediate: int = 12288
    vocab_size: int = 151936
    vae_base: int = 144


def scaled(shapes: Shapes, width_scale: float) -> Shapes:
    """Narrow every width by `width_scale`; depth and head sizes stay, so per-block costs scale as width^2."""
    if not 0 < width_scale <= 1:
        raise InvalidRequest(f"width scale {width_scale} is not allowed: use a number in (0, 1]")
    if width_scale == 1:
        return shapes
    text_heads = max(2, round(shapes.text_heads * width_scale))
    kv_heads = max(d for d in range(1, text_heads + 1) if text_heads % d == 0 and d <= shapes.text_kv_heads)
    return replace(shapes, heads=max(1, round(shapes.heads * width_scale)), text_heads=text_heads,
                   text_kv_heads=kv_heads, text_hidden=max(64, round(shapes.text_hidden * width_scale / 64) * 64),
                   text_intermediate=max(64, round(shapes.text_intermediate * width_scale / 64) * 64),
                   vae_base=max(16, round(shapes.vae_base * width_scale / 16) * 16))


def component_configs(shapes: Shapes) -> dict[str, dict]:
    return {
        "transformer": {
            "_class_name": "QwenImage21Transformer2DModel", "patch_size": 1, "in_channels": 64, "out_channels": 64,
            "num_layers": shapes.layers, "attention_head_dim": shapes.head_dim, "num_attention_heads": shapes.heads,
            "context_in_dim": shapes.text_hidden, "mlp_ratio": 3, "axes_dims_rope": [16, 56, 56], "eps": 1e-6,
            "causal_condition": True},
        "text_encoder": {
            "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "text_config": {
                "model_type": "qwen3_vl_text", "vocab_size": shapes.vocab_size, "hidden_size": shapes.text_hidden,
                "intermediate_size": shapes.text_intermediate, "num_hidden_layers": shapes.text_layers,
                "num_attention_heads": shapes.text_heads, "num_key_value_heads": shapes.text_kv_heads,
                "head_dim": shapes.text_head_dim, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                    "mrope_interleaved": True}},
            "tie_word_embeddings": False},
        "vae": {
            "_class_name": "AutoencoderKLQwenImage21", "base_dim": 96, "decoder_base_dim": shapes.vae_base,
            "z_dim": 64, "dim_mult": [1, 2, 4, 8, 8], "num_res_blocks": 2,
            "temperal_downsample": [False, True, True, True], "is_residual": True, "in_channels": 4,
            "out_channels": 4, "patch_size": None, "latents_mean": [0.0] * 64, "latents_std": [1.0] * 64},
    }


def write_random_model(out: Path | str, width_scale: float = 1.0, seed: int = 0, distilled: bool = True,
                       dtype: mx.Dtype = mx.bfloat16, max_shard_bytes: int = 2 << 30, overwrite: bool = False,
                       shapes: Shapes | None = None, weights: bool = True) -> Path:
    """Write a random-weight Qwen-Image 2.1 folder (Turbo when distilled); built aside and renamed when complete.
    `shapes` replaces the released ones (before `width_scale`), e.g. fewer blocks at the real width; without
    `weights`, every file but the weights (a benchmark draws them in memory instead)."""
    out = Path(out)
    shapes = scaled(shapes or Shapes(), width_scale)
    configs = component_configs(shapes)
    mx.random.seed(seed)
    with staged_folder(out, overwrite) as staging:
        # Each module is built lazily and dropped at once: its unevaluated weights are made, written and freed
        # one tensor at a time (core/random_weights.py), so the peak is one tensor, not the model.
        write_component(staging / "transformer", configs["transformer"], _drawn(weights, lambda: module_weights(
            QwenImage21Transformer.from_config(configs["transformer"]))), dtype, max_shard_bytes,
            "diffusion_pytorch_model")
        write_component(staging / "text_encoder", configs["text_encoder"],
                        _drawn(weights, lambda: _text_weights(configs["text_encoder"], shapes)), dtype, max_shard_bytes,
                        "model")
        write_component(staging / "vae", configs["vae"], _drawn(weights, lambda: _vae_weights(configs["vae"])), dtype,
                        max_shard_bytes, "diffusion_pytorch_model")
        write_tokenizer_folder(train_tokenizer([" ".join(VOCABULARY)] * 4, 512), staging / "processor",
                               chat_template=QWEN3_VL_CHAT_TEMPLATE)
        (staging / "processor" / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}))
        _write_index(staging, shapes, width_scale, seed, distilled)
    return out


def _drawn(wanted: bool, draw) -> dict[str, mx.array]:
    return draw() if wanted else {}


def _text_weights(config: dict, shapes: Shapes) -> dict[str, mx.array]:
    text = module_weights(text_encoder_module(config), "model.language_model.")
    text["model.language_model.norm.weight"] = mx.ones((shapes.text_hidden,))  # present, as in released files
    return text


def _vae_weights(config: dict) -> dict[str, mx.array]:
    """The decoder in the diffusers layout (lazy): convolutions (out, in, kh, kw), RMS-norm gains (C, 1, 1[, 1])."""
    weights = {}
    for name, value in tree_flatten(QwenImage21VAE.from_config(config).parameters()):
        if value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        elif name.endswith(".gamma"):
            value = value.reshape(-1, 1, 1) if ".attentions." in name else value.reshape(-1, 1, 1, 1)
        weights[name] = value
    return weights


def _write_index(folder: Path, shapes: Shapes, width_scale: float, seed: int, distilled: bool) -> None:
    grid = list(TURBO_SIGMAS) if distilled else None
    index = {
        "_class_name": "QwenImage21Pipeline", "_diffusers_version": "0.42.1", "sample_sigmas": grid,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
        "processor": ["transformers", "Qwen3VLProcessor"],
        "transformer": ["diffusers", "QwenImage21Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage21"],
        "quantbench": {"random_weights": "qwen-image-2.1", "width_scale": width_scale, "seed": seed,
                       "architecture": asdict(shapes), "version": __version__,
                       # random weights draw noise: the lab's probe pictures check arithmetic, not content
                       "probe": {"size": 64, "steps": len(grid) if grid else 4, "prompts": 1}},
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "scheduler").mkdir()
    # The Turbo grid is used as shipped; the base gets the pipeline's resolution-dependent shift.
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                 "use_dynamic_shifting": not distilled, "base_shift": 0.5, "max_shift": 1.15,
                 "base_image_seq_len": 256, "max_image_seq_len": 4096, "time_shift_type": "exponential"}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
