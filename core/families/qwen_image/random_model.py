"""Random-weight Qwen-Image models in the layout of Qwen/Qwen-Image, written by our own engine.

Every file the released folder has, at its shapes (optionally narrowed with `width_scale`; depth and head sizes
stay): the QwenImageTransformer2DModel; Qwen2.5-VL-7B whole (its language model with the real 152,064-token
embedding and LM head, and its vision tower, which text-to-image never runs but transformers loads with it), in
the flat config and `model.*` / `visual.*` keys of the released files; the whole AutoencoderKLQwenImage (the
causal 3-D convolutions as stored, the encoder half, the temporal convolutions); a Qwen2 tokenizer; and the
scheduler config. So quantbench and diffusers load it as they load the real one. Qwen-Image has no distilled
model: the folder is always the base model (50 steps, true CFG). The pictures are noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlx.core as mx

from ...atomic import staged_folder
from ...errors import InvalidRequest
from ...random_weights import module_weights, write_component, write_index, write_tokenizer
from .text_encoder import build_qwen_text_encoder
from .transformer import QwenImageTransformer

HEAD_DIM = 128  # the transformer's and the language model's (Qwen2 derives it: hidden_size / heads)


@dataclass(frozen=True)
class QwenImageShape:
    """The numbers that size Qwen-Image (the released configs' values by default)."""

    heads: int = 24
    layers: int = 60
    text_heads: int = 28
    text_kv_heads: int = 4
    text_layers: int = 28
    text_intermediate: int = 18944
    vocab_size: int = 152064
    vision_heads: int = 16
    vision_head_dim: int = 80
    vision_depth: int = 32
    vision_intermediate: int = 3420
    vae_base: int = 96

    @property
    def text_hidden(self) -> int:
        return self.text_heads * HEAD_DIM


def narrowed_shape(shape: QwenImageShape, width_scale: float) -> QwenImageShape:
    """Every width times `width_scale` as a whole number of heads (the language model's width is its heads times
    128, as Qwen2 reads it), the rest to multiples of 64 (16 for the VAE); depth, head sizes and vocabulary stay."""
    if not 0 < width_scale <= 1:
        raise InvalidRequest(f"width scale {width_scale} is not allowed: use a number in (0, 1]")
    if width_scale == 1:
        return shape
    text_heads = max(2, round(shape.text_heads * width_scale))
    return replace(
        shape, heads=max(1, round(shape.heads * width_scale)), text_heads=text_heads,
        text_kv_heads=max(d for d in range(1, shape.text_kv_heads + 1) if text_heads % d == 0),
        text_intermediate=max(64, round(shape.text_intermediate * width_scale / 64) * 64),
        vision_heads=max(1, round(shape.vision_heads * width_scale)),
        vision_intermediate=max(64, round(shape.vision_intermediate * width_scale / 64) * 64),
        vae_base=max(16, round(shape.vae_base * width_scale / 16) * 16))


def component_configs(shape: QwenImageShape) -> dict[str, dict]:
    vision_hidden = shape.vision_heads * shape.vision_head_dim
    return {
        "transformer": {
            "_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64, "out_channels": 16,
            "num_layers": shape.layers, "attention_head_dim": HEAD_DIM, "num_attention_heads": shape.heads,
            "joint_attention_dim": shape.text_hidden, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]},
        # As released: the language model's settings at the top level, multimodal RoPE as rope_scaling.
        "text_encoder": {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "vocab_size": shape.vocab_size, "hidden_size": shape.text_hidden,
            "intermediate_size": shape.text_intermediate, "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.text_heads, "num_key_value_heads": shape.text_kv_heads,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 128000, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "sliding_window": 32768,
            "use_sliding_window": False, "max_window_layers": 28, "attention_dropout": 0.0,
            "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
            "image_token_id": 151655, "video_token_id": 151656, "torch_dtype": "bfloat16",
            "vision_config": {
                "depth": shape.vision_depth, "hidden_size": vision_hidden, "num_heads": shape.vision_heads,
                "intermediate_size": shape.vision_intermediate, "out_hidden_size": shape.text_hidden,
                "hidden_act": "silu", "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2}},
        "vae": {
            "_class_name": "AutoencoderKLQwenImage", "base_dim": shape.vae_base, "z_dim": 16,
            "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [], "dropout": 0.0,
            "temperal_downsample": [False, True, True], "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16},
    }


def write_random_qwen_image(out: Path | str, width_scale: float = 1.0, seed: int = 0, distilled: bool = False,
                            dtype: mx.Dtype = mx.bfloat16, max_shard_bytes: int = 2 << 30,
                            overwrite: bool = False) -> Path:
    """`random-model --arch qwen-image`, built in a temporary folder and renamed when complete. `distilled` is not
    read: Qwen-Image is released as a base model only."""
    shape = narrowed_shape(QwenImageShape(), width_scale)
    configs = component_configs(shape)
    mx.random.seed(seed)
    # Modules are built inline and not kept: a reference would hold every written value in memory.
    drawn = {
        "transformer": lambda: module_weights(QwenImageTransformer.from_config(configs["transformer"])),
        "text_encoder": lambda: _text_encoder_weights(configs["text_encoder"]),
        "vae": lambda: wan_vae_weights(configs["vae"]),
    }
    with staged_folder(Path(out), overwrite) as staging:
        for name, stem in (("transformer", "diffusion_pytorch_model"), ("text_encoder", "model"),
                           ("vae", "diffusion_pytorch_model")):
            write_component(staging / name, configs[name], drawn[name](), dtype, max_shard_bytes, stem)
        write_tokenizer(staging / "tokenizer", 512)
        index = {"_class_name": "QwenImagePipeline", "_diffusers_version": "0.42.1",
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
                 "tokenizer": ["transformers", "Qwen2Tokenizer"],
                 "transformer": ["diffusers", "QwenImageTransformer2DModel"],
                 "vae": ["diffusers", "AutoencoderKLQwenImage"]}
        # Qwen/Qwen-Image's scheduler/scheduler_config.json
        scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                     "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
                     "max_image_seq_len": 8192, "shift_terminal": 0.02, "time_shift_type": "exponential"}
        write_index(staging, index, scheduler, {"random_weights": "qwen-image", "width_scale": width_scale,
                                                "seed": seed, "architecture": asdict(shape)})
    return Path(out)


class _Drawn(dict):
    """Checkpoint key -> lazy uniform tensor in PyTorch's layout, drawn as PyTorch's default init bounds them."""

    def tensor(self, name: str, shape: tuple[int, ...], bias: bool = True) -> None:
        bound = math.prod(shape[1:]) ** -0.5
        self[f"{name}.weight"] = mx.random.uniform(-bound, bound, shape)
        if bias:
            self[f"{name}.bias"] = mx.random.uniform(-bound, bound, shape[:1])

    def gain(self, name: str, shape: tuple[int, ...]) -> None:
        self[name] = mx.ones(shape)


def _text_encoder_weights(config: dict) -> dict[str, mx.array]:
    """Qwen2.5-VL as released: the language model (`model.*`, our own module), its LM head and the vision tower."""
    weights = _Drawn(module_weights(build_qwen_text_encoder(config, None), "model."))
    weights.tensor("lm_head", (config["vocab_size"], config["hidden_size"]), bias=False)
    vision = config["vision_config"]
    width, inner = vision["hidden_size"], vision["intermediate_size"]
    merged = width * vision["spatial_merge_size"] ** 2
    weights.tensor("visual.patch_embed.proj", (width, vision["in_chans"], vision["temporal_patch_size"],
                                               vision["patch_size"], vision["patch_size"]), bias=False)
    for i in range(vision["depth"]):
        block = f"visual.blocks.{i}"
        weights.gain(f"{block}.norm1.weight", (width,))
        weights.gain(f"{block}.norm2.weight", (width,))
        weights.tensor(f"{block}.attn.qkv", (3 * width, width))
        weights.tensor(f"{block}.attn.proj", (width, width))
        weights.tensor(f"{block}.mlp.gate_proj", (inner, width))
        weights.tensor(f"{block}.mlp.up_proj", (inner, width))
        weights.tensor(f"{block}.mlp.down_proj", (width, inner))
    weights.gain("visual.merger.ln_q.weight", (width,))
    weights.tensor("visual.merger.mlp.0", (merged, merged))
    weights.tensor("visual.merger.mlp.2", (vision["out_hidden_size"], merged))
    return weights


def wan_vae_weights(config: dict) -> dict[str, mx.array]:
    """The whole AutoencoderKLQwenImage as diffusers names and stores it: causal 3-D convolutions (out, in, 3, k, k),
    RMS-norm gains (C, 1, 1, 1) (attention's (C, 1, 1)), 2-D convolutions in the resamplers and attention, the
    encoder half and the temporal convolutions the engine never runs. Lazy: each tensor is made when written."""
    base, z, mult = config["base_dim"], config["z_dim"], config["dim_mult"]
    blocks, temporal = config["num_res_blocks"], config["temperal_downsample"]
    weights = _Drawn()

    def conv3d(name: str, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3)) -> None:
        weights.tensor(name, (cout, cin, *kernel))

    def resnet(name: str, cin: int, cout: int) -> None:
        weights.gain(f"{name}.norm1.gamma", (cin, 1, 1, 1))
        conv3d(f"{name}.conv1", cin, cout)
        weights.gain(f"{name}.norm2.gamma", (cout, 1, 1, 1))
        conv3d(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv3d(f"{name}.conv_shortcut", cin, cout, (1, 1, 1))

    def mid(name: str, c: int) -> None:
        resnet(f"{name}.resnets.0", c, c)
        weights.gain(f"{name}.attentions.0.norm.gamma", (c, 1, 1))
        weights.tensor(f"{name}.attentions.0.to_qkv", (3 * c, c, 1, 1))
        weights.tensor(f"{name}.attentions.0.proj", (c, c, 1, 1))
        resnet(f"{name}.resnets.1", c, c)

    def head(name: str, cin: int, cout: int) -> None:
        weights.gain(f"{name}.norm_out.gamma", (cin, 1, 1, 1))
        conv3d(f"{name}.conv_out", cin, cout)

    dims = [base * m for m in [1, *mult]]
    conv3d("encoder.conv_in", 3, dims[0])
    layer = 0  # the encoder's down_blocks are one flat list: resnets, then a resampler between resolutions
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(blocks):
            resnet(f"encoder.down_blocks.{layer}", cin if j == 0 else cout, cout)
            layer += 1
        if i < len(mult) - 1:
            weights.tensor(f"encoder.down_blocks.{layer}.resample.1", (cout, cout, 3, 3))
            if temporal[i]:
                conv3d(f"encoder.down_blocks.{layer}.time_conv", cout, cout, (3, 1, 1))
            layer += 1
    mid("encoder.mid_block", dims[-1])
    head("encoder", dims[-1], 2 * z)
    conv3d("quant_conv", 2 * z, 2 * z, (1, 1, 1))
    conv3d("post_quant_conv", z, z, (1, 1, 1))

    dims = [base * m for m in [mult[-1], *reversed(mult)]]
    conv3d("decoder.conv_in", z, dims[0])
    mid("decoder.mid_block", dims[0])
    upsample = list(reversed(temporal))
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin if i == 0 else cin // 2  # each upsampler halves the channels
        for j in range(blocks + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(mult) - 1:
            weights.tensor(f"decoder.up_blocks.{i}.upsamplers.0.resample.1", (cout // 2, cout, 3, 3))
            if upsample[i]:
                conv3d(f"decoder.up_blocks.{i}.upsamplers.0.time_conv", cout, 2 * cout, (3, 1, 1))
    head("decoder", dims[-1], 3)
    return weights
