"""The CPU's tile kernel (core/quant/tile_kernel.c): a quantized layer's product with the dequantization inside."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantbench.core  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from quantbench.core.hardware import cpu_flags
from quantbench.core.quant import dense, tile_kernel, use_dense_matmul

pytestmark = pytest.mark.skipif(not tile_kernel.ready(), reason=f"no tile kernel here: {tile_kernel.status().detail}")


def _layer(fan_in: int, fan_out: int, bits: int, group: int = 64, scales=mx.bfloat16, bias: bool = True):
    layer = nn.QuantizedLinear.from_linear(nn.Linear(fan_in, fan_out, bias=bias), group, bits)
    layer.scales, layer.biases = layer.scales.astype(scales), layer.biases.astype(scales)
    use_dense_matmul(layer)
    return layer


def _exact(layer, x: mx.array) -> np.ndarray:
    """x @ W.T (+ bias), W as mx.dequantize gives it in float32: what every quantized product should compute."""
    weight = mx.dequantize(layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
                           group_size=layer.group_size, bits=layer.bits)
    y = x @ weight.T
    return np.array(y + layer.bias if "bias" in layer else y)


def _kernel_only(monkeypatch):
    """The slices made to fail: a product that returns ran in the kernel."""
    def no_slices(*_):
        raise AssertionError("the slices ran")
    monkeypatch.setattr(dense, "dequantize_rows", no_slices)


@pytest.mark.parametrize("scales", [mx.float32, mx.float16, mx.bfloat16])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_kernel_computes_the_dequantized_weights_product(bits, group, scales, monkeypatch):
    """Every bit width, group size and scale dtype MLX saves, over several tiles each way (odd output rows,
    more inputs than a tile): the same dot products as the whole dequantized weight's, to float32 rounding,
    and bitwise the same with AVX-512 as in plain C."""
    monkeypatch.setattr(tile_kernel, "TILE_ROWS", 64)
    monkeypatch.setattr(tile_kernel, "TILE_INPUTS", 256)
    layer = _layer(768, 333, bits, group, scales)
    x = mx.random.normal((2, 9, 768))
    _kernel_only(monkeypatch)
    y = np.array(layer(x))
    exact = _exact(layer, x)
    assert y.shape == (2, 9, 333)
    assert np.abs(y - exact).max() <= 1e-6 * np.abs(exact).max() * 16
    monkeypatch.setattr(tile_kernel, "VECTORS", False)
    assert np.array_equal(np.array(layer(x)), y)


@pytest.mark.parametrize("rows", [1, 3, 600])
def test_any_number_of_tokens_and_threads_gives_the_same_bits(rows, monkeypatch):
    """One token, fewer tokens than threads, many: the output's blocks are shared out among the threads
    (columns, and rows where the columns run out), and each element is one thread's dot product, so the
    thread count changes no bit."""
    layer = _layer(512, 300, 4)
    x = mx.random.normal((rows, 512))
    _kernel_only(monkeypatch)
    outputs = []
    for threads in (1, 2, 3, 8):
        monkeypatch.setattr(tile_kernel, "thread_count", lambda threads=threads: threads)
        outputs.append(np.array(layer(x)))
    assert all(np.array_equal(out, outputs[0]) for out in outputs[1:])
    exact = _exact(layer, x)
    assert np.abs(outputs[0] - exact).max() <= 1e-6 * np.abs(exact).max() * 16


_OWN_PRODUCTS = pytest.mark.skipif("avx512f" not in cpu_flags(), reason="the own products need AVX-512")


@_OWN_PRODUCTS
@pytest.mark.parametrize("bits, group, inputs, outputs, rows", [
    (4, 64, 3072, 333, 9),     # inputs a multiple of the kernel's 256 a pass; a part-empty last panel of columns
    (8, 32, 352, 48, 800),     # 256 + 96 inputs; more rows than a block's 768 at a time; 16 columns in a panel
    (2, 128, 640, 1100, 13),   # 256 + 256 + 128; several column blocks
    (4, 32, 32, 7, 1),         # one group of inputs, fewer columns than a half panel, one row
])
def test_the_own_products_agree_with_openblas_products(bits, group, inputs, outputs, rows, monkeypatch):
    """The AVX-512 products that read the dequantized panels straight from the kernel's own buffers: the same
    values as a one-thread OpenBLAS sgemm on each dequantized tile (before), to float32 rounding, at shapes
    that leave every edge part-filled: rows past a strip of 8, columns past a panel of 32, inputs past a pass."""
    layer = _layer(inputs, outputs, bits, group, bias=False)
    x = mx.random.normal((rows, inputs))
    _kernel_only(monkeypatch)
    own = np.array(layer(x))
    monkeypatch.setattr(tile_kernel, "PRODUCTS", False)
    blas = np.array(layer(x))
    exact = _exact(layer, x)
    scale = np.abs(exact).max()
    assert np.abs(own - exact).max() <= 1e-6 * scale * 16
    assert np.abs(own - blas).max() <= 1e-6 * scale * 16


@_OWN_PRODUCTS
def test_a_tokens_output_does_not_depend_on_the_other_tokens(monkeypatch):
    """Each output value of the own products is one sum in order over the inputs: a token's output is the same
    bits alone as among 900 others (past a block's 768 rows), whatever rows share its strip or block."""
    layer = _layer(512, 300, 4)
    x = mx.random.normal((900, 512))
    _kernel_only(monkeypatch)
    together = np.array(layer(x))
    for row in (0, 5, 767, 768, 899):
        assert np.array_equal(np.array(layer(x[row:row + 1])), together[row:row + 1]), row
    assert np.array_equal(np.array(layer(x[760:780])), together[760:780])


_THREADS_UNDER_HASWELL = """
import json, sys
import quantbench.core
from quantbench.core.cpu_blas import blas_status
import mlx.core as mx, mlx.nn as nn, numpy as np
from quantbench.core.quant import tile_kernel, use_dense_matmul
layer = nn.QuantizedLinear.from_linear(nn.Linear(512, 3000), 64, 4)
use_dense_matmul(layer)
x = mx.random.normal((600, 512))
outputs = []
for threads in (1, 2, 3, 8):
    tile_kernel.thread_count = lambda threads=threads: threads
    outputs.append(np.array(layer(x)))
print(json.dumps({"blas": blas_status().detail, "same": all(np.array_equal(o, outputs[0]) for o in outputs)}))
"""


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="OpenBLAS's Haswell kernels need an x86-64 CPU with AVX2")
def test_the_thread_count_changes_no_bit_under_openblas_haswell_kernels(tmp_path):
    """OpenBLAS's Haswell kernels sum a row in another order when a product has other numbers of rows or
    columns, so a partition cut by the thread count gave other bits at each OPENBLAS_NUM_THREADS: the blocks
    follow the machine's cores instead. Held to those kernels on any AVX2 machine, and with a layer wide
    enough for several column blocks and a few rows each."""
    env = {**os.environ, "HOME": str(tmp_path), "OPENBLAS_CORETYPE": "Haswell"}
    done = subprocess.run([sys.executable, "-c", _THREADS_UNDER_HASWELL], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    if "Haswell" not in found["blas"]:
        pytest.skip(f"OpenBLAS did not take the Haswell kernels here: {found['blas']}")
    assert found["same"]


def test_a_call_holds_no_dense_weight_in_mlx_memory(monkeypatch):
    """The dense tiles are the kernel's own (a few MB a thread), never MLX arrays: a call's MLX peak above
    what was resident is its output, where the slices held two dense slices a lane besides."""
    layer = _layer(1024, 8192, 4, bias=False)
    x = mx.random.normal((64, 1024))
    mx.eval(x, layer.parameters())

    def call_peak():
        mx.eval(layer(x))
        resident = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(layer(x))
        return mx.get_peak_memory() - resident

    output = 64 * 8192 * 4
    kernel = call_peak()
    monkeypatch.setattr(dense, "TILE_KERNEL", False)
    sliced = call_peak()
    assert kernel <= output + 64 * 1024 < sliced


def test_inside_mx_compile_the_slices_run(monkeypatch):
    """mx.compile may not evaluate, and the kernel needs its input evaluated: a compiled call runs the slices
    lazily, with the same values."""
    layer = _layer(256, 200, 8)
    x = mx.random.normal((4, 256))
    eager = np.array(layer(x))
    kernel_calls = []
    original = tile_kernel.product
    monkeypatch.setattr(dense, "tile_kernel_product", lambda *a: kernel_calls.append(1) or original(*a))
    compiled = np.array(mx.compile(lambda v: layer(v))(x))
    assert np.abs(compiled - eager).max() <= 1e-6 * np.abs(eager).max() * 16
    assert kernel_calls == [1]  # tried while tracing, then the slices


def test_a_weight_that_is_a_strided_view_runs_the_slices(monkeypatch):
    layer = _layer(256, 400, 4)
    layer.weight = mx.concatenate([layer.weight, layer.weight], axis=1)[:, :layer.weight.shape[1]]
    x = mx.random.normal((3, 256))
    assert tile_kernel.product(layer, x) is None
    assert np.abs(np.array(layer(x)) - _exact(layer, x)).max() < 1e-4


def test_other_inputs_and_layouts_are_left_to_the_slices():
    layer = _layer(256, 64, 4)
    assert layer(mx.zeros((2, 0, 256))).shape == (2, 0, 64)  # no tokens: an empty output, as MLX's own
    assert tile_kernel.supports(layer, mx.zeros((2, 256)))
    assert not tile_kernel.supports(layer, mx.zeros((2, 256), mx.bfloat16))
    assert not tile_kernel.supports(_layer(256, 64, 3), mx.zeros((2, 256)))  # codes across words


_STATUS = """
import os
import quantbench.core
from quantbench.core import cpu_kernels
from quantbench.core.quant import tile_kernel
cpu_kernels.COMPILE_TIMEOUT_S = float(os.environ.get("TEST_COMPILE_TIMEOUT_S", cpu_kernels.COMPILE_TIMEOUT_S))
import mlx.core as mx, mlx.nn as nn, numpy as np
from quantbench.core.quant import use_dense_matmul
layer = nn.QuantizedLinear.from_linear(nn.Linear(128, 48), 64, 4)
use_dense_matmul(layer)
x = mx.random.normal((3, 128))
y = layer(x)
w = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=4)
print(tile_kernel.status().state, "|", tile_kernel.status().detail, "|", float(mx.abs(y - (x @ w.T + layer.bias)).max()))
"""


def _environment(tmp_path, **env) -> dict:
    environment = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), **env}
    environment.pop("QUANTBENCH_KERNEL_DIR")  # the user's cache folder, as a user runs it
    return environment


def _run(tmp_path, timeout: float = 120, preexec_fn=None, **env) -> tuple[str, str, float]:
    done = subprocess.run([sys.executable, "-c", _STATUS], capture_output=True, text=True,
                          env=_environment(tmp_path, **env), timeout=timeout, preexec_fn=preexec_fn)
    assert done.returncode == 0, done.stderr
    state, detail, error = done.stdout.strip().split(" | ")
    return state, detail, float(error)


def test_built_once_into_the_cache_rebuilt_when_broken_and_done_without_a_writable_cache(tmp_path):
    """The first use builds the kernel into the user's cache folder; the next process loads that file as it is;
    a broken file there is built again; a cache that cannot be written gets a build of its own, removed once
    loaded. Each time the products are right."""
    state, detail, error = _run(tmp_path)
    built = list((tmp_path / "cache" / "quantbench" / "kernels").glob("tile_kernel-*.so"))
    assert state == "ready" and len(built) == 1 and str(built[0]) in detail and error < 1e-4
    stamp = built[0].stat().st_mtime_ns
    assert _run(tmp_path)[0] == "ready" and built[0].stat().st_mtime_ns == stamp
    built[0].write_bytes(b"not a library")
    assert _run(tmp_path)[0] == "ready" and built[0].stat().st_size > 1000
    (tmp_path / "file").write_text("")
    state, detail, error = _run(tmp_path, XDG_CACHE_HOME=str(tmp_path / "file"))
    assert state == "ready" and "cannot be written" in detail and error < 1e-4


def test_without_a_compiler_or_switched_off_the_slices_run_and_say_why(tmp_path):
    state, detail, error = _run(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert state == "unavailable" and "no-such-cc was not found" in detail and error < 1e-4
    state, detail, error = _run(tmp_path, QUANTBENCH_TILE_KERNEL="off")
    assert state == "off" and error < 1e-4
    assert not (tmp_path / "cache" / "quantbench" / "kernels").exists()


def test_the_memory_model_counts_no_dense_weight_where_the_kernel_runs():
    """A model whose quantized layers each fit one slice holds the largest layer's dense weight inside the
    slices' lazy step; in the kernel it holds none."""
    from quantbench.core.memory_model import Plan
    from quantbench.core.memory_model.prediction import uses_tile_kernel

    assert uses_tile_kernel(Plan(backend="cpu", dtype="float32"))
    assert not uses_tile_kernel(Plan(backend="cpu", dtype="bfloat16"))
    assert not uses_tile_kernel(Plan(backend="cpu", dtype="float32", tile_kernel=False))


def _fake_compiler(folder, name: str, script: str):
    """An executable shell script standing in for a compiler, or for a wrapper of one as ccache is."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_cc_may_be_a_command_with_arguments(tmp_path):
    """CC="ccache gcc" or "gcc -m64", as make and setuptools take it: the first word is the program (looked up on the
    PATH), the others come before our flags. It was taken as one program's name, "not found", and the slices ran."""
    wrapper = _fake_compiler(tmp_path, "wrapper", f'echo "$@" > {tmp_path / "args"}\nexec "$@"\n')
    state, detail, error = _run(tmp_path, CC=f"{wrapper} gcc '-DQUANTBENCH_NOTE=a b'")
    assert state == "ready" and "built by wrapper gcc '-DQUANTBENCH_NOTE=a b' into" in detail and error < 1e-4
    assert (tmp_path / "args").read_text().startswith("gcc -DQUANTBENCH_NOTE=a b -O3 ")
    state, detail, error = _run(tmp_path, CC="no-such-wrapper gcc")
    assert state == "unavailable" and detail == "CC=no-such-wrapper gcc: no-such-wrapper was not found" and error < 1e-4
    state, detail, _ = _run(tmp_path, CC="gcc '-m64")
    assert state == "unavailable" and detail.startswith("CC=gcc '-m64 is not a command (")


def test_info_says_why_the_kernel_does_not_run(tmp_path):
    """quantbench info's cpu kernel line and its JSON (both kernels') carry the reason, as a user runs it."""
    environment = _environment(tmp_path, CC="no-such-wrapper gcc")
    text, as_json = (subprocess.run([sys.executable, "-m", "quantbench.cli.main", "info", *flags], capture_output=True,
                                    text=True, env=environment, timeout=120) for flags in ([], ["--json"]))
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    line = next(line for line in text.stdout.splitlines() if line.startswith("cpu kernel"))
    assert line.endswith("slices (dequantized, then multiplied): tile kernel unavailable, "
                         "CC=no-such-wrapper gcc: no-such-wrapper was not found")
    reported = json.loads(as_json.stdout)
    assert reported["cpu_tile_kernel"] == reported["cpu_attention_kernel"] == {
        "state": "unavailable", "detail": "CC=no-such-wrapper gcc: no-such-wrapper was not found"}


def _kernel_files(tmp_path) -> list[str]:
    """What the user's kernel cache folder holds: builds, and any partial file a build left there."""
    folder = tmp_path / "cache" / "quantbench" / "kernels"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_compiler_that_fails_says_its_error_and_leaves_nothing_in_the_cache(tmp_path):
    """The compiler's line that says error (compilers print context before it), not its first line; a compiler that
    exits 0 without a library leaves no file in the cache (it was renamed in, for every process to trip on)."""
    failing = _fake_compiler(tmp_path, "failing-cc", 'echo "In file included from x.c:1:" >&2\n'
                                                     'echo "x.h:2:3: error: no room to think" >&2\nexit 1\n')
    state, detail, error = _run(tmp_path, CC=str(failing))
    assert detail == "building it failed: failing-cc exited 1: x.h:2:3: error: no room to think"
    assert state == "unavailable" and error < 1e-4 and _kernel_files(tmp_path) == []
    junk = _fake_compiler(tmp_path, "junk-cc", 'for word; do out=$word; done\necho "not a library" > "$out"\n')
    state, detail, error = _run(tmp_path, CC=str(junk))
    assert state == "unavailable" and "junk-cc gave no library that loads" in detail and error < 1e-4
    assert _kernel_files(tmp_path) == []


def test_a_compiler_that_hangs_is_stopped_with_what_it_started(tmp_path):
    """A build that does not finish in its time is stopped, and the slices run: the compiler's own children too (a
    child left running held the messages' pipe open, and the build waited for it, however long it ran)."""
    hanging = _fake_compiler(tmp_path, "hanging-cc", f"sleep 60 &\necho $! > {tmp_path / 'child'}\nwait\n")
    state, detail, error = _run(tmp_path, timeout=40, CC=str(hanging), TEST_COMPILE_TIMEOUT_S="1")
    assert state == "unavailable" and detail == "building it failed: hanging-cc did not finish in 1 s (stopped)"
    assert error < 1e-4 and _kernel_files(tmp_path) == []
    child = Path(f"/proc/{(tmp_path / 'child').read_text().strip()}/stat")
    assert not child.exists() or child.read_text().split()[2] == "Z"


def test_a_full_disk_leaves_the_slices_the_reason_and_no_partial_file(tmp_path):
    """Files limited to 4 KB (ulimit -f), as on a full disk: the compiler cannot write. The build fails in one line
    that says so, the slices run, and the cache holds no partial file."""
    def small_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    state, detail, error = _run(tmp_path, preexec_fn=small_files)
    assert state == "unavailable" and detail.startswith("building it failed: ") and error < 1e-4
    assert "File size limit exceeded" in detail or "File too large" in detail, detail
    assert _kernel_files(tmp_path) == []


def test_two_processes_building_at_once_both_get_the_kernel_and_leave_one_file(tmp_path):
    runs = [subprocess.Popen([sys.executable, "-c", _STATUS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_environment(tmp_path)) for _ in range(2)]
    for run in runs:
        out, errors = run.communicate(timeout=120)
        assert run.returncode == 0, errors
        state, _, error = out.strip().split(" | ")
        assert state == "ready" and float(error) < 1e-4
    files = _kernel_files(tmp_path)
    assert len(files) == 1 and files[0].startswith("tile_kernel-"), files


_GENERATE = """
import sys
import quantbench.core
from quantbench.core import cpu_kernels
cpu_kernels.COMPILE_TIMEOUT_S = 1
from quantbench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_generate_is_not_held_up_by_a_hanging_compiler_and_says_so(tmp_path):
    """`generate --json` with a compiler that never ends: the build is stopped at its time limit, the quantized
    layers run the slices, the picture is written and load.cpu_tile_kernel says why."""
    from quantbench.core.random_model import write_random_model

    folder = write_random_model(tmp_path / "tiny", "tiny")
    hanging = _fake_compiler(tmp_path, "hanging-cc", "sleep 60 &\nwait\n")
    done = subprocess.run([sys.executable, "-c", _GENERATE, "generate", "--model", str(folder), "--prompt", "a red star",
                           "--width", "64", "--height", "64", "--steps", "1", "-q", "4", "--out", str(tmp_path / "a.png"),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=120,
                          env=_environment(tmp_path, CC=str(hanging)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["load"]["cpu_tile_kernel"] == {
        "state": "unavailable", "detail": "building it failed: hanging-cc did not finish in 1 s (stopped)"}
    assert (tmp_path / "a.png").stat().st_size > 0


_ENDING_DURING_A_BUILD = """
import threading, time
from quantbench.core import cpu_kernels
from quantbench.core.quant import tile_kernel
done = {}
def build():
    done["ready"] = tile_kernel._KERNEL.ready()
    done["at"] = time.monotonic()
builder = threading.Thread(target=build)
builder.start()
time.sleep(1.0)  # the compiler is running
stopped = time.monotonic()
cpu_kernels.stop_builds()
builder.join(30)
print(done["ready"], "|", tile_kernel.status().detail, "|", done["at"] - stopped)
"""


def test_a_build_under_way_is_stopped_when_quantbench_ends(tmp_path):
    """ctrl+q during the workbench's first compare waited for the kernel being compiled for it (seconds on a busy
    machine, up to the compile's 120 s limit): the run stops at its next step, but the end waited for the MLX
    thread, which waited for the compiler. stop_builds (the workbench's end) stops it with what it started."""
    hanging = _fake_compiler(tmp_path, "slow-cc", f"echo $$ > {tmp_path / 'pid'}\nsleep 60 &\nwait\n")
    done = subprocess.run([sys.executable, "-c", _ENDING_DURING_A_BUILD], capture_output=True, text=True, timeout=60,
                          env=_environment(tmp_path, CC=str(hanging)))
    assert done.returncode == 0, done.stderr
    ready, detail, seconds = done.stdout.strip().split(" | ")
    assert ready == "False" and detail == "building it failed: stopped: quantbench is ending"
    assert float(seconds) < 1.0, seconds
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the compiler is gone (its sleep with it: killed as a session)


def test_info_names_what_multiplies_the_dequantized_weight(tmp_path):
    """quantbench info's cpu kernel line says whether the kernel's own AVX-512 products run here or OpenBLAS's
    sgemm a tile (CPUs without AVX-512)."""
    done = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "info"], capture_output=True, text=True,
                          env=_environment(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("cpu kernel"))
    named = "its own AVX-512 products" if "avx512f" in cpu_flags() else "OpenBLAS's sgemm a tile"
    assert line.startswith(f"cpu kernel   tile kernel (dequantized inside the product, {named}), built by "), line
