"""Ranks that share a host share its cores: each keeps to its own part of them (Linux).

Under `mlx.launch -n 2` on one machine (or a hostfile naming a host twice) two ranks run on the same
cores. On Linux's CPU backend each rank's OpenBLAS runs a matmul on as many threads as the host has
cores, so two ranks run twice as many threads as there are cores, and a matmul's threads wait for each
other across the ranks. The thread count cannot simply be split: it decides how OpenBLAS partitions a
matmul, and so the last bits of its sums (1 thread against 2 changes every model's latents; the lab's
results must be those of one process, bit for bit). Instead each rank keeps its thread count and binds
its threads to its own share of the host's cores (rank i of n on the host: the i-th n-th of them), as
MPI's launchers bind ranks to cores: its matmuls' threads then take turns on its own cores rather than
preempting the other rank's. Done once, when quantbench loads OpenBLAS (before MLX starts its threads, which
inherit it). QUANTBENCH_RANK_CORES=all leaves every rank on every core.
"""

from __future__ import annotations

import os
import sys

from .errors import InvalidRequest
from .json_text import parse_json

CORES_ENV = "QUANTBENCH_RANK_CORES"


def place_on_host(environ: dict | None = None) -> tuple[int, int] | None:
    """(this rank's index among the ranks on its host, how many ranks its host runs); None outside a job.
    Read from what mlx.launch gives a rank: MLX_RANK and the ring backend's hostfile (MLX_HOSTFILE, a JSON
    list, per rank, of "ip:port"), or an MPI launcher's local rank and size."""
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in environ:
        try:
            return int(environ["OMPI_COMM_WORLD_LOCAL_RANK"]), int(environ["OMPI_COMM_WORLD_LOCAL_SIZE"])
        except (KeyError, ValueError):
            return None
    try:
        rank = int(environ["MLX_RANK"])
        hosts = ring_hosts(environ["MLX_HOSTFILE"])
        mine = hosts[rank] if hosts is not None and 0 <= rank else None
    except (KeyError, ValueError, IndexError):
        return None
    if mine is None:
        return None
    same = [r for r, host in enumerate(hosts) if host == mine]
    return same.index(rank), len(same)


def ring_hosts(path: str | None) -> list[str] | None:
    """Each rank's host, from the hostfile mlx.launch's ring backend gives the ranks (MLX_HOSTFILE: a JSON list,
    per rank, of its "ip:port" addresses); None when there is none or it cannot be read."""
    try:
        with open(path or "", encoding="utf-8") as f:
            return [str(addresses[0]).rsplit(":", 1)[0] for addresses in parse_json(f.read())]
    except (OSError, ValueError, TypeError, IndexError, KeyError):
        return None


def share_of_cores(cores: list[int], index: int, count: int) -> list[int]:
    """Rank `index` of `count` on a host: its consecutive share of `cores` (at least one core; with more ranks
    than cores, ranks take turns on them)."""
    if count >= len(cores):
        return [cores[index % len(cores)]]
    return cores[index * len(cores) // count:(index + 1) * len(cores) // count]


def check_cores_setting() -> None:
    """Raise InvalidRequest (one line) for a QUANTBENCH_RANK_CORES other than unset or 'all'."""
    value = os.environ.get(CORES_ENV, "")
    if value.strip().lower() not in ("", "all"):
        raise InvalidRequest(f"{CORES_ENV}={value!r}: the only value it takes is 'all' (every rank on every core)")


def keep_to_own_cores() -> list[int] | None:
    """Bind every thread of this process to its rank's share of the host's cores; the cores, or None when
    nothing was done (one rank on its host, not Linux, QUANTBENCH_RANK_CORES=all, or not permitted)."""
    if not sys.platform.startswith("linux") or os.environ.get(CORES_ENV, "").lower() == "all":
        return None
    place = place_on_host()
    if place is None or place[1] < 2:
        return None
    cores = share_of_cores(sorted(os.sched_getaffinity(0)), *place)
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
        for tid in threads:
            os.sched_setaffinity(tid, cores)
    except OSError:
        return None
    return cores
