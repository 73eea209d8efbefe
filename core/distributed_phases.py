"""Where a rank's wall time goes: start-up, joining the ring, loading, drawing, gathering, writing.

`phase(name)` adds the wall and CPU seconds of its block to this process's tally (a phase inside another
counts in the outer one only). With QUANTBENCH_PHASES_DIR set, each process writes its tally at exit to
`DIR/rank-R.json` (atomically): its rank and size, when the process was created and when it exited
(seconds since the epoch, so a benchmark can place them against its own clock), the threads OpenBLAS
ran on, the cores it ran on (Linux), and per phase {"wall", "user", "sys"} seconds (user and system CPU
of all its threads: a thread that spins while it waits shows there). "start-up" is from the process's creation to `started()` (the
interpreter and the imports); "other" is what no phase covered before exit. benchmarks/distributed.py
reads them.
"""

from __future__ import annotations

import atexit
import os
import time
from contextlib import contextmanager
from pathlib import Path

PHASES_ENV = "QUANTBENCH_PHASES_DIR"

_tally: dict[str, list[float]] = {}  # name -> [wall, user CPU, system CPU] seconds
_started: tuple[float, ...] | None = None  # (epoch seconds, user, system CPU seconds) when the command began
_depth = 0  # phases open now
_rank_and_size = (0, 1)  # set by distributed.world() once this process knows its place in the job


def _created() -> float:
    import psutil
    return psutil.Process().create_time()


def _cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process, all threads (system time is where spinning threads
    that yield the CPU show)."""
    times = os.times()
    return times.user, times.system


def _add(name: str, wall: float, user: float, system: float) -> None:
    into = _tally.setdefault(name, [0.0, 0.0, 0.0])
    for i, value in enumerate((wall, user, system)):
        into[i] += value


def started() -> None:
    """The command begins: the interpreter and the imports are done ("start-up")."""
    global _started
    if _started is not None or not os.environ.get(PHASES_ENV):
        return
    _started = (time.time(), *_cpu())
    _add("start-up", _started[0] - _created(), _started[1], _started[2])
    atexit.register(_write)


@contextmanager
def phase(name: str):
    """Count the block's wall and CPU seconds under `name` (only when QUANTBENCH_PHASES_DIR is set)."""
    global _depth
    if _started is None or _depth:
        yield
        return
    wall, (user, system) = time.perf_counter(), _cpu()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        now_user, now_system = _cpu()
        _add(name, time.perf_counter() - wall, now_user - user, now_system - system)


def joined(rank: int, size: int) -> None:
    """This process is rank `rank` of `size` (its record is named after the rank)."""
    global _rank_and_size
    _rank_and_size = (rank, size)


def tally() -> dict[str, dict[str, float]]:
    return {name: {"wall": round(w, 3), "user": round(u, 3), "sys": round(s, 3)} for name, (w, u, s) in _tally.items()}


def _cores() -> list[int] | None:
    """The cores this process may run on (a rank sharing its host keeps to its share: distributed_host.py)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _write() -> None:
    from .atomic import OutputError, write_json
    from .cpu_blas import blas_threads
    exited, (user, system) = time.time(), _cpu()
    created = _created()
    accounted = [sum(t[i] for t in _tally.values()) for i in range(3)]
    _add("other", max(0.0, exited - created - accounted[0]), max(0.0, user - accounted[1]),
         max(0.0, system - accounted[2]))
    rank, size = _rank_and_size
    folder = Path(os.environ[PHASES_ENV])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"rank-{rank}.json", {"rank": rank, "size": size, "pid": os.getpid(), "created": created,
                                                 "exited": exited, "blas_threads": blas_threads(), "cores": _cores(),
                                                 "phases": tally()})
    except (OSError, OutputError):  # a timing record must never turn a finished command into a failed one
        pass
