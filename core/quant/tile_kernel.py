"""The CPU's quantized product with the dequantization inside it, tile by tile (tile_kernel.c).

MLX's CPU backend has no such kernel: its own quantized matmul does not use BLAS, and the dense path's MLX
ops (dense.py) dequantize a slice of rows into memory, then multiply it, each slice's product packing the
whole input again. tile_kernel.c does what MLX's Metal and CUDA kernels do: each thread dequantizes a tile
of a few MB and adds its product into its block of the output, on OpenBLAS's sgemm. It is compiled once per
source with the system's C compiler (as MLX compiles its own CPU kernels) into the user's cache folder (or
$QUANTBENCH_KERNEL_DIR); without a compiler, or with QUANTBENCH_TILE_KERNEL=off, the slices run instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from platformdirs import user_cache_dir

from .. import cpu_blas

SOURCE = Path(__file__).with_name("tile_kernel.c")
FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")
ENV = cpu_blas.TILE_KERNEL_ENV  # "off": the slices
FOLDER_ENV = "QUANTBENCH_KERNEL_DIR"  # where builds are kept (default: the user's cache folder)
COMPILE_TIMEOUT_S = 120
# A tile: weight rows (output columns) by inputs, 2048 x 768 float32 (6 MB) at most; narrower where a layer's
# columns make fewer than two blocks a thread. Of 256-4096 rows by 192-1536 inputs at Klein 4B's shapes
# (benchmarks/dense_slices.py --compare tiles) none was clearly faster within this host's noise.
TILE_ROWS = 2048
TILE_INPUTS = 768
BITS = (2, 4, 8)
VECTORS = True  # AVX-512 dequantization where the CPU has it (False: plain C, the same bits)
_SCALE_KINDS = {mx.float32: 0, mx.float16: 1, mx.bfloat16: 2}


@dataclass(frozen=True)
class KernelStatus:
    state: str  # "ready", "off", "unavailable" (detail says why), or "not built" (not needed yet)
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


_lock = threading.Lock()
_status = KernelStatus("not built", "")
_function = None


def status() -> KernelStatus:
    return _status


def ready() -> bool:
    """Builds (or finds) the kernel the first time; True when products can use it."""
    global _status, _function
    with _lock:
        if _status.state == "not built":
            _status, _function = _load()
        return _status.state == "ready"


def expected() -> bool:
    """Whether products here will use the kernel, without building it: built already, or nothing missing to
    build it (the memory model's question: the kernel's tiles are outside MLX's memory)."""
    if _status.state != "not built":
        return _status.state == "ready"
    return _missing() is None


def _missing() -> KernelStatus | None:
    """Why the kernel will not run here before any build is tried (switched off, no OpenBLAS, no compiler)."""
    if os.environ.get(ENV, "").lower() == "off":
        return KernelStatus("off", f"{ENV}=off")
    if cpu_blas.sgemm_address() is None:
        return KernelStatus("unavailable", "needs OpenBLAS (" + cpu_blas.INSTALL_HINT + ")")
    if _compiler() is None:
        return KernelStatus("unavailable", "no C compiler found (set CC, or install gcc)" if not os.environ.get("CC")
                            else f"CC={os.environ['CC'].strip()} was not found")
    return None


def _load():
    missing = _missing()
    if missing is not None:
        return missing, None
    sgemm, compiler = cpu_blas.sgemm_address(), _compiler()
    try:
        library, path = _built(compiler)
    except (OSError, subprocess.SubprocessError) as error:
        return KernelStatus("unavailable", f"building it failed: {_one_line(error)}"), None
    function = library.quantized_matmul
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 10 + [ctypes.c_void_p]
    return KernelStatus("ready", f"built by {Path(compiler).name} into {path}"), (function, sgemm)


def _compiler() -> str | None:
    """$CC when set (and only it), else the first of cc, gcc and clang on the PATH."""
    given = os.environ.get("CC", "").strip()
    for name in (given,) if given else ("cc", "gcc", "clang"):
        if found := shutil.which(name):
            return found
    return None


def _built(compiler: str) -> tuple[ctypes.CDLL, str]:
    """The compiled kernel from the cache, built there first when missing (or unloadable); where the cache
    folder cannot be written, a build in a temporary folder, loaded, then removed."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS, platform.machine())).encode()).hexdigest()[:16]
    folder = Path(os.environ.get(FOLDER_ENV) or Path(user_cache_dir("quantbench")) / "kernels")
    target = folder / f"tile_kernel-{key}.so"
    if target.exists():
        try:
            library = ctypes.CDLL(str(target))
            if hasattr(library, "quantized_matmul"):
                return library, str(target)
        except OSError:  # a truncated or foreign file: build it again
            pass
    try:
        folder.mkdir(parents=True, exist_ok=True)
        built = _compile(compiler, folder, target)
    except OSError:  # the cache cannot be written: built for this process alone, its file gone once loaded
        with tempfile.TemporaryDirectory(prefix="quantbench-kernel-") as scratch:
            built = _compile(compiler, Path(scratch), Path(scratch) / target.name)
            return ctypes.CDLL(str(built)), "a temporary file (the cache folder cannot be written)"
    return ctypes.CDLL(str(built)), str(built)


def _compile(compiler: str, folder: Path, target: Path) -> Path:
    """Compiled into a temporary file beside `target`, then renamed over it: another process loading the
    kernel sees the whole file or none."""
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix=".tile_kernel-", suffix=".so")
    os.close(descriptor)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise subprocess.SubprocessError((done.stderr.strip() or f"{compiler} exited {done.returncode}"))
        os.replace(partial, target)
        for stale in folder.glob("tile_kernel-*.so"):  # builds of earlier sources
            if stale != target:
                stale.unlink(missing_ok=True)
        return target
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def supports(layer, x: mx.array) -> bool:
    """Whether product() can run this layer on this input (else the dense path's slices do)."""
    return (mx.default_device() == mx.cpu and x.dtype == mx.float32 and layer.mode == "affine"
            and layer.bits in BITS and sys.byteorder == "little" and layer.scales.dtype in _SCALE_KINDS
            and layer.biases is not None and layer.biases.dtype == layer.scales.dtype and ready())


def product(layer, x: mx.array) -> mx.array | None:
    """x @ W.T for the quantized layer's W (no bias), or None when the kernel cannot run it: inside mx.compile
    (which may not evaluate; the kernel needs its input evaluated), a weight that is a strided view, or no
    thread able to allocate its tile."""
    try:
        mx.eval(x)
    except ValueError:
        return None
    rows, inputs, outputs = x.size // x.shape[-1], x.shape[-1], layer.weight.shape[0]
    if rows == 0:
        return mx.zeros((*x.shape[:-1], outputs), mx.float32)
    codes, scales, offsets = (_host_view(array) for array in (layer.weight, layer.scales, layer.biases))
    if not all(array.flags.c_contiguous for array in (codes, scales, offsets)):
        return None
    flat = np.ascontiguousarray(np.asarray(x).reshape(rows, inputs))
    y = mx.zeros((rows, outputs), mx.float32)
    mx.eval(y)
    out = np.asarray(y)  # y's own buffer, written in place: nothing else holds it
    function, sgemm = _function
    threads = thread_count()
    with cpu_blas.one_thread_blas():
        failed = function(flat.ctypes.data, codes.ctypes.data, scales.ctypes.data, offsets.ctypes.data,
                          out.ctypes.data, rows, outputs, inputs, layer.bits, layer.group_size,
                          _SCALE_KINDS[layer.scales.dtype], threads, TILE_ROWS, _tile_inputs(layer), int(VECTORS), sgemm)
    return None if failed else y.reshape(*x.shape[:-1], outputs)


def _host_view(array: mx.array) -> np.ndarray:
    """The array's memory as NumPy sees it, not copied; bfloat16 (which NumPy lacks) as its 16-bit words."""
    return np.asarray(mx.view(array, mx.uint16) if array.dtype == mx.bfloat16 else array)


def thread_count() -> int:
    """The kernel's threads: OpenBLAS's, whose place they take (each multiplies on a one-thread sgemm)."""
    return cpu_blas.blas_threads() or 1


def _tile_inputs(layer) -> int:
    return max(layer.group_size, TILE_INPUTS // layer.group_size * layer.group_size)
