"""fast_math's exp and what is built on it give MLX's numbers to float32 rounding, compiled or not, and the
CPU attention built on it gives mx.fast's attention. Tolerances: exp as close to float64's as MLX's own
exp (3.9e-6 relative at most, near the ends of float32's range; 1e-6 for |x| < 10); activations within 2e-6 of mlx.nn's; attention within
rtol 1e-5, atol 1e-6 of mx.fast.scaled_dot_product_attention (the same as chunked against whole attention,
tests/test_large_images.py)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from quantbench.core.blocks import fast_math
from quantbench.core.blocks.attention import scaled_dot_product_attention


def _inputs(scale: float = 6.0) -> mx.array:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200_000) * scale, np.linspace(-87, 88, 50_001)])
    return mx.array(values.astype(np.float32))


def test_exp_is_as_close_to_float64_exp_as_mlx_s_own():
    x = _inputs()
    want = np.exp(np.asarray(x, dtype=np.float64))
    ours = np.abs(np.asarray(mx.compile(fast_math.exp)(x), dtype=np.float64) - want) / want
    mlx_own = np.abs(np.asarray(mx.exp(x), dtype=np.float64) - want) / want
    assert ours.max() < 1.05 * mlx_own.max() < 4.1e-6  # at |x| near 88: float32's x * log2(e) rounds
    assert ours[np.abs(np.asarray(x)) < 10].max() < 1e-6  # where attention scores and activations live
    assert np.median(ours) < 1.2e-7


def test_exp_far_below_zero_is_negligible_and_never_nan():
    got = np.asarray(mx.compile(fast_math.exp)(mx.array([-1000.0, -88.0, -200.0, 0.0])))
    assert np.all(got[:3] < 2e-38) and got[3] == 1.0
    assert not np.isnan(got).any()


@pytest.mark.parametrize("name, reference", [
    ("silu", nn.silu),
    ("gelu_approx", nn.gelu_approx),
    ("swiglu", lambda x: nn.silu(mx.split(x, 2, axis=-1)[0]) * mx.split(x, 2, axis=-1)[1]),
])
def test_activations_are_mlx_s_to_float32_rounding(name, reference):
    x = _inputs(3.0)[:250_000].reshape(1, 1000, 250)
    got, want = getattr(fast_math, name)(x), reference(x)
    assert mx.allclose(got, want, rtol=2e-6, atol=2e-6).item()


@pytest.mark.parametrize("name", ["silu", "gelu_approx", "swiglu"])
def test_compiled_activations_are_bitwise_the_uncompiled_ones(name):
    x = _inputs(3.0)[:250_000].reshape(1, 1000, 250)
    compiled = getattr(fast_math, name)(x)
    mx.disable_compile()
    try:
        plain = getattr(fast_math, name)(x)
    finally:
        mx.enable_compile()
    assert mx.array_equal(compiled, plain)


@pytest.mark.parametrize("mask_kind", [None, "keys", "full", "additive"])
def test_cpu_attention_is_mx_fast_attention(mask_kind):
    q, k, v = (mx.random.normal((2, 3, n, 32), key=mx.random.key(i)) for i, n in enumerate((70, 90, 90)))
    shape = {"keys": (2, 1, 1, 90), "full": (2, 3, 70, 90), "additive": (1, 1, 70, 90)}.get(mask_kind)
    mask = None
    if mask_kind == "additive":
        mask = mx.triu(mx.full((70, 90), -mx.inf), k=1)[None, None]
    elif mask_kind is not None:
        mask = mx.random.uniform(shape=shape, key=mx.random.key(9)) > 0.3
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.2, mask=mask)
    got = scaled_dot_product_attention(q, k, v, 0.2, mask=mask)
    assert mx.allclose(got, want, rtol=1e-5, atol=1e-6).item()


def test_a_query_with_every_key_masked_averages_the_values():
    q, k, v = (mx.random.normal((1, 1, 4, 8), key=mx.random.key(i)) for i in range(3))
    mask = mx.array([[True] * 4, [False] * 4, [True, False, True, False], [True] * 4])[None, None]
    out = scaled_dot_product_attention(q, k, v, 0.5, mask=mask)
    assert mx.allclose(out[0, 0, 1], v[0, 0].mean(axis=0), atol=1e-6).item()
