"""Tiny random FLUX.2 Klein pipelines built with diffusers + transformers and saved to disk.

They have the real architecture and file layout (model_index.json, per-component configs,
safetensors, tokenizer with chat template) at toy sizes, so the engine's loading, encoding,
denoising and decoding run exactly as on a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import TINY_VOCAB_SIZE, build_tiny_qwen_tokenizer

TEXT_HIDDEN = 64
TEXT_LAYERS = (1, 3, 5)  # hidden states stacked for the transformer (Klein's are 9, 18, 27)


def _randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Default inits leave some projections at zero; random weights everywhere make parity meaningful."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2:][0]:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def build_tiny_klein(folder: Path, distilled: bool, seed: int = 0):
    """Save a tiny Flux2KleinPipeline to `folder` and return the diffusers pipeline (float32, CPU)."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        attn_implementation="eager")).eval()
    transformer = Flux2Transformer2DModel(
        in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=len(TEXT_LAYERS) * TEXT_HIDDEN, axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=False).eval()
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                             latent_channels=32).eval()
    _randomize(transformer, 0.08, seed)
    _randomize(text_encoder, 0.08, seed + 1)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape) * 0.2)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=build_tiny_qwen_tokenizer(), transformer=transformer,
                              is_distilled=distilled)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_tiny_dev_text_encoder(seed: int = 0):
    """A tiny random Mistral3ForConditionalGeneration (Pixtral vision tower included, as in [dev]; head_dim
    is not hidden / heads, as in Mistral-Small-3: 5120 / 32 heads of 128)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    from .tokenizer import MISTRAL_SPECIAL_TOKENS, TINY_MISTRAL_VOCAB_SIZE

    torch.manual_seed(seed)
    text = MistralConfig(vocab_size=TINY_MISTRAL_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=128,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                         max_position_embeddings=1024, rms_norm_eps=1e-5, sliding_window=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e9})
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=16, image_size=64, patch_size=16)
    config = Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=2,
                            image_token_index=MISTRAL_SPECIAL_TOKENS.index("[IMG]"))
    config._attn_implementation = "eager"
    model = Mistral3ForConditionalGeneration(config).eval()
    _randomize(model, 0.08, seed + 1)
    return model


def build_tiny_dev(folder: Path, seed: int = 0):
    """Save a tiny FLUX.2 [dev] (diffusers Flux2Pipeline: Mistral3 text encoder, transformer with a guidance
    embedder) to `folder` and return the diffusers pipeline (float32, CPU)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    from .tokenizer import build_tiny_mistral_processor

    text_encoder = build_tiny_dev_text_encoder(seed)
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=len(TEXT_LAYERS) * TEXT_HIDDEN, axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=True).eval()
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                             latent_channels=32).eval()
    _randomize(transformer, 0.08, seed)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape) * 0.2)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                         tokenizer=build_tiny_mistral_processor(), transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe
