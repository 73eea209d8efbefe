"""The GELU (tanh) MLP of FLUX.1's and Qwen-Image's blocks, with diffusers' `net.0.proj` / `net.2` keys."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .fast_math import gelu_approx


class GeluProjection(nn.Module):
    """`net.0`: the MLP's input Linear (`proj`) followed by tanh-approximated GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def __call__(self, x: mx.array) -> mx.array:
        return gelu_approx(self.proj(x))


class GeluFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # net.1 is a dropout in diffusers; the placeholder keeps the output Linear at `net.2`.
        self.net = [GeluProjection(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[2](self.net[0](x))
