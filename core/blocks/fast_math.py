"""exp, a softmax's weights and the activations built on exp (SiLU, SwiGLU, tanh-GELU), fast on MLX's CPU.

MLX's CPU kernels evaluate `exp` (and `sigmoid`, `tanh`, `softmax`, which use it) one element at a time,
calling the C library for each `fma` and `floor` of its polynomial: about 9 ns an element here, where
torch and NumPy take 0.3 ns. A denoising step spent most of its attention time in the softmax's exp,
and a good part of the rest in SiLU. The same kind of polynomial written as plain MLX arithmetic (a
multiply and an add per term, rounding by the 1.5 * 2**23 trick, the power of two put into the float's
exponent bits) and `mx.compile`d becomes loops that the C++ compiler vectorizes: about 10x faster
(benchmarks/attention_ops.py). Three things keep them vectorized and small:
- the input is clamped to exp's float32 range by MLX's own `clip`, before the compiled function: a
  compare in the fused loop (a min, a max, a select) stops GCC from vectorizing it;
- reinterpreting the exponent bits as a float ends a fused kernel, so exp is two passes (the bits, then
  the polynomial times them), and the second reads n back from the bits rather than keeping it as one
  more whole-size array;
- the polynomial is evaluated by Estrin's scheme, not Horner's: mx.compile fuses at most 11 dependent
  operations into one kernel, and a longer chain would write its middle out as another array.

Accuracy: the Cephes polynomial for 2**f on [-1/2, 1/2] (the coefficients MLX's own exp uses): as close
to float64's exp as MLX's exp (3.9e-6 relative at most, at the ends of float32's range; under 1e-6 for
|x| < 10). Below -87 exp gives 1.6e-38 rather than 0: no softmax weight or activation notices. Compiled
or not, the functions give the same bits (tests/test_fast_math.py). On Metal and CUDA MLX's own kernels
are fast, and run as they are.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import elementwise_kernel

_LOG2_E = 1.4426950408889634
_ROUND = 12582912.0  # 1.5 * 2**23: adding and subtracting it rounds a float32 below 2**22 to an integer
_LOWEST, _HIGHEST = -87.0, 88.0  # exp's argument range in float32 (normal results)
# exp(x) = 2**n * 2**f, n = round(x * log2(e)), f in [-1/2, 1/2]; 2**f by the Cephes polynomial, lowest
# term first.
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = (1.0, 6.931472028550421e-1, 2.402264791363012e-1, 5.550332471162809e-2,
                                     9.618437357674640e-3, 1.339887440266574e-3, 1.535336188319500e-4)
_GELU_INPUT = 9.5  # |x| beyond which tanh-GELU's exp argument would leave exp's range (x or 0 there anyway)
MASKED = -3.0e38  # a masked attention score: finite, so a row with every key masked averages, never NaN


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def _exp_in_range(x: mx.array) -> mx.array:
    """e**x for x in [_LOWEST, _HIGHEST] (clamped by the caller), inside a compiled function."""
    n = (x * _LOG2_E + _ROUND) - _ROUND
    bits = mx.left_shift(n.astype(mx.int32) + 127, 23)
    n = (mx.right_shift(bits, 23) - 127).astype(mx.float32)  # n again, from the bits (see the module's note)
    f = x * _LOG2_E - n
    f2 = f * f
    p = (_C0 + _C1 * f) + f2 * (_C2 + _C3 * f) + (f2 * f2) * ((_C4 + _C5 * f) + _C6 * f2)
    return p * bits.view(mx.float32)


_compiled_exp = mx.compile(_exp_in_range)


def exp(x: mx.array) -> mx.array:
    if not on_cpu():
        return mx.exp(x)
    return _compiled_exp(mx.clip(x.astype(mx.float32), _LOWEST, _HIGHEST)).astype(x.dtype)


@mx.compile
def _clamped_difference(scores: mx.array, row_max: mx.array) -> mx.array:
    return mx.maximum(scores - row_max, _LOWEST)


def exp_of_difference(scores: mx.array, row_max: mx.array) -> mx.array:
    """exp(scores - row_max), a softmax's unnormalized weights (the difference is at most 0). The difference
    and its clamp are one compiled pass of their own (0.04 ms against 0.08 for the two ops, 196k scores):
    in exp's own loop the compare would stop the vectorizing (see the module's note)."""
    if not on_cpu():
        return mx.exp(scores - row_max)
    return _compiled_exp(_clamped_difference(scores, row_max))


@mx.compile
def _silu(x: mx.array, clamped: mx.array) -> mx.array:
    return x / (1 + _exp_in_range(-clamped))


@mx.compile
def _swiglu(gate: mx.array, clamped: mx.array, value: mx.array) -> mx.array:
    return (gate * value) / (1 + _exp_in_range(-clamped))


@mx.compile
def _gelu_approx(x: mx.array, clamped: mx.array) -> mx.array:
    # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
    return x / (1 + _exp_in_range(-1.5957691216057308 * (clamped + 0.044715 * clamped * clamped * clamped)))


def _fast(x: mx.array) -> bool:
    return on_cpu() and x.dtype == mx.float32


def silu(x: mx.array) -> mx.array:
    """x * sigmoid(x)."""
    return _silu(x, mx.clip(x, -_HIGHEST, -_LOWEST)) if _fast(x) else nn.silu(x)


def swiglu(x: mx.array) -> mx.array:
    """silu(first half of the last axis) * second half. On the CPU, the C kernel's pass on every core where it runs
    (elementwise_kernel.py: the same bits)."""
    if _fast(x) and (out := elementwise_kernel.activation("swiglu", x)) is not None:
        return out
    gate, value = mx.split(x, 2, axis=-1)
    if not _fast(x):
        return nn.silu(gate) * value
    return _swiglu(gate, mx.clip(gate, -_HIGHEST, -_LOWEST), value)


def silu_times(gate: mx.array, value: mx.array) -> mx.array:
    """silu(gate) * value: SwiGLU with the gate and the value from projections of their own (Z-Image's w1, w3); the
    same numbers as swiglu's (not silu(gate) * value's, whose rounding differs in the last bit); on the CPU, as
    swiglu."""
    if _fast(gate) and (out := elementwise_kernel.activation("swiglu", gate, value=value)) is not None:
        return out
    if not (_fast(gate) and value.dtype == mx.float32):
        return nn.silu(gate) * value
    return _swiglu(gate, mx.clip(gate, -_HIGHEST, -_LOWEST), value)


def gelu_approx(x: mx.array) -> mx.array:
    """GELU, tanh approximation (torch's approximate="tanh", transformers' gelu_new); on the CPU, as swiglu."""
    if _fast(x) and (out := elementwise_kernel.activation("gelu_tanh", x)) is not None:
        return out
    return _gelu_approx(x, mx.clip(x, -_GELU_INPUT, _GELU_INPUT)) if _fast(x) else nn.gelu_approx(x)
