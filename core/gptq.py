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
carries), so that clipping is judged on the layer's output rather than on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

DAMPING = 0.01  # fraction of the mean diagonal of H added to the diagonal: H must be positive definite
BLOCK = 32  # columns per block of lazy updates (every group starts a block: 32 divides every group size)
CLIP_STEPS = 16  # candidate ranges per kind of the searched grid, from the full range down to MIN_CLIP of it
MIN_CLIP = 0.5


@dataclass
class AffineGroups:
    """Integer codes with one scale and bias per group of `group_size` columns (MLX's affine layout)."""

    codes: mx.array  # (out, in) uint8 in [0, 2^bits - 1]
    scales: mx.array  # (out, in / group_size) float32 holding bfloat16 values
    biases: mx.array
    bits: int
    group_size: int

    def dequantize(self) -> mx.array:
        out, cols = self.codes.shape
        grouped = self.codes.reshape(out, cols // self.group_size, self.group_size).astype(mx.float32)
        return (grouped * self.scales[..., None] + self.biases[..., None]).reshape(out, cols)

    def to_mlx(self) -> tuple[mx.array, mx.array, mx.array]:
        """(packed uint32 weight, bfloat16 scales, bfloat16 biases), as `mx.quantize` returns them."""
        packed = mx.array(pack_codes(np.array(self.codes), self.bits))
        return packed, self.scales.astype(mx.bfloat16), self.biases.astype(mx.bfloat16)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (rows, n) -> uint32 (rows, n * bits / 32): one little-endian bit stream per row, as MLX packs."""
    rows, n = codes.shape
    bit_planes = (codes.astype(np.uint32)[..., None] >> np.arange(bits, dtype=np.uint32)) & 1
    stream = bit_planes.reshape(rows, n * bits // 32, 32).astype(np.uint32)
    return (stream << np.arange(32, dtype=np.uint32)).sum(axis=-1, dtype=np.uint64).astype(np.uint32)


def bf16(values: mx.array) -> mx.array:
    """Rounded to the nearest bfloat16 (how scales and biases are stored), kept in float32."""
    return values.astype(mx.bfloat16).astype(mx.float32)


# ---------------------------------------------------------------------------------------------
# Grids: a scale and bias per row of a group (the last axis holds the group's columns)
# ---------------------------------------------------------------------------------------------

Grid = Callable[[mx.array, int, "mx.array | None"], tuple[mx.array, mx.array]]


def minmax_grid(group: mx.array, bits: int, importance: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """MLX's own grid (what `mx.quantize` computes): the range from min to max, stretched so that zero is
    a level; the bias is the end of larger magnitude and the scale is negative when that end is the max."""
    levels = 2 ** bits - 1
    low, high = group.min(axis=-1), group.max(axis=-1)
    scale = mx.maximum((high - low) / levels, 1e-7)
    low_edge = mx.abs(low) > mx.abs(high)
    edge = mx.where(low_edge, low, high)
    steps = mx.round(edge / scale)
    scale = mx.where(steps != 0, edge / mx.where(steps == 0, 1, steps), scale)
    return bf16(mx.where(low_edge, scale, -scale)), bf16(edge)


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
            scale = bf16(mx.maximum((hi - lo) / levels, 1e-7))
            bias = bf16(lo)
            error = _weighted_error(group, scale, bias, levels, weights)
            better = error < best_error
            best_scale = mx.where(better, scale, best_scale)
            best_bias = mx.where(better, bias, best_bias)
            best_error = mx.minimum(error, best_error)
    return best_scale, best_bias


def _weighted_error(group, scale, bias, levels, weights) -> mx.array:
    codes = mx.clip(mx.round((group - bias[..., None]) / scale[..., None]), 0, levels)
    return (mx.square(codes * scale[..., None] + bias[..., None] - group) * weights).sum(axis=-1)


GRIDS: dict[str, Grid] = {"minmax": minmax_grid, "search": searched_grid}


def round_to_grid(weight: mx.array, bits: int, group_size: int, grid: Grid = minmax_grid,
                  importance: mx.array | None = None) -> AffineGroups:
    """Plain rounding to each group's grid (no error feedback): round-to-nearest with `minmax_grid`."""
    out, cols = weight.shape
    grouped = weight.astype(mx.float32).reshape(out, cols // group_size, group_size)
    weights = None if importance is None else importance.reshape(cols // group_size, group_size)
    scales, biases = grid(grouped, bits, weights)
    codes = mx.clip(mx.round((grouped - biases[..., None]) / scales[..., None]), 0, 2 ** bits - 1)
    result = AffineGroups(codes.reshape(out, cols).astype(mx.uint8), scales, biases, bits, group_size)
    mx.eval(result.codes, result.scales, result.biases)
    return result


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------

def inverse_hessian_factor(xtx: mx.array, damping: float = DAMPING) -> mx.array:
    """U, upper triangular with U^T U = (H + damping * mean(diag H) * I)^-1 (float32).

    Input features that never fired (a zero diagonal) get a unit diagonal: their columns then take no
    error and give none. The damping grows tenfold until the Cholesky factorisation succeeds. Each step
    is evaluated before the next so that at most two (in, in) matrices exist at a time."""
    diagonal = mx.diagonal(xtx).astype(mx.float32)
    dead = diagonal <= 0
    mean = mx.mean(mx.where(dead, 1.0, diagonal))
    while damping <= 1e3:
        damped = xtx.astype(mx.float32) + mx.diag(mx.where(dead, 1.0, 0.0) + damping * mean)
        mx.eval(damped)
        lower = mx.linalg.cholesky(damped, stream=mx.cpu)
        del damped
        mx.eval(lower)
        if bool(mx.all(mx.diagonal(lower) > 0)):
            inverse = mx.linalg.cholesky_inv(lower, stream=mx.cpu)
            del lower
            mx.eval(inverse)
            upper = mx.linalg.cholesky(inverse, upper=True, stream=mx.cpu)
            del inverse
            mx.eval(upper)
            if bool(mx.all(mx.diagonal(upper) > 0)):
                return upper
        damping *= 10
    raise ValueError("the calibration statistics are not positive definite even with heavy damping")


def gptq_quantize(weight: mx.array, xtx: mx.array, bits: int, group_size: int, *,
                  groups: str = "static", grid: Grid = searched_grid, damping: float = DAMPING,
                  block: int = BLOCK) -> AffineGroups:
    """Quantize `weight` (out, in) with GPTQ given H = X^T X (in, in) of the layer's inputs.

    groups: "static" sets every group's scale and bias from the original weights; "dynamic" sets each
    when its first column is reached, from the weights as updated so far. The grid sees the diagonal
    of H as each column's importance."""
    if groups not in ("static", "dynamic"):
        raise ValueError(f"groups must be 'static' or 'dynamic', not {groups!r}")
    w = weight.astype(mx.float32)
    out, cols = w.shape
    if group_size % block and block % group_size:
        raise ValueError(f"block {block} and group size {group_size}: one must divide the other")
    importance = mx.maximum(mx.diagonal(xtx).astype(mx.float32), 0)
    factor = inverse_hessian_factor(xtx, damping)
    levels = 2 ** bits - 1
    if groups == "static":
        fixed = round_to_grid(w, bits, group_size, grid, importance)
        scale_columns, bias_columns = list(fixed.scales.T), list(fixed.biases.T)
    else:
        scale_columns, bias_columns = [], []
    code_blocks = []
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        part, rows = w[:, : stop - start], factor[start:stop, start:stop]
        codes, errors = [], []
        for j in range(stop - start):
            g, first = divmod(start + j, group_size)
            if groups == "dynamic" and first == 0:
                ahead = part[:, j:j + group_size]  # the group's columns, updated by every error so far
                if ahead.shape[1] < group_size:
                    ahead = mx.concatenate([ahead, w[:, stop - start:start + j + group_size - start]], axis=1)
                scale, bias = grid(ahead, bits, importance[start + j:start + j + group_size])
                scale_columns.append(scale)
                bias_columns.append(bias)
            scale, bias = scale_columns[g], bias_columns[g]
            column = part[:, j]
            code = mx.clip(mx.round((column - bias) / scale), 0, levels)
            error = (column - (code * scale + bias)) / rows[j, j]
            part = part - error[:, None] * rows[j][None, :]  # U is upper triangular: columns < j are untouched
            codes.append(code)
            errors.append(error)
        code_blocks.append(mx.stack(codes, axis=1).astype(mx.uint8))
        w = w[:, stop - start:] - mx.stack(errors, axis=1) @ factor[start:stop, stop:]
        mx.eval(code_blocks[-1], w, scale_columns, bias_columns)
    result = AffineGroups(mx.concatenate(code_blocks, axis=1), mx.stack(scale_columns, axis=1),
                          mx.stack(bias_columns, axis=1), bits, group_size)
    mx.eval(result.codes, result.scales, result.biases)
    return result


def output_error(weight: mx.array, quantized: mx.array, xtx: mx.array) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared error of the layer's outputs over the inputs of H."""
    delta = weight.astype(mx.float32) - quantized.astype(mx.float32)
    return float(mx.sum((delta @ xtx.astype(mx.float32)) * delta))


def quantized_linear(groups: AffineGroups, bias: mx.array | None = None) -> nn.QuantizedLinear:
    """A plain `nn.QuantizedLinear` holding these groups (and the original layer's bias, if any)."""
    out, cols = groups.codes.shape
    layer = nn.QuantizedLinear(cols, out, bias=bias is not None, group_size=groups.group_size, bits=groups.bits)
    layer.weight, layer.scales, layer.biases = groups.to_mlx()
    if bias is not None:
        layer.bias = bias
    return layer
