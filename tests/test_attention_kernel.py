"""The CPU's attention kernel (core/blocks/attention_kernel.c): softmax(q k^T * scale) v with each block's
scores kept in a buffer of its thread's own. Tolerance against MLX's ops, and between the kernel's own AVX-512
products and BLAS's: float32 rounding (2e-6 of the output's scale; the sums are taken in another order); AVX-512
exp against plain C, any thread count, and (with its own products) any block of queries: none."""


import numpy as np
import pytest

import quantbench.core  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx

from quantbench.core.blocks import attention as attention_module
from quantbench.core.blocks import attention_kernel
from quantbench.core.blocks.attention import attention, scaled_dot_product_attention

pytestmark = pytest.mark.skipif(not attention_kernel.ready(),
                                reason=f"no attention kernel here: {attention_kernel.status().detail}")


def _heads(batch, heads, length, dim, seed):
    """(B, H, L, D) seen from (B, L, H, D), as the blocks hand attention its heads."""
    return mx.random.normal((batch, length, heads, dim), key=mx.random.key(seed)).transpose(0, 2, 1, 3)


def _by_mlx_ops(monkeypatch, *args, **kwargs) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(attention_module, "KERNEL", False)
        return np.array(scaled_dot_product_attention(*args, **kwargs))


def _kernel_only(monkeypatch):
    def no_ops(*_):
        raise AssertionError("MLX's ops ran")
    monkeypatch.setattr(attention_module, "heads_attention", no_ops)


@pytest.mark.parametrize("batch,heads,kv_heads,queries,keys,dim,block", [
    (1, 6, 6, 768, 768, 128, 256),  # Klein 4B's width-0.25 step at 256x256
    (2, 3, 3, 37, 53, 16, 8),  # odd sizes: blocks and exp's 16 lanes both end part-way (BLAS's products)
    (2, 3, 3, 37, 53, 32, 8),  # the same with the kernel's own products: rows and panels of keys end part-way
    (1, 2, 2, 21, 40, 64, 16),  # an odd number of key panels (the last one alone)
    (1, 8, 2, 40, 40, 32, 16),  # grouped keys: each key head serves four query heads
    (1, 1, 1, 300, 300, 64, 64),  # one head (a VAE's mid block): rows read where they lie, not packed
])
def test_the_kernel_computes_mlx_s_attention(batch, heads, kv_heads, queries, keys, dim, block, monkeypatch):
    q = _heads(batch, heads, queries, dim, 0)
    k, v = _heads(batch, kv_heads, keys, dim, 1), _heads(batch, kv_heads, keys, dim, 2)
    monkeypatch.setattr(attention_kernel, "BLOCK_QUERIES", block)
    expected = _by_mlx_ops(monkeypatch, q, k, v, dim ** -0.5) if kv_heads == heads else np.array(
        mx.fast.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5))
    _kernel_only(monkeypatch)
    got = np.array(scaled_dot_product_attention(q, k, v, dim ** -0.5))
    assert got.shape == (batch, heads, queries, dim)
    assert np.abs(got - expected).max() < 2e-6 * np.abs(expected).max()
    monkeypatch.setattr(attention_kernel, "VECTORS", False)
    assert np.array_equal(np.array(scaled_dot_product_attention(q, k, v, dim ** -0.5)), got)


def test_a_mask_over_keys_hides_them_and_a_row_with_none_left_averages(monkeypatch):
    """Padded prompt tokens (Qwen-Image, Z-Image) are a (B, 1, 1, keys) mask; the second prompt here hides
    every key, and its rows average the values rather than turning to NaN, as MLX's ops do."""
    q, k, v = _heads(2, 4, 50, 32, 3), _heads(2, 4, 70, 32, 4), _heads(2, 4, 70, 32, 5)
    keep = np.ones((2, 1, 1, 70), bool)
    keep[0, ..., 60:] = False
    keep[1] = False
    mask, one_mask = mx.array(keep), mx.array(keep[:1])  # one mask for both prompts: broadcast over the batch
    expected = _by_mlx_ops(monkeypatch, q, k, v, 0.2, mask)
    expected_one = _by_mlx_ops(monkeypatch, q, k, v, 0.2, one_mask)
    _kernel_only(monkeypatch)
    got = np.array(scaled_dot_product_attention(q, k, v, 0.2, mask))
    assert np.abs(got - expected).max() < 2e-6 * np.abs(expected).max()
    assert np.allclose(got[1], np.array(v[1]).mean(axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.array(scaled_dot_product_attention(q, k, v, 0.2, one_mask)), expected_one, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("dim", [16, 32])  # BLAS's products, the kernel's own
def test_any_number_of_threads_gives_the_same_bits(threads, dim, monkeypatch):
    q, k, v = (_heads(1, 5, 130, dim, seed) for seed in range(3))
    monkeypatch.setattr(attention_kernel, "BLOCK_QUERIES", 32)
    one = np.array(attention_kernel.attend(q, k, v, 0.25))
    monkeypatch.setattr(attention_kernel, "thread_count", lambda: threads)
    assert np.array_equal(np.array(attention_kernel.attend(q, k, v, 0.25)), one)


def test_own_products_give_the_same_bits_for_any_block_and_agree_with_blas_s(monkeypatch):
    """Each score and output value is one sum in order, whatever rows a block holds; BLAS's sums differ in order."""
    q, k, v = (_heads(2, 4, 150, 64, seed) for seed in range(3))
    results = []
    for block in (8, 40, 256):
        monkeypatch.setattr(attention_kernel, "BLOCK_QUERIES", block)
        results.append(np.array(attention_kernel.attend(q, k, v, 0.125)))
    assert all(np.array_equal(result, results[0]) for result in results[1:])
    monkeypatch.setattr(attention_kernel, "PRODUCTS", False)
    by_blas = np.array(attention_kernel.attend(q, k, v, 0.125))
    assert np.abs(by_blas - results[0]).max() < 2e-6 * np.abs(by_blas).max()


def test_each_rows_largest_score_is_taken_over_its_keys_alone(monkeypatch):
    """The own products note each row's largest score as they write them; the last panel of 16 keys is part
    empty (53 keys), and every score is negative, so counting the empty places (0) would shift every row's
    exponents: the plain C softmax, which looks for the largest itself, gives the same bits only if it is the
    same number."""
    q = mx.abs(_heads(1, 2, 19, 32, 10))
    k, v = -mx.abs(_heads(1, 2, 53, 32, 11)), _heads(1, 2, 53, 32, 12)
    got = np.array(attention_kernel.attend(q, k, v, 0.5))
    monkeypatch.setattr(attention_kernel, "VECTORS", False)
    assert np.array_equal(np.array(attention_kernel.attend(q, k, v, 0.5)), got)


def test_keys_past_a_cores_cache_are_multiplied_by_blas(monkeypatch):
    """The kernel's own products sweep a head's keys for every 8 queries: past OWN_PRODUCTS_KEY_BYTES (a large
    picture) BLAS's cache-blocked products run."""
    keys = attention_kernel.OWN_PRODUCTS_KEY_BYTES // (64 * 4) + 100
    assert attention_kernel.own_products(keys - 200, 64) and not attention_kernel.own_products(keys, 64)
    assert attention_kernel.own_products(768, 128) and not attention_kernel.own_products(768, 80)
    q, k, v = _heads(1, 1, 20, 64, 6), _heads(1, 1, keys, 64, 7), _heads(1, 1, keys, 64, 8)
    expected = _by_mlx_ops(monkeypatch, q, k, v, 0.125)
    got = np.array(attention_kernel.attend(q, k, v, 0.125))
    # An average of thousands of values: its rounding is the values' (1e-6 of their scale), not the small average's
    assert np.abs(got - expected).max() < 1e-6 * np.abs(np.array(v)).max()
    monkeypatch.setattr(attention_kernel, "PRODUCTS", False)
    assert np.array_equal(np.array(attention_kernel.attend(q, k, v, 0.125)), got)


def test_a_call_holds_no_scores_in_mlx_memory(monkeypatch):
    """MLX's ops hold a few chunks of scores at once (CACHE_SCORES each); the kernel's are its own, so a call's
    MLX peak is its output. The memory model counts none there."""
    q, k, v = (_heads(1, 1, 4096, 32, seed) for seed in range(3))
    mx.eval(q, k, v)
    output = 4096 * 32 * 4

    def peak() -> int:
        mx.eval(scaled_dot_product_attention(q, k, v, 0.2))
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        mx.eval(scaled_dot_product_attention(q, k, v, 0.2))
        return mx.get_peak_memory() - before
    assert peak() <= output + 4096
    assert attention_module.cpu_scores_held(1, 1, 4096, 4096) == 0
    monkeypatch.setattr(attention_module, "KERNEL", False)
    assert peak() > output + (1 << 20) and attention_module.cpu_scores_held(1, 1, 4096, 4096) > 0


def test_long_attention_keeps_its_blocks_small():
    """A 2048x2048 picture's VAE mid block attends 65,536 positions to 65,536: a block is 64 queries (16 MB of
    scores), where MLX's own CPU attention died at 2^32 scores."""
    assert attention_kernel.block_queries(65_536) * 65_536 * 4 <= attention_kernel.SCORE_BYTES
    assert attention_kernel.block_queries(768) == attention_kernel.BLOCK_QUERIES


def test_other_masks_dtypes_and_mx_compile_run_mlx_s_ops(monkeypatch):
    q, k, v = (_heads(1, 2, 24, 8, seed) for seed in range(3))
    query_mask = mx.random.uniform(shape=(1, 1, 24, 24), key=mx.random.key(8)) > 0.3
    assert not attention_kernel.supports(q, k, v, query_mask)
    assert not attention_kernel.supports(q, k, v, mx.zeros((1, 1, 1, 24)))  # additive masks: MLX's ops
    assert not attention_kernel.supports(*(t.astype(mx.bfloat16) for t in (q, k, v)), None)
    assert not attention_kernel.supports(q, k[:, :, :0], v[:, :, :0], None)  # no keys at all
    assert attention_kernel.supports(q, k, v, None)
    expected = _by_mlx_ops(monkeypatch, q, k, v, 0.3)
    compiled = mx.compile(lambda q, k, v: scaled_dot_product_attention(q, k, v, 0.3))
    assert np.allclose(np.array(compiled(q, k, v)), expected, atol=1e-6)


def test_a_block_s_attention_gives_its_heads_back_in_token_order(monkeypatch):
    """attention() over (B, L, H, D): the kernel writes (B, L, H, D) and the heads are joined without a copy."""
    q, k, v = (mx.random.normal((2, 33, 3, 16), key=mx.random.key(seed)) for seed in range(3))
    got = np.array(attention(q, k, v))
    monkeypatch.setattr(attention_module, "KERNEL", False)
    assert got.shape == (2, 33, 48) and np.allclose(got, np.array(attention(q, k, v)), atol=1e-6)
