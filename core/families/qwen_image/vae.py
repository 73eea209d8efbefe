"""The Qwen-Image VAE decoder (diffusers' `AutoencoderKLQwenImage`, decoder half) in MLX, for one frame.

The VAE is Wan's causal 3-D convolutional video VAE. Decoding a single frame reduces it to 2-D:
- a causal 3-D convolution pads two zero frames before the input, so on one frame only the last
  temporal slice of its kernel sees data: it is a 2-D convolution with that slice;
- the "upsample3d" blocks double the frame count with `time_conv` only from the second chunk on,
  so on the first (only) frame they upsample space alone and `time_conv` is never used;
- the norms are RMS norms over channels per pixel (no statistics across space or time).
Activations are NHWC. Parameter names equal the diffusers keys; the weights are sliced on loading.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import scaled_dot_product_attention
from ...blocks.autoencoder_kl import conv3x3, upsample_nearest_2x
from ...checkpoint import LoadReport, Rule
from ...component_loading import build_and_fill


class RMSNorm(nn.Module):
    """x / ||x|| over channels, times sqrt(channels) and a per-channel gain (`gamma`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = mx.ones((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        norm = mx.sqrt(mx.maximum(mx.sum(x32 * x32, axis=-1, keepdims=True), 1e-24))  # F.normalize's eps 1e-12
        return (x32 / norm * (x.shape[-1] ** 0.5)).astype(x.dtype) * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if "conv_shortcut" in self else x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1 convolutions for QKV and output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        q, k, v = mx.split(self.to_qkv(self.norm(x)).reshape(b, 1, h * w, 3 * c), 3, axis=-1)
        out = scaled_dot_product_attention(q, k, v, scale=c ** -0.5)
        return x + self.proj(out.reshape(b, h, w, c))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.resnets = [ResidualBlock(channels, channels), ResidualBlock(channels, channels)]
        self.attentions = [AttentionBlock(channels)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class NearestUpsample(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return upsample_nearest_2x(x)


class Upsampler(nn.Module):
    """`upsamplers.0`: nearest 2x then a 3x3 convolution that halves the channels (`resample.1`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.resample = [NearestUpsample(), conv3x3(channels, channels // 2)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.resample[1](self.resample[0](x))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, upsample: bool):
        super().__init__()
        self.resnets = [ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
                        for i in range(num_resnets)]
        if upsample:
            self.upsamplers = [Upsampler(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


class Decoder(nn.Module):
    def __init__(self, base_dim: int, z_dim: int, dim_mult: list[int], num_res_blocks: int, out_channels: int):
        super().__init__()
        dims = [base_dim * m for m in [dim_mult[-1], *reversed(dim_mult)]]
        self.conv_in = conv3x3(z_dim, dims[0])
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = []
        for i in range(len(dim_mult)):
            # Each upsampler halves the channels, so the next block starts from half the width.
            in_channels = dims[i] if i == 0 else dims[i] // 2
            self.up_blocks.append(UpBlock(in_channels, dims[i + 1], num_res_blocks + 1, upsample=i < len(dim_mult) - 1))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = conv3x3(dims[-1], out_channels)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class QwenImageVAE(nn.Module):
    def __init__(self, *, base_dim: int = 96, z_dim: int = 16, dim_mult: tuple[int, ...] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, temporal_downsample: tuple[bool, ...] = (False, True, True),
                 out_channels: int = 3, latents_mean: list[float] | None = None,
                 latents_std: list[float] | None = None):
        super().__init__()
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"{len(dim_mult)} resolutions need {len(dim_mult) - 1} temperal_downsample flags")
        self.z_dim = z_dim
        # Pixels per latent pixel, as diffusers' pipeline computes it.
        self.scale_factor = 2 ** len(temporal_downsample)
        # Per-channel statistics from the config (NumPy, so they are not parameters to load).
        self.latents_mean = np.asarray(latents_mean if latents_mean is not None else [0.0] * z_dim, np.float32)
        self.latents_std = np.asarray(latents_std if latents_std is not None else [1.0] * z_dim, np.float32)
        if self.latents_mean.shape != (z_dim,) or self.latents_std.shape != (z_dim,):
            raise ValueError(f"latents_mean and latents_std need {z_dim} values each")
        self.post_quant_conv = nn.Conv2d(z_dim, z_dim, kernel_size=1)
        self.decoder = Decoder(base_dim, z_dim, list(dim_mult), num_res_blocks, out_channels)

    @classmethod
    def from_config(cls, config: dict) -> "QwenImageVAE":
        return cls(base_dim=config.get("base_dim", 96), z_dim=config.get("z_dim", 16),
                   dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
                   num_res_blocks=config.get("num_res_blocks", 2),
                   temporal_downsample=tuple(config.get("temperal_downsample", (False, True, True))),
                   out_channels=config.get("input_channels", 3),
                   latents_mean=config.get("latents_mean"), latents_std=config.get("latents_std"))

    def denormalize(self, z: mx.array) -> mx.array:
        """The transformer's normalized latents (..., z_dim) -> the decoder's."""
        return z * mx.array(self.latents_std).astype(z.dtype) + mx.array(self.latents_mean).astype(z.dtype)

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/8, W/8, z_dim) de-normalized latents -> (B, H, W, 3) image clamped to [-1, 1]."""
        return mx.clip(self.decoder(self.post_quant_conv(z)), -1.0, 1.0)


def single_frame_conv(w: mx.array) -> mx.array:
    """A causal Conv3d weight (out, in, t, kh, kw) -> the Conv2d weight (out, kh, kw, in) that sees the one
    real frame (the last temporal tap); Conv2d weights (out, in, kh, kw) are only transposed."""
    if w.ndim == 5:
        w = w[:, :, -1]
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


VAE_RULES = [
    Rule(r"(?:encoder|quant_conv)\..*", None, reason="encoder: not needed for text-to-image"),
    Rule(r"decoder\..*\.time_conv\..*", None, reason="temporal upsampling: never used on a single frame"),
    Rule(r"(.*\.gamma)", r"\1", transform=lambda w: w.reshape(-1)),
    Rule(r"(.*\.weight)", r"\1", transform=single_frame_conv),
    Rule(r"(.*)", r"\1"),
]


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[QwenImageVAE, LoadReport]:
    return build_and_fill(folder, QwenImageVAE.from_config, VAE_RULES, "vae", dtype)
