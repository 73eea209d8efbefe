"""Tiny random Qwen-Image pipelines built with diffusers + transformers and saved to disk.

The real architecture and file layout (model_index.json, per-component configs, safetensors, a
Qwen2 tokenizer, a Qwen2.5-VL text encoder with its vision tower) at toy sizes, so the engine's
loading, encoding, denoising and decoding run exactly as on the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .tokenizer import TINY_VOCAB_SIZE, build_tiny_qwen_tokenizer

TEXT_HIDDEN = 64
HEAD_DIM = 32  # transformer head size: the RoPE axes (8, 12, 12) add up to it

# Qwen/Qwen-Image's scheduler/scheduler_config.json.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                        time_shift_type="exponential")


def randomize(module: torch.nn.Module, scale: float, seed: int, zero_centered: str | None = None) -> None:
    """Default inits leave norms at one and some projections at zero; random weights make parity meaningful.
    Norm gains whose name contains `zero_centered` are stored as scale - 1 and drawn around zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            if leaf == "gamma" or (leaf == "weight" and "norm" in name.split(".")[-2]):
                center = 0.0 if zero_centered and zero_centered in name else 1.0
                p.copy_(center + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def randomize_language_model(model: torch.nn.Module) -> None:
    """Norm gains around one, matrices scaled by their fan-in (O(1) activations: a wrong norm, mask or RoPE
    shows), everything else small."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.ndim == 2:
                fan_in = 1 if name.endswith("embed_tokens.weight") else p.shape[1]
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))


def tiny_text_encoder(seed: int = 1):
    """A Qwen2_5_VLForConditionalGeneration with a 2-layer language model and a 1-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                           fullatt_block_indexes=[0]))
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    randomize_language_model(model)
    return model


def tiny_transformer(seed: int = 0, **overrides):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    config = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=HEAD_DIM,
                  num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(8, 12, 12))
    model = QwenImageTransformer2DModel(**{**config, **overrides}).eval()
    randomize(model, 0.08, seed)
    return model


def tiny_vae(seed: int = 2):
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.1 * i - 0.8 for i in range(16)],
                                 latents_std=[1.0 + 0.1 * i for i in range(16)]).eval()
    randomize(vae, 0.1, seed)  # most pixels inside the decoder's [-1, 1] clamp
    return vae


def build_tiny_qwen_image(folder: Path, seed: int = 0):
    """Save a tiny QwenImagePipeline to `folder` and return the diffusers pipeline (float32, CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=tiny_vae(seed + 2),
                             text_encoder=tiny_text_encoder(seed + 1), tokenizer=build_tiny_qwen_tokenizer(),
                             transformer=tiny_transformer(seed))
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def rewrite_text_encoder_keys_with_language_model(folder: Path) -> None:
    """Rename text_encoder keys to the layout transformers 4.5x wrote: `model.language_model.*` and
    `model.visual.*` (transformers 5, like the released Qwen/Qwen-Image files, writes `model.*` and `visual.*`)."""
    from safetensors.torch import load_file, save_file

    for path in (folder / "text_encoder").glob("*.safetensors"):
        renamed = {}
        for key, value in load_file(path).items():
            if key.startswith("visual."):
                key = "model." + key
            elif key.startswith("model."):
                key = "model.language_model." + key[len("model."):]
            renamed[key] = value
        save_file(renamed, path, metadata={"format": "pt"})


def flatten_text_encoder_config(folder: Path) -> None:
    """Write text_encoder/config.json the way the released Qwen/Qwen-Image repo has it: the language model's
    settings at the top level, RoPE as `rope_theta` + `rope_scaling: {type: mrope, mrope_section}`."""
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    config.update({k: v for k, v in text.items() if k not in config})
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    config_path.write_text(json.dumps(config, indent=2))


def rewrite_tokenizer_as_vocab_and_merges(folder: Path) -> None:
    """Replace tokenizer.json by vocab.json + merges.txt + added_tokens.json, as the real repo's tokenizer folder has."""
    tokenizer_folder = folder / "tokenizer"
    data = json.loads((tokenizer_folder / "tokenizer.json").read_text())
    (tokenizer_folder / "vocab.json").write_text(json.dumps(data["model"]["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (tokenizer_folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    (tokenizer_folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False))
    config_path = tokenizer_folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in data["added_tokens"]}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (tokenizer_folder / "tokenizer.json").unlink()
