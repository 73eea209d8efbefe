"""Letting go of a component's memory: when it is released, and when its load is cancelled."""

from __future__ import annotations

import gc
import traceback
from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx

from ..cpu_blas import give_back_freed_memory
from ..errors import Cancelled


@contextmanager
def freed_when_cancelled() -> Iterator[None]:
    """Around a load: when it is cancelled, what it had read is let go before Cancelled goes on. The exception's
    traceback holds the frames that were building the component (and their arrays) for as long as anyone holds
    the exception (a future, a worker's error); their locals are cleared and the memory given back now, so the
    next load starts from what was held before this one."""
    try:
        yield
    except Cancelled as exc:
        traceback.clear_frames(exc.__traceback__)
        free_buffers()
        raise


def free_buffers() -> None:
    """Let go of a released component's buffers now, not at the next allocation."""
    gc.collect()
    mx.clear_cache()
    give_back_freed_memory()
