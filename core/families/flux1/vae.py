"""The FLUX.1 VAE decoder (diffusers' `AutoencoderKL`, decoder half) in MLX.

The decoder network is the one FLUX.2's VAE uses (core/flux2/vae.py); what FLUX.1 adds is how
latents enter it: the transformer works on latents scaled and shifted, z' = (z - shift) * scaling,
so decoding first undoes that, z = z' / scaling + shift. Activations are NHWC.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import LoadReport, load_weights, open_component
from ..errors import CheckpointError
from ..flux2.vae import VAE_RULES, Decoder

ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "mish": nn.mish}


class Flux1VAE(nn.Module):
    def __init__(self, *, latent_channels: int = 16, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (128, 256, 512, 512), num_up_blocks: int = 4,
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 use_post_quant_conv: bool = False, mid_block_add_attention: bool = True,
                 scaling_factor: float = 0.3611, shift_factor: float = 0.1159):
        super().__init__()
        self.latent_channels = latent_channels
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor
        # Pixels per latent pixel, as diffusers' pipelines compute it.
        self.scale_factor = 2 ** (len(block_out_channels) - 1)
        self.decoder = Decoder(latent_channels, out_channels, list(block_out_channels), num_up_blocks,
                               layers_per_block, norm_num_groups, ACTIVATIONS[act_fn], mid_block_add_attention)
        if use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, kernel_size=1)

    @classmethod
    def from_config(cls, config: dict) -> "Flux1VAE":
        up_block_types = config.get("up_block_types", ["UpDecoderBlock2D"] * 4)
        unsupported = sorted(set(up_block_types) - {"UpDecoderBlock2D"})
        if unsupported:
            raise CheckpointError(f"VAE config: unsupported up_block_types {unsupported}")
        act_fn = config.get("act_fn", "silu")
        if act_fn not in ACTIVATIONS:
            raise CheckpointError(f"VAE config: unsupported act_fn {act_fn!r}")
        return cls(
            latent_channels=config.get("latent_channels", 16),
            out_channels=config.get("out_channels", 3),
            block_out_channels=tuple(config.get("block_out_channels", (128, 256, 512, 512))),
            num_up_blocks=len(up_block_types),
            layers_per_block=config.get("layers_per_block", 2),
            norm_num_groups=config.get("norm_num_groups", 32),
            act_fn=act_fn,
            use_post_quant_conv=config.get("use_post_quant_conv", True),
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            scaling_factor=float(config.get("scaling_factor", 0.3611)),
            shift_factor=float(config.get("shift_factor") or 0.0),
        )

    def denormalize(self, z: mx.array) -> mx.array:
        """The transformer's latents -> the decoder's: undo the scaling and shift."""
        return z / self.scaling_factor + self.shift_factor

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/8, W/8, latent_channels) de-normalized latent -> (B, H, W, 3) image in about [-1, 1]."""
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[Flux1VAE, LoadReport]:
    component = open_component(folder)
    try:
        vae = Flux1VAE.from_config(component.config)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. channels not divisible by norm_num_groups
        raise CheckpointError(f"{component.folder}: config.json does not describe a valid VAE ({exc})") from None
    return vae, load_weights(vae, component, VAE_RULES, "vae", dtype=dtype)
