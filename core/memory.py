"""Memory figures as MLX and the OS report them. Cheap and safe to call from any thread."""

from __future__ import annotations

import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import psutil

_PROCESS = psutil.Process()


@dataclass(frozen=True)
class MemorySnapshot:
    mlx_active: int
    mlx_peak: int
    mlx_cache: int
    rss: int
    time: float

    def to_dict(self) -> dict:
        return asdict(self)


def memory_snapshot() -> MemorySnapshot:
    rss = _PROCESS.memory_info().rss
    RssPeak.saw(rss)
    return MemorySnapshot(
        mlx_active=mx.get_active_memory(),
        mlx_peak=mx.get_peak_memory(),
        mlx_cache=mx.get_cache_memory(),
        rss=rss,
        time=time.time(),
    )


def reset_peak() -> None:
    mx.reset_peak_memory()


class PhasePeaks:
    """MLX's peak memory in each phase of a run (the counter is reset as each phase starts)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}

    @contextmanager
    def measure(self, phase: str):
        reset_peak()
        try:
            yield
        finally:
            self.peaks[phase] = mx.get_peak_memory()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)



def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TB"


def process_peak_rss() -> int:
    """The largest resident set this process has had (getrusage; since the last RssPeak reset on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


_CLEAR_REFS = Path("/proc/self/clear_refs")


class RssPeak:
    """The process's largest resident set during a `with` block: the real maximum, not a late sample.

    On Linux the kernel's high-water mark is reset when the block starts (`5` to /proc/self/clear_refs)
    and read when it ends. Elsewhere, getrusage's lifetime maximum is exact when the block raised it;
    otherwise a thread samples the RSS every `interval` seconds and its largest sample stands in. Either
    way the peak is at least every RSS that memory_snapshot read meanwhile (a step's figure the user saw):
    the kernel keeps its RSS counters per CPU and folds them in batches, so its high-water mark can fall a
    few hundred KB short of a figure read between two folds.
    """

    _open: set["RssPeak"] = set()
    _open_lock = threading.Lock()

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._reset = False
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @classmethod
    def saw(cls, rss: int) -> None:
        """An RSS read elsewhere while blocks are open: each open block's peak is at least that."""
        with cls._open_lock:
            for block in cls._open:
                block.peak = max(block.peak, rss)

    def __enter__(self) -> "RssPeak":
        with self._open_lock:
            self._open.add(self)
        try:
            _CLEAR_REFS.write_text("5")
            self._reset = True
        except OSError:
            self._before = process_peak_rss()
            self._sampler = threading.Thread(target=self._sample, name="rss-peak", daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.saw(_PROCESS.memory_info().rss)

    def __exit__(self, *exc) -> None:
        after, now = process_peak_rss(), _PROCESS.memory_info().rss
        with self._open_lock:
            self._open.discard(self)
        if self._reset:
            self.peak = max(self.peak, after, now)
            return
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, now, after if after > self._before else 0)
