"""Adaptive layer norm: LayerNorm without affine parameters, shifted and scaled by the timestep embedding."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import elementwise_kernel


def layer_norm(x: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, None, None, eps)


@mx.compile
def modulate(x: mx.array, shift: mx.array, scale: mx.array) -> mx.array:
    """x * (1 + scale) + shift, compiled into one pass (bitwise the same numbers)."""
    return x * (1 + scale) + shift


def norm_modulate(x: mx.array, shift: mx.array, scale: mx.array, eps: float) -> mx.array:
    """modulate(layer_norm(x, eps), shift, scale). One modulation for the whole batch (D numbers each) is
    LayerNorm's own weight (1 + scale) and bias (shift): one pass fewer, bitwise the same numbers on the CPU. On
    the CPU, the C kernel's one pass on every core where it runs (elementwise_kernel.py; the same numbers to float32
    rounding)."""
    if (out := elementwise_kernel.norm_modulate(x, shift, scale, eps)) is not None:
        return out
    if shift.size == scale.size == x.shape[-1] and shift.dtype == scale.dtype == x.dtype:
        return mx.fast.layer_norm(x, (1 + scale).reshape(-1), shift.reshape(-1), eps)
    return modulate(layer_norm(x, eps), shift, scale)


@mx.compile
def gated_add(x: mx.array, gate: mx.array, update: mx.array) -> mx.array:
    """x + gate * update, a gated residual, compiled into one pass (bitwise the same numbers)."""
    return x + gate * update


class AdaNormOut(nn.Module):
    """`norm_out`: LayerNorm modulated by linear(silu(temb)), split as (scale, shift) in diffusers' keys."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, dim * 2, bias=bias)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        scale, shift = mx.split(self.linear(nn.silu(temb)), 2, axis=-1)
        return norm_modulate(x, shift[:, None, :], scale[:, None, :], self.eps)
