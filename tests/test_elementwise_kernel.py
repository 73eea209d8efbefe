"""The CPU's elementwise kernel (core/blocks/elementwise_kernel.c): the MLP's gated activations, the per-head RMS
norms with their rotary embedding, and the modulated LayerNorm, on every core, written where the caller says.
Tolerances: the activations are fast_math's bits (the same polynomial, the same operations in the same order);
the norms are MLX's to float32 rounding (their sums are taken in another order: 1e-6 of the output's scale);
AVX-512 against plain C, and any thread count: none."""


import numpy as np
import pytest

import quantbench.core  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx

from quantbench.core.blocks import elementwise_kernel, fast_math
from quantbench.core.blocks.attention import attention, attention_beside
from quantbench.core.blocks.modulation import norm_modulate
from quantbench.core.blocks.rope import apply_rope, normed_rope

pytestmark = pytest.mark.skipif(not elementwise_kernel.ready(),
                                reason=f"no elementwise kernel here: {elementwise_kernel.status().detail}")


def _normal(shape, seed, scale=1.0):
    return mx.random.normal(shape, key=mx.random.key(seed)) * scale


def _by_mlx_ops(monkeypatch, run):
    with monkeypatch.context() as patch:
        patch.setattr(elementwise_kernel, "KERNEL", False)
        return np.array(run())


def _same_in_plain_c_and_one_thread(monkeypatch, run, got):
    for setting in (("VECTORS", False), ("ONE_THREAD_BELOW", 0)):
        with monkeypatch.context() as patch:
            patch.setattr(elementwise_kernel, *setting)
            assert np.array_equal(np.array(run()), got), setting
    with monkeypatch.context() as patch:
        patch.setattr(elementwise_kernel, "thread_count", lambda: 5)
        patch.setattr(elementwise_kernel, "ONE_THREAD_BELOW", 0)
        assert np.array_equal(np.array(run()), got)


@pytest.mark.parametrize("function", [fast_math.swiglu, fast_math.gelu_approx])
@pytest.mark.parametrize("shape", [(1, 768, 2 * 2304), (2, 37, 2 * 21), (300, 2 * 53)])
def test_activations_are_fast_maths_bits(function, shape, monkeypatch):
    """Klein 4B's SwiGLU at width 0.25, 256x256; odd widths, whose last 16 lanes end part-way; a 2-axis input.
    Values past exp's range (x 40) take the clamped branches."""
    x = _normal(shape, 0, 40.0)
    expected = _by_mlx_ops(monkeypatch, lambda: function(x))
    got = np.array(function(x))
    assert np.array_equal(got, expected)
    _same_in_plain_c_and_one_thread(monkeypatch, lambda: function(x), got)


def test_silu_of_one_projection_times_another_is_swiglu_of_the_two_side_by_side(monkeypatch):
    """Z-Image's feed-forward: the gate and the value from projections of their own, the numbers of SwiGLU over
    their concatenation (MLX's ops or the kernel alike)."""
    gate, value = _normal((1, 50, 40), 22, 30.0), _normal((1, 50, 40), 23)
    expected = np.array(fast_math.swiglu(mx.concatenate([gate, value], axis=-1)))
    got = np.array(fast_math.silu_times(gate, value))
    assert np.array_equal(got, expected)
    assert np.array_equal(_by_mlx_ops(monkeypatch, lambda: fast_math.silu_times(gate, value)), expected)
    _same_in_plain_c_and_one_thread(monkeypatch, lambda: fast_math.silu_times(gate, value), got)


def test_an_activation_reads_a_slice_of_columns_and_writes_into_one():
    """The fused projection's MLP columns in, the output projection's input columns out: nothing else touched."""
    fused = _normal((2, 40, 3 * 32 + 2 * 48), 1, 3.0)
    mlp = fused[..., 3 * 32:]
    from quantbench.core.cpu_kernels import evaluated_output
    out, written = evaluated_output((2, 40, 32 + 48))
    assert elementwise_kernel.activation("swiglu", mlp, into=written[..., 32:]) is True
    assert np.array_equal(np.array(out)[..., 32:], np.array(fast_math.swiglu(mx.contiguous(mlp))))
    assert not np.array(out)[..., :32].any()


@pytest.mark.parametrize("batch,length,heads,dim,tables", [
    (1, 768, 6, 128, "shared"),  # Klein 4B's queries at width 0.25, 256x256
    (2, 33, 3, 40, "per item"),  # a head not a multiple of 16 lanes (plain C); tables for each item
    (1, 20, 2, 16, None),  # the norm alone
])
def test_norm_and_rope_are_mlx_s_to_float32_rounding(batch, length, heads, dim, tables, monkeypatch):
    fused = _normal((batch, length, 3 * heads * dim), 2, 5.0)  # q as the fused projection's first columns
    q = fused[..., : heads * dim].reshape(batch, length, heads, dim)
    weight = _normal((dim,), 3)
    rope = None if tables is None else tuple(
        _normal((length, dim) if tables == "shared" else (batch, length, dim), seed) for seed in (4, 5))

    def run():
        normed = mx.fast.rms_norm(q, weight, 1e-6)
        if rope is None:
            got = elementwise_kernel.norm_rope(q, weight, 1e-6)
            return got if got is not None else normed
        from quantbench.core.blocks.rope import apply_rope as rotate
        got = elementwise_kernel.norm_rope(q, weight, 1e-6, *rope)
        return got if got is not None and elementwise_kernel.KERNEL else rotate(normed, *rope)

    expected = _by_mlx_ops(monkeypatch, run)
    got = np.array(run())
    assert got.shape == (batch, length, heads, dim)
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()
    _same_in_plain_c_and_one_thread(monkeypatch, run, got)


def test_a_joint_blocks_text_and_image_heads_are_normed_rotated_and_joined(monkeypatch):
    """[text, image] queries each with its own norm, rotated by the joint sequence's tables: written into their rows of
    one array, the numbers of the norms, the concatenation and the rotation by MLX's ops."""
    import mlx.nn as nn

    text, image = _normal((1, 7, 2, 32), 6), _normal((1, 9, 2, 32), 7)
    norms = [nn.RMSNorm(32), nn.RMSNorm(32)]
    norms[0].weight, norms[1].weight = _normal((32,), 8), _normal((32,), 9)
    cos, sin = _normal((16, 32), 10), _normal((16, 32), 11)
    expected = np.array(apply_rope(mx.concatenate([norms[0](text), norms[1](image)], axis=1), cos, sin))
    got = np.array(normed_rope([(norms[0], text), (norms[1], image)], cos, sin))
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()
    assert np.array_equal(_by_mlx_ops(monkeypatch, lambda: normed_rope([(norms[0], text), (norms[1], image)], cos, sin)),
                          expected)


@pytest.mark.parametrize("modulations", [1, 2])
def test_the_modulated_norm_is_mlx_s_to_float32_rounding(modulations, monkeypatch):
    """One modulation for the batch, or one an item; shift and scale are columns of the modulation's output."""
    x = _normal((2, 50, 96), 12, 4.0) + 3.0
    chunks = _normal((modulations, 1, 6 * 96), 13)
    shift, scale = chunks[..., :96], chunks[..., 96:192]
    expected = _by_mlx_ops(monkeypatch, lambda: norm_modulate(x, shift, scale, 1e-6))
    got = np.array(norm_modulate(x, shift, scale, 1e-6))
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()
    _same_in_plain_c_and_one_thread(monkeypatch, lambda: norm_modulate(x, shift, scale, 1e-6), got)


@pytest.mark.parametrize("activation,width", [("swiglu", 2 * 48), ("gelu_tanh", 48)])
def test_attention_beside_the_mlp_is_their_concatenation(activation, width, monkeypatch):
    """A parallel block's attention output and MLP activation in one array, as MLX's ops concatenate them (the
    attention kernel's tolerance: 2e-6 of the output's scale)."""
    q, k, v = (_normal((1, 30, 3, 16), seed) for seed in (14, 15, 16))
    hidden = _normal((1, 30, width), 17, 3.0)
    got = np.array(attention_beside(q, k, v, hidden, activation))
    expected = np.concatenate([np.array(attention(q, k, v)),
                               np.array(fast_math.swiglu(hidden) if activation == "swiglu" else fast_math.gelu_approx(hidden))],
                              axis=-1)
    assert got.shape == expected.shape == (1, 30, 48 + 48)
    assert np.abs(got - expected).max() <= 2e-6 * np.abs(expected).max()
    assert np.allclose(_by_mlx_ops(monkeypatch, lambda: attention_beside(q, k, v, hidden, activation)), expected,
                       atol=2e-6 * np.abs(expected).max())
    compiled = mx.compile(lambda *arrays: attention_beside(*arrays, activation))  # cannot evaluate: MLX's ops
    assert np.allclose(np.array(compiled(q, k, v, hidden)), expected, atol=2e-6 * np.abs(expected).max())


def test_inside_mx_compile_and_other_dtypes_mlx_s_ops_run():
    x = _normal((4, 2 * 24), 18)
    assert elementwise_kernel.activation("swiglu", x.astype(mx.bfloat16)) is None
    compiled = mx.compile(lambda x: fast_math.swiglu(x))
    assert np.array_equal(np.array(compiled(x)), np.array(fast_math.swiglu(x)))
    q = _normal((1, 4, 2, 16), 19)
    assert elementwise_kernel.norm_rope(q.astype(mx.float16), None, 1e-6) is None
    assert np.allclose(np.array(mx.compile(lambda q: normed_rope([(_rms(16), q)], mx.ones((4, 16)), mx.zeros((4, 16))))(q)),
                       np.array(mx.fast.rms_norm(q, mx.ones((16,)), 1e-5)), atol=1e-6)


def _rms(dim):
    import mlx.nn as nn
    return nn.RMSNorm(dim)


def test_a_denoising_step_is_the_mlx_ops_step_to_float32_rounding(tmp_path, monkeypatch):
    """A whole FLUX.2 transformer pass (fused single blocks and joint ones) with the kernel, against the same pass with
    MLX's ops: 1e-5 of the output's scale. (Every family's parity test against diffusers runs with the kernel.)"""
    from quantbench.core.component_loading import ComponentLoader
    from quantbench.core.families import family_for_folder
    from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids
    from quantbench.core.random_model import write_random_model

    folder = write_random_model(tmp_path / "tiny", "tiny", seed=5)
    transformer = ComponentLoader(family_for_folder(folder), folder, mx.float32, None, None, "dense").transformer()
    cfg = transformer.config
    x, txt = _normal((1, 16, cfg.in_channels), 20), _normal((1, 24, cfg.joint_attention_dim), 21)
    rope = transformer.rope(text_position_ids(24), image_position_ids(4, 4))
    expected = _by_mlx_ops(monkeypatch, lambda: transformer(x, txt, mx.array([0.7]), rope))
    got = np.array(transformer(x, txt, mx.array([0.7]), rope))
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert not np.array_equal(got, expected)  # the kernel ran: its norms' last bits are not MLX's
