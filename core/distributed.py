"""The lab's independent runs split across the ranks of an `mlx.launch` job (MLX's distributed backend).

Under `mlx.launch -n N` (or a hostfile) every rank runs the same command. A sweep (compare's
precisions, eval's prompts) hands run i to rank i % N; each rank draws its share, and the results
travel to every rank with `mx.distributed.all_gather` (MLX's own transport: ring over TCP, MPI or
JACCL). Rank 0 alone prints and writes, after the gather, so a job that stops early has written
nothing. Outside `mlx.launch` there is one rank and the runs are plain calls, in order.

A rank that dies closes its ring sockets: the others' next collective raises, and they stop with one
line naming the lost rank and its host. mlx.launch also stops (SIGTERM) every rank when one exits
early, often before they notice; `stop_message` says so in one line, naming the same rank (from the
launcher's children, see distributed_launcher.py, or with two ranks the other one). A rank that hangs without dying (a pulled cable) is caught
by a watchdog on each gather: QUANTBENCH_RANK_TIMEOUT seconds (default: three times this rank's own
work, at least 300 s), then the rank exits with one line.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np

from . import numbers
from .distributed_host import check_cores_setting, ring_hosts
from .distributed_payload import decode, encode
from .distributed_launcher import calm_launcher, ranks_running_here
from .distributed_phases import joined, phase
from .errors import QuantbenchError

T = TypeVar("T")
TIMEOUT_ENV = "QUANTBENCH_RANK_TIMEOUT"
MIN_TIMEOUT_SECONDS = 300.0
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0  # a week
WATCHDOG_EXIT_CODE = 3


class RankLost(QuantbenchError):
    """Another rank of the job stopped answering (it died, or the network between the hosts went)."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: its rank, the number of ranks and each rank's host."""

    rank: int = 0
    size: int = 1
    hosts: tuple[str, ...] = ("localhost",)
    group: Any = None  # mx.distributed.Group when size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def host(self) -> str:
        return self.host_of(self.rank)

    def host_of(self, rank: int) -> str:
        return self.hosts[rank] if rank < len(self.hosts) else "unknown host"

    def mine(self, count: int) -> list[int]:
        """The runs of `count` this rank draws: i % size == rank (neighbouring runs on different ranks)."""
        return list(range(self.rank, count, self.size))

    def peers(self) -> list[int]:
        """The ranks this one talks to directly: with the ring, its two neighbours."""
        return sorted({(self.rank - 1) % self.size, (self.rank + 1) % self.size} - {self.rank})

    def describe_peers(self) -> str:
        return describe_ranks(self, self.peers())


_world: World | None = None


def world() -> World:
    """The job this process belongs to; one rank unless it was started by mlx.launch (MLX_RANK is set)."""
    global _world
    if _world is None:
        _world = _join() if "MLX_RANK" in os.environ else World()
        joined(_world.rank, _world.size)
    return _world


def _join() -> World:
    import mlx.core as mx
    _timeout(0.0)  # a bad QUANTBENCH_RANK_TIMEOUT is said now, not at the first gather after the work
    check_cores_setting()
    calm_launcher()  # mlx.launch's launcher never sleeps: off our cores (distributed_launcher.py)
    try:
        with phase("join the ring"):
            group = mx.distributed.init(strict=True)
    except (RuntimeError, ValueError) as exc:
        raise RankLost(f"could not join the distributed job started by mlx.launch: {_first_line(exc)}") from None
    calm_launcher()  # again: every rank has started now, so the launcher has made all its threads
    size = group.size()
    hosts = _hosts_from_hostfile(os.environ.get("MLX_HOSTFILE"), size)
    return World(rank=group.rank(), size=size, hosts=hosts, group=group if size > 1 else None)


def _hosts_from_hostfile(path: str | None, size: int) -> tuple[str, ...]:
    """Each rank's host, from the ring hostfile mlx.launch writes; placeholders where it has none."""
    hosts = ring_hosts(path)
    return tuple(hosts) if hosts else tuple(f"rank {r}'s host" for r in range(size))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def known_world() -> World | None:
    """This process's place in the job without joining it: the joined world or, while this rank is still
    joining, the one mlx.launch's environment describes (MLX_RANK and the ring's hostfile); None outside a job,
    or when the environment does not say."""
    if _world is not None or "MLX_RANK" not in os.environ:
        return _world
    hosts = ring_hosts(os.environ.get("MLX_HOSTFILE"))
    try:
        rank = int(os.environ["MLX_RANK"])
    except ValueError:
        return None
    return World(rank=rank, size=len(hosts), hosts=tuple(hosts)) if hosts and 0 <= rank < len(hosts) else None


def gone_ranks(w: World) -> list[int] | None:
    """The other ranks of the job that have ended, as far as this host's launcher tells; None when it cannot."""
    running = ranks_running_here()
    return None if running is None else [r for r in range(w.size) if r != w.rank and r not in running]


def describe_ranks(w: World, ranks: list[int]) -> str:
    """'rank 1 (host) or rank 2 (host)': of several ranks gone, the others may have been stopped by the first."""
    return " or ".join(f"rank {r} ({w.host_of(r)})" for r in ranks)


def stop_message() -> str | None:
    """What a rank says when it is stopped (SIGTERM) inside an mlx.launch job: mlx.launch stops every rank when
    one ends early, so it names the rank that ended (it may still be joining: it has not noticed yet); None
    outside a job. Said the same however the SIGTERM and the rank's own discovery of the loss race."""
    w = known_world()
    if w is None or w.size == 1:
        return None
    gone = gone_ranks(w)
    if gone == []:  # every rank still runs: the SIGTERM came from someone else
        return f"rank {w.rank} on {w.host} was stopped (SIGTERM); nothing half-written was left"
    which = describe_ranks(w, gone) if gone else (
        w.describe_peers() if w.size == 2 else "another rank (named in the launcher's warning)")
    return (f"rank {w.rank} on {w.host} was stopped (SIGTERM): mlx.launch does that when another rank ends early, "
            f"here {which}; nothing half-written was left")


# ---------------------------------------------------------------------------------------------
# Collectives
# ---------------------------------------------------------------------------------------------

def _timeout(own_seconds: float) -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if value:
        try:
            seconds = numbers.decimal(value)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_TIMEOUT_SECONDS:  # nan too; inf would overflow the watchdog's timer
            raise RankLost(f"{TIMEOUT_ENV}={value!r}: give seconds above 0 (at most {MAX_TIMEOUT_SECONDS:.0f}), "
                           "e.g. 600")
        return max(0.1, seconds)
    return max(MIN_TIMEOUT_SECONDS, 3 * own_seconds)


def _watchdog(w: World, seconds: float, what: str) -> threading.Timer:
    def expire():
        print(f"quantbench: error: rank {w.rank} on {w.host} waited {seconds:.0f} s for {w.describe_peers()} in "
              f"the distributed {what} and gives up ({TIMEOUT_ENV} sets the wait); nothing was written",
              file=sys.stderr, flush=True)
        os._exit(WATCHDOG_EXIT_CODE)  # the main thread is blocked inside MLX's collective

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def all_gather_bytes(w: World, payload: bytes, *, what: str, own_seconds: float = 0.0) -> list[bytes]:
    """Every rank's payload, in rank order, on every rank."""
    if w.size == 1:
        return [payload]
    import mlx.core as mx
    with phase("gather"), _collective(w, what, own_seconds):
        lengths = mx.distributed.all_gather(mx.array([len(payload)], dtype=mx.int64), group=w.group)
        mx.eval(lengths)
        sizes = [int(n) for n in lengths.tolist()]
        padded = np.zeros(max(sizes), dtype=np.uint8)
        padded[:len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        gathered = mx.distributed.all_gather(mx.array(padded), group=w.group)
        mx.eval(gathered)
    rows = np.asarray(gathered).reshape(w.size, max(sizes))
    return [rows[r, :n].tobytes() for r, n in enumerate(sizes)]


def all_sum(w: World, array, *, what: str, own_seconds: float = 0.0):
    """mx.distributed.all_sum of `array` over the job's ranks, evaluated (exact for integer arrays)."""
    if w.size == 1:
        return array
    import mlx.core as mx
    with phase("gather"), _collective(w, what, own_seconds):
        summed = mx.distributed.all_sum(array, group=w.group)
        mx.eval(summed)
    return summed


def total_over_ranks(w: World, count: int, *, what: str, own_seconds: float = 0.0) -> int:
    """The sum of every rank's `count`."""
    if w.size == 1:
        return count
    return sum(decode(b) for b in all_gather_bytes(w, encode(count), what=what, own_seconds=own_seconds))


@contextmanager
def _collective(w: World, what: str, own_seconds: float):
    """A collective under the watchdog; a lost peer is one line (RankLost)."""
    timer = _watchdog(w, _timeout(own_seconds), what)
    try:
        yield
    except RuntimeError as exc:
        lost = describe_ranks(w, gone_ranks(w) or []) or w.describe_peers()
        raise RankLost(f"rank {w.rank} on {w.host} lost {lost} during the distributed {what} "
                       f"({_first_line(exc)}); nothing was written") from None
    finally:
        timer.cancel()


# ---------------------------------------------------------------------------------------------
# Splitting runs
# ---------------------------------------------------------------------------------------------

@dataclass
class RankSummary:
    """What one rank did: its runs, its wall time on them, its process's peak resident memory."""

    rank: int
    host: str
    runs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss: int = 0

    def to_dict(self) -> dict:
        return {"rank": self.rank, "host": self.host, "runs": self.runs, "seconds": round(self.seconds, 3),
                "peak_rss": self.peak_rss}

    @classmethod
    def from_dict(cls, d: dict) -> "RankSummary":
        return cls(d["rank"], d["host"], d["runs"], d["seconds"], d["peak_rss"])


_nested = 0  # split_runs calls under way in this process


def available() -> World:
    """The ranks this process may split work across now: the job's, or this process alone inside one rank's
    share of a split (the other ranks are busy with theirs)."""
    return World() if _nested else world()


def split_runs(count: int, run: Callable[[int], T], *, what: str, to_payload: Callable[[T], Any] | None = None,
               from_payload: Callable[[Any], T] | None = None, label: Callable[[int], str] = str,
               summaries: list[RankSummary] | None = None) -> list[T]:
    """[run(0), ..., run(count - 1)] with the runs split across the job's ranks; every rank gets the list.

    to_payload / from_payload turn a result into JSON-able data with numpy arrays and back, exactly (they
    are used only with more than one rank). `summaries`, if given, receives each rank's RankSummary."""
    # A split inside one rank's share of another split (an auto: precision's plan search inside compare's
    # row) runs whole on that rank: the other ranks are not there to gather with.
    w = available()
    with phase("draw"):
        mine, summary = run_share(w.mine(count), run, label)
    if w.size == 1:
        if summaries is not None:
            summaries.append(summary)
        return [mine[i] for i in range(count)]
    own = {"summary": summary.to_dict(), "results": {str(i): (to_payload or _same)(r) for i, r in mine.items()}}
    results: dict[int, T] = {}
    for part in gather_shares(w, own, what=what, own_seconds=summary.seconds):
        results.update({int(i): (from_payload or _same)(r) for i, r in part["results"].items()})
        if summaries is not None:
            summaries.append(RankSummary.from_dict(part["summary"]))
    return [results[i] for i in range(count)]


def run_share(indices: list[int], run: Callable[[int], T], label: Callable[[int], str] = str
              ) -> tuple[dict[int, T], RankSummary]:
    """{i: run(i)} for this rank's `indices`, in order, and its RankSummary; a split inside runs whole here."""
    global _nested
    w, started = world(), time.perf_counter()
    _nested += 1
    try:
        results = {i: run(i) for i in indices}
    finally:
        _nested -= 1
    return results, RankSummary(w.rank, w.host, [label(i) for i in results], time.perf_counter() - started, peak_rss())


def gather_shares(w: World, own: Any, *, what: str, own_seconds: float = 0.0) -> list[Any]:
    """Every rank's `own` (JSON-able, numpy arrays allowed), in rank order, on every rank: one all_gather."""
    if w.size == 1:
        return [own]
    with phase("gather"):
        return [decode(b) for b in all_gather_bytes(w, encode(own), what=what, own_seconds=own_seconds)]


def distributed_section(summaries: list[RankSummary]) -> dict:
    """{"distributed": {"ranks": [...]}} for a report's JSON when several ranks drew it, else {}."""
    if len(summaries) <= 1:
        return {}
    return {"distributed": {"ranks": [s.to_dict() for s in summaries]}}


def merge_summaries(phases: dict[str, list[RankSummary]]) -> list[RankSummary]:
    """One summary per rank over several split_runs calls (e.g. eval's precisions): its run count per phase,
    its total seconds, its highest peak."""
    merged: dict[int, RankSummary] = {}
    for name, summaries in phases.items():
        for s in summaries:
            into = merged.setdefault(s.rank, RankSummary(s.rank, s.host))
            into.runs.append(f"{name}: {len(s.runs)} runs")
            into.seconds += s.seconds
            into.peak_rss = max(into.peak_rss, s.peak_rss)
    return [merged[r] for r in sorted(merged)]


def rank_lines(summaries: list[RankSummary] | list[dict]) -> list[str]:
    """A line per rank for a summary table (none with one rank); takes summaries or their to_dict()."""
    if len(summaries) <= 1:
        return []
    from .memory import format_bytes
    rows = [s.to_dict() if isinstance(s, RankSummary) else s for s in summaries]
    return [f"rank {r['rank']} ({r['host']}): {', '.join(r['runs']) or 'no runs'} in {r['seconds']:.2f} s, "
            f"peak RSS {format_bytes(r['peak_rss'])}" for r in rows]


def _same(value):
    return value


def peak_rss() -> int:
    """This process's peak resident memory in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def say(message: str, quiet: bool = False) -> None:
    """Progress on stderr, prefixed with the rank when there are several."""
    if quiet:
        return
    w = world()
    prefix = f"[rank {w.rank}] " if w.size > 1 else ""
    print(prefix + message, file=sys.stderr, flush=True)
