"""The pieces of Wan's causal 3-D video VAE that decode one frame as 2-D (Qwen-Image, Qwen-Image 2.1).

On a single frame a causal 3-D convolution sees only the last temporal slice of its kernel (the two frames
padded before the input are zeros), so it is a 2-D convolution with that slice; temporal upsampling
(`time_conv`) runs only from the second chunk on, so never here; the norms are RMS norms over channels per
pixel. Activations are NHWC; parameter names equal the diffusers keys and the weights are sliced on loading
(`VAE_RULES`).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..checkpoint import Rule
from .attention import scaled_dot_product_attention
from .autoencoder_kl import conv3x3, upsample_nearest_2x
from .fast_math import silu
from .vae_ops import Conv2d


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
            self.conv_shortcut = Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        return (self.conv_shortcut(x) if "conv_shortcut" in self else x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1 convolutions for QKV and output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels)
        self.to_qkv = Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = Conv2d(channels, channels, kernel_size=1)

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
    """`upsamplers.0` / `upsampler`: nearest 2x then a 3x3 convolution (`resample.1`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.resample = [NearestUpsample(), conv3x3(in_channels, out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.resample[1](self.resample[0](x))


def decoder_widths(base_dim: int, dim_mult: list[int]) -> list[int]:
    """Channels entering the mid block, then leaving each up block (coarsest first)."""
    return [base_dim * m for m in [dim_mult[-1], *reversed(dim_mult)]]


class Decoder(nn.Module):
    """conv_in, the mid block, the family's up blocks, then RMS norm, SiLU and conv_out."""

    def __init__(self, z_dim: int, widths: list[int], up_blocks: list[nn.Module], out_channels: int):
        super().__init__()
        self.conv_in = conv3x3(z_dim, widths[0])
        self.mid_block = MidBlock(widths[0])
        self.up_blocks = up_blocks
        self.norm_out = RMSNorm(widths[-1])
        self.conv_out = conv3x3(widths[-1], out_channels)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.norm_out(x)))


class WanVAE(nn.Module):
    """What every one-frame Wan VAE holds besides its decoder: the 1x1 `post_quant_conv` and the per-channel
    latent statistics of its config (NumPy, so they are not parameters to load)."""

    def __init__(self, z_dim: int, latents_mean: list[float] | None, latents_std: list[float] | None):
        super().__init__()
        self.z_dim = z_dim
        self.latents_mean = np.asarray(latents_mean if latents_mean is not None else [0.0] * z_dim, np.float32)
        self.latents_std = np.asarray(latents_std if latents_std is not None else [1.0] * z_dim, np.float32)
        if self.latents_mean.shape != (z_dim,) or self.latents_std.shape != (z_dim,):
            raise ValueError(f"latents_mean and latents_std need {z_dim} values each")
        self.post_quant_conv = Conv2d(z_dim, z_dim, kernel_size=1)

    def denormalize(self, z: mx.array) -> mx.array:
        """The transformer's normalized latents (..., z_dim) -> the decoder's."""
        return z * mx.array(self.latents_std).astype(z.dtype) + mx.array(self.latents_mean).astype(z.dtype)


def single_frame_conv(w: mx.array) -> mx.array:
    """A causal Conv3d weight (out, in, t, kh, kw) -> the Conv2d weight (out, kh, kw, in) that sees the one
    real frame (the last temporal tap); Conv2d weights (out, in, kh, kw) are only transposed."""
    if w.ndim == 5:
        w = w[:, :, -1]
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


# Decoder keys of a Wan-style VAE checkpoint: the encoder and the temporal upsamplers are never used.
VAE_RULES = [
    Rule(r"(?:encoder|quant_conv)\..*", None, reason="encoder: not needed for text-to-image"),
    Rule(r"decoder\..*\.time_conv\..*", None, reason="temporal upsampling: never used on a single frame"),
    Rule(r"(.*\.gamma)", r"\1", transform=lambda w: w.reshape(-1)),
    Rule(r"(.*\.weight)", r"\1", transform=single_frame_conv),
    Rule(r"(.*)", r"\1"),
]
