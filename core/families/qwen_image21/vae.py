"""The Qwen-Image 2.1 VAE decoder (diffusers' `AutoencoderKLQwenImage21`, decoder half) in MLX, one frame.

Wan 2.2's residual video VAE, specialised to images: its "causal 3-D" convolutions are stored as 2-D
ones, and on a single frame the temporal upsampling (`time_conv`) never runs (core/blocks/wan_vae.py). 64 latent channels, four
2x upsamplings (16x), RGBA out (4 channels). What differs from Qwen-Image's VAE:
- every up block is residual: besides its resnets and upsampler (a nearest 2x and a 3x3 convolution
  that keeps the channels), a parameter-free shortcut ("DupUp3D") spreads the block's input channels
  over the 2x2 (x2 in time) sub-pixels it upsamples to; on the first frame only the last time slot is kept;
- the decoder has its own base width (`decoder_base_dim`);
- with `patch_size`, the decoder's channels are unfolded into patch_size x patch_size pixels at the end.
Activations are NHWC. Parameter names equal the diffusers keys.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.wan_vae import VAE_RULES, Decoder, ResidualBlock, Upsampler, WanVAE, decoder_widths
from ...checkpoint import LoadReport
from ...component_loading import build_and_fill


def duplicate_up_indices(in_channels: int, out_channels: int, temporal: bool) -> np.ndarray:
    """Input channel read by each (output channel, row offset, column offset) of the DupUp shortcut.

    The reference repeats every input channel `repeats` times and reads the result as (out, time, 2, 2);
    on the first frame it keeps the last time slot.
    """
    factor_t = 2 if temporal else 1
    repeats = out_channels * factor_t * 4 // in_channels
    c, i, j = np.meshgrid(np.arange(out_channels), np.arange(2), np.arange(2), indexing="ij")
    return (((c * factor_t + factor_t - 1) * 2 + i) * 2 + j) // repeats


class DuplicateUp(nn.Module):
    """`avg_shortcut`: (B, H, W, C_in) -> (B, 2H, 2W, C_out), no parameters."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool):
        super().__init__()
        if (out_channels * (2 if temporal else 1) * 4) % in_channels:
            raise ValueError(f"an up block from {in_channels} to {out_channels} channels cannot duplicate evenly")
        self.out_channels = out_channels
        self._indices = mx.array(duplicate_up_indices(in_channels, out_channels, temporal).reshape(-1))

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, _ = x.shape
        z = mx.take(x, self._indices, axis=-1).reshape(b, h, w, self.out_channels, 2, 2)
        return z.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, self.out_channels)


class ResidualUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, upsample: bool, temporal: bool):
        super().__init__()
        self.resnets = [ResidualBlock(in_channels if i == 0 else out_channels, out_channels)
                        for i in range(num_resnets)]
        if upsample:
            self.upsampler = Upsampler(out_channels, out_channels)  # keeps the channels
            self.avg_shortcut = DuplicateUp(in_channels, out_channels, temporal)

    def __call__(self, x: mx.array) -> mx.array:
        h = x
        for resnet in self.resnets:
            h = resnet(h)
        if "upsampler" not in self:
            return h
        return self.upsampler(h) + self.avg_shortcut(x)


def residual_up_blocks(widths: list[int], num_res_blocks: int, temporal_upsample: list[bool]) -> list[nn.Module]:
    """Every block but the last upsamples (2x, its temporal flag deciding the shortcut's layout)."""
    last = len(widths) - 2
    return [ResidualUpBlock(widths[i], widths[i + 1], num_res_blocks + 1, upsample=i < last,
                            temporal=i < last and temporal_upsample[i]) for i in range(last + 1)]


class QwenImage21VAE(WanVAE):
    def __init__(self, *, base_dim: int = 96, decoder_base_dim: int | None = 144, z_dim: int = 64,
                 dim_mult: tuple[int, ...] = (1, 2, 4, 8, 8), num_res_blocks: int = 2,
                 temporal_downsample: tuple[bool, ...] = (False, True, True, True), out_channels: int = 4,
                 patch_size: int | None = None, latents_mean: list[float] | None = None,
                 latents_std: list[float] | None = None):
        super().__init__(z_dim, latents_mean, latents_std)
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"{len(dim_mult)} resolutions need {len(dim_mult) - 1} temperal_downsample flags")
        self.patch_size = patch_size or 1
        # Pixels per latent pixel: the decoder's upsamplings, then the patch unfolding.
        self.scale_factor = 2 ** (len(dim_mult) - 1) * self.patch_size
        if out_channels % self.patch_size ** 2:
            raise ValueError(f"{out_channels} output channels do not fold into {self.patch_size}x{self.patch_size} "
                             "patches")
        widths = decoder_widths(decoder_base_dim or base_dim, list(dim_mult))
        self.decoder = Decoder(z_dim, widths, residual_up_blocks(widths, num_res_blocks,
                                                                 list(reversed(temporal_downsample))), out_channels)

    @classmethod
    def from_config(cls, config: dict) -> "QwenImage21VAE":
        if not config.get("is_residual", True):
            raise ValueError("is_residual false is Qwen-Image's VAE layout, not Qwen-Image 2.1's")
        return cls(base_dim=config.get("base_dim", 96), decoder_base_dim=config.get("decoder_base_dim", 144),
                   z_dim=config.get("z_dim", 64), dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 8, 8))),
                   num_res_blocks=config.get("num_res_blocks", 2),
                   temporal_downsample=tuple(config.get("temperal_downsample", (False, True, True, True))),
                   out_channels=config.get("out_channels", 4), patch_size=config.get("patch_size"),
                   latents_mean=config.get("latents_mean"), latents_std=config.get("latents_std"))

    @property
    def channels(self) -> int:
        """Channels of a decoded pixel (4: RGBA)."""
        return self.decoder.conv_out.weight.shape[0] // self.patch_size ** 2

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/16, W/16, z_dim) de-normalized latents -> (B, H, W, 4) image clamped to [-1, 1]."""
        return mx.clip(self._unpatchify(self.decoder(self.post_quant_conv(z))), -1.0, 1.0)

    def _unpatchify(self, x: mx.array) -> mx.array:
        """diffusers' channel order: (c, column offset, row offset)."""
        p = self.patch_size
        if p == 1:
            return x
        b, h, w, c = x.shape
        x = x.reshape(b, h, w, c // (p * p), p, p).transpose(0, 1, 5, 2, 4, 3)
        return x.reshape(b, h * p, w * p, c // (p * p))


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[QwenImage21VAE, LoadReport]:
    return build_and_fill(folder, QwenImage21VAE.from_config, VAE_RULES, "vae", dtype)
