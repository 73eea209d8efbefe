"""The faster denoising step draws the same numbers: the compiled elementwise functions (RoPE, modulation,
SwiGLU) and the CPU's attention a group of heads at a time are bitwise the plain step's. Tolerance: none
(array_equal), which the golden images check for whole pictures as well."""

import mlx.core as mx
import numpy as np
import pytest

from quantbench.core.blocks import attention as attention_module
from quantbench.core.blocks.attention import scaled_dot_product_attention
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_for_folder
from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    folder = write_random_model(tmp_path_factory.mktemp("tiny") / "tiny", "tiny", seed=3)
    return ComponentLoader(family_for_folder(folder), folder, mx.float32, None, None, "dense").transformer()


def _step(transformer):
    rng = np.random.default_rng(0)
    cfg = transformer.config
    x = mx.array(rng.standard_normal((1, 16, cfg.in_channels), dtype=np.float32))
    txt = mx.array(rng.standard_normal((1, 24, cfg.joint_attention_dim), dtype=np.float32))
    rope = transformer.rope(text_position_ids(24), image_position_ids(4, 4))
    out = transformer(x, txt, mx.array([0.7]), rope)
    mx.eval(out)
    return out


def test_the_compiled_step_is_bitwise_the_uncompiled_one(transformer, monkeypatch):
    compiled = _step(transformer)
    mx.disable_compile()
    try:
        plain = _step(transformer)
    finally:
        mx.enable_compile()
    assert mx.array_equal(compiled, plain)


def test_attention_by_groups_of_heads_is_bitwise_the_whole_attention(transformer, monkeypatch):
    whole = _step(transformer)
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 40 * 40)  # one head (40 positions) a group
    assert mx.array_equal(_step(transformer), whole)


@pytest.mark.parametrize("mask_shape", [None, (1, 1, 1, 90), (1, 6, 70, 90)])
def test_grouped_heads_see_their_own_part_of_the_mask(monkeypatch, mask_shape):
    q, k, v = (mx.random.normal((1, 6, n, 16), key=mx.random.key(i)) for i, n in enumerate((70, 90, 90)))
    mask = None if mask_shape is None else mx.random.uniform(shape=mask_shape, key=mx.random.key(9)) > 0.2
    whole = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 2 * 70 * 90)  # three groups of two heads
    calls = []
    fast = mx.fast.scaled_dot_product_attention
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[1]) or fast(q, *a, **k))
    assert mx.array_equal(scaled_dot_product_attention(q, k, v, 0.25, mask=mask), whole)
    assert calls == [2, 2, 2]


def test_the_memory_model_counts_the_scores_the_cpu_attention_holds(monkeypatch):
    """One group of heads' scores at a time: 1024x1024 Klein (4,608 positions, 24 heads) holds one head's."""
    from quantbench.core.blocks.attention import cpu_scores_held

    assert cpu_scores_held(1, 24, 4608, 4608) == 4608 * 4608
    assert cpu_scores_held(1, 24, 768, 768) == 768 * 768  # one head: 590k scores, under CACHE_SCORES alone
    assert cpu_scores_held(1, 24, 200, 200) == 24 * 200 * 200  # every head fits the cache: one call
    held = []
    fast = mx.fast.scaled_dot_product_attention
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention",
                        lambda q, k, *a, **kw: held.append(q.shape[1] * q.shape[2] * k.shape[2]) or fast(q, k, *a, **kw))
    q = mx.zeros((1, 6, 500, 8))
    mx.eval(scaled_dot_product_attention(q, q, q, 0.3))
    assert max(held) == cpu_scores_held(1, 6, 500, 500)
