"""Tiny random Z-Image pipelines (Turbo and base) built with diffusers + transformers and saved to disk.

The real architecture and file layout (model_index.json, per-component configs, safetensors, a Qwen2
tokenizer with Qwen3's chat template, a Qwen3 text encoder, the 16-channel AutoencoderKL) at toy
sizes, so the engine's loading, encoding, denoising and decoding run exactly as on the released
checkpoints. The two released repositories differ only in their weights and their scheduler's shift
(Turbo 3.0, base 6.0); model_index.json is the same `ZImagePipeline` for both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .tokenizer import TINY_VOCAB_SIZE, build_tiny_qwen_tokenizer

TEXT_HIDDEN = 64
# dim 192 = 6 heads of 32 (the RoPE axes 8 + 12 + 12); the SwiGLU width int(192 / 3 * 8) = 512 and every
# input width is a multiple of 64, so quantization has layers to quantize.
TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=192, n_layers=2,
                   n_refiner_layers=2, n_heads=6, n_kv_heads=6, norm_eps=1e-5, qk_norm=True,
                   cap_feat_dim=TEXT_HIDDEN, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 12, 12],
                   axes_lens=[1024, 512, 512])
TEXT_ENCODER = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                    rms_norm_eps=1e-6, tie_word_embeddings=True)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
           latent_channels=16, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
           use_quant_conv=False, use_post_quant_conv=False)
# scheduler/scheduler_config.json of Tongyi-MAI/Z-Image-Turbo and Tongyi-MAI/Z-Image.
SCHEDULERS = {"turbo": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
              "base": dict(num_train_timesteps=1000, shift=6.0, use_dynamic_shifting=False)}


def randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Default inits leave the pad tokens and some projections at zero and the norms at one; random weights
    everywhere make parity meaningful."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            parent = name.split(".")[-2] if "." in name else ""
            if "norm" in parent:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def tiny_transformer(seed: int = 0, **overrides):
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(**{**TRANSFORMER, **overrides}).eval()
    randomize(model, 0.08, seed)
    return model


def tiny_text_encoder(seed: int = 1):
    """Qwen3Model, the class the released model_index.json names (its keys have no `model.` prefix)."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    model = Qwen3Model(Qwen3Config(**TEXT_ENCODER, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:  # O(1) activations: a wrong norm, mask or RoPE shows
                fan_in = 1 if name.endswith("embed_tokens.weight") else p.shape[1]
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    return model


def tiny_vae(seed: int = 2):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


def build_tiny_z_image(folder: Path, variant: str = "turbo", seed: int = 0):
    """Save a tiny ZImagePipeline to `folder` and return the diffusers pipeline (float32, CPU).

    variant: "turbo" or "base"; only the scheduler config differs, as between the released repositories.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]), vae=tiny_vae(seed + 2),
                          text_encoder=tiny_text_encoder(seed + 1), tokenizer=build_tiny_qwen_tokenizer(),
                          transformer=tiny_transformer(seed))
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def rewrite_text_encoder_keys_as_causal_lm(folder: Path) -> None:
    """Prefix the text encoder's keys with `model.`, as a Qwen3ForCausalLM checkpoint (the released config's
    `architectures`, and ComfyUI's qwen_3_4b.safetensors) stores them."""
    from safetensors.torch import load_file, save_file

    for path in (folder / "text_encoder").glob("*.safetensors"):
        save_file({f"model.{k}": v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    config_path.write_text(json.dumps(config, indent=2))


def rewrite_transformer_keys_as_original(folder: Path, prefix: str = "") -> None:
    """Rewrite transformer/ in the original Z-Image layout (the training code's names, as in ComfyUI's
    z_image_turbo_bf16.safetensors): fused `attention.qkv`, `attention.out`, `q_norm`/`k_norm`, `x_embedder`,
    `final_layer`, optionally behind `model.diffusion_model.`."""
    from safetensors.torch import load_file, save_file

    for path in (folder / "transformer").glob("*.safetensors"):
        tensors = load_file(path)
        original = {}
        for key, value in tensors.items():
            if ".attention.to_k." in key or ".attention.to_v." in key:
                continue
            if ".attention.to_q.weight" in key:
                stem = key.removesuffix(".to_q.weight")
                value = torch.cat([tensors[f"{stem}.to_{p}.weight"] for p in "qkv"])
                key = f"{stem}.qkv.weight"
            key = (key.replace("all_x_embedder.2-1.", "x_embedder.").replace("all_final_layer.2-1.", "final_layer.")
                   .replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_q.", ".attention.q_norm.")
                   .replace(".attention.norm_k.", ".attention.k_norm."))
            original[prefix + key] = value
        save_file(original, path, metadata={"format": "pt"})
