"""The FLUX.2 VAE (diffusers' `AutoencoderKLFlux2`) in MLX: the decoder, and the encoder for reference images.

Its decoder is AutoencoderKL's (core/blocks/autoencoder_kl.py). What FLUX.2 adds are batch-norm running
statistics: the transformer works on latents that are 2x2-patchified (4 * latent_channels channels) and
normalized by them; the pipeline de-normalizes and unpatchifies with `latent_stats()` before `decode`, and
patchifies and normalizes a reference image's latents with them after `load_vae_encoder(...).encode`.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ...blocks.autoencoder_kl import AUTOENCODER_KL_RULES, AutoencoderKL
from ...blocks.vae_encoder import VAE_ENCODER_RULES, VaeEncoder
from ...checkpoint import LoadReport, check_finite
from ...errors import CheckpointError
from ...component_loading import build_and_fill

VAE_RULES = AUTOENCODER_KL_RULES


class BatchNormStats(nn.Module):
    """The running statistics of diffusers' affine-free BatchNorm2d over packed latent channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))


class Flux2VAE(AutoencoderKL):
    def __init__(self, *, latent_channels: int = 32, batch_norm_eps: float = 1e-4,
                 patch_size: tuple[int, int] = (2, 2), **decoder):
        super().__init__(latent_channels=latent_channels, **decoder)
        self.batch_norm_eps = batch_norm_eps
        self.bn = BatchNormStats(math.prod(patch_size) * latent_channels)

    @classmethod
    def from_config(cls, config: dict) -> "Flux2VAE":
        return cls(**cls.decoder_options(config, latent_channels=32),
                   batch_norm_eps=config.get("batch_norm_eps", 1e-4), patch_size=tuple(config.get("patch_size", (2, 2))))

    def latent_stats(self) -> tuple[mx.array, mx.array]:
        """Per packed channel (mean, std) that normalize the transformer's latents."""
        return self.bn.running_mean, mx.sqrt(self.bn.running_var + self.batch_norm_eps)


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[Flux2VAE, LoadReport]:
    return build_and_fill(folder, Flux2VAE.from_config, VAE_RULES, "vae", dtype)


def load_vae_encoder(folder: Path | str, dtype: mx.Dtype = mx.float32) -> VaeEncoder:
    """The VAE's encoder (loaded apart from the decoder: only a run with reference images needs it); a VAE saved
    without its encoder is one line."""
    try:
        encoder, _ = build_and_fill(folder, lambda config: VaeEncoder.from_config(config, 32, use_quant_conv=True),
                                    VAE_ENCODER_RULES, "vae encoder", dtype)
    except CheckpointError as exc:
        if "weights missing" in str(exc) and "encoder." in str(exc):
            raise CheckpointError(f"{folder}: the VAE has no encoder weights, which a reference image (--image) "
                                  "needs") from None
        raise
    mx.eval(encoder.parameters())  # read at once (34M parameters at FLUX.2's size), not again at every use
    check_finite(encoder, folder)
    return encoder
