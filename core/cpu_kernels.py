"""quantbench's C kernels for the CPU, each built once per source and compiler with the system's C compiler.

MLX's CPU backend lacks kernels a denoising step needs: a quantized product that dequantizes inside BLAS's
tiles (quant/tile_kernel.c), an attention that keeps each block's scores in cache (blocks/attention_kernel.c),
and elementwise passes on every core that write where the next product reads (blocks/elementwise_kernel.c).
Each is compiled (as MLX compiles its own CPU kernels) into the user's cache folder, or $QUANTBENCH_KERNEL_DIR,
with the C headers it shares (cpu_threads.h, cpu_vectors.h, blocks/cephes_exp.h) put before its text, and loaded with ctypes; a kernel that is
switched off, or that cannot be built here, says why, and its caller runs MLX ops instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np
from platformdirs import user_cache_dir

from . import cpu_blas

FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")
FOLDER_ENV = "QUANTBENCH_KERNEL_DIR"  # where builds are kept (default: the user's cache folder)
THREADS_HEADER = Path(__file__).with_name("cpu_threads.h")  # every kernel's threads, before its own text
VECTORS_HEADER = Path(__file__).with_name("cpu_vectors.h")  # every kernel's AVX-512 check, after the threads
COMPILE_TIMEOUT_S = 120  # a compiler not done by then is stopped, with every process it started


@dataclass(frozen=True)
class KernelStatus:
    state: str  # "ready", "off", "unavailable" (detail says why), or "not built" (not needed yet)
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


class CompiledKernel:
    """One C source's exported function, built the first time ready() is asked; `switch` is the setting
    ("off") that keeps it from running."""

    def __init__(self, source: Path, symbol: str, argtypes: Sequence, switch: str, headers: Sequence[Path] = ()):
        """`headers`: C text shared with other kernels, put before the source's own (in that order), after
        cpu_threads.h, which every kernel's threads come from."""
        self.source, self.symbol, self.argtypes, self.switch = source, symbol, list(argtypes), switch
        # Read now, with the module that calls it: a source changed on disk later (quantbench upgraded under a
        # running workbench) must not be built for callers passing the old arguments.
        try:
            self.code: bytes | None = b"".join(f'#line 1 "{part.name}"\n'.encode() + part.read_bytes()
                                               for part in (THREADS_HEADER, VECTORS_HEADER, *headers, source))
        except OSError:  # an install without it: the callers' MLX ops run
            self.code = None
        self._lock = threading.Lock()
        self._status = KernelStatus("not built", "")
        self.function = None

    def status(self) -> KernelStatus:
        return self._status

    def ready(self) -> bool:
        """Builds (or finds) the kernel the first time; True when it can run."""
        with self._lock:
            if self._status.state == "not built":
                self._status, self.function = self._load()
            return self._status.state == "ready"

    def expected(self) -> bool:
        """Whether the kernel will run here, without building it: built already, or nothing missing to build it
        (the memory model's question)."""
        if self._status.state != "not built":
            return self._status.state == "ready"
        return self._missing() is None

    def _missing(self) -> KernelStatus | None:
        """Why the kernel will not run here before any build is tried (switched off, no OpenBLAS, no compiler)."""
        if os.environ.get(self.switch, "").lower() == "off":
            return KernelStatus("off", f"{self.switch}=off")
        if self.code is None:
            return KernelStatus("unavailable", f"its source {self.source.name} or a header it needs is not installed")
        if cpu_blas.sgemm_address() is None:
            return KernelStatus("unavailable", "needs OpenBLAS (" + cpu_blas.INSTALL_HINT + ")")
        command, why = compiler()
        return None if command else KernelStatus("unavailable", why)

    def _load(self):
        if _ENDING.is_set():
            return KernelStatus("unavailable", "not built: quantbench is ending"), None
        missing = self._missing()
        if missing is not None:
            return missing, None
        built_by, _ = compiler()
        try:
            library, path = self._built(built_by)
        except (OSError, BuildFailed) as error:
            return KernelStatus("unavailable", f"building it failed: {_one_line(error)}"), None
        function = getattr(library, self.symbol)
        function.restype = ctypes.c_int
        function.argtypes = self.argtypes
        return KernelStatus("ready", f"built by {named(built_by)} into {path}"), function

    def _built(self, built_by: list[str]) -> tuple[ctypes.CDLL, str]:
        """The compiled kernel from the cache, built there first when missing (or unloadable); where the cache
        folder cannot be written, a build in a temporary folder, loaded, then removed."""
        # Named by the source, then the compiler's command, then its version: each compiler's build is kept (CC
        # switched back and forth rebuilt every time), and a compiler upgraded in place builds again.
        source_key = _digest(self.code + " ".join((*FLAGS, platform.machine())).encode(), 16)
        command_key = _digest(shlex.join(built_by).encode(), 8)
        folder = Path(os.environ.get(FOLDER_ENV) or Path(user_cache_dir("quantbench")) / "kernels")
        source_builds = f"{self.source.stem}-{source_key}-"
        command_builds = f"{source_builds}{command_key}-"
        target = folder / f"{command_builds}{_digest(compiler_version(built_by).encode(), 8)}.so"
        if target.exists():
            try:
                library = ctypes.CDLL(str(target))
                if hasattr(library, self.symbol):
                    return library, str(target)
            except OSError:  # a truncated or foreign file: build it again
                pass
        try:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor, partial = tempfile.mkstemp(dir=folder, prefix=f".{self.source.stem}-", suffix=".so")
            os.close(descriptor)
        except OSError:  # the cache cannot be written: built for this process alone, its file gone once loaded
            with tempfile.TemporaryDirectory(prefix="quantbench-kernel-") as scratch:
                library = self._compile(built_by, Path(scratch) / target.name)
                return library, "a temporary file (the cache folder cannot be written)"
        try:  # into a file of its own beside the target, loaded, then renamed over it: another process sees a
            library = self._compile(built_by, Path(partial))  # whole library or none, never a partial file
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        for stale in folder.glob(f"{self.source.stem}-*.so"):
            # builds of earlier sources, and this compiler's by an earlier version; other compilers' builds are kept
            if stale != target and (not stale.name.startswith(source_builds) or stale.name.startswith(command_builds)):
                stale.unlink(missing_ok=True)
        return library, str(target)

    def _compile(self, built_by: list[str], output: Path) -> ctypes.CDLL:
        """The kernel compiled into `output` and loaded from it; BuildFailed (one line) when that cannot be done.
        The compiler runs in a session of its own, so that one not done in COMPILE_TIMEOUT_S is stopped with every
        process it started (a wrapper's compiler, left running, held the build's pipe open); what it says goes to a
        file, which nothing left running can hold up as it could a pipe."""
        with tempfile.TemporaryFile() as said, \
                tempfile.NamedTemporaryFile(suffix=".c", prefix=f".{self.source.stem}-", dir=output.parent) as source:
            source.write(self.code)  # the source as imported (see __init__), beside the library it becomes
            source.flush()
            try:
                process = subprocess.Popen([*built_by, *FLAGS, source.name, "-o", str(output)],
                                           stdin=subprocess.DEVNULL, stdout=said, stderr=said, start_new_session=True)
            except OSError as error:  # not executable, say
                raise BuildFailed(f"{named(built_by)} could not be started ({error.strerror or error})") from None
            try:
                code = _wait_for(process, COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _stop(process)
                raise BuildFailed(f"{named(built_by)} did not finish in {COMPILE_TIMEOUT_S:g} s (stopped)") from None
            except BaseException:  # Ctrl-C, or quantbench ending (stop_builds): nothing it started is left running
                _stop(process)
                raise
            said.seek(0)
            if code != 0:
                raise BuildFailed(_failure(built_by, code, said.read().decode(errors="replace")))
        try:
            library = ctypes.CDLL(str(output))
        except OSError as error:
            raise BuildFailed(f"{named(built_by)} gave no library that loads ({_one_line(error)})") from None
        if not hasattr(library, self.symbol):
            raise BuildFailed(f"{named(built_by)} gave a library without {self.symbol}")
        return library


class BuildFailed(Exception):
    """The compiler failed, was stopped or gave no library that loads (the message says which, in one line)."""


_ENDING = threading.Event()


def stop_builds() -> None:
    """The program is ending (the workbench quit during a run): a compiler running is stopped with what it started,
    and no kernel is built from here on (the callers' MLX ops run). The end waited for a build nobody would use: the
    run stops at its next step, but a compile at the start of a compare took seconds more on a busy machine."""
    _ENDING.set()


def _wait_for(process: subprocess.Popen, timeout: float) -> int:
    """The compiler's exit status; TimeoutExpired after `timeout` s, BuildFailed once stop_builds is called."""
    deadline = time.monotonic() + timeout
    while (code := process.poll()) is None:
        if _ENDING.is_set():
            raise BuildFailed("stopped: quantbench is ending")
        if time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        _ENDING.wait(0.02)
    return code


def _stop(process: subprocess.Popen) -> None:
    """The compiler and every process of its session killed; the compiler reaped."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:  # all gone already
        pass
    process.wait()


def _failure(built_by: list[str], code: int, said: str) -> str:
    """A failed compile in one line: how the compiler ended, and its first line that says error (compilers print
    context before it), else its last line."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    line = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
    if code < 0:
        try:
            ended = f"was stopped by {signal.Signals(-code).name} ({signal.strsignal(-code)})"
        except ValueError:
            ended = f"was stopped by signal {-code}"
    else:
        ended = f"exited {code}"
    return f"{named(built_by)} {ended}" + (f": {line}" if line else "")


def evaluated(*arrays: mx.array) -> bool:
    """The arrays evaluated (a kernel reads their memory), or False inside mx.compile, which may not evaluate: the
    kernel's caller runs MLX's ops there."""
    try:
        mx.eval(*arrays)
    except ValueError:
        return False
    return True


def evaluated_output(shape: tuple[int, ...], *arrays: mx.array) -> tuple[mx.array, np.ndarray] | None:
    """A new float32 MLX array for a kernel to write its output into, and its memory as NumPy sees it (not a
    copy: nothing else holds the array, so writing the view in place is the array's value), with the arrays the
    kernel reads evaluated in the same call to MLX (each call waits for MLX's stream thread to wake and finish:
    25-80 us on a 2-core VM, and a step makes about 125 such calls); None inside mx.compile, as evaluated()."""
    out = mx.zeros(shape, mx.float32)
    if not evaluated(*arrays, out):
        return None
    return out, np.asarray(out)


def evaluated_into(shape: tuple[int, ...], arrays: list[mx.array], into: np.ndarray | None
                   ) -> tuple[mx.array | None, np.ndarray | None]:
    """For a kernel that writes into the caller's `into` or else a new array: the arrays evaluated, and (None,
    into), or where no `into` was given evaluated_output's pair; (None, None) inside mx.compile."""
    if into is not None:
        return (None, into) if evaluated(*arrays) else (None, None)
    made = evaluated_output(shape, *arrays)
    return made if made is not None else (None, None)


def kernel_threads() -> int:
    """A kernel's threads: OpenBLAS's, whose place they take (each multiplies on a one-thread sgemm); ask before
    one_thread_blas() narrows them."""
    return cpu_blas.blas_threads() or 1


def compiler() -> tuple[list[str] | None, str]:
    """The C compiler's command, or None and why there is none. $CC when set (and only it), split into words as a
    shell would, so that a command with arguments ("ccache gcc", "gcc -m64") is taken as make and setuptools take
    it: its first word is the program, looked up on the PATH, and the others come before our flags. Else the
    first of cc, gcc and clang on the PATH."""
    given = os.environ.get("CC", "").strip()
    if not given:
        found = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
        return ([found], "") if found else (None, "no C compiler found (set CC, or install gcc)")
    try:
        words = shlex.split(given)
    except ValueError as error:  # an unclosed quote
        return None, f"CC={given} is not a command ({error})"
    if not words:
        return None, f"CC={given} names no program"
    if not (found := shutil.which(words[0])):
        return None, f"CC={given} was not found" if len(words) == 1 else f"CC={given}: {words[0]} was not found"
    return [found, *words[1:]], ""


def compiler_version(command: list[str]) -> str:
    """What tells one version of the compiler from another without running it: each word of the command that is a
    program on the PATH (the compiler, and the one a wrapper such as ccache runs), by the file it resolves to, its
    size and its modification time, which an upgrade replacing it changes."""
    found = []
    for word in command:
        program = shutil.which(word)
        if program is None:
            continue
        try:
            info = os.stat(program)
        except OSError:
            continue
        found.append(f"{os.path.realpath(program)}:{info.st_size}:{info.st_mtime_ns}")
    return " ".join(found)


def _digest(data: bytes, length: int) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def named(command: list[str]) -> str:
    """The compiler as a status line names it: its program's name and its arguments."""
    return shlex.join([Path(command[0]).name, *command[1:]])


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
