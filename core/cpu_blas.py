"""A fast BLAS under MLX's CPU backend on Linux.

The mlx[cpu] wheels link a reference BLAS: a float32 matmul runs at a few GFLOP/s where NumPy on
the same cores runs at hundreds. MLX calls `cblas_sgemm` through the dynamic linker, so loading the
system's OpenBLAS into the global symbol scope *before* MLX is first imported makes MLX's matmuls
use it. This module must therefore run before anything imports `mlx.core`; `quantbench.core`
calls `load_fast_blas()` first thing.

The system OpenBLAS is Debian/Ubuntu's `libopenblas0-pthread` (or any libopenblas.so.0 the loader
finds). PyPI's OpenBLAS wheels prefix their symbols (`scipy_cblas_sgemm`) and cannot stand in.
Set QUANTBENCH_BLAS=reference to keep MLX's own BLAS.

OpenBLAS picks its kernels by the CPU's model number, and a model newer than its table (or a VM that hides it)
gets its oldest x86-64 kernels: on a 16-core Intel Xeon VM with AVX-512 and AMX, Debian's OpenBLAS 0.3.21 ran
Prescott's (SSE3), and a width-0.25 Klein step took 6.3x diffusers' on 2 cores (docs/measurements.md). So unless
OPENBLAS_CORETYPE says otherwise, the kernels follow the CPU's flags instead (`core_for_cpu`); QUANTBENCH_BLAS=detected
leaves the choice to OpenBLAS.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .distributed_host import keep_to_own_cores
from .hardware import cpu_flags, cpuinfo_value

_CANDIDATES = ("libopenblas.so.0", "libopenblas.so", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
               "/usr/lib/aarch64-linux-gnu/libopenblas.so.0")
THREAD_TIMEOUT = "4"  # OpenBLAS's idle threads spin 2^N cycles before they sleep (4 is its least)
BLAS_ENV = "QUANTBENCH_BLAS"
INSTALL_HINT = "install libopenblas0-pthread (apt) for a much faster CPU matmul"


CORETYPE_ENV = "OPENBLAS_CORETYPE"  # OpenBLAS's own setting: which CPU's kernels it runs, instead of the one it detects
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")  # OpenBLAS's cores whose kernels use AVX-512
AVX512_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}  # what OpenBLAS's SkylakeX kernels use
AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")
DETECTED = "detected"  # QUANTBENCH_BLAS's value that leaves the choice of kernels to OpenBLAS


@dataclass(frozen=True)
class BlasStatus:
    blas: str  # "openblas", "reference", or "not used" (Metal/Accelerate on macOS)
    detail: str
    note: str = ""  # what the user could change for faster matmuls, when something can be
    core: str = ""  # the CPU whose kernels OpenBLAS runs (its own choice or OPENBLAS_CORETYPE's), when loaded

    def to_dict(self) -> dict:
        return asdict(self)


_status = BlasStatus("not checked", "")
_warned = False
IMPORTED_TOO_LATE = "mlx was imported before quantbench, too late to load OpenBLAS"
_library: ctypes.CDLL | None = None  # the OpenBLAS loaded, when it was


def load_fast_blas() -> BlasStatus:
    global _status
    if _status.blas != "not checked":
        return _status
    _status = _load()
    keep_freed_memory()
    # After OpenBLAS made its threads, before MLX makes its own: ranks sharing a host split its cores.
    keep_to_own_cores()
    return _status


def blas_status() -> BlasStatus:
    return _status


def warn_if_loaded_too_late() -> None:
    """A script that imported mlx.core before quantbench runs MLX's reference BLAS on the CPU, tens of times slower,
    and the C kernels, which multiply on OpenBLAS, not at all: say so once, as a RuntimeWarning, where it would
    otherwise only be slow (loading a model). The command line imports quantbench first."""
    global _warned
    if _status.detail == IMPORTED_TOO_LATE and not _warned:
        import mlx.core as mx
        if mx.default_device() == mx.cpu:
            _warned = True
            warnings.warn(f"{IMPORTED_TOO_LATE}: matmuls on MLX's CPU backend run its reference BLAS, tens of times "
                          "slower (import quantbench before mlx)", RuntimeWarning, stacklevel=_outside_level())


def _outside_level() -> int:
    """warnings.warn's stacklevel of the first caller outside quantbench's core: the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(os.path.dirname(__file__)):
        frame, level = frame.f_back, level + 1
    return level


def _load() -> BlasStatus:
    if sys.platform != "linux":
        return BlasStatus("not used", "MLX uses Metal and Accelerate on macOS")
    if os.environ.get(BLAS_ENV, "").lower() == "reference":
        return BlasStatus("reference", f"{BLAS_ENV}=reference")
    if "mlx.core" in sys.modules:
        return BlasStatus("reference", IMPORTED_TOO_LATE)
    # OpenBLAS's threads sleep as soon as a matmul ends instead of spinning for about 2^28 cycles: the
    # spinning took the cores MLX's own work between matmuls needed (a one-process eval of demo-turbo ran 2-2.7x
    # slower) and, under mlx.launch, the cores of other ranks on the same host (README: Across several
    # machines). The thread count stays: it decides how a matmul is partitioned, so the bits of every result
    # (ranks sharing a host split its cores instead: distributed_host.py).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT)
    pinned = os.environ.get(CORETYPE_ENV, "").strip()
    chosen = "" if pinned or os.environ.get(BLAS_ENV, "").lower() == DETECTED else core_for_cpu(
        cpu_flags(), cpuinfo_value("vendor_id") or "")
    for name in _CANDIDATES:
        try:
            with _coretype(chosen):
                library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        global _library
        _library = library
        core = _core_name(library)
        outcome = (_outcome(pinned, core, CORETYPE_ENV, f"{CORETYPE_ENV}={pinned}") if pinned
                   else _outcome(chosen, core, "quantbench for this CPU's flags", f"quantbench's choice {chosen}"))
        return BlasStatus("openblas", f"{name} ({core}{outcome})", _pinned_below_cpu(pinned, core), core)
    return BlasStatus("reference", f"no system OpenBLAS found: {INSTALL_HINT}")


def core_for_cpu(flags: set[str], vendor: str) -> str:
    """The OpenBLAS core whose kernels this CPU's flags run fastest: its AVX-512 kernels wherever the CPU has
    AVX-512 (on a 2-core AMD EPYC they multiplied float32 about 1.8x faster than the AVX2 Zen/Haswell kernels
    OpenBLAS 0.3.21 picks there), else AVX2's; "" (OpenBLAS's own choice) for a CPU with neither."""
    if AVX512_FLAGS <= flags:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Zen" if vendor in AMD_VENDORS else "Haswell"
    return ""


@contextmanager
def _coretype(core: str) -> Iterator[None]:
    """OPENBLAS_CORETYPE=core while OpenBLAS loads (it reads it then, once), not after: the processes quantbench
    starts choose for themselves, and a numpy loaded later keeps its own OpenBLAS's choice."""
    if not core:
        yield
        return
    before = os.environ.get(CORETYPE_ENV)  # unset, or blank (which counts as unset here)
    os.environ[CORETYPE_ENV] = core
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CORETYPE_ENV, None)
        else:
            os.environ[CORETYPE_ENV] = before


def _outcome(asked: str, core: str, chosen_by: str, request: str) -> str:
    """Whether the core asked for (OPENBLAS_CORETYPE's, or quantbench's choice) decided the core: OpenBLAS matches it
    case-blind against its own core names and, for a name it does not know or a core this CPU cannot run, runs the
    core it detects instead."""
    if not asked:
        return ""
    if _pin_taken(asked, core):
        return f", chosen by {chosen_by}"
    return f"; {request} not taken"


def _pin_taken(pinned: str, core: str) -> bool:
    return bool(pinned) and pinned.lower() == core.lower()


def _pinned_below_cpu(pinned: str, core: str) -> str:
    """A note when OPENBLAS_CORETYPE holds OpenBLAS to kernels without AVX-512 on a CPU that has it: OpenBLAS's
    AVX-512 kernels multiplied float32 about 2x faster on a 2-core AMD EPYC held to Haswell's (docs/measurements.md)."""
    if not _pin_taken(pinned, core) or core.lower() in AVX512_CORES or "avx512f" not in cpu_flags():
        return ""
    return (f"{CORETYPE_ENV}={pinned} holds OpenBLAS to {core}'s kernels on this AVX-512 CPU: unset it for "
            f"faster matmuls")


def _core_name(library: ctypes.CDLL) -> str:
    try:
        library.openblas_get_corename.restype = ctypes.c_char_p
        return library.openblas_get_corename().decode()
    except (AttributeError, UnicodeDecodeError):
        return "unknown core"


def sgemm_address() -> int | None:
    """The loaded OpenBLAS's cblas_sgemm, for kernels that call it themselves; None when OpenBLAS is not loaded."""
    try:
        return ctypes.cast(_library.cblas_sgemm, ctypes.c_void_p).value if _library is not None else None
    except AttributeError:
        return None


def blas_threads() -> int | None:
    """The threads OpenBLAS runs a matmul on now; None when OpenBLAS is not loaded."""
    try:
        return int(_library.openblas_get_num_threads()) if _library is not None else None
    except AttributeError:
        return None


_one_thread_lock = threading.Lock()
_one_thread_users = 0
_threads_before: int | None = None


@contextmanager
def one_thread_blas():
    """Inside, OpenBLAS multiplies on the calling thread alone (so that several threads can each run a
    product at once); every thread inside shares the setting, and the last one out gives back the
    thread count there was. Nothing when OpenBLAS is not loaded."""
    global _one_thread_users, _threads_before
    with _one_thread_lock:
        if _one_thread_users == 0 and _library is not None:
            _threads_before = blas_threads()
            _library.openblas_set_num_threads(1)
        _one_thread_users += 1
    try:
        yield
    finally:
        with _one_thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0 and _threads_before is not None:
                _library.openblas_set_num_threads(_threads_before)
                _threads_before = None


# MLX's CPU allocator is malloc, with no cache of its own. glibc's malloc serves a block of 128 kB or more
# with a fresh mmap until it has seen one that size freed, and gives a freed heap's top back to the kernel
# past twice that; every fresh page then costs a fault and the kernel's zeroing. The dense path's slices
# (up to 19 MB at Klein 4B's width, on lane threads whose arenas start small) kept meeting fresh memory:
# 1.7-1.9 million minor faults a full-size quantized step against 0.55 million unquantized, about 2 of its
# 46 CPU seconds (README: Quantized against unquantized at full size). Blocks up to glibc's largest mmap
# threshold come from the heap, and freed heap stays the process's to reuse. One arena for every thread:
# with one each, a thread's freed memory stayed out of the others' reach, and the process's RSS peaked
# higher (a width-0.25 Klein run: 461 MB against glibc's 453; one arena: 446-454 against 443-451).
MALLOC_ENV = "QUANTBENCH_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64 bits); larger blocks are still mmap'd
TRIM_THRESHOLD = 1 << 30
ARENAS = 1
# Inside the denoise loop no block is mapped on its own, however large: each pass makes the same outputs again
# (85 MB a 27648-wide layer's at Klein 4B's width and 768 tokens), and above 32 MB each was a fresh mmap,
# about 2.6 GB of pages a full-size step faulted in and zeroed (in a VM that hands freed memory to its host,
# refilled by the host too: there 8-bit steps ran 9-14% slower than 4-bit ones; README: Measured). Only there:
# left in the heap after the loop, they would stay resident under the decode and the next run (compare's
# process peaked 10% higher with every block heap-served), so the loop's freed heap goes back when it ends.
_M_MMAP_MAX = -4
GLIBC_MMAPS = 65536  # glibc's default count of blocks mapped on their own
_malloc_setting = "not set"


def keep_freed_memory() -> str:
    """On glibc, malloc keeps freed memory for reuse in one arena (ARENAS, MMAP_THRESHOLD, TRIM_THRESHOLD)
    unless QUANTBENCH_MALLOC=glibc; returns what was done: 'kept', 'glibc' (its defaults), or why not."""
    global _malloc_setting
    if os.environ.get(MALLOC_ENV, "").lower() == "glibc":
        _malloc_setting = "glibc"
    elif sys.platform != "linux":
        _malloc_setting = "not glibc"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            done = all(libc.mallopt(parameter, value) for parameter, value in (
                (_M_ARENA_MAX, ARENAS), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
        except (OSError, AttributeError):  # a libc without mallopt (musl): its own allocator's defaults
            done = False
        _malloc_setting = "kept" if done else "not glibc"
    return _malloc_setting


def malloc_setting() -> str:
    return _malloc_setting


@contextmanager
def heap_served():
    """Where freed memory is kept: every block from malloc's heap while inside, for work that makes the same
    large blocks pass after pass; on leaving, blocks above MMAP_THRESHOLD are mapped on their own again and
    the heap's free pages go back to the kernel (malloc_trim)."""
    if _malloc_setting != "kept":
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, GLIBC_MMAPS)
        give_back_freed_memory()


def give_back_freed_memory() -> None:
    """Where freed memory is kept, hand the heap's free pages back to the kernel now (malloc_trim): for when a
    component was released, so that the run's later phases hold no more than they reuse. Kept, a full-size
    Klein-4B run's RSS through its steps stayed 0.7 GB above glibc's settings' once its text encoder was freed."""
    if _malloc_setting == "kept":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


TILE_KERNEL_ENV = "QUANTBENCH_TILE_KERNEL"  # read by quant/tile_kernel.py
ATTENTION_KERNEL_ENV = "QUANTBENCH_ATTENTION_KERNEL"  # read by blocks/attention_kernel.py
ELEMENTWISE_KERNEL_ENV = "QUANTBENCH_ELEMENTWISE_KERNEL"  # read by blocks/elementwise_kernel.py


def setting_problem() -> str | None:
    """One line on a QUANTBENCH_BLAS, QUANTBENCH_MALLOC, QUANTBENCH_TILE_KERNEL, QUANTBENCH_ATTENTION_KERNEL or
    QUANTBENCH_ELEMENTWISE_KERNEL value quantbench does not take, else None."""
    for name, values, unset in ((BLAS_ENV, {"reference": "MLX's own BLAS", DETECTED: "OpenBLAS's own choice of "
                                            "kernels"}, "for OpenBLAS with the kernels for this CPU's flags"),
                                (MALLOC_ENV, {"glibc": "glibc's own malloc settings"}, "to keep freed memory"),
                                (TILE_KERNEL_ENV, {"off": "the slices instead of the CPU tile kernel"}, "for the kernel"),
                                (ATTENTION_KERNEL_ENV, {"off": "MLX's ops instead of the CPU attention kernel"},
                                 "for the kernel"),
                                (ELEMENTWISE_KERNEL_ENV, {"off": "MLX's ops instead of the CPU elementwise kernel"},
                                 "for the kernel")):
        value = os.environ.get(name, "")
        if value != "" and value.lower() not in values:
            shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
            taken = " or ".join(f"{allowed!r} ({meaning})" for allowed, meaning in values.items())
            only = "the only value it takes is" if len(values) == 1 else "it takes"
            return f"{name}={shown!r}: {only} {taken}; unset it {unset}"
    return None
