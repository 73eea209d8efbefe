"""Tiny random Qwen-Image 2.1 pipelines built with diffusers + transformers and saved to disk.

The real architecture and file layout (model_index.json, per-component configs, safetensors, a
Qwen3-VL text encoder with its vision tower, the `processor/` folder a Qwen3VLProcessor saves) at toy
sizes, so the engine's loading, encoding, denoising and decoding run exactly as on the real checkpoint.

transformers builds a Qwen3VLProcessor only when its video processor's base class is importable from
the top-level package, which needs torchvision (for video frames, which text-to-image never reads).
`_register_video_processor` names the class by hand; the saved folder is the standard one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .qwen_image import randomize, randomize_language_model
from .tokenizer import build_tiny_qwen_tokenizer

TEXT_HIDDEN = 64
HEAD_DIM = 32  # transformer head size: the RoPE axes (8, 12, 12) add up to it
LATENT_CHANNELS = 16
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Turbo's model_index.json ships its own sampling grid (the released one has 8 values).
TURBO_SIGMAS = [1.0, 0.95, 0.85, 0.6]

# FlowMatchEulerDiscreteScheduler with dynamic shifting (the pipeline computes mu from the image tokens);
# the released config sets the same kind of values. shift_terminal 0.02 exercises the stretch.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, shift_terminal=0.02,
                        time_shift_type="exponential")

# Qwen3-VL's template reduced to what the pipeline exercises: a system turn whose content is a string or
# text blocks (the pipeline counts the tokens of its system turn to drop them), user turns with image
# blocks, and the generation prompt.
QWEN3_VL_STYLE_CHAT_TEMPLATE = """\
{%- set image_count = namespace(value=0) %}
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\\n' }}
    {%- if message.content is string %}
        {{- message.content }}
    {%- else %}
        {%- for content in message.content %}
            {%- if content.type == 'image' or 'image' in content %}
                {%- set image_count.value = image_count.value + 1 %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _register_video_processor() -> None:
    """Let transformers check a Qwen3VLProcessor's video processor without torchvision installed."""
    import transformers
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_processing_utils import VideoProcessorMixin

    for cls in (VideoProcessorMixin, Qwen3VLVideoProcessor):
        setattr(transformers, cls.__name__, cls)


def tiny_processor():
    """A Qwen3VLProcessor around the tiny Qwen tokenizer with Qwen3-VL's vision tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    _register_video_processor()
    tokenizer = build_tiny_qwen_tokenizer()
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil(patch_size=16, merge_size=2),
                            tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                            chat_template=QWEN3_VL_STYLE_CHAT_TEMPLATE)


def tiny_text_encoder(processor, seed: int = 1):
    """A Qwen3VLForConditionalGeneration with a 2-layer language model and a 1-block vision tower."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rms_norm_eps=1e-6, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                           patch_size=16, deepstack_visual_indexes=[0], num_position_embeddings=64),
        **{f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in
           zip(("vision_start", "vision_end", "image", "video"), VISION_TOKENS)})
    model = Qwen3VLForConditionalGeneration(config).eval()
    randomize_language_model(model)
    return model


def tiny_transformer(seed: int = 0, **overrides):
    from diffusers import QwenImage21Transformer2DModel

    torch.manual_seed(seed)
    config = dict(patch_size=1, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=2,
                  attention_head_dim=HEAD_DIM, num_attention_heads=2, context_in_dim=TEXT_HIDDEN, mlp_ratio=3,
                  axes_dims_rope=(8, 12, 12))
    model = QwenImage21Transformer2DModel(**{**config, **overrides}).eval()
    randomize(model, 0.08, seed, zero_centered="text_norm")  # txt_in.text_norm stores scale - 1
    return model


def tiny_vae(seed: int = 2, **overrides):
    """AutoencoderKLQwenImage21 at toy widths: four 2x upsamplings (16x, as the pipeline assumes), RGBA out."""
    from diffusers import AutoencoderKLQwenImage21

    torch.manual_seed(seed)
    config = dict(base_dim=8, decoder_base_dim=12, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2, 2, 2], num_res_blocks=1,
                  temperal_downsample=[False, True, True, True], in_channels=4, out_channels=4,
                  latents_mean=[0.1 * i - 0.8 for i in range(LATENT_CHANNELS)],
                  latents_std=[1.0 + 0.1 * i for i in range(LATENT_CHANNELS)])
    vae = AutoencoderKLQwenImage21(**{**config, **overrides}).eval()
    randomize(vae, 0.1, seed)  # most pixels inside the decoder's [-1, 1] clamp
    return vae


def build_tiny_qwen_image21(folder: Path, seed: int = 0, turbo: bool = False):
    """Save a tiny QwenImage21Pipeline to `folder` and return the diffusers pipeline (float32, CPU).

    turbo: write a sampling grid into model_index.json (`sample_sigmas`), as the Turbo checkpoint does.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline

    processor = tiny_processor()
    pipe = QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                               vae=tiny_vae(seed + 2), text_encoder=tiny_text_encoder(processor, seed + 1),
                               processor=processor, transformer=tiny_transformer(seed),
                               sample_sigmas=TURBO_SIGMAS if turbo else None)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def fuse_gate_up_like_comfyui(folder: Path) -> None:
    """Rewrite transformer/ in ComfyUI's single-file key layout: `model.diffusion_model.` in front of every key
    and each block's SwiGLU gate and up projections fused into one `img_mlp.gate_up` (gate rows first)."""
    from safetensors.torch import load_file, save_file

    for path in (folder / "transformer").glob("*.safetensors"):
        tensors = load_file(path)
        fused = {}
        for key, value in tensors.items():
            if key.endswith("img_mlp.proj.weight"):
                continue
            if key.endswith("img_mlp.gate_layer.weight"):
                up = tensors[key.replace("gate_layer", "proj")]
                key, value = key.replace("gate_layer", "gate_up"), torch.cat([value, up])
            fused["model.diffusion_model." + key] = value
        save_file(fused, path, metadata={"format": "pt"})


def read_model_index(folder: Path) -> dict:
    return json.loads((folder / "model_index.json").read_text())
