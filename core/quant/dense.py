"""The dense CPU path: quantized layers that dequantize their weight and run a BLAS matmul."""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn

from .. import cpu_lanes
from .tile_kernel import product as tile_kernel_product, ready as tile_kernel_ready, supports as tile_kernel_supports
from ..cpu_lanes import in_lanes
from .. import numbers
from ..errors import InvalidRequest
from ..generation import CancelToken, check_cancel


# A dequantized slice of a weight: small enough to stay in the CPU's cache between the dequantization
# and its matmul, and to come from malloc's reused heap instead of fresh, page-faulted memory
# (glibc serves allocations over 32 MB with mmap, and MLX's CPU allocator keeps no cache).
DENSE_SLICE_BYTES = 4 << 20
# ...but never fewer output rows than this: a slice is the N of its BLAS product, and a narrow N pays
# the packing of the whole input once per slice. At Klein 4B's width the 4 MB rule gave the single
# blocks' 12288-wide output projection 85 rows a slice, which cost 1.4-1.5x the dense product's CPU
# time; 384 rows cost 1.1x (a dense copy of 19 MB in flight there).
DENSE_SLICE_MIN_ROWS = 384
# Dequantize on a stream of its own: MLX runs each CPU stream on its own thread, so the next slice is
# dequantized while BLAS multiplies this one, instead of the cores waiting on a one-thread elementwise
# pass between products. Same slices, same kernels, bitwise the same output.
DEQUANTIZE_AHEAD = True
# Inside mx.compile (which may not evaluate) the slices stay one lazy graph, each slice dequantized
# no further ahead than this many slices: slice i waits for the product of slice i - AHEAD_SLICES.
AHEAD_SLICES = 2
# With OpenBLAS on 2 to cpu_lanes.MAX_LANES threads, the slices run in lanes instead, one a thread: each lane (a
# CPU stream of its own) dequantizes its slice and multiplies it on a one-thread BLAS while the other
# lanes do theirs. Dequantizing ahead put a third busy thread beside BLAS's own on two cores, and a BLAS
# thread that lost its core held its partner at their next shared block; lanes keep one thread a core.
# One-thread products sum in another order than two-thread ones: the output's last bits differ.
LANES = True
# Each slice's product is written into the output as it is done (_Output), not concatenated at the end.
IN_PLACE_OUTPUT = True
# Groups of slices (one a lane) queued in the lanes beyond the group whose products are being written.
GROUPS_AHEAD = 1
# The dequantization inside the product, tile by tile (tile_kernel.py), where it can run; the slices where
# it cannot (no C compiler, inside mx.compile, a non-float32 input).
TILE_KERNEL = True


class DenseQuantizedLinear(nn.QuantizedLinear):
    """A quantized Linear that dequantizes its weight and runs dense matmuls.

    On MLX's CPU backend the quantized matmul kernel does not use BLAS (a few GFLOP/s); dequantizing
    the weight and calling the BLAS matmul is tens of times faster. The weight is dequantized a slice
    of output rows at a time (DENSE_SLICE_BYTES, at least DENSE_SLICE_MIN_ROWS rows), each slice
    multiplied while the next is dequantized (or, in lanes, each lane's next): the weights stay quantized
    in memory, the dense copy in flight is two slices a lane (bytes_in_flight), and every output element
    is the same dot product as with the whole weight (to float32 rounding).
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = self._product(x)
        return y + self["bias"] if "bias" in self else y

    def _product(self, x: mx.array) -> mx.array:
        """x @ W.T, without the bias: the kept dense weight, else the tile kernel, else the slices."""
        kept = self.__dict__.get("_kept_weight")
        if kept is not None and kept.dtype == x.dtype:  # keep_dequantized: one product, as unquantized
            return x @ kept.T
        y = tile_kernel_product(self, x) if TILE_KERNEL and tile_kernel_supports(self, x) else None
        if y is not None:
            return y
        rows = self.weight.shape[0]
        step = slice_rows(self, x.dtype)
        bounds = [(start, min(start + step, rows)) for start in range(0, rows, step)]
        if len(bounds) == 1:
            return x @ dequantize_rows(self, 0, rows, x.dtype).T
        try:
            return self._evaluated_product(x, bounds)
        except ValueError:  # inside mx.compile, which may not evaluate
            return self._lazy_product(x, bounds)

    def _evaluated_product(self, x: mx.array, bounds: list[tuple[int, int]]) -> mx.array:
        """Each slice's product evaluated with the next slice's dequantization: two dense slices at most
        exist at once. Left to one lazy graph, MLX held most of a layer's slices at once (a 9216 x 3072
        layer's call peaked at its whole dense weight) and page-faulted fresh memory for them, which cost
        more CPU time than the dequantization itself (benchmarks/dense_slices.py --compare evaluate)."""
        lanes = lane_count()
        if lanes > 1:
            return self._lane_product(x, bounds, lanes)
        output = _Output(x, bounds[-1][1])
        weight = self._dequantized(x, *bounds[0])
        for index, (start, stop) in enumerate(bounds):
            following = [self._dequantized(x, *bounds[index + 1])] if index + 1 < len(bounds) else []
            part = x @ weight.T
            mx.eval(part, *following)
            output.write([(start, stop, part)])
            weight = following[0] if following else None
        return output.done()

    def _lane_product(self, x: mx.array, bounds: list[tuple[int, int]], lanes: int) -> mx.array:
        """Slice i dequantized and multiplied on lane i % lanes (core/cpu_lanes.py), each group's products
        written into the output while the lanes multiply the next group. A lane runs its slices in order,
        so each holds one dense slice (and its next, once the last product is done)."""
        mx.eval(x)  # before BLAS goes to one thread: the input's own products use every thread
        output = _Output(x, bounds[-1][1])
        parts = [lambda start=start, stop=stop: x @ dequantize_rows(self, start, stop, x.dtype).T
                 for start, stop in bounds]
        in_lanes(parts, lanes, lambda done: output.write([(*bounds[index], part) for index, part in done]),
                 ahead=GROUPS_AHEAD)
        return output.done()

    def _dequantized(self, x: mx.array, start: int, stop: int, after: mx.array | None = None) -> mx.array:
        with mx.stream(_dequantize_stream()) if DEQUANTIZE_AHEAD else nullcontext():
            return dequantize_rows(self, start, stop, x.dtype, after)

    def _chained_slices(self, x: mx.array, bounds: list[tuple[int, int]]) -> list[mx.array]:
        """One lazy graph: slice i dequantized (ahead) once the product of slice i - AHEAD_SLICES is done.
        Unchained, the dequantization stream (whose work needs only weights) ran layers ahead."""
        parts = []
        for start, stop in bounds:
            after = (parts[-AHEAD_SLICES] if len(parts) >= AHEAD_SLICES else x) if DEQUANTIZE_AHEAD else None
            parts.append(x @ self._dequantized(x, start, stop, after).T)
        return parts


    def _lazy_product(self, x: mx.array, bounds: list[tuple[int, int]]) -> mx.array:
        return mx.concatenate(self._chained_slices(x, bounds), axis=-1)


class _Output:
    """A sliced product's output, each slice's product written into it as it is done.

    Written in place: MLX gives a slice update the buffer of an input that nothing else holds, so the
    slices are copied into one buffer while the lanes multiply the next ones, instead of concatenated in
    one pass on one thread once the last is done, with every part and the whole output alive at once
    (a 768-token call of the 27648-row projection: MLX peak 108 MB above its input against 162). The
    output is evaluated after each write: one still being computed asynchronously is held by MLX's
    scheduler too, and would be copied whole instead. Same values, bitwise. IN_PLACE_OUTPUT = False
    concatenates (the path before)."""

    def __init__(self, x: mx.array, rows: int):
        self.parts, self.array = [], (mx.zeros((*x.shape[:-1], rows), x.dtype) if IN_PLACE_OUTPUT else None)

    def write(self, parts: list[tuple[int, int, mx.array]]) -> None:
        if self.array is None:
            self.parts += [part for *_, part in parts]
            return
        for start, stop, part in parts:
            self.array[..., start:stop] = part
        mx.eval(self.array)

    def done(self) -> mx.array:
        return self.array if self.array is not None else mx.concatenate(self.parts, axis=-1)


def dense_weight_bytes(layer: nn.QuantizedLinear, dtype: mx.Dtype) -> int:
    """Bytes of the layer's weight dequantized to `dtype`."""
    return layer.weight.shape[0] * layer.weight.shape[1] * 32 // layer.bits * dtype.size


def kept_layers(sizes: Mapping[str, int], budget: float) -> list[str]:
    """The layers (path -> dense bytes) whose dequantized weights are kept within `budget` bytes: largest
    first (ties by path), each taken while the total stays within the budget. The memory model predicts
    with the same rule."""
    kept, total = [], 0
    for path, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        if total + size <= budget:
            kept.append(path)
            total += size
    return kept


def keep_dequantized(model: nn.Module, budget: float, dtype: mx.Dtype, cancel: CancelToken | None = None) -> int:
    """Memory for speed: keep the dense weights of the DenseQuantizedLinear layers that fit in `budget`
    bytes (math.inf: all), so their products skip the dequantization and the slicing. The quantized
    weights stay too (a saved model is still quantized). Returns the bytes kept. `cancel` is checked
    before each layer."""
    layers = {path: m for path, m in model.named_modules() if isinstance(m, DenseQuantizedLinear)}
    total = 0
    for path in kept_layers({path: dense_weight_bytes(m, dtype) for path, m in layers.items()}, budget):
        check_cancel(cancel)
        weight = dequantize_weight(layers[path], dtype)
        mx.eval(weight)  # one layer at a time: no transient beyond the layer being kept
        layers[path].__dict__["_kept_weight"] = weight  # not a parameter: never saved or counted as one
        total += weight.nbytes
    return total


def dequantized_budget(text: str, what: str = "--keep-dequantized") -> float:
    """A budget for keep_dequantized as users write it: 'all' (math.inf) or GB (1024^3 bytes, as quantbench
    prints them) above 0; raises InvalidRequest (one line naming `what`) for anything else."""
    if text.lower() == "all":
        return math.inf
    try:
        value = numbers.decimal(text)  # not float(): "1_0", "nan" and " 2" are not what anyone writes
    except ValueError:
        raise InvalidRequest(f"{what}: '{numbers.shown(text)}' is not a number: give 'all' or a number of GB above "
                             "0") from None
    if not (math.isfinite(value) and 0 < value <= 100_000):
        raise InvalidRequest(f"{what} {value:g} is not allowed: give 'all' or a number of GB above 0")
    return value * 1024 ** 3


def slice_rows(layer: nn.QuantizedLinear, dtype: mx.Dtype) -> int:
    """Output rows a slice of the dense path: DENSE_SLICE_BYTES of dense weight, at least DENSE_SLICE_MIN_ROWS."""
    row_bytes = dtype.size * layer.weight.shape[1] * 32 // layer.bits
    return max(DENSE_SLICE_MIN_ROWS, DENSE_SLICE_BYTES // row_bytes)


def slice_bytes(in_dim: int, out_dim: int, dtype_bytes: int) -> int:
    """The dequantized slice of an (out_dim, in_dim) weight the dense path holds in flight (slice_rows's rule)."""
    rows = max(DENSE_SLICE_MIN_ROWS, DENSE_SLICE_BYTES // (dtype_bytes * in_dim))
    return min(rows, out_dim) * in_dim * dtype_bytes


def bytes_in_flight(in_dim: int, out_dim: int, dtype_bytes: int, lanes: int | None = None) -> int:
    """The dense slices of an (out_dim, in_dim) weight one call holds at once: two a lane (lane_count()
    unless given; the path dequantized ahead is one lane), at most the layer's own slices."""
    one = slice_bytes(in_dim, out_dim, dtype_bytes)
    slices = -(-out_dim * in_dim * dtype_bytes // one)
    return min(slices, 2 * (lanes or lane_count())) * one


def lane_count() -> int:
    """How many lanes the dense path runs its slices in: cpu_lanes.lane_count() when LANES, else 1 (each
    slice dequantized ahead on one stream, multiplied on every thread)."""
    return cpu_lanes.lane_count() if LANES else 1


def _dequantize_stream() -> mx.Stream:
    """The stream the path dequantized ahead on: the first lane's."""
    return cpu_lanes.lane_stream(0)


def dequantize_weight(layer: nn.QuantizedLinear, dtype: mx.Dtype) -> mx.array:
    """The layer's whole weight in `dtype`."""
    return dequantize_rows(layer, 0, layer.weight.shape[0], dtype)


def dequantize_rows(layer: nn.QuantizedLinear, start: int, stop: int, dtype: mx.Dtype,
                    after: mx.array | None = None) -> mx.array:
    """Output rows [start, stop) of the layer's weight in `dtype`, exactly as mx.dequantize computes them.

    For 4 and 8 bits the packed words are read as bytes (element order is the bytes' order on a
    little-endian machine; 4-bit bytes are first spread into one level a byte), then scaled and shifted
    by `_affine`: 3-4x faster than MLX's CPU dequantize kernel. 2 bits unpack with shifts of the 32-bit
    words; other widths straddle words and go through mx.dequantize.
    """
    packed, scales, biases = (layer[name][start:stop] for name in ("weight", "scales", "biases"))
    if after is not None:  # not before `after` is computed
        packed, scales, biases = mx.depends([packed, scales, biases], after)
    if layer.mode != "affine" or layer.bits not in (2, 4, 8) or (layer.bits != 2 and not _LITTLE_ENDIAN):
        # Scales cast first: with bfloat16 scales MLX rounds the result in bfloat16 whatever `dtype` says.
        return mx.dequantize(packed, scales.astype(dtype), biases.astype(dtype),
                             group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    if layer.bits == 2:
        shifts = mx.arange(0, 32, 2, dtype=mx.uint32)
        levels = ((packed[..., None] >> shifts) & 3).reshape(packed.shape[0], -1)
    else:
        levels = mx.view(packed, mx.uint8)
        if layer.bits == 4:
            levels = mx.view(_nibbles_to_bytes(levels), mx.uint8)
    return _affine(levels, scales, biases, layer.group_size, dtype)


_LITTLE_ENDIAN = sys.byteorder == "little"


@mx.compile
def _nibbles_to_bytes(packed: mx.array) -> mx.array:
    """Each byte's two 4-bit levels spread into the two bytes of a uint16 (low nibble first)."""
    wide = packed.astype(mx.uint16)
    return (wide & 15) | ((wide >> 4) << 8)


def _affine(levels: mx.array, scales: mx.array, biases: mx.array, group_size: int, dtype: mx.Dtype) -> mx.array:
    """levels * scale + bias per group, in `dtype`, rounded after the product and after the sum.

    Three of MLX's own elementwise ops, not one compiled pass: a compiled CPU kernel whose scale is
    broadcast along a group runs a scalar loop with runtime strides (about 0.45 ns a weight here),
    while the ops' casts are contiguous and their broadcast products run vectorized group by group
    (about 0.3 ns a weight, the intermediates reusing one buffer); the bits are the same, as neither
    fuses the product and the sum (benchmarks/dense_slices.py --compare dequantize).
    """
    rows = levels.shape[0]
    weight = levels.reshape(rows, -1, group_size).astype(dtype)
    weight = weight * scales.astype(dtype)[..., None]
    return (weight + biases.astype(dtype)[..., None]).reshape(rows, -1)


def quantized_matmul_kind(kind: str = "auto") -> str:
    """'dense' (dequantize, then BLAS matmul) on the CPU backend, MLX's 'native' kernel elsewhere."""
    if kind not in ("auto", "dense", "native"):
        raise InvalidRequest(f"unknown quantized matmul '{kind}': choose auto, dense or native")
    if kind == "auto":
        return "dense" if mx.default_device() == mx.cpu else "native"
    return kind


def use_dense_matmul(model: nn.Module) -> int:
    """Switch every QuantizedLinear in `model` to DenseQuantizedLinear (same parameters); returns the count.
    The tile kernel is built (or found) here, at load, not in the first step."""
    switched = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = DenseQuantizedLinear
            switched += 1
    if switched and TILE_KERNEL and mx.default_device() == mx.cpu:
        tile_kernel_ready()
    return switched
