"""Every size the fit check accepts must finish (issue 13, item 5): MLX's CPU attention dies with SIGFPE at
2^32 scores (65,536 positions, the VAE mid-block of a 2048x2048 picture), so long attention runs in chunks of
queries there, giving the same numbers up to float rounding. These are MLX's ops, which run where the C
attention kernel cannot (tests/test_attention_kernel.py has the kernel's own large-image test)."""

import mlx.core as mx
import pytest

from quantbench.core.blocks import attention as attention_module
from quantbench.core.blocks.attention import scaled_dot_product_attention
from quantbench.core.blocks.autoencoder_kl import SpatialSelfAttention


@pytest.fixture(autouse=True)
def mlx_ops(monkeypatch):
    monkeypatch.setattr(attention_module, "KERNEL", False)


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_attention_is_the_whole_attention(monkeypatch, masked):
    q, k, v = (mx.random.normal((1, 2, n, 16), key=mx.random.key(i)) for i, n in enumerate((300, 260, 260)))
    mask = (mx.random.uniform(shape=(1, 1, 300, 260), key=mx.random.key(7)) > 0.3) if masked else None
    whole = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 260 * 37)  # 37 queries a chunk: 9 chunks a head
    chunked = scaled_dot_product_attention(q, k, v, 0.25, mask=mask)
    assert mx.allclose(chunked, whole, rtol=1e-5, atol=1e-6)  # the BLAS blocks rows differently: rounding


def test_a_2048_pixel_picture_s_vae_attention_never_holds_2_to_the_32_scores(monkeypatch):
    """The shapes MLX is asked for at the size that crashed, recorded instead of computed."""
    calls = []

    def record(q, k, v, scale, mask=None):
        calls.append((q.shape[2], k.shape[2]))
        return mx.zeros(q.shape, dtype=q.dtype)

    monkeypatch.setattr(attention_module, "heads_attention", record)
    block = SpatialSelfAttention(64, 8)
    latents = mx.zeros((1, 256, 256, 64))  # a 2048x2048 picture's latents: 65,536 positions
    mx.eval(block(latents))
    assert sum(rows for rows, _ in calls) == 65_536 and len(calls) > 1
    assert max(rows * keys for rows, keys in calls) <= attention_module.CACHE_SCORES < 2**31


@pytest.mark.parametrize("lanes", [1, 2])
def test_chunked_attention_holds_a_few_chunks_of_scores_not_the_whole_head(lanes, monkeypatch):
    """One call's scores at a time (in lanes, one a lane), as the memory model counts them, and far less
    than the whole head's."""
    q, k, v = (mx.random.normal((1, 1, 4096, 32), key=mx.random.key(i)) for i in range(3))
    mx.eval(q, k, v)
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 1 << 18)  # 1 MiB of float32 scores a chunk, 64 MiB whole
    monkeypatch.setattr(attention_module, "lane_count", lambda: lanes)
    mx.eval(scaled_dot_product_attention(q, k, v, 0.2))
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(scaled_dot_product_attention(q, k, v, 0.2))
    held = mx.get_peak_memory() - before
    at_once = attention_module.cpu_scores_held(1, 1, 4096, 4096) * 4  # the chunks' scores in flight
    assert at_once == lanes * (1 << 20)
    assert held <= attention_module.SCORE_ARRAYS * at_once + (1 << 20)
    assert held < 4096 * 4096 * 4 / 3  # a fraction of the whole head's scores
