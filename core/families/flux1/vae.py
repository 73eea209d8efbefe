"""The FLUX.1 VAE decoder (diffusers' `AutoencoderKL`, decoder half) in MLX.

The decoder network is the shared AutoencoderKL's (core/blocks/autoencoder_kl.py); what FLUX.1 adds is
how latents enter it: the transformer works on latents scaled and shifted, z' = (z - shift) * scaling,
so decoding first undoes that, z = z' / scaling + shift (the shared ScaledAutoencoderKL). Activations are NHWC.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from ...blocks.autoencoder_kl import AUTOENCODER_KL_RULES, ScaledAutoencoderKL
from ...checkpoint import LoadReport
from ...component_loading import build_and_fill

Flux1VAE = ScaledAutoencoderKL


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[Flux1VAE, LoadReport]:
    return build_and_fill(folder, Flux1VAE.from_config, AUTOENCODER_KL_RULES, "vae", dtype)
