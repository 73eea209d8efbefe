"""The faster denoising step draws the same numbers: the compiled elementwise functions (RoPE, modulation,
SwiGLU, fast_math's exp) and the CPU's attention a group of heads at a time are bitwise the plain step's.
Tolerance: none (array_equal), which the golden images check for whole pictures as well. One exception:
OpenBLAS's AVX-512 cores multiply small matrices with kernels of their own, summed in another order, so
a product's last bits there depend on its shape; attention by groups of heads is then held to float32
rounding (1e-5 of the output's scale) instead."""

import contextlib
import io

import mlx.core as mx
import numpy as np
import pytest

from quantbench.core.blocks import attention as attention_module
from quantbench.core.blocks.attention import scaled_dot_product_attention
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.cpu_blas import blas_status
from quantbench.core.families import family_for_folder
from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids
from quantbench.core.random_model import write_random_model


@pytest.fixture
def mlx_ops(monkeypatch):
    """Attention by MLX's ops (what runs where the C attention kernel cannot: no compiler, masks over queries)."""
    monkeypatch.setattr(attention_module, "KERNEL", False)


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


# OpenBLAS cores with small-matrix kernels of their own (AVX-512), whose products' last bits follow the shape.
SHAPED_BITS_CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")


def _bits_follow_shape() -> bool:
    status = blas_status()
    return status.blas == "openblas" and status.core in SHAPED_BITS_CORES


def test_attention_by_groups_of_heads_is_bitwise_the_whole_attention(transformer, monkeypatch, mlx_ops):
    whole = _step(transformer)
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 40 * 40)  # one head (40 positions) a group
    grouped = _step(transformer)
    if _bits_follow_shape():
        scale = mx.abs(whole).max().item()
        assert mx.abs(grouped - whole).max().item() <= 1e-5 * scale
    else:
        assert mx.array_equal(grouped, whole)


@pytest.mark.parametrize("mask_shape", [None, (1, 1, 1, 90), (1, 6, 70, 90)])
def test_grouped_heads_see_their_own_part_of_the_mask(monkeypatch, mask_shape, mlx_ops):
    q, k, v = (mx.random.normal((1, 6, n, 16), key=mx.random.key(i)) for i, n in enumerate((70, 90, 90)))
    mask = None if mask_shape is None else mx.random.uniform(shape=mask_shape, key=mx.random.key(9)) > 0.2
    whole = scaled_dot_product_attention(q, k, v, 0.25, mask=mask)  # six heads: one group
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 2 * 70 * 90)  # three groups of two heads
    calls = []
    heads = attention_module.heads_attention
    monkeypatch.setattr(attention_module, "heads_attention", lambda q, *a: calls.append(q.shape[1]) or heads(q, *a))
    assert mx.array_equal(scaled_dot_product_attention(q, k, v, 0.25, mask=mask), whole)
    assert calls == [2, 2, 2]


@pytest.mark.parametrize("masked", [False, True])
def test_attention_calls_run_in_lanes_each_on_a_stream_of_its_own(masked, monkeypatch, mlx_ops):
    """On the CPU the calls (here one head's chunks of queries) run in lanes, each lane a stream and a
    one-thread BLAS of its own, so both cores do the softmax's elementwise work too: the same numbers as
    the calls one after another on the same one-thread BLAS, bit for bit, and BLAS's threads given back."""
    from quantbench.core import cpu_blas

    q, k, v = (mx.random.normal((1, 3, 600, 16), key=mx.random.key(i)) for i in range(3))
    mask = (mx.random.uniform(shape=(1, 1, 600, 600), key=mx.random.key(9)) > 0.3) if masked else None
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 100 * 600)  # six chunks of 100 queries a head
    monkeypatch.setattr(attention_module, "lane_count", lambda: 1)
    with cpu_blas.one_thread_blas():
        one_lane = np.array(scaled_dot_product_attention(q, k, v, 0.25, mask))
    whole = np.array(mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask))
    monkeypatch.setattr(attention_module, "lane_count", lambda: 2)
    streams, heads = [], attention_module.heads_attention
    monkeypatch.setattr(attention_module, "heads_attention",
                        lambda *a: streams.append(mx.default_stream(mx.default_device())) or heads(*a))
    threads = cpu_blas.blas_threads()
    laned = np.array(scaled_dot_product_attention(q, k, v, 0.25, mask))
    assert np.array_equal(laned, one_lane)
    assert np.abs(laned - whole).max() < 1e-5
    assert cpu_blas.blas_threads() == threads
    assert len(streams) == 18 and streams[0] != streams[1] and mx.default_stream(mx.default_device()) not in streams
    assert streams == streams[:2] * 9


def _evaluated(array: mx.array) -> bool:
    """Whether `array` is computed already: an evaluated array's graph is itself alone, with no edges."""
    graph = io.StringIO()
    mx.export_to_dot(graph, array)
    return "->" not in graph.getvalue()


def test_the_products_before_attention_in_lanes_run_on_every_blas_thread(monkeypatch, mlx_ops):
    """The lanes multiply on a one-thread BLAS; the attention's lazy inputs (an unquantized step's whole
    graph since the last evaluation: projections, the last block's MLP) are evaluated before that, on
    every thread. Left lazy, they ran inside the lanes' first evaluation on one core: a full-size
    unquantized step at 256x256 took 61-67 s where it took 27-28 s before the lanes."""
    from quantbench.core import cpu_lanes

    x, w = mx.random.normal((600, 48)), mx.random.normal((48, 48))
    q, k, v = ((x @ (w * scale)).reshape(1, 600, 3, 16).transpose(0, 2, 1, 3) for scale in (1.0, 0.5, 0.25))
    monkeypatch.setattr(attention_module, "CACHE_SCORES", 100 * 600)
    monkeypatch.setattr(attention_module, "lane_count", lambda: 2)
    seen, narrowed = [], cpu_lanes.one_thread_blas

    @contextlib.contextmanager
    def watched():
        seen.append([_evaluated(a) for a in (q, k, v)])
        with narrowed():
            yield
    monkeypatch.setattr(cpu_lanes, "one_thread_blas", watched)
    out = scaled_dot_product_attention(q, k, v, 0.25)
    mx.eval(out)
    assert seen == [[True, True, True]]


def test_the_memory_model_counts_the_scores_the_cpu_attention_holds(monkeypatch, mlx_ops):
    """One call's scores at a time: 1024x1024 Klein (4,608 positions, 24 heads) holds
    a chunk of one head's queries, about CACHE_SCORES scores, where a whole head's scores are 21 million."""
    from quantbench.core.blocks.attention import CACHE_SCORES, cpu_call_scores, cpu_scores_held

    assert cpu_call_scores(1, 24, 4608, 4608) == (CACHE_SCORES // 4608) * 4608
    assert cpu_call_scores(1, 24, 768, 768) == 256 * 768  # a third of a head: three equal chunks
    assert cpu_call_scores(1, 24, 100, 100) == 24 * 100 * 100  # every head fits: one call
    # Chunked queries run in lanes, a call a lane at once; groups of heads (a small image) one call at a time
    assert cpu_scores_held(1, 24, 4608, 4608, lanes=2) == 2 * cpu_call_scores(1, 24, 4608, 4608)
    assert cpu_scores_held(1, 24, 4608, 4608, lanes=1) == cpu_call_scores(1, 24, 4608, 4608)
    assert cpu_scores_held(1, 24, 100, 100, lanes=2) == cpu_call_scores(1, 24, 100, 100)
    held = []
    heads = attention_module.heads_attention
    monkeypatch.setattr(attention_module, "heads_attention",
                        lambda q, k, *a: held.append(q.shape[1] * q.shape[2] * k.shape[2]) or heads(q, k, *a))
    q = mx.zeros((1, 6, 300, 8))  # two heads a call
    mx.eval(scaled_dot_product_attention(q, q, q, 0.3))
    assert max(held) == cpu_call_scores(1, 6, 300, 300)
