"""The CPU's quantized product with the dequantization inside it, tile by tile (tile_kernel.c).

MLX's CPU backend has no such kernel: its own quantized matmul does not use BLAS, and the dense path's MLX
ops (dense.py) dequantize a slice of rows into memory, then multiply it, each slice's product packing the
whole input again. tile_kernel.c does what MLX's Metal and CUDA kernels do: each thread dequantizes a part
of its block of the weight at a time and adds its product into its block of the output, with its own AVX-512
products that read the dequantized panels where they were written (in cache), or elsewhere with OpenBLAS's sgemm
on each dequantized tile. It is compiled once per source (core/cpu_kernels.py); without a compiler, or with
QUANTBENCH_TILE_KERNEL=off, the slices run instead.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from .. import cpu_blas
from ..cpu_kernels import CompiledKernel, evaluated, evaluated_output, kernel_threads
from ..hardware import cpu_flags

SOURCE = Path(__file__).with_name("tile_kernel.c")
ENV = cpu_blas.TILE_KERNEL_ENV  # "off": the slices
# A tile: weight rows (output columns, a block's width) by inputs, 1024 x 1536 float32 (6 MB) at most (the inputs
# are OpenBLAS's tiles' alone: the own products dequantize 256 inputs at a time); narrower where a layer's
# columns make fewer than two blocks a thread. A Klein-4B step's Linear work took 1.016-1.026x the unquantized
# CPU seconds against 1.023-1.035x in 2048 x 768 tiles (the same bytes), at 8 and 4 bits, on OpenBLAS's Haswell
# and Cooperlake kernels, but for 8 bits on Haswell's (1.026 against 1.023): small, and within this host's noise
# for most layers (benchmarks/dense_slices.py --compare tiles; docs/measurements.md).
TILE_ROWS = 1024
TILE_INPUTS = 1536
# From this many tokens, tiles twice as wide (12 MB): each block's product packs its rows of the input again, which
# a wider block does less often; below it, dequantizing a tile is the larger cost. Single layers at 5120 tokens (a
# 1024x1024 image's single blocks) moved by 5% between repeats, so a whole full-size 1024x1024 4-bit step decided:
# 1.031x the unquantized CPU seconds with these tiles (and column blocks a multiple of the cores) against 1.101x
# before (docs/measurements.md).
WIDE_TILE_TOKENS = 2048
WIDE_TILE_ROWS = 2048
# Blocks of the output a core gets at least, where the columns allow (a thread slowed by other work on its
# core leaves blocks to the others). Four measured no faster than two, 0-6% slower in alternating steps
# (benchmarks/step_speed.py --four-blocks; docs/measurements.md). The blocks follow the machine's cores, not
# the threads that take them: OpenBLAS may sum a row in another order in a product of other sizes, so blocks
# cut by the thread count gave other bits with OPENBLAS_NUM_THREADS set (or ranks on fewer threads).
BLOCKS_A_THREAD = 2
PARTITION_CORES = os.cpu_count() or 1
BITS = (2, 4, 8)
VECTORS = True  # AVX-512 dequantization where the CPU has it (False: plain C, the same bits)
# The kernel's own AVX-512 products where the CPU has AVX-512 (False: OpenBLAS's sgemm a tile). A full-size
# Klein-4B 4-bit step took 1.020-1.026x the unquantized step with them, 1.093-1.105x without, in one run
# (benchmarks/step_speed.py --blas-tiles; docs/measurements.md).
PRODUCTS = True
_SCALE_KINDS = {mx.float32: 0, mx.float16: 1, mx.bfloat16: 2}


_KERNEL = CompiledKernel(SOURCE, "quantized_matmul", [ctypes.c_void_p] * 5 + [ctypes.c_int] * 13 + [ctypes.c_void_p],
                         ENV)
status, ready, expected = _KERNEL.status, _KERNEL.ready, _KERNEL.expected


def products_named() -> str:
    """What multiplies the dequantized weight here: the kernel's own products or OpenBLAS's (as tile_kernel.c
    chooses, for MLX's group sizes)."""
    return "its own AVX-512 products" if PRODUCTS and "avx512f" in cpu_flags() else "OpenBLAS's sgemm a tile"


def supports(layer, x: mx.array) -> bool:
    """Whether product() can run this layer on this input (else the dense path's slices do)."""
    return (mx.default_device() == mx.cpu and x.dtype == mx.float32 and layer.mode == "affine"
            and layer.bits in BITS and sys.byteorder == "little" and layer.scales.dtype in _SCALE_KINDS
            and layer.biases is not None and layer.biases.dtype == layer.scales.dtype and ready())


def product(layer, x: mx.array) -> mx.array | None:
    """x @ W.T for the quantized layer's W (no bias), or None when the kernel cannot run it: inside mx.compile
    (which may not evaluate; the kernel needs its input evaluated), a weight that is a strided view, or no
    thread able to allocate its tile."""
    rows, inputs, outputs = x.size // x.shape[-1], x.shape[-1], layer.weight.shape[0]
    if rows == 0:
        return mx.zeros((*x.shape[:-1], outputs), mx.float32) if evaluated(x) else None
    made = evaluated_output((rows, outputs), x)
    if made is None:
        return None
    y, out = made
    codes, scales, offsets = (_host_view(array) for array in (layer.weight, layer.scales, layer.biases))
    if not all(array.flags.c_contiguous for array in (codes, scales, offsets)):
        return None
    flat = np.ascontiguousarray(np.asarray(x).reshape(rows, inputs))
    function, sgemm = _KERNEL.function, cpu_blas.sgemm_address()
    tile_rows = WIDE_TILE_ROWS if rows >= WIDE_TILE_TOKENS else TILE_ROWS
    threads = thread_count()
    with cpu_blas.one_thread_blas():
        failed = function(flat.ctypes.data, codes.ctypes.data, scales.ctypes.data, offsets.ctypes.data,
                          out.ctypes.data, rows, outputs, inputs, layer.bits, layer.group_size,
                          _SCALE_KINDS[layer.scales.dtype], threads, tile_rows, _tile_inputs(layer),
                          BLOCKS_A_THREAD * PARTITION_CORES, PARTITION_CORES, int(VECTORS), int(PRODUCTS), sgemm)
    return None if failed else y.reshape(*x.shape[:-1], outputs)


def _host_view(array: mx.array) -> np.ndarray:
    """The array's memory as NumPy sees it, not copied; bfloat16 (which NumPy lacks) as its 16-bit words."""
    return np.asarray(mx.view(array, mx.uint16) if array.dtype == mx.bfloat16 else array)


thread_count = kernel_threads


def _tile_inputs(layer) -> int:
    return max(layer.group_size, TILE_INPUTS // layer.group_size * layer.group_size)
