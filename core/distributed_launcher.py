"""mlx.launch's launcher, kept off the cores its ranks draw on.

MLX's ring launcher (`mlx.launch`, mlx/_distributed_utils/launch.py, MLX 0.32) forwards each local rank's
output from a thread whose `select` also waits for the rank's stdin pipe to be writable. A pipe nobody
fills always is, so the thread never sleeps; its main loop does the same when its own stdin is /dev/null.
It keeps about a core busy for the whole job: on a 2-core machine, the core one of two ranks needed.
It only forwards output (and input, which quantbench never reads), so a rank started by it moves it to
the idle scheduling class: Linux's SCHED_IDLE for each of its threads, nice 19 on macOS. It then runs on
whatever core the ranks leave free and takes none from them; with every core busy, the output it forwards
lags by seconds. Done once when the rank joins the job and once when every rank has joined (the launcher
starts a thread per rank), silently where not permitted. QUANTBENCH_LAUNCHER_PRIORITY=nice sets nice 19
instead (it forwards sooner and takes a little more), `keep` leaves the launcher as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PRIORITY_ENV = "QUANTBENCH_LAUNCHER_PRIORITY"
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


def calm_launcher() -> int | None:
    """Lower this rank's launcher (if mlx.launch started it on this host) as QUANTBENCH_LAUNCHER_PRIORITY says:
    `idle` (the default), `nice` or `keep`; the launcher's pid when found, whether or not the system allowed
    the change."""
    how = os.environ.get(PRIORITY_ENV, "idle").lower()
    if how == "keep":
        return None
    pid = launcher_pid()
    if pid is not None:
        lower_threads(pid, idle=how != "nice")
    return pid


def lower_threads(pid: int, idle: bool = True) -> None:
    """Every thread of `pid` in SCHED_IDLE (Linux, `idle`) or at nice 19; quietly as far as the system allows
    (a thread may end meanwhile; another user's process is refused)."""
    if sys.platform != "linux":  # macOS: a process's nice value is its threads'
        _quietly(os.setpriority, os.PRIO_PROCESS, pid, 19)
        return
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in threads:  # Linux: each thread has its own policy and nice value
        if idle:
            _quietly(os.sched_setscheduler, tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            _quietly(os.setpriority, os.PRIO_PROCESS, tid, 19)


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except OSError:
        pass
