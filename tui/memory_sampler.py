"""Memory over time for the monitor: MLX's counters, process RSS, and what the system has left."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import psutil

from quantbench.core.memory import memory_snapshot

SERIES = ("rss", "mlx_active", "mlx_cache", "available", "swap")
LABELS = {"rss": "RSS", "mlx_active": "MLX active", "mlx_cache": "MLX cache", "available": "available",
          "swap": "swap"}


@dataclass(frozen=True)
class MemorySample:
    time: float
    rss: int
    mlx_active: int
    mlx_cache: int
    available: int
    swap: int


def sample_memory() -> MemorySample:
    """Cheap (a few syscalls): called from the UI thread on a timer."""
    snapshot = memory_snapshot()
    return MemorySample(time.time(), snapshot.rss, snapshot.mlx_active, snapshot.mlx_cache,
                        psutil.virtual_memory().available, psutil.swap_memory().used)


class MemoryHistory:
    """The last `seconds` of samples, with the peak of each series since the last reset."""

    def __init__(self, seconds: float = 120.0):
        self.seconds = seconds
        self.samples: deque[MemorySample] = deque()
        self.peaks = dict.fromkeys(SERIES, 0)

    def add(self, sample: MemorySample) -> None:
        self.samples.append(sample)
        while self.samples and sample.time - self.samples[0].time > self.seconds:
            self.samples.popleft()
        for name in SERIES:
            if name != "available":
                self.peaks[name] = max(self.peaks[name], getattr(sample, name))

    def reset_peaks(self) -> None:
        self.peaks = dict.fromkeys(SERIES, 0)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(seconds relative to now, GiB) for plotting."""
        if not self.samples:
            return [], []
        now = self.samples[-1].time
        return ([s.time - now for s in self.samples], [getattr(s, name) / 2**30 for s in self.samples])
