"""Memory figures as MLX and the OS report them. Cheap and safe to call from any thread."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

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
    return MemorySnapshot(
        mlx_active=mx.get_active_memory(),
        mlx_peak=mx.get_peak_memory(),
        mlx_cache=mx.get_cache_memory(),
        rss=_PROCESS.memory_info().rss,
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
