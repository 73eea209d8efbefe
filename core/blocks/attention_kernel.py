"""The CPU's attention as one C kernel (attention_kernel.c): each block's scores stay in cache.

MLX's CPU ops run attention's softmax as separate passes over the scores, each on one thread, between
BLAS's products (attention.py runs them in lanes to use both cores). attention_kernel.c takes a block of
one head's queries at a time on each thread, and keeps its scores in a buffer of its own through the
product, the softmax and the values' product: 2.0-2.3x faster than the MLX ops in lanes at Klein 4B's
shapes (`python benchmarks/attention_ops.py --attention`). Built once per source (core/cpu_kernels.py); with
QUANTBENCH_ATTENTION_KERNEL=off, or where it cannot run (a mask other than one over keys, inside mx.compile,
not float32), the MLX ops run.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from .. import cpu_blas
from ..cpu_kernels import CompiledKernel, evaluated_into, kernel_threads

SOURCE = Path(__file__).with_name("attention_kernel.c")
EXP = Path(__file__).with_name("cephes_exp.h")
ENV = cpu_blas.ATTENTION_KERNEL_ENV  # "off": MLX's ops
BLOCK_QUERIES = 256  # a block's queries (fewer where the keys are many: SCORE_BYTES)
# A thread's scores buffer at most. 256 queries a block multiplied fastest, against 32-128, even where their
# scores (4.7 MB at 4608 keys) passed the core's L2 cache.
SCORE_BYTES = 16 << 20
MIN_BLOCK_QUERIES = 16
VECTORS = True  # AVX-512 exp where the CPU has it (False: plain C, the same bits)
PRODUCTS = True  # the kernel's own AVX-512 products where they can run (False: BLAS's sgemm)
# A head's keys at most (as bytes) for the kernel's own products: they sweep all of them for every 8 queries, so
# the keys must stay in a core's L2 cache. 6 heads of 128 (`benchmarks/attention_ops.py --attention --tokens T`):
# 7.0 ms against BLAS's 7.6 at 768 keys, 28 against 30 at 1,536, level at 2,048 (1 MB), 128 against 111 at 3,072
# (BLAS's sgemm blocks its products for the caches).
OWN_PRODUCTS_KEY_BYTES = 1 << 20

_KERNEL = CompiledKernel(SOURCE, "attention",
                         [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_float]
                         + [ctypes.c_int] * 4 + [ctypes.c_void_p], ENV, headers=[EXP])
status, ready, expected = _KERNEL.status, _KERNEL.ready, _KERNEL.expected


def supports(q: mx.array, k: mx.array, v: mx.array, mask) -> bool:
    """Whether attend() can run these (B, H, L, D) arrays: float32 on the CPU, key heads dividing the query heads,
    and no mask or a boolean one over keys alone, (B or 1, 1, 1, keys)."""
    if mx.default_device() != mx.cpu or sys.byteorder != "little":
        return False
    if any(t.dtype != mx.float32 or t.ndim != 4 for t in (q, k, v)):
        return False
    (b, heads, queries, dim), (kb, kv_heads, keys, kdim) = q.shape, k.shape
    if kb != b or v.shape != k.shape or kdim != dim or kv_heads == 0 or heads % kv_heads:
        return False
    if 0 in (b, heads, queries, keys, dim):  # nothing to attend to, or no one asking: MLX's ops say what that is
        return False
    return _key_mask_shape(mask, b, keys) and ready()


def _key_mask_shape(mask, batch: int, keys: int) -> bool:
    if mask is None:
        return True
    return (isinstance(mask, mx.array) and mask.dtype == mx.bool_ and mask.ndim == 4
            and mask.shape[0] in (1, batch) and mask.shape[1:3] == (1, 1) and mask.shape[3] == keys)


def attend(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None,
           into: np.ndarray | None = None) -> mx.array | bool | None:
    """softmax(q k^T * scale) v over (B, H, L, D), or None where the kernel cannot run it: inside mx.compile
    (which may not evaluate; the kernel reads evaluated arrays) or no thread able to allocate its buffers.
    The result is a (B, L, H, D) array seen as (B, H, L, D); with `into` (a writable float32 (B, L, H, D) view, a
    head's values together: columns of a wider array, say), it is written there, and the answer is True."""
    b, heads, queries, dim = q.shape
    keys = k.shape[2]
    if into is not None and (into.shape != (b, queries, heads, dim) or into.strides[3] != 4
                             or any(step % 4 for step in into.strides)):
        return None
    out, into = evaluated_into((b, queries, heads, dim), [q, k, v, *([mask] if mask is not None else [])], into)
    if into is None:
        return None
    views = [_head_rows(t) for t in (q, k, v)]
    if any(view is None for view in views):
        return None
    written = into
    strides = [step // 4 for view in (*views, written.transpose(0, 2, 1, 3)) for step in _bhl_strides(view)]
    key_mask = None if mask is None else np.ascontiguousarray(
        np.broadcast_to(np.asarray(mask).reshape(mask.shape[0], keys), (b, keys)), dtype=np.uint8)
    threads = thread_count()  # OpenBLAS's, asked before they are narrowed to one
    with cpu_blas.one_thread_blas():
        failed = _KERNEL.function(
            views[0].ctypes.data, views[1].ctypes.data, views[2].ctypes.data, written.ctypes.data,
            None if key_mask is None else key_mask.ctypes.data, b, heads, k.shape[1], queries, keys, dim,
            (ctypes.c_long * 12)(*strides), scale, block_queries(keys), threads, int(VECTORS),
            int(own_products(keys, dim)), cpu_blas.sgemm_address())
    if failed:
        return None
    return True if out is None else out.transpose(0, 2, 1, 3)


def _head_rows(array: mx.array) -> np.ndarray | None:
    """The (B, H, L, D) array's memory as NumPy sees it, not copied; None where a head's D values are not
    together (the kernel reads them as one row)."""
    view = np.asarray(array)
    return view if view.strides[3] == 4 else None


def _bhl_strides(view: np.ndarray) -> tuple[int, int, int]:
    """Bytes between batches, positions and heads of a (B, H, L, D) view."""
    return view.strides[0], view.strides[2], view.strides[1]


def own_products(keys: int, dim: int) -> bool:
    """Whether the kernel's own products are asked for (they run where the CPU has AVX-512): a head's width a
    multiple of 32 and its keys within a core's cache."""
    return PRODUCTS and dim % 32 == 0 and keys * dim * 4 <= OWN_PRODUCTS_KEY_BYTES


def block_queries(keys: int) -> int:
    return max(MIN_BLOCK_QUERIES, min(BLOCK_QUERIES, SCORE_BYTES // (4 * max(1, keys))))


thread_count = kernel_threads
