"""The fast CPU path: OpenBLAS under MLX, and dense matmuls for quantized layers."""

import os
import subprocess
import sys

import numpy as np
import pytest

import quantbench.core  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from quantbench.core.cpu_blas import blas_status
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.quant import DenseQuantizedLinear, use_dense_matmul
from reference.pipelines import TEXT_LAYERS


def test_importing_the_engine_first_puts_openblas_under_mlx():
    code = "import quantbench.core, json; from quantbench.core.cpu_blas import blas_status; print(blas_status().blas)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if sys.platform == "linux" and out != "openblas":
        pytest.skip(f"no system OpenBLAS here: {blas_status().detail}")
    assert out in ("openblas", "not used")


def test_too_late_is_reported_not_hidden():
    code = ("import mlx.core, quantbench.core; from quantbench.core.cpu_blas import blas_status; "
            "print(blas_status().blas, '|', blas_status().detail)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    if sys.platform == "linux":
        assert out.startswith("reference | mlx was imported before quantbench")


@pytest.mark.skipif(sys.platform != "linux", reason="OpenBLAS is loaded under MLX on Linux only")
def test_a_script_that_imports_mlx_first_is_warned_once_at_its_own_line_when_it_loads_a_model():
    """It would otherwise only be slow: MLX's reference BLAS, tens of times slower, and no C kernel."""
    late = "import mlx.core\nfrom quantbench.core.pipelines import load_pipeline\nload_pipeline('demo')\nload_pipeline('demo')\n"
    done = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("RuntimeWarning") == 1, done.stderr
    assert "<string>:3: RuntimeWarning: mlx was imported before quantbench" in done.stderr
    assert "import quantbench before mlx" in done.stderr
    first = late.replace("import mlx.core\n", "").replace("\nload_pipeline", "\nimport mlx.core\nload_pipeline", 1)
    done = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


# Two layers of a Klein-4B double block's feed-forward, called in turn, as a step calls its layers: the
# minor page faults (fresh pages the kernel maps and zeroes) of each round after the first two, whose
# median is a steady round's. (Now and then a round sets a new high-water mark of the heap by a slice's
# pages, as the lanes free their slices in another order; glibc's own settings fault most rounds.)
_REPEATED_CALLS = """
import resource
import quantbench.core
from quantbench.core.cpu_blas import malloc_setting
import mlx.core as mx, mlx.nn as nn
from quantbench.core.quant import use_dense_matmul

def layer(fan_in, fan_out):
    made = nn.QuantizedLinear.from_linear(nn.Linear(fan_in, fan_out, bias=False), group_size=64, bits=8)
    use_dense_matmul(made)
    mx.eval(made.parameters())
    return made

up, down = layer(3072, 9216), layer(9216, 3072)
x = mx.random.normal((1, 256, 3072))
mx.eval(x)
rounds = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    mx.eval(down(up(x)))
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(malloc_setting(), sorted(rounds[2:])[len(rounds[2:]) // 2])
"""


def repeated_call_faults(malloc: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "QUANTBENCH_MALLOC"} | ({"QUANTBENCH_MALLOC": malloc} if malloc else {})
    done = subprocess.run([sys.executable, "-c", _REPEATED_CALLS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    setting, faults = done.stdout.split()
    return setting, int(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings")
def test_repeated_quantized_calls_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    setting, faults = repeated_call_faults(None)
    if setting != "kept":
        pytest.skip(f"not glibc's malloc here ({setting})")
    # One 384-row dense slice of the 9216-wide layer alone is 14 MB, 3456 pages: with freed memory kept, the
    # slices, the products and the outputs reuse what the rounds before freed (glibc's defaults: 3-17 thousand in most rounds).
    assert faults < 1000
    assert repeated_call_faults("glibc")[0] == "glibc"  # QUANTBENCH_MALLOC=glibc leaves glibc's settings alone


# A 37.7 MB output, as a layer's at Klein 4B's width is from about 800 tokens: above the largest block glibc
# serves from its heap (32 MB), so outside the denoise loop it is mapped on its own, a fresh mmap each time.
_LARGE_OUTPUTS = """
import resource
import psutil
import quantbench.core
from quantbench.core.cpu_blas import heap_served, malloc_setting
import mlx.core as mx

x = mx.random.normal((1024, 9216))
mx.eval(x)

def median_faults():
    rounds = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        mx.eval(mx.sqrt(mx.abs(x) + 1.0) * 2.0)
        rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(rounds[2:])[len(rounds[2:]) // 2]

with heap_served():
    inside = median_faults()
    rss_inside = psutil.Process().memory_info().rss
given_back = rss_inside - psutil.Process().memory_info().rss
print(malloc_setting(), inside, median_faults(), given_back)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings")
def test_the_denoise_loops_large_outputs_reuse_freed_memory_and_give_it_back_after():
    """Each pass of a full-size step makes outputs of 38-570 MB; faulting them in fresh every time cost a
    full-size 8-bit Klein-4B step about 10% on a VM host (README: Measured). Outside the loop they are mapped
    on their own again, and what the loop freed goes back to the kernel when it ends."""
    env = {k: v for k, v in os.environ.items() if k not in ("QUANTBENCH_MALLOC", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _LARGE_OUTPUTS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    setting, inside, outside, given_back = done.stdout.split()
    if setting != "kept":
        pytest.skip(f"not glibc's malloc here ({setting})")
    assert int(inside) < 1000  # each intermediate is 9216 pages: fresh mmaps fault them in every round
    assert int(outside) > 9000
    assert int(given_back) > 30 * 2**20


_RELEASED_COMPONENT = """
import gc
import psutil
import quantbench.core
from quantbench.core.cpu_blas import give_back_freed_memory, malloc_setting
import mlx.core as mx

weights = [mx.random.normal((1024, 2048)) for _ in range(50)]  # 8 MB each, 400 MB: heap-served, as a model's are
mx.eval(weights)
del weights
gc.collect()
kept = psutil.Process().memory_info().rss
give_back_freed_memory()  # what the pipeline does once it releases a component
print(malloc_setting(), kept - psutil.Process().memory_info().rss)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings")
def test_a_released_components_memory_goes_back_to_the_kernel():
    done = subprocess.run([sys.executable, "-c", _RELEASED_COMPONENT], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "QUANTBENCH_MALLOC"})
    assert done.returncode == 0, done.stderr
    setting, returned = done.stdout.split()
    if setting != "kept":
        pytest.skip(f"not glibc's malloc here ({setting})")
    assert int(returned) > 300 * 2**20  # kept for reuse until then, handed back when the pipeline frees a component


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_dense_path_computes_what_the_quantized_kernel_computes(bits):
    layer = nn.QuantizedLinear.from_linear(nn.Linear(256, 128, bias=True), 64, bits)
    layer.scales, layer.biases = layer.scales.astype(mx.bfloat16), layer.biases.astype(mx.bfloat16)
    x = mx.random.normal((5, 256))
    native = layer(x)
    exact = x @ mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                              group_size=64, bits=bits).T + layer.bias
    assert use_dense_matmul(layer) == 1 and isinstance(layer, DenseQuantizedLinear)
    dense = layer(x)
    # MLX's kernel rounds in the scales' bfloat16; the dense path is at least as close to exact.
    assert np.abs(np.array(dense) - np.array(exact)).max() <= np.abs(np.array(native) - np.array(exact)).max() + 1e-5
    assert np.abs(np.array(dense) - np.array(native)).max() < 0.05
    assert layer.weight.dtype == mx.uint32  # still stored quantized


def test_pipeline_uses_the_dense_path_on_cpu_and_reports_it(tiny_klein):
    folder, _ = tiny_klein
    dense = Flux2Pipeline.load(folder, quantize=4, text_encoder_layers=TEXT_LAYERS, quantized_matmul="dense")
    native = Flux2Pipeline.load(folder, quantize=4, text_encoder_layers=TEXT_LAYERS, quantized_matmul="native")
    assert dense.info.quantized_matmul == "dense" and native.info.quantized_matmul == "native"
    assert isinstance(dense.transformer.transformer_blocks[0].ff.linear_in, DenseQuantizedLinear)
    a = np.asarray(dense.generate("a star", steps=2, width=64, height=64).image).astype(int)
    b = np.asarray(native.generate("a star", steps=2, width=64, height=64).image).astype(int)
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("bits", [4, 8, 5])
def test_dense_path_in_slices_gives_the_whole_weights_product(bits, monkeypatch):
    """The weight is dequantized a slice of rows at a time (the dense copy in flight stays small); every
    output element is still the same dot product as with the whole dequantized weight, to float32
    rounding (BLAS may order a sum's last terms differently at a slice's edge)."""
    from quantbench.core.quant import dense as quantize

    layer = nn.QuantizedLinear.from_linear(nn.Linear(256, 1000, bias=True), 64, bits)
    layer.scales, layer.biases = layer.scales.astype(mx.bfloat16), layer.biases.astype(mx.bfloat16)
    x = mx.random.normal((2, 7, 256))
    exact = x @ mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                              group_size=64, bits=bits).T + layer.bias
    use_dense_matmul(layer)
    monkeypatch.setattr(quantize, "TILE_KERNEL", False)  # the slices (what runs without the tile kernel)
    monkeypatch.setattr(quantize, "DENSE_SLICE_BYTES", 64 * 256 * 4)  # 64 rows a slice: 16 slices
    monkeypatch.setattr(quantize, "DENSE_SLICE_MIN_ROWS", 16)
    sliced = []
    original = quantize.dequantize_rows
    monkeypatch.setattr(quantize, "dequantize_rows", lambda *a: sliced.append(a[1:3]) or original(*a))
    assert np.abs(np.array(layer(x)) - np.array(exact)).max() <= 1e-6 * np.abs(np.array(exact)).max() * 16
    assert len(sliced) == 16 and sliced[-1] == (960, 1000)


def _many_slices(monkeypatch, bits, fan_in=256, fan_out=1000):
    from quantbench.core.quant import dense as quantize

    layer = nn.QuantizedLinear.from_linear(nn.Linear(fan_in, fan_out, bias=True), 64, bits)
    layer.scales, layer.biases = layer.scales.astype(mx.bfloat16), layer.biases.astype(mx.bfloat16)
    use_dense_matmul(layer)
    monkeypatch.setattr(quantize, "TILE_KERNEL", False)  # the slices (what runs without the tile kernel)
    monkeypatch.setattr(quantize, "DENSE_SLICE_BYTES", 64 * fan_in * 4)  # 64 rows a slice
    monkeypatch.setattr(quantize, "DENSE_SLICE_MIN_ROWS", 16)
    return layer


@pytest.mark.parametrize("bits", [2, 4, 8, 5])
def test_dequantizing_ahead_on_its_own_stream_changes_no_bit(bits, monkeypatch):
    """The next slice is dequantized on a stream of its own (its own thread) while this one is multiplied:
    the output is bitwise the one-stream path's, as a layer call, inside mx.compile, and through a whole
    generation's worth of calls with other work in between."""
    from quantbench.core.quant import dense as quantize

    layer = _many_slices(monkeypatch, bits)
    monkeypatch.setattr(quantize, "LANES", False)
    x = mx.random.normal((2, 7, 256))
    chained = lambda: layer(mx.tanh(layer(mx.sin(x))[..., :256]))  # fed by, and feeding, other ops
    monkeypatch.setattr(quantize, "DEQUANTIZE_AHEAD", False)
    serial, serial_chained = np.array(layer(x)), np.array(chained())
    monkeypatch.setattr(quantize, "DEQUANTIZE_AHEAD", True)
    assert np.array_equal(np.array(layer(x)), serial)
    assert np.array_equal(np.array(mx.compile(lambda v: layer(v))(x)), serial)
    assert np.array_equal(np.array(chained()), serial_chained)


def test_dequantizing_ahead_runs_the_slices_on_a_second_stream(monkeypatch):
    """What makes it faster: the slices' dequantization is queued on another stream of the same device."""
    from quantbench.core.quant import dense as quantize

    layer = _many_slices(monkeypatch, 4)
    monkeypatch.setattr(quantize, "LANES", False)
    streams = []
    original = quantize.dequantize_rows
    monkeypatch.setattr(quantize, "dequantize_rows",
                        lambda *a: streams.append(mx.default_stream(mx.default_device())) or original(*a))
    layer(mx.random.normal((3, 256)))
    default = mx.default_stream(mx.default_device())
    assert len(streams) == 16 and all(s == streams[0] and s != default for s in streams)
    assert streams[0].device == default.device


@pytest.mark.parametrize("bits", [2, 4, 8, 5])
def test_lanes_multiply_each_slice_on_one_thread_of_its_own(bits, monkeypatch):
    """In lanes, slice i is dequantized and multiplied on lane i % 2's stream with a one-thread BLAS: the
    output is bitwise the one-stream path's run on one BLAS thread (within float32 rounding of the whole
    weight's product), and OpenBLAS has its threads back after the call."""
    from quantbench.core import cpu_blas
    from quantbench.core.quant import dense

    layer = _many_slices(monkeypatch, bits)
    x = mx.random.normal((2, 7, 256))
    exact = x @ mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                              group_size=64, bits=bits).T + layer.bias
    monkeypatch.setattr(dense, "LANES", False)
    monkeypatch.setattr(dense, "DEQUANTIZE_AHEAD", False)
    with cpu_blas.one_thread_blas():
        one_thread = np.array(layer(x))
    monkeypatch.setattr(dense, "DEQUANTIZE_AHEAD", True)
    monkeypatch.setattr(dense, "lane_count", lambda: 2)
    threads = cpu_blas.blas_threads()
    streams = []
    original = dense.dequantize_rows
    monkeypatch.setattr(dense, "dequantize_rows",
                        lambda *a: streams.append(mx.default_stream(mx.default_device())) or original(*a))
    laned = np.array(layer(x))
    assert np.array_equal(laned, one_thread)
    assert np.abs(laned - np.array(exact)).max() <= 1e-6 * np.abs(np.array(exact)).max() * 16
    assert cpu_blas.blas_threads() == threads
    default = mx.default_stream(mx.default_device())
    assert len(streams) == 16 and streams[0] != streams[1] and default not in streams
    assert streams == streams[:2] * 8


def _sixteen_slices(monkeypatch, bits: int, lanes: int, bias: bool) -> nn.QuantizedLinear:
    """A dense-path layer of 1024 -> 8192 in 16 slices of 512 rows (2 MB dense each), run in `lanes` lanes."""
    from quantbench.core.quant import dense

    layer = nn.QuantizedLinear.from_linear(nn.Linear(1024, 8192, bias=bias), 64, bits)
    use_dense_matmul(layer)
    monkeypatch.setattr(dense, "TILE_KERNEL", False)  # the slices (what runs without the tile kernel)
    monkeypatch.setattr(dense, "DENSE_SLICE_BYTES", 512 * 1024 * 4)
    monkeypatch.setattr(dense, "lane_count", lambda: lanes)
    return layer


def _call_peak(call, x: mx.array) -> tuple[int, np.ndarray]:
    """The MLX peak of one (warmed) call above what was resident before it, and its output."""
    mx.eval(call(x))
    resident = mx.get_active_memory()
    mx.reset_peak_memory()
    out = call(x)
    mx.eval(out)
    return mx.get_peak_memory() - resident, np.array(out)


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("bits", [4, 8])
def test_a_layer_call_holds_two_dense_slices_a_lane_not_the_whole_weight(bits, lanes, monkeypatch):
    """Each slice's product is evaluated with the next slice's dequantization (or, in lanes, each lane's
    next one), so a call's MLX peak above what was resident is about two dense slices a lane (4 bits:
    plus half a slice of spread nibbles), not the most of the layer's sixteen that one lazy graph held (what
    the path still does inside mx.compile)."""
    from quantbench.core.quant import dense

    layer = _sixteen_slices(monkeypatch, bits, lanes, bias=True)
    x = mx.random.normal((4, 1024))
    mx.eval(x, layer.parameters())
    evaluated, y = _call_peak(layer, x)
    lazy, y_lazy = _call_peak(mx.compile(lambda v: layer(v)), x)
    slice_bytes = 512 * 1024 * 4
    in_flight = dense.bytes_in_flight(1024, 8192, 4, lanes)  # what the memory model counts: two slices a lane
    assert in_flight == 2 * lanes * slice_bytes
    assert evaluated <= 1.5 * in_flight < lazy
    assert np.allclose(y, y_lazy, rtol=0, atol=1e-5 * np.abs(y_lazy).max())


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("bits", [4, 8])
def test_each_slice_is_written_into_the_output_not_concatenated_at_the_end(bits, lanes, monkeypatch):
    """Each slice's product is copied into the layer's output as soon as it is done: the call's peak is the
    output and the slices in flight, not the output and every slice's product besides (a long prompt's wide
    projections: 27 MB of parts for an 85 MB output at Klein 4B's width), and the output is bitwise what
    concatenating the products gave."""
    from quantbench.core.quant import dense

    layer = _sixteen_slices(monkeypatch, bits, lanes, bias=False)
    x = mx.random.normal((512, 1024))  # an output of 16 MB
    mx.eval(x, layer.parameters())
    in_place, y = _call_peak(layer, x)
    monkeypatch.setattr(dense, "IN_PLACE_OUTPUT", False)
    concatenated, y_concatenated = _call_peak(layer, x)
    output = 512 * 8192 * 4
    parts_in_flight = 2 * lanes * 512 * 512 * 4
    assert np.array_equal(y, y_concatenated)
    assert in_place <= output + 1.5 * (dense.bytes_in_flight(1024, 8192, 4, lanes) + parts_in_flight)
    assert concatenated >= 2 * output > in_place


def test_one_thread_blas_gives_the_threads_back_whoever_leaves_last_and_however():
    """Lanes set OpenBLAS to one thread while they run: overlapping users (threads of the workbench, say)
    share the setting, and the count there was comes back when the last one leaves, by an error too."""
    import threading

    from quantbench.core import cpu_blas

    threads = cpu_blas.blas_threads()
    if threads is None:
        pytest.skip("OpenBLAS is not loaded here: nothing to set")
    inside, entered, leave = [], threading.Event(), threading.Event()

    def other():
        with cpu_blas.one_thread_blas():
            entered.set()
            leave.wait(5)
            inside.append(cpu_blas.blas_threads())

    worker = threading.Thread(target=other)
    with pytest.raises(RuntimeError):
        with cpu_blas.one_thread_blas():
            worker.start()
            entered.wait(5)
            inside.append(cpu_blas.blas_threads())
            raise RuntimeError("a failed layer call")
    assert cpu_blas.blas_threads() == 1  # the other thread is still inside
    leave.set()
    worker.join(5)
    assert inside == [1, 1] and cpu_blas.blas_threads() == threads


def test_kept_dequantized_weights_skip_the_slices_within_the_budget(monkeypatch):
    """keep_dequantized keeps dense copies, largest layers first, within the budget; a kept layer runs one
    product (the same dot products as the slices, to float32 rounding), and the saved parameters do not change."""
    from mlx.utils import tree_flatten

    from quantbench.core.quant import dense, keep_dequantized

    model = nn.Sequential(nn.Linear(256, 512), nn.Linear(512, 1024), nn.Linear(1024, 256))
    nn.quantize(model, 64, 4)
    use_dense_matmul(model)
    monkeypatch.setattr(dense, "TILE_KERNEL", False)  # the slices, whose calls are counted
    x = mx.random.normal((3, 256))
    sliced = np.array(model(x))
    names = [k for k, _ in tree_flatten(model.parameters())]
    calls = []
    original = dense.dequantize_rows
    dense.dequantize_rows = lambda *a: calls.append(a[0]) or original(*a)
    try:
        budget = (512 * 1024 + 1024 * 256) * 4  # the two largest layers (2 MB and 1 MB) fit, the third does not
        assert keep_dequantized(model, budget, mx.float32) == budget
        calls.clear()
        kept = np.array(model(x))
        assert calls == [model.layers[0]]  # only the layer left out still dequantizes
    finally:
        dense.dequantize_rows = original
    assert np.abs(kept - sliced).max() <= 1e-5 * np.abs(sliced).max()
    assert [k for k, _ in tree_flatten(model.parameters())] == names
    assert dense.kept_layers({"a": 3, "b": 5, "c": 2}, 7) == ["b", "c"]
    assert dense.kept_layers({"a": 3, "b": 5}, float("inf")) == ["b", "a"]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scale_dtype", [mx.float32, mx.bfloat16, mx.float16])
def test_dequantized_slices_are_bitwise_what_mlx_dequantize_gives(bits, scale_dtype):
    """The dense path's dequantization (bytes read through views, then MLX's own cast, product and sum)
    gives every weight bit for bit as mx.dequantize with the scales in the compute dtype, for any
    slice of rows, so a layer's output does not depend on how the pass is done."""
    from quantbench.core.quant import dense

    layer = nn.QuantizedLinear.from_linear(nn.Linear(320, 200, bias=False), 64, bits)
    layer.scales, layer.biases = layer.scales.astype(scale_dtype), layer.biases.astype(scale_dtype)
    for dtype in (mx.float32, mx.bfloat16):
        whole = mx.dequantize(layer.weight, layer.scales.astype(dtype), layer.biases.astype(dtype),
                              group_size=64, bits=bits)
        assert whole.dtype == dtype
        for start, stop in ((0, 200), (0, 37), (37, 200), (199, 200)):
            part = dense.dequantize_rows(layer, start, stop, dtype)
            assert part.dtype == dtype and part.shape == (stop - start, 320)
            assert np.array_equal(np.array(part.astype(mx.float32)), np.array(whole[start:stop].astype(mx.float32)))


def test_a_quantized_layer_runs_the_dense_path_from_any_thread(monkeypatch):
    """A script may call the engine from more than one thread. MLX's streams belong to the thread that
    made them: a stream the dense path made for the first caller failed in the second ("There is no
    Stream(cpu, N) in current thread")."""
    from concurrent.futures import ThreadPoolExecutor

    layer = _many_slices(monkeypatch, 4)
    x = mx.random.normal((2, 7, 256))
    mx.eval(x)
    first = np.array(layer(x))
    for _ in range(2):  # a fresh thread each time: the pool's thread ends with the pool
        with ThreadPoolExecutor(1) as pool:
            assert np.array_equal(pool.submit(lambda: np.array(layer(x))).result(), first)
