"""The FLUX.1 VAE decoder (diffusers' `AutoencoderKL`, decoder half) in MLX.

The decoder network is the shared AutoencoderKL's (core/blocks/autoencoder_kl.py); what FLUX.1 adds is
how latents enter it: the transformer works on latents scaled and shifted, z' = (z - shift) * scaling,
so decoding first undoes that, z = z' / scaling + shift. Activations are NHWC.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from ...blocks.autoencoder_kl import AUTOENCODER_KL_RULES, AutoencoderKL
from ...checkpoint import LoadReport
from ...component_loading import build_and_fill


class Flux1VAE(AutoencoderKL):
    def __init__(self, *, latent_channels: int = 16, use_post_quant_conv: bool = False,
                 scaling_factor: float = 0.3611, shift_factor: float = 0.1159, **decoder):
        super().__init__(latent_channels=latent_channels, use_post_quant_conv=use_post_quant_conv, **decoder)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor

    @classmethod
    def from_config(cls, config: dict) -> "Flux1VAE":
        return cls(**cls.decoder_options(config, latent_channels=16),
                   scaling_factor=float(config.get("scaling_factor", 0.3611)),
                   shift_factor=float(config.get("shift_factor") or 0.0))

    def denormalize(self, z: mx.array) -> mx.array:
        """The transformer's latents -> the decoder's: undo the scaling and shift."""
        return z / self.scaling_factor + self.shift_factor


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[Flux1VAE, LoadReport]:
    return build_and_fill(folder, Flux1VAE.from_config, AUTOENCODER_KL_RULES, "vae", dtype)
