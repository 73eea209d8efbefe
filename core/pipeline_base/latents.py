"""Packed latent tokens as the families' transformers see them, unpacked for their VAEs."""

from __future__ import annotations

import mlx.core as mx


def unpack_latents(tokens: mx.array, h: int, w: int) -> mx.array:
    """(B, h*w, 4C) tokens of 2x2 patches -> (B, 2h, 2w, C) NHWC latents (diffusers' packing, channels last)."""
    b, _, c = tokens.shape
    z = tokens.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return z.reshape(b, 2 * h, 2 * w, c // 4)
