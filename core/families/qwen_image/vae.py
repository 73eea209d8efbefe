"""The Qwen-Image VAE decoder (diffusers' `AutoencoderKLQwenImage`, decoder half) in MLX, for one frame.

The VAE is Wan's causal 3-D convolutional video VAE; decoding a single frame reduces it to 2-D (the shared
pieces and why: core/blocks/wan_vae.py). Each up block's upsampler halves the channels.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ...blocks.wan_vae import VAE_RULES, Decoder, ResidualBlock, Upsampler, WanVAE, decoder_widths
from ...checkpoint import LoadReport
from ...component_loading import build_and_fill


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, upsample: bool):
        super().__init__()
        self.resnets = [ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
                        for i in range(num_resnets)]
        if upsample:
            self.upsamplers = [Upsampler(out_channels, out_channels // 2)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


def halving_up_blocks(widths: list[int], num_res_blocks: int) -> list[nn.Module]:
    """Each upsampler halves the channels, so the next block starts from half the width."""
    count = len(widths) - 1
    return [UpBlock(widths[i] if i == 0 else widths[i] // 2, widths[i + 1], num_res_blocks + 1,
                    upsample=i < count - 1) for i in range(count)]


class QwenImageVAE(WanVAE):
    def __init__(self, *, base_dim: int = 96, z_dim: int = 16, dim_mult: tuple[int, ...] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, temporal_downsample: tuple[bool, ...] = (False, True, True),
                 out_channels: int = 3, latents_mean: list[float] | None = None,
                 latents_std: list[float] | None = None):
        super().__init__(z_dim, latents_mean, latents_std)
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"{len(dim_mult)} resolutions need {len(dim_mult) - 1} temperal_downsample flags")
        # Pixels per latent pixel, as diffusers' pipeline computes it.
        self.scale_factor = 2 ** len(temporal_downsample)
        widths = decoder_widths(base_dim, list(dim_mult))
        self.decoder = Decoder(z_dim, widths, halving_up_blocks(widths, num_res_blocks), out_channels)

    @classmethod
    def from_config(cls, config: dict) -> "QwenImageVAE":
        return cls(base_dim=config.get("base_dim", 96), z_dim=config.get("z_dim", 16),
                   dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
                   num_res_blocks=config.get("num_res_blocks", 2),
                   temporal_downsample=tuple(config.get("temperal_downsample", (False, True, True))),
                   out_channels=config.get("input_channels", 3),
                   latents_mean=config.get("latents_mean"), latents_std=config.get("latents_std"))

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/8, W/8, z_dim) de-normalized latents -> (B, H, W, 3) image clamped to [-1, 1]."""
        return mx.clip(self.decoder(self.post_quant_conv(z)), -1.0, 1.0)


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[QwenImageVAE, LoadReport]:
    return build_and_fill(folder, QwenImageVAE.from_config, VAE_RULES, "vae", dtype)
