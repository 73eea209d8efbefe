"""Packed latent tokens as the families' transformers see them, unpacked for their VAEs; a run's first latents."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..errors import InvalidRequest
from ..generation import initial_noise


def unpack_latents(tokens: mx.array, h: int, w: int) -> mx.array:
    """(B, h*w, 4C) tokens of 2x2 patches -> (B, 2h, 2w, C) NHWC latents (diffusers' packing, channels last)."""
    b, _, c = tokens.shape
    z = tokens.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return z.reshape(b, 2 * h, 2 * w, c // 4)


def pack_latents(z: mx.array) -> mx.array:
    """(B, 2h, 2w, C) NHWC latents -> (B, h*w, 4C) tokens of 2x2 patches: the inverse of unpack_latents."""
    b, height, width, c = z.shape
    h, w = height // 2, width // 2
    tokens = z.reshape(b, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return tokens.reshape(b, h * w, 4 * c)


def initial_latents(seed: int, latents: np.ndarray | None, shape: tuple[int, ...], width: int,
                    height: int) -> np.ndarray:
    """The seed's noise, or the caller's exact `latents` in the layout the family's diffusers pipeline takes."""
    noise = initial_noise(seed, shape) if latents is None else np.asarray(latents, np.float32)
    if noise.shape != shape:
        raise InvalidRequest(f"latents must have shape {shape} for {width}x{height}, got {tuple(noise.shape)}")
    return noise
