"""Rotary position embedding over several position axes (FLUX.1, FLUX.2, Qwen-Image and Z-Image alike).

Each token has one position per axis (time, row, column, ...); each axis drives its own slice of the
head's channels, rotated as interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..cpu_kernels import evaluated_output
from . import elementwise_kernel


def rope_tables(ids: np.ndarray, axes_dims: tuple[int, ...], theta: float, precision: type = np.float64,
                float32_angles: bool = False) -> tuple[mx.array, mx.array]:
    """cos/sin tables (seq, head_dim) for interleaved-pair RoPE over the position axes of `ids` (seq, axes).

    Computed with NumPy in `precision`, then cast to float32. FLUX computes in float64 (positions reach the
    thousands and float32 angles would drift); Qwen-Image's reference computes in float32, and so must we
    to match it. `float32_angles`: the angles are rounded to float32 before cos and sin, as Z-Image's
    reference builds a complex64 table from float64 angles cast to float32.
    """
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dims):
        exponents = np.arange(0, dim, 2, dtype=precision) / precision(dim)
        freqs = precision(1.0) / np.power(precision(theta), exponents)
        angles = ids[:, axis].astype(precision)[:, None] * freqs[None, :]
        if float32_angles:
            angles = angles.astype(np.float32)
        cos_parts.append(np.repeat(np.cos(angles), 2, axis=1))
        sin_parts.append(np.repeat(np.sin(angles), 2, axis=1))
    cos = np.concatenate(cos_parts, axis=1).astype(np.float32)
    sin = np.concatenate(sin_parts, axis=1).astype(np.float32)
    return mx.array(cos), mx.array(sin)


@mx.compile
def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x: (B, L, H, D); pairs (x0, x1) rotate to (x0 cos - x1 sin, x1 cos + x0 sin). The tables are (L, D),
    or (B, L, D) when the items of a batch sit at different positions.

    Compiled: MLX fuses the rotation into one pass (bitwise the same numbers, tests/test_compiled_step.py).
    mx.fast.rope takes one position offset per sequence, not FLUX's several position axes per token."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = mx.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    cos, sin = (t[None] if t.ndim == 2 else t for t in (cos, sin))
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x * cos + rotated * sin).astype(x.dtype)


def normed_rope(parts: list[tuple[nn.RMSNorm, mx.array]], cos: mx.array, sin: mx.array) -> mx.array:
    """apply_rope(mx.concatenate([norm(x) for norm, x in parts], axis=1), cos, sin): the per-head RMS norms of
    queries or keys (B, L, H, D), joined along the positions ([text, image] in a joint block), then rotated. On
    the CPU one C kernel pass a part, written into its rows of one array (elementwise_kernel.py; the same numbers
    to float32 rounding)."""
    b, heads, dim = parts[0][1].shape[0], parts[0][1].shape[2], parts[0][1].shape[3]
    length = sum(x.shape[1] for _, x in parts)
    if elementwise_kernel.runs(*(x for _, x in parts)) and all(
            isinstance(norm, nn.RMSNorm) and x.shape[0] == b and x.shape[2:] == (heads, dim) for norm, x in parts):
        tables, first = [], 0  # each part's rows and their rows of the tables
        for _, x in parts:
            rows = slice(first, first + x.shape[1])
            tables.append((rows, *((t if len(parts) == 1 else t[..., rows, :]) for t in (cos, sin))))
            first = rows.stop
        made = evaluated_output((b, length, heads, dim), *(x for _, x in parts),
                                *(table for _, *pair in tables for table in pair))
        if made is not None:
            out, written = made
            if all(elementwise_kernel.norm_rope(x, norm.weight, norm.eps, part_cos, part_sin, into=written[:, rows])
                   is True for (norm, x), (rows, part_cos, part_sin) in zip(parts, tables)):
                return out
    normed = [norm(x) for norm, x in parts]
    return apply_rope(normed[0] if len(normed) == 1 else mx.concatenate(normed, axis=1), cos, sin)


def image_position_ids(height: int, width: int, axes: int = 3, first_row: int = 0,
                       first_column: int = 0) -> np.ndarray:
    """(height * width, axes) positions of packed latents, row-major: the row on axis 1, the column on
    axis 2 (counting from `first_row` / `first_column`), 0 on every other axis."""
    rows, cols = np.meshgrid(np.arange(height) + first_row, np.arange(width) + first_column, indexing="ij")
    ids = np.zeros((height * width, axes), dtype=np.int64)
    ids[:, 1], ids[:, 2] = rows.reshape(-1), cols.reshape(-1)
    return ids
