"""The sinusoidal timestep embedding and the Linear-SiLU-Linear projection that follows it."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn


def timestep_sinusoid(t: mx.array, channels: int, max_period: float = 10000.0) -> mx.array:
    """Sinusoidal embedding of (already x1000) timesteps, in [cos, sin] order."""
    half = channels // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)
    args = t.astype(mx.float32)[:, None] * freqs[None, :]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear: diffusers' TimestepEmbedding (FLUX.1's pooled-text projection has the same
    layers and keys)."""

    def __init__(self, in_channels: int, dim: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))
