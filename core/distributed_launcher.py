"""mlx.launch's launcher, kept off the cores its ranks draw on.

MLX's ring launcher (`mlx.launch`, mlx/_distributed_utils/launch.py, MLX 0.32) forwards each local rank's
output from a thread whose `select` also waits for the rank's stdin pipe to be writable. A pipe nobody
fills always is, so the thread never sleeps; its main loop does the same when its own stdin is /dev/null.
It keeps about a core busy for the whole job: on a 2-core machine, the core one of two ranks needed.
It only forwards output (and input, which quantbench never reads), so a rank started by it moves it out
of the ranks' way. By default (QUANTBENCH_LAUNCHER_PRIORITY=idle) every thread of it goes to Linux's SCHED_IDLE
class (macOS: nice 19): it then runs on cores the ranks leave idle. On a quiet 2-core machine that made two
ranks under mlx.launch 0.59x one process's time, where NICE_OFFSET nice levels down (`nice`) left the launcher
half of a rank's core (1.10x) and `keep` a whole one (2.45x). The cost: with every core busy, forwarded
output lags by seconds. A rank that dies is still noticed at once, by the other ranks' sockets.
Done once when the rank joins the job and once when every rank has joined (the launcher starts a thread
per rank), silently where not permitted; `keep` leaves the launcher as it is.

The launcher also tells which ranks are gone: it stops every rank (SIGTERM) once one has ended early, and a
rank it stops can look, among the launcher's children, for the rank that is no longer there
(`ranks_running_here`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .errors import InvalidRequest
from .numbers import is_digits

PRIORITY_ENV = "QUANTBENCH_LAUNCHER_PRIORITY"
PRIORITIES = ("idle", "nice", "keep")
IDLE_NICE = 19  # where there is no idle class (macOS): the lowest nice value
NICE_OFFSET = 10  # nice levels below the rank: each level is about 1.25x less CPU weight, so 10 is about 9x
# How mlx.launch's launcher shows on a command line: the `mlx.launch` script, or its module run by -c / -m.
LAUNCHER_SCRIPT = "mlx.launch"
LAUNCHER_MODULE = "mlx._distributed_utils.launch"


def is_launcher(command_line: list[str]) -> bool:
    """Whether a process with this command line is mlx.launch's launcher."""
    return any(Path(arg).name == LAUNCHER_SCRIPT or LAUNCHER_MODULE in arg for arg in command_line[:3])


def launcher_pid() -> int | None:
    """The nearest ancestor of this process that is mlx.launch's launcher; None when there is none on this
    host (a rank on another host has ssh's server above it, not the launcher)."""
    import psutil
    try:
        ancestors = psutil.Process().parents()
    except psutil.Error:
        return None
    for process in ancestors:
        try:
            if is_launcher(process.cmdline()):
                return process.pid
        except psutil.Error:  # gone, or another user's
            continue
    return None


def ranks_running_here() -> set[int] | None:
    """The ranks this host's mlx.launch launcher still runs: a local rank is its child (the launch script execs
    the command, with MLX_RANK in its environment), a remote one the child ssh session whose command exports
    MLX_RANK (other children, such as the scripts it kills ranks with, are none). None when no launcher is above
    this process, or when a child cannot be read (then no rank is said to be gone on a guess)."""
    import psutil
    pid = launcher_pid()
    if pid is None:
        return None
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return None
    running = set()
    for child in children:
        try:
            rank = None if child.status() == psutil.STATUS_ZOMBIE else _rank_of(child)  # a zombie has ended
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        except psutil.Error:
            return None
        if rank is not None:
            running.add(rank)
    return running


def _rank_of(child) -> int | None:
    rank = child.environ().get("MLX_RANK")
    if rank is None:
        found = re.search(r"MLX_RANK=(\d+)", " ".join(child.cmdline()))
        rank = found.group(1) if found else None
    return int(rank) if rank is not None and is_digits(rank) else None


def calm_launcher() -> int | None:
    """Lower this rank's launcher (if mlx.launch started it on this host) as QUANTBENCH_LAUNCHER_PRIORITY says:
    `idle` (the default), `nice` (NICE_OFFSET levels below this rank) or `keep`; the launcher's pid when found,
    whether or not the system allowed the change. Raises InvalidRequest for any other value."""
    how = os.environ.get(PRIORITY_ENV, "idle").strip().lower() or "idle"
    if how not in PRIORITIES:
        raise InvalidRequest(f"{PRIORITY_ENV}={os.environ[PRIORITY_ENV]!r}: give {', '.join(PRIORITIES)}")
    if how == "keep":
        return None
    pid = launcher_pid()
    if pid is not None:
        lower_threads(pid, idle=how == "idle")
    return pid


def lower_threads(pid: int, idle: bool = False) -> None:
    """Every thread of `pid` NICE_OFFSET nice levels below this process (never raised), or, `idle`, in SCHED_IDLE
    (Linux; IDLE_NICE elsewhere); quietly as far as the system allows (a thread may end meanwhile; another user's process is refused)."""
    nice = IDLE_NICE if idle else min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE_OFFSET)
    if sys.platform != "linux":  # macOS: a process's nice value is its threads'; no idle class
        _lower_nice(pid, nice)
        return
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in threads:  # Linux: each thread has its own policy and nice value
        if idle:
            _quietly(os.sched_setscheduler, tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            _lower_nice(tid, nice)


def _lower_nice(pid: int, nice: int) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        pass


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except OSError:
        pass
