"""GPTQ (Frantar et al., 2022): error-compensating rounding into MLX's affine groups.

A Linear layer computes y = x W^T. Rounding W to a grid changes the output by x (W - Q)^T; over the
calibration inputs X that error is tr((W - Q) H (W - Q)^T) with H = X^T X. GPTQ rounds the columns of W
(the input features) one at a time and, after rounding column j, moves its error onto the columns not
yet rounded, in the proportions the inverse Hessian gives: the least-squares correction of those
columns for the error just made. With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), the update
after column j is  W[:, k] -= err_j * U[j, k] / U[j, j]  for k > j. Columns are processed in blocks:
inside a block the updates are applied at once to the block, and the block's accumulated errors
update the rest of the matrix in one matrix product.

The result is ordinary affine groups (code in [0, 2^b - 1], w ~ scale * code + bias per group of
`group_size` input features, bfloat16 scale and bias), so it loads as a plain `nn.QuantizedLinear`.
Each group's scale and bias are set either from the original weights before any update ("static"
groups), or when the group's first column is reached, from the weights as updated by the errors of
the groups before it ("dynamic"). The grid itself is MLX's min-max grid, or a search over clipped
ranges that minimises the group's error weighted by the diagonal of H (how much each input feature
carries), so that clipping is judged on the layer's output rather than on the weights; or, with
static groups, any data-free method's (rtn, mse, hqq) scales and biases. With static groups the columns
may also be rounded in activation order (largest diag(H) first, "act-order"): each column keeps its own
group's scale, so the groups stay MLX's contiguous ones.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from ..affine import Groups, packed_result, round_to_nearest, stored
from . import LayerStats, Method, QuantizedWeight, get_method

DAMPING = 0.01  # fraction of the mean diagonal of H added to the diagonal: H must be positive definite
BLOCK = 32  # columns per block of lazy updates (every group starts a block: 32 divides every group size)
CLIP_STEPS = 16  # candidate ranges per kind of the searched grid, from the full range down to MIN_CLIP of it
MIN_CLIP = 0.5
# The method's settings, chosen by measurement on the built-in models (README, "Quantizers"): natural
# order with dynamic groups and the searched grid. Activation order (static groups) is used at the bits
# in ORDERED_BITS: none, since on demo-turbo's 125 eval prompts it moved 4 and 3 bits by -0.5 to +0.35
# dB and lost up to 0.9 dB at 2 bits.
ORDERED_BITS: frozenset[int] = frozenset()
GROUPS = "dynamic"
ORDER = "natural"
GRID = "search"


# ---------------------------------------------------------------------------------------------
# Grids: a scale and bias per row of a group (the last axis holds the group's columns)
# ---------------------------------------------------------------------------------------------

Grid = Callable[[mx.array, int, "mx.array | None"], tuple[mx.array, mx.array]]


def minmax_grid(group: mx.array, bits: int, importance: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """MLX's own grid (round-to-nearest's): per row of `group` (rows, g), (scale, bias) as stored."""
    _, scale, bias, _ = round_to_nearest(Groups(group, group.shape[-1]), bits)
    return scale[:, 0], bias[:, 0]


def searched_grid(group: mx.array, bits: int, importance: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """Per row, the range [lo, hi] (shrunk from [min, max] about its middle, or with its low or its high
    end kept) whose rounding error, weighted per column by `importance`, is least; min-max is a candidate."""
    levels = 2 ** bits - 1
    weights = mx.ones((group.shape[-1],)) if importance is None else importance
    best_scale, best_bias = minmax_grid(group, bits)
    best_error = _weighted_error(group, best_scale, best_bias, levels, weights)
    low, high = group.min(axis=-1), group.max(axis=-1)
    middle, span = (low + high) / 2, high - low
    for factor in np.linspace(1.0, MIN_CLIP, CLIP_STEPS).tolist():
        for lo, hi in ((middle - factor * span / 2, middle + factor * span / 2),
                       (low, low + factor * span), (high - factor * span, high)):
            scale = stored(mx.maximum((hi - lo) / levels, 1e-7))
            bias = stored(lo)
            error = _weighted_error(group, scale, bias, levels, weights)
            better = error < best_error
            best_scale = mx.where(better, scale, best_scale)
            best_bias = mx.where(better, bias, best_bias)
            best_error = mx.minimum(error, best_error)
            mx.eval(best_scale, best_bias, best_error)  # one candidate's temporaries at a time
    return best_scale, best_bias


def _weighted_error(group, scale, bias, levels, weights) -> mx.array:
    codes = mx.clip(mx.round((group - bias[:, None]) / scale[:, None]), 0, levels)
    return (mx.square(codes * scale[:, None] + bias[:, None] - group) * weights).sum(axis=-1)


GRIDS: dict[str, Grid] = {"minmax": minmax_grid, "search": searched_grid}


def static_grid(weight: mx.array, bits: int, group_size: int, grid: str, importance: mx.array) -> tuple[mx.array, mx.array]:
    """Every group's (scale, bias) (out, in / g) from the original weights: one of GRIDS, or the scales
    and biases a data-free method (rtn, mse, hqq) chooses."""
    out, cols = weight.shape
    if grid in GRIDS:
        grouped = weight.reshape(out, cols // group_size, group_size)
        weights = importance.reshape(cols // group_size, group_size)
        # One group column at a time: the search's temporaries stay the size of one column of groups.
        pairs = [GRIDS[grid](grouped[:, g], bits, weights[g]) for g in range(cols // group_size)]
        return mx.stack([p[0] for p in pairs], axis=1), mx.stack([p[1] for p in pairs], axis=1)
    _, scales, biases = get_method(grid).quantize(weight, bits, group_size, None)
    return scales.astype(mx.float32), biases.astype(mx.float32)


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------
def inverse_hessian_factor(xtx: mx.array, damping: float = DAMPING, release: Callable[[], None] | None = None
                           ) -> mx.array:
    """U, upper triangular with U^T U = (H + damping * mean(diag H) * I)^-1 (float32).

    Input features that never fired (a zero diagonal) get a unit diagonal: their columns then take no
    error and give none. The damping grows tenfold until the Cholesky factorisation succeeds.

    U is found without forming the inverse: with J the reversal of both axes, J H J = L L^T (Cholesky)
    gives H = R R^T with R = J L J upper triangular, so H^-1 = R^-T R^-1 and U = R^-1 (a triangular
    inverse). Besides the caller's X^T X, at most two (in, in) matrices exist at a time; `release`, called
    as soon as X^T X has been copied, lets the caller drop it (then at most two in all)."""
    diagonal = mx.diagonal(xtx).astype(mx.float32)
    dead = diagonal <= 0
    mean = mx.mean(mx.where(dead, 1.0, diagonal))
    reversed_h = (xtx.astype(mx.float32) + mx.diag(mx.where(dead, 1.0, 0.0) + damping * mean))[::-1, ::-1]
    mx.eval(reversed_h, mean)
    del xtx
    if release is not None:
        release()
    while True:
        lower = mx.linalg.cholesky(reversed_h, stream=mx.cpu)
        mx.eval(lower)
        if bool(mx.all(mx.diagonal(lower) > 0)):
            break
        del lower
        if damping * 10 > 1e3:
            raise ValueError("the calibration statistics are not positive definite even with heavy damping")
        reversed_h = reversed_h + mx.diag(mx.full(diagonal.shape, 9 * damping) * mean)
        damping *= 10
        mx.eval(reversed_h)
    del reversed_h
    upper = lower[::-1, ::-1]  # R = J L J
    del lower
    factor = mx.linalg.tri_inv(upper, upper=True, stream=mx.cpu)
    del upper
    mx.eval(factor)
    return factor


def column_order(importance: mx.array, order: str) -> mx.array | None:
    """The order GPTQ rounds the columns in: None for the natural one; for "activation" ("act-order"),
    by decreasing diag(H), so the inputs that carry most are rounded first, while every later column can
    still absorb their error."""
    if order == "natural":
        return None
    if order == "activation":
        return mx.argsort(-importance)
    raise ValueError(f"unknown GPTQ column order {order!r}")


def _permuted(xtx: mx.array, order: mx.array | None) -> mx.array:
    return xtx if order is None else xtx[order[:, None], order[None, :]]


def site_factor(stats: LayerStats, damping: float = DAMPING, order: str = ORDER) -> tuple:
    """(U, diag H, column order) for a layer's statistics. A site's layers share them: computed for the
    first, kept in `stats.derived` for the others when the statistics are disposable, and X^T X is let
    go meanwhile."""
    key = ("gptq", damping, order)
    if key in stats.derived:
        return stats.derived[key]
    importance = mx.maximum(stats.diagonal(), 0)
    permutation = column_order(importance, order)
    if permutation is None or not stats.disposable:
        factor = inverse_hessian_factor(_permuted(stats.xtx, permutation), damping, stats.release)
    else:  # permuted in place of the original, which goes as soon as its copy exists
        stats.xtx = _permuted(stats.xtx, permutation)
        mx.eval(stats.xtx)
        factor = inverse_hessian_factor(stats.xtx, damping, stats.release)
    if stats.disposable:
        stats.derived[key] = (factor, importance, permutation)
    return factor, importance, permutation


def gptq_quantize(weight: mx.array, xtx: mx.array | None, bits: int, group_size: int, *,
                  groups: str = GROUPS, grid: str = GRID, damping: float = DAMPING, block: int = BLOCK,
                  order: str = ORDER, precomputed: tuple | None = None) -> tuple[mx.array, mx.array, mx.array]:
    """GPTQ of `weight` (out, in) given H = X^T X (in, in) of the layer's inputs: (codes (out, in),
    scales and biases (out, in / group_size)), float32 holding what is stored.

    groups: "static" sets every group's scale and bias from the original weights (`grid`: "minmax",
    "search", or a data-free method's name); "dynamic" sets each when its first column is reached, from
    the weights as updated so far (`grid`: "minmax" or "search"). Searched grids weigh each column by
    the diagonal of H. `order`: see column_order; a group's columns are then not rounded together, so
    its scale and bias must be set beforehand (static groups). `precomputed`: site_factor's (U, diag H,
    column order), instead of from `xtx` and `order`."""
    if groups not in ("static", "dynamic") or (groups == "dynamic" and grid not in GRIDS):
        raise ValueError(f"unknown GPTQ grouping {groups!r} with grid {grid!r}")
    w = weight.astype(mx.float32)
    out, cols = w.shape
    if group_size % block and block % group_size:
        raise ValueError(f"block {block} and group size {group_size}: one must divide the other")
    if precomputed is None:
        importance = mx.maximum(mx.diagonal(xtx).astype(mx.float32), 0)
        permutation = column_order(importance, order)
        precomputed = (inverse_hessian_factor(_permuted(xtx, permutation), damping), importance, permutation)
    factor, importance, permutation = precomputed
    if permutation is not None and groups != "static":
        raise ValueError("GPTQ in activation order needs static groups")
    levels = 2 ** bits - 1
    if groups == "static":
        fixed_scales, fixed_biases = static_grid(w, bits, group_size, grid, importance)
        scale_columns, bias_columns = list(fixed_scales.T), list(fixed_biases.T)
    else:
        scale_columns, bias_columns = [], []
    group_of = [column // group_size for column in range(cols)]  # the group of each column, in rounding order
    if permutation is not None:
        w = w[:, permutation]
        group_of = (permutation // group_size).tolist()
    code_blocks = []
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        part, rows = w[:, : stop - start], factor[start:stop, start:stop]
        codes, errors = [], []
        for j in range(stop - start):
            first = (start + j) % group_size
            if groups == "dynamic" and first == 0:
                ahead = part[:, j:j + group_size]  # the group's columns, updated by every error so far
                if ahead.shape[1] < group_size:
                    ahead = mx.concatenate([ahead, w[:, stop - start:start + j + group_size - start]], axis=1)
                scale, bias = GRIDS[grid](ahead, bits, importance[start + j:start + j + group_size])
                scale_columns.append(scale)
                bias_columns.append(bias)
            g = group_of[start + j]
            scale, bias = scale_columns[g], bias_columns[g]
            column = part[:, j]
            code = mx.clip(mx.round((column - bias) / mx.where(scale == 0, 1.0, scale)), 0, levels)
            error = (column - (code * scale + bias)) / rows[j, j]
            part = part - error[:, None] * rows[j][None, :]  # U is upper triangular: columns < j are untouched
            codes.append(code)
            errors.append(error)
        code_blocks.append(mx.stack(codes, axis=1).astype(mx.uint8))
        w = w[:, stop - start:] - mx.stack(errors, axis=1) @ factor[start:stop, stop:]
        mx.eval(code_blocks[-1], w, scale_columns, bias_columns)
    codes = mx.concatenate(code_blocks, axis=1)
    if permutation is not None:
        codes = codes[:, mx.argsort(permutation)]
    result = (codes, mx.stack(scale_columns, axis=1), mx.stack(bias_columns, axis=1))
    mx.eval(*result)
    return result


def output_error(weight: mx.array, quantized: mx.array, xtx: mx.array) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared error of the layer's outputs over the inputs of H."""
    delta = weight.astype(mx.float32) - quantized.astype(mx.float32)
    return float(mx.sum((delta @ xtx.astype(mx.float32)) * delta))


def settings_for(bits: int) -> tuple[str, str]:
    """(groups, order) that `quantize` uses at `bits`."""
    return ("static", "activation") if bits in ORDERED_BITS else (GROUPS, ORDER)


def quantize(weight: mx.array, bits: int, group_size: int, stats: LayerStats | None = None) -> QuantizedWeight:
    groups, order = settings_for(bits)
    codes, scales, biases = gptq_quantize(weight, None, bits, group_size, groups=groups, grid=GRID,
                                          precomputed=site_factor(stats, DAMPING, order))
    return packed_result(Groups(weight, group_size), bits, codes.reshape(-1, group_size),
                         scales.reshape(-1, 1), biases.reshape(-1, 1))


METHOD = Method("gptq", "error-compensating rounding, column by column with the inverse Hessian of the layer's "
                        "inputs, from calibration (Frantar et al., 2022)", quantize, needs_calibration=True)
