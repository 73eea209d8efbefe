"""The step's elementwise passes on every core, in one C kernel (elementwise_kernel.c).

MLX's CPU backend runs each elementwise op, or each compiled group of them, on one thread: SwiGLU's pass over
a Klein 4B block's MLP took 12 ms at width 0.25 (256x256) where torch takes 2. The C kernel shares the rows
out to OpenBLAS's threads and writes where the caller says: the MLP's activation straight into the columns of
the array the output projection reads, beside the attention's output (attention.attention_beside), and the
queries' and keys' RMS norm and rotary embedding in one pass. Its numbers are fast_math.py's (the same
polynomial exp) and rope.py's. Built once per source (core/cpu_kernels.py); with
QUANTBENCH_ELEMENTWISE_KERNEL=off, inside mx.compile, for other dtypes or where it cannot be built, MLX's ops
run.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from .. import cpu_blas
from ..cpu_kernels import CompiledKernel, evaluated_into, kernel_threads

SOURCE = Path(__file__).with_name("elementwise_kernel.c")
EXP = Path(__file__).with_name("cephes_exp.h")
ENV = cpu_blas.ELEMENTWISE_KERNEL_ENV  # "off": MLX's ops
VECTORS = True  # AVX-512 where the CPU has it (False: plain C, the same bits)
ONE_THREAD_BELOW = 1 << 15  # values: fewer than this run on the calling thread (starting threads costs more)
ACTIVATIONS = {"swiglu": 0, "gelu_tanh": 1}
KERNEL = True  # False: MLX's ops everywhere (what runs where the kernel cannot)

_ROWS = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]  # an array's memory, its batch and row strides in floats
_ACTIVATION = CompiledKernel(SOURCE, "gated_activation", [ctypes.c_int, *_ROWS, *_ROWS, *_ROWS] + [ctypes.c_int] * 5,
                             ENV, headers=[EXP])
_NORM_ROPE = CompiledKernel(SOURCE, "norm_rope", [ctypes.c_void_p] * 7 + [ctypes.c_void_p] + [ctypes.c_int] * 4
                            + [ctypes.c_float, ctypes.c_int, ctypes.c_int], ENV, headers=[EXP])
_NORM_MODULATE = CompiledKernel(SOURCE, "norm_modulate", [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
                                + [ctypes.c_int] * 3 + [ctypes.c_float, ctypes.c_int, ctypes.c_int], ENV, headers=[EXP])
_FUNCTIONS = (_ACTIVATION, _NORM_ROPE, _NORM_MODULATE)  # one library: the first builds it, the others load it
status, expected = _ACTIVATION.status, _ACTIVATION.expected


def ready() -> bool:
    return KERNEL and all(function.ready() for function in _FUNCTIONS)


def _on_cpu(*arrays: mx.array) -> bool:
    return (mx.default_device() == mx.cpu and sys.byteorder == "little"
            and all(a.dtype == mx.float32 for a in arrays))


def runs(*arrays: mx.array) -> bool:
    """Whether the kernel can take these arrays here: float32 on the CPU, and built (only asked on the CPU)."""
    return _on_cpu(*arrays) and ready()


def _rows(view: np.ndarray) -> tuple[int, int, int] | None:
    """(batch, row) strides in floats of a 2- or 3-axis view whose last axis is together, and its row count;
    None for any other layout."""
    if view.ndim not in (2, 3) or view.strides[-1] != 4 or any(s % 4 for s in view.strides):
        return None
    if view.ndim == 2:
        return 0, view.strides[0] // 4, view.shape[0]
    return view.strides[0] // 4, view.strides[1] // 4, view.shape[1]


def _threads(values: int) -> int:
    return 1 if values < ONE_THREAD_BELOW else thread_count()


def activation(kind: str, x: mx.array, into: np.ndarray | None = None, value: mx.array | None = None
               ) -> mx.array | bool | None:
    """`kind` ("swiglu": silu of the last axis's first half times its second, or silu(x) times `value` where
    given; "gelu_tanh") of x, a (B, L, W) or (L, W) float32 array. With `into` (a writable float32 view of the
    output's shape, its rows' values together), written there and True; else a new array. None where the kernel
    cannot run it (MLX's ops then)."""
    inputs = [x, *([value] if value is not None else [])]
    if not (_on_cpu(*inputs) and x.ndim in (2, 3) and ready()):
        return None
    halves = kind == "swiglu" and value is None
    width = x.shape[-1] // 2 if halves else x.shape[-1]
    if (halves and x.shape[-1] % 2) or (value is not None and (kind != "swiglu" or value.shape != x.shape)):
        return None
    shape = (*x.shape[:-1], width)
    out, into = evaluated_into(shape, inputs, into)
    if into is None:
        return None
    source = np.asarray(x)
    factor = source[..., width:] if halves else np.asarray(value) if value is not None else source
    layouts = [_rows(array) for array in (source, factor, into)]
    if None in layouts or into.shape != shape:
        return None
    (x_batch, x_row, rows), (value_batch, value_row, _), (to_batch, to_row, _) = layouts
    batch = x.shape[0] if x.ndim == 3 else 1
    _ACTIVATION.function(ACTIVATIONS[kind], source.ctypes.data, x_batch, x_row, factor.ctypes.data, value_batch,
                         value_row, into.ctypes.data, to_batch, to_row, batch, rows, width, _threads(source.size),
                         int(VECTORS))
    return True if out is None else out


def norm_rope(x: mx.array, weight: mx.array | None, eps: float, cos: mx.array | None = None,
              sin: mx.array | None = None, into: np.ndarray | None = None) -> mx.array | bool | None:
    """rope.apply_rope(mx.fast.rms_norm(x, weight, eps), cos, sin) over x (B, L, H, D), each head's D values
    normed; no cos: the norm alone. Tables (L, D) or (B, L, D). With `into` (a writable (B, L, H, D) float32
    view, a head's values together), written there and True; else a new array. None where the kernel cannot run."""
    tables = [t for t in (cos, sin) if t is not None]
    arrays = [x, *tables, *([weight] if weight is not None else [])]
    if not (_on_cpu(*arrays) and x.ndim == 4 and len(tables) in (0, 2) and ready()):
        return None
    b, rows, heads, dim = x.shape
    if weight is not None and weight.shape != (dim,):
        return None
    if into is not None and (into.strides[3] != 4 or into.shape != x.shape):
        return None
    out, into = evaluated_into(x.shape, arrays, into)
    if into is None:
        return None
    source = np.asarray(x)
    views = [np.asarray(t) for t in tables]
    if views:
        views = [v if v.ndim == 3 else v[None] for v in views]
        if any(v.shape[1:] != (rows, dim) or v.shape[0] not in (1, b) or v.strides[-1] != 4 for v in views) \
                or views[0].strides != views[1].strides:
            return None
    if source.strides[3] != 4:
        return None
    strides = [(s[0] // 4, s[1] // 4, s[2] // 4) for s in (source.strides, into.strides)]
    table_strides = (0 if views[0].shape[0] == 1 else views[0].strides[0] // 4, views[0].strides[1] // 4) \
        if views else (0, 0)
    norm_weight = None if weight is None else np.ascontiguousarray(np.asarray(weight))
    _NORM_ROPE.function(source.ctypes.data, (ctypes.c_long * 3)(*strides[0]), into.ctypes.data,
                        (ctypes.c_long * 3)(*strides[1]), None if norm_weight is None else norm_weight.ctypes.data,
                        views[0].ctypes.data if views else None, views[1].ctypes.data if views else None,
                        (ctypes.c_long * 2)(*table_strides), b, rows, heads, dim, eps, _threads(source.size),
                        int(VECTORS))
    return True if out is None else out


def norm_modulate(x: mx.array, shift: mx.array, scale: mx.array, eps: float) -> mx.array | None:
    """LayerNorm (no affine) of x (B, L, D), times 1 + scale, plus shift; shift and scale (B or 1, 1, D), a
    modulation an item (modulation.norm_modulate; the same numbers to float32 rounding). None where the kernel
    cannot run it."""
    if not (_on_cpu(x, shift, scale) and x.ndim == 3 and shift.shape == scale.shape and shift.ndim == 3
            and shift.shape[1:] == (1, x.shape[2]) and shift.shape[0] in (1, x.shape[0]) and ready()):
        return None
    out, into = evaluated_into(x.shape, [x, shift, scale], None)
    if into is None:
        return None
    source, shifts, scales = np.asarray(x), np.asarray(shift), np.asarray(scale)
    if _rows(source) is None or shifts.strides != scales.strides or shifts.strides[2] != 4 \
            or any(step % 4 for step in shifts.strides):
        return None
    (from_batch, from_row, rows), (to_batch, to_row, _) = _rows(source), _rows(into)
    modulation_batch = 0 if shift.shape[0] == 1 else shifts.strides[0] // 4
    _NORM_MODULATE.function(source.ctypes.data, from_batch, from_row, into.ctypes.data, to_batch, to_row,
                            scales.ctypes.data, shifts.ctypes.data, modulation_batch, x.shape[0], rows, x.shape[2],
                            eps, _threads(source.size), int(VECTORS))
    return out


thread_count = kernel_threads
