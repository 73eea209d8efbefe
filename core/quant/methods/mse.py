"""MSE clipping search (data-free): per group, the scale and bias with the least squared weight error.

Round-to-nearest spans each group from its min to its max, so one outlier widens every step of the
grid. Here each group tries narrower ranges (the grid shrunk about its centre by each factor in
SHRINK: outliers clip, every other weight gets a finer step), keeps the one with the least squared
error, then refines it by alternating least squares: the best scale and bias for the current codes
(a closed form), the nearest codes for that scale and bias, for REFINE rounds. Every candidate is
judged as stored (bfloat16 scale and bias), and a group keeps round-to-nearest's answer unless a
candidate is strictly better, so the error is never above round-to-nearest's.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..affine import Groups, codes_for, keep_better, least_squares, packed_result, round_to_nearest, settle, \
    squared_error, stored
from . import LayerStats, Method, QuantizedWeight

SHRINK = tuple(np.linspace(1.0, 0.5, 26)[1:])  # 0.98 ... 0.5 of the min-max range
REFINE = 3


def quantize(weight: mx.array, bits: int, group_size: int, stats: LayerStats | None = None) -> QuantizedWeight:
    groups = Groups(weight, group_size)
    w = groups.values
    best = round_to_nearest(groups, bits)
    low = mx.min(w, axis=-1, keepdims=True)
    high = mx.max(w, axis=-1, keepdims=True)
    centre, span = (low + high) / 2, high - low
    levels = (1 << bits) - 1
    for factor in SHRINK:
        scale = stored(span * factor / levels)
        bias = stored(centre - scale * levels / 2)
        codes = codes_for(w, scale, bias, bits)
        best = keep_better(best, (codes, scale, bias, squared_error(w, codes, scale, bias)))
    for _ in range(REFINE):
        codes, scale = best[0], best[1]
        best = keep_better(best, settle(w, *least_squares(w, codes, scale), bits))
    return packed_result(groups, bits, *best[:3])


METHOD = Method("mse", "per group, the clipping range and then the scale and bias with the least squared weight "
                       "error (data-free)", quantize)
