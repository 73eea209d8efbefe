"""Lanes: independent parts of one call run side by side on the CPU, one CPU stream a core.

MLX runs each CPU stream on a thread of its own, and all its work but BLAS on one thread: a call made of
many independent parts (a quantized layer's slices, attention's heads and chunks of queries) left to one
stream keeps one core on every elementwise pass while the other waits. In lanes, part i runs on lane
i % lanes, each lane a stream of its own multiplying on a one-thread BLAS, so every core does a part's
products and its elementwise work. Each lane runs its parts in order, so a lane holds the arrays of about
one part at a time.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import mlx.core as mx

from .cpu_blas import blas_threads, one_thread_blas

MAX_LANES = 4

# MLX's streams belong to the thread that made them ("There is no Stream(cpu, N) in current thread"
# elsewhere): each thread that runs lanes keeps its own.
_streams = threading.local()


def lane_count() -> int:
    """OpenBLAS's threads where they are 2 to MAX_LANES on the CPU (a lane a core), else 1 (no lanes)."""
    if mx.default_device() != mx.cpu:
        return 1
    threads = blas_threads() or 1
    return threads if 2 <= threads <= MAX_LANES else 1


def lane_stream(lane: int = 0) -> mx.Stream:
    """Lane `lane`'s stream on the default device (made once per thread; a CPU stream is a thread of its own)."""
    device = mx.default_device()
    key = f"{device}:{lane}"
    made = _streams.__dict__
    if key not in made:
        made[key] = mx.new_stream(device)
    return made[key]


def in_lanes(parts: Sequence[Callable[[], mx.array]], lanes: int,
             done: Callable[[list[tuple[int, mx.array]]], None], ahead: int = 1) -> None:
    """Make and evaluate parts[i]() on lane i % lanes; `done` gets each group's (index, array) pairs,
    evaluated, in order. Up to `ahead` groups of `lanes` parts are queued beyond the group waited for, so
    no lane idles while `done` runs (a lane then holds the arrays of up to ahead + 1 parts at once); with
    ahead=0 each group is made once the one before is done. Raises ValueError inside mx.compile (which may
    not evaluate)."""
    streams = [lane_stream(lane) for lane in range(lanes)]
    queued: list[list[tuple[int, mx.array]]] = []
    with one_thread_blas():
        for first in range(0, len(parts), lanes):
            group = []
            for index, stream in zip(range(first, min(first + lanes, len(parts))), streams):
                with mx.stream(stream):
                    group.append((index, parts[index]()))
            mx.async_eval([array for _, array in group])
            queued.append(group)
            if len(queued) > ahead:
                _finish(queued.pop(0), done)
        for group in queued:
            _finish(group, done)


def _finish(group: list[tuple[int, mx.array]], done: Callable[[list[tuple[int, mx.array]]], None]) -> None:
    mx.eval([array for _, array in group])
    done(group)
