"""core/quant: MLX's packed layout, the method interface, and the data-free methods against round-to-nearest."""

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn

from quantbench.core.errors import InvalidRequest
from quantbench.core.quant import (GROUP_SIZES, SUPPORTED_BITS, DenseQuantizedLinear, QuantSpec, all_methods,
                                   get_method, quantize_layer, quantize_weight)
from quantbench.core.quant.packing import pack, unpack

DATA_FREE = [name for name, method in all_methods().items() if not method.needs_calibration]


def _weights(kind: str, shape=(96, 256), seed=0) -> mx.array:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        w = rng.standard_normal(shape) * 0.02
    elif kind == "heavy-tailed":
        w = rng.standard_t(3, shape) * 0.02
    else:  # a few large outliers, as real transformer weights have
        w = rng.standard_normal(shape) * 0.02
        w[rng.random(shape) < 0.002] *= 40
    return mx.array(w.astype(np.float32)).astype(mx.bfloat16)


def _error(layer, weight) -> float:
    restored = mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                             group_size=layer.group_size, bits=layer.bits)
    return float(mx.mean(mx.square(restored - weight.astype(mx.float32))))


def test_round_to_nearest_is_first_and_every_method_is_one_file():
    assert list(all_methods())[0] == "rtn" and {"rtn", "mse", "hqq"} <= set(all_methods())
    with pytest.raises(InvalidRequest, match="unknown quantization method 'foo'"):
        get_method("foo")


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_packing_is_mlx_own_layout(bits):
    codes = mx.array(np.random.default_rng(bits).integers(0, 1 << bits, (8, 256)).astype(np.uint32))
    packed = pack(codes, bits)
    assert packed.shape == (8, 256 * bits // 32) and packed.dtype == mx.uint32
    assert mx.array_equal(unpack(packed, bits), codes)
    ones, zeros = mx.ones((8, 4)), mx.zeros((8, 4))
    assert mx.array_equal(mx.dequantize(packed, ones, zeros, group_size=64, bits=bits), codes.astype(mx.float32))


@pytest.mark.parametrize("method", DATA_FREE)
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_each_method_makes_valid_mlx_layers(method, bits, group_size):
    linear = nn.Linear(256, 96)
    linear.weight = _weights("outliers")
    layer = quantize_layer(linear, QuantSpec(bits, group_size, method))
    reference = nn.QuantizedLinear.from_linear(linear, group_size, bits)
    assert type(layer) is nn.QuantizedLinear and (layer.bits, layer.group_size) == (bits, group_size)
    for name in ("weight", "scales", "biases", "bias"):
        assert layer[name].shape == reference[name].shape and layer[name].dtype == reference[name].dtype
    # Dequantizing gives scale * code + bias with codes in range, and the layer computes with exactly that.
    codes = unpack(layer.weight, bits).reshape(96, -1, group_size).astype(mx.float32)
    assert int(mx.max(codes)) < (1 << bits)
    restored = (codes * layer.scales.astype(mx.float32)[..., None]
                + layer.biases.astype(mx.float32)[..., None]).reshape(96, 256)
    assert mx.allclose(restored, mx.dequantize(layer.weight, layer.scales.astype(mx.float32),
                                               layer.biases.astype(mx.float32), group_size=group_size, bits=bits))
    x = mx.random.normal((3, 256), key=mx.random.key(1))
    expected = x @ restored.T + linear.bias
    assert mx.allclose(layer(x), expected, atol=1e-2, rtol=1e-2)
    layer.__class__ = DenseQuantizedLinear
    assert mx.allclose(layer(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", [m for m in DATA_FREE if m != "rtn"])
@pytest.mark.parametrize("kind", ["gaussian", "heavy-tailed", "outliers"])
def test_data_free_methods_are_never_worse_than_round_to_nearest(method, kind):
    weight = _weights(kind, seed=3)
    linear = nn.Linear(256, 96, bias=False)
    linear.weight = weight
    for bits in SUPPORTED_BITS:
        for group_size in GROUP_SIZES:
            ours = _error(quantize_layer(linear, QuantSpec(bits, group_size, method)), weight)
            rtn = _error(quantize_layer(linear, QuantSpec(bits, group_size)), weight)
            assert ours <= rtn, (bits, group_size)
            if bits <= 4:  # where it matters, clearly better
                assert ours < 0.97 * rtn, (bits, group_size, ours / rtn)


def test_round_to_nearest_is_mlx_quantize_bit_for_bit():
    weight = _weights("gaussian")
    packed, scales, biases = quantize_weight(weight, QuantSpec(3, 32))
    expected = mx.quantize(weight, group_size=32, bits=3)
    assert all(mx.array_equal(a, b) for a, b in zip((packed, scales, biases), expected))


def test_a_method_that_needs_calibration_is_refused_without_statistics(monkeypatch):
    import quantbench.core.quant.methods as methods
    calibrated = methods.Method("needy", "test", all_methods()["rtn"].quantize, needs_calibration=True)
    monkeypatch.setattr(methods, "all_methods", lambda: {**all_methods(), "needy": calibrated})
    with pytest.raises(InvalidRequest, match="'4:needy' needs calibration"):
        quantize_weight(_weights("gaussian"), QuantSpec(4, 64, "needy"))


def test_constant_groups_quantize_exactly():
    weight = mx.concatenate([mx.zeros((4, 64)), mx.full((4, 64), 0.5)], axis=1).astype(mx.bfloat16)
    linear = nn.Linear(128, 4, bias=False)
    linear.weight = weight
    for method in DATA_FREE:
        assert _error(quantize_layer(linear, QuantSpec(2, 64, method)), weight) == 0.0
