"""The dense CPU path: quantized layers that dequantize their weight and run a BLAS matmul."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..errors import InvalidRequest


class DenseQuantizedLinear(nn.QuantizedLinear):
    """A quantized Linear that dequantizes its weight and runs a dense matmul.

    On MLX's CPU backend the quantized matmul kernel does not use BLAS (a few GFLOP/s); dequantizing
    one layer's weight at a time and calling the BLAS matmul is tens of times faster, and the weights
    stay quantized in memory (only one layer's dense copy exists at a time).
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ dequantize_weight(self, x.dtype).T
        return y + self["bias"] if "bias" in self else y


def dequantize_weight(layer: nn.QuantizedLinear, dtype: mx.Dtype) -> mx.array:
    """The layer's weight in `dtype`. For 2, 4 and 8 bits, unpacking with plain array ops is about twice
    as fast as MLX's CPU dequantize kernel (and exact in float32); other widths straddle 32-bit words."""
    if layer.bits not in (2, 4, 8) or layer.mode != "affine":
        # Scales cast first: with bfloat16 scales MLX rounds the result in bfloat16 whatever `dtype` says.
        return mx.dequantize(layer.weight, layer.scales.astype(dtype), layer.biases.astype(dtype),
                             group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    packed = layer.weight
    shifts = mx.arange(0, 32, layer.bits, dtype=mx.uint32)
    values = (packed[..., None] >> shifts) & ((1 << layer.bits) - 1)
    values = values.reshape(packed.shape[0], -1, layer.group_size).astype(dtype)
    weight = values * layer.scales.astype(dtype)[..., None] + layer.biases.astype(dtype)[..., None]
    return weight.reshape(packed.shape[0], -1)


def quantized_matmul_kind(kind: str = "auto") -> str:
    """'dense' (dequantize, then BLAS matmul) on the CPU backend, MLX's 'native' kernel elsewhere."""
    if kind not in ("auto", "dense", "native"):
        raise InvalidRequest(f"unknown quantized matmul '{kind}': choose auto, dense or native")
    if kind == "auto":
        return "dense" if mx.default_device() == mx.cpu else "native"
    return kind


def use_dense_matmul(model: nn.Module) -> int:
    """Switch every QuantizedLinear in `model` to DenseQuantizedLinear (same parameters); returns the count."""
    switched = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = DenseQuantizedLinear
            switched += 1
    return switched
