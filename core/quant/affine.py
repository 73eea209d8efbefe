"""The arithmetic every affine method shares: groups, codes, least-squares fits, errors, the packed result.

Weights are handled as groups: a (out, in) weight becomes (out * in / g, g), one row per group. A
group's quantization is w ~ scale * code + bias with code an integer in [0, 2^bits - 1]; scales and
biases are stored in bfloat16, so every candidate is judged with its scale and bias rounded to
bfloat16 and its codes recomputed from them, exactly as the stored layer will compute.
"""

from __future__ import annotations

import mlx.core as mx

from .cost import SCALE_DTYPE
from .methods import QuantizedWeight
from .packing import pack, unpack


class Groups:
    """A weight as float32 groups, with the shape to go back to."""

    def __init__(self, weight: mx.array, group_size: int):
        self.shape = weight.shape
        self.values = weight.astype(mx.float32).reshape(-1, group_size)

    def rows(self, per_group: mx.array) -> mx.array:
        """A (groups,) or (groups, 1) array as (out, in / g): the layout of scales and biases."""
        return per_group.reshape(self.shape[0], -1)


def stored(x: mx.array) -> mx.array:
    """As MLX stores scales and biases: rounded to bfloat16, computed on in float32."""
    return x.astype(SCALE_DTYPE).astype(mx.float32)


def codes_for(w: mx.array, scale: mx.array, bias: mx.array, bits: int) -> mx.array:
    """The nearest codes for `w` (groups, g) given per-group (groups, 1) scale and bias, as float32."""
    safe = mx.where(scale == 0, 1.0, scale)
    codes = mx.clip(mx.round((w - bias) / safe), 0, (1 << bits) - 1)
    return mx.where(scale == 0, 0.0, codes)


def squared_error(w: mx.array, codes: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    """Per group (groups, 1): the sum of squared reconstruction errors."""
    return mx.sum(mx.square(w - (scale * codes + bias)), axis=-1, keepdims=True)


def least_squares(w: mx.array, codes: mx.array, scale: mx.array) -> tuple[mx.array, mx.array]:
    """The (scale, bias) minimising sum (w - scale * code - bias)^2 per group for fixed codes. A group whose
    codes are all equal has no slope to fit: it keeps `scale` and takes its mean as the bias."""
    n = w.shape[-1]
    sum_c = mx.sum(codes, axis=-1, keepdims=True)
    sum_w = mx.sum(w, axis=-1, keepdims=True)
    sum_cc = mx.sum(codes * codes, axis=-1, keepdims=True)
    sum_cw = mx.sum(codes * w, axis=-1, keepdims=True)
    det = n * sum_cc - sum_c * sum_c
    flat = det <= 1e-12 * n * n
    fitted = (n * sum_cw - sum_c * sum_w) / mx.where(flat, 1.0, det)
    scale = mx.where(flat, scale, fitted)
    return scale, (sum_w - scale * sum_c) / n


def settle(w: mx.array, scale: mx.array, bias: mx.array, bits: int):
    """Round (scale, bias) to what is stored and recompute the codes: (codes, scale, bias, error)."""
    scale, bias = stored(scale), stored(bias)
    codes = codes_for(w, scale, bias, bits)
    return codes, scale, bias, squared_error(w, codes, scale, bias)


def round_to_nearest(groups: Groups, bits: int) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """MLX's own round-to-nearest as (codes, scale, bias, error) per group: the start every method improves on,
    and the answer it falls back to for any group it cannot improve."""
    group_size = groups.values.shape[-1]
    packed, scales, biases = mx.quantize(groups.values.reshape(groups.shape).astype(SCALE_DTYPE),
                                         group_size=group_size, bits=bits, mode="affine")
    codes = unpack(packed, bits).reshape(-1, group_size).astype(mx.float32)
    scale = scales.astype(mx.float32).reshape(-1, 1)
    bias = biases.astype(mx.float32).reshape(-1, 1)
    return codes, scale, bias, squared_error(groups.values, codes, scale, bias)


def keep_better(best: tuple, candidate: tuple) -> tuple:
    """Per group, whichever of two (codes, scale, bias, error) has the smaller error (ties keep `best`)."""
    better = candidate[3] < best[3]
    return tuple(mx.where(better, new, old) for old, new in zip(best, candidate))


def packed_result(groups: Groups, bits: int, codes: mx.array, scale: mx.array, bias: mx.array) -> QuantizedWeight:
    out = groups.shape[0]
    return QuantizedWeight(pack(codes.astype(mx.uint32).reshape(out, -1), bits),
                           groups.rows(scale).astype(SCALE_DTYPE), groups.rows(bias).astype(SCALE_DTYPE))
