"""What a calibration reports while it runs: where it is, how much is done, and an estimate of the time left."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CalibrationProgress:
    stage: str  # "sampling" or "blocks"
    block: int  # 1-based, 0 while sampling
    blocks: int
    done: float  # units of the stage's work (one block run on one batch of calls)
    total: float  # the stage's: each stage fills its own bar
    elapsed: float  # seconds since the stage began
    share: tuple[int, int] | None = None  # split across ranks: (prompts this rank samples, all prompts)

    @property
    def eta(self) -> float | None:
        return None if self.done <= 0 else self.elapsed * max(self.total - self.done, 0) / self.done

    def line(self) -> str:
        where = f"block {self.block} of {self.blocks}" if self.stage != "sampling" else \
            "sampling the prompts" if self.share is None else \
            f"sampling its {self.share[0]} of the {self.share[1]} calibration prompts"
        eta = "" if self.eta is None else f", about {_clock(self.eta)} left"  # of this stage: its name says which
        return f"calibrating: {where} ({100 * min(self.done / max(self.total, 1e-9), 1):.0f}%{eta})"


def throttled(show, every: float = 5.0):
    """A progress callback passing on only what a person wants to read: each new block (or the start of
    sampling), the end, and otherwise one report every `every` seconds."""
    shown = {"where": None, "at": 0.0, "finished": False}

    def callback(state: CalibrationProgress) -> None:
        now = time.monotonic()
        where = (state.stage, state.block)
        finished = state.stage == "blocks" and state.done >= state.total
        if where != shown["where"] or now - shown["at"] >= every or (finished and not shown["finished"]):
            shown.update(where=where, at=now, finished=finished)
            show(state)
    return callback


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
