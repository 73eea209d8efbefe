"""Half-quadratic quantization, HQQ (Badri and Shaji, 2023): data-free, robust to outlier weights.

The aim is the scale and zero that minimise an lp norm (p < 1) of the weight error w - dequant(quant(w)):
such a norm counts a few large errors (outliers the grid cannot reach) far less than many small ones,
so the grid is placed for the bulk of the weights. Half-quadratic splitting adds an auxiliary error
e and alternates two easy problems, with the penalty beta growing by KAPPA each round:

1. e = shrink_p(w - w_r, beta): the proximal step of the lp norm (generalised soft thresholding:
   sign(x) * max(|x| - |x|^(p-1) / beta, 0));
2. (scale, bias) = the least-squares fit of w - e on the current codes (HQQ's zero, here MLX's bias;
   the scale is refitted with it);
3. codes = the nearest codes of w for that scale and bias.

It starts from round-to-nearest. Errors are measured in units of round-to-nearest's step, so the same
beta suits every layer whatever its weights' magnitude. Each group keeps the iterate with the least
squared error as stored (bfloat16 scale and bias), never worse than round-to-nearest's.
"""

from __future__ import annotations

import mlx.core as mx

from ..affine import Groups, codes_for, keep_better, least_squares, packed_result, round_to_nearest, settle
from . import LayerStats, Method, QuantizedWeight

P = 0.7
BETA = 1.0
KAPPA = 1.01
ROUNDS = 20


def shrink(x: mx.array, beta: float) -> mx.array:
    """The proximal operator of |x|^P with weight 1/beta (generalised soft thresholding)."""
    magnitude = mx.abs(x)
    threshold = mx.power(mx.maximum(magnitude, 1e-8), P - 1) / beta
    return mx.sign(x) * mx.maximum(magnitude - threshold, 0.0)


def quantize(weight: mx.array, bits: int, group_size: int, stats: LayerStats | None = None) -> QuantizedWeight:
    groups = Groups(weight, group_size)
    w = groups.values
    best = round_to_nearest(groups, bits)
    codes, scale, bias, _ = best
    unit = mx.where(scale == 0, 1.0, mx.abs(scale))  # round-to-nearest's step: errors in steps
    beta = BETA
    for _ in range(ROUNDS):
        error = shrink((w - (scale * codes + bias)) / unit, beta) * unit
        scale, bias = least_squares(w - error, codes, scale)
        codes = codes_for(w, scale, bias, bits)
        candidate = settle(w, scale, bias, bits)
        best = keep_better(best, candidate)
        codes, scale, bias = candidate[:3]
        beta *= KAPPA
    return packed_result(groups, bits, *best[:3])


METHOD = Method("hqq", "half-quadratic optimisation of each group's scale and zero under an lp (p < 1) error, "
                       "robust to outliers (Badri and Shaji 2023; data-free)", quantize)
