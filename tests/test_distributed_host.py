"""What a rank does to the host it shares: mlx.launch's launcher, which never sleeps (it polls its ranks' pipes in
a loop), goes to the idle scheduling class (core/distributed_launcher.py); ranks on the same host keep to their
own share of its cores, with as many OpenBLAS threads as one process (core/distributed_host.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quantbench.core.distributed_host import place_on_host, share_of_cores
from quantbench.core.distributed_launcher import NICE_OFFSET, is_launcher

LAUNCH = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scheduling classes and affinity are Linux's")

# A rank that joins the job and runs a matmul, then reports its parent's threads' scheduling policies, the cores
# each of its own threads (OpenBLAS's and MLX's included) may run on, and its OpenBLAS thread count. The ranks
# look while both run: on a loaded machine one had ended (and its launcher thread with it) before the other looked.
RANK_REPORT = """
import json, os
from quantbench.core.cpu_blas import blas_threads
from quantbench.core.distributed import world
import mlx.core as mx
w = world()
mx.eval(mx.ones((512, 512)) @ mx.ones((512, 512)))
together = lambda: mx.eval(mx.distributed.all_sum(mx.ones(1), group=w.group))
together()  # both ranks run (so the launcher has a thread for each) until both have looked
tasks = lambda pid: [int(t) for t in os.listdir(f"/proc/{pid}/task")]
report = {"rank": w.rank, "parent_policies": [os.sched_getscheduler(t) for t in tasks(os.getppid())],
          "parent_nice": [os.getpriority(os.PRIO_PROCESS, t) for t in tasks(os.getppid())],
          "cores": sorted({c for t in tasks(os.getpid()) for c in os.sched_getaffinity(t)}),
          "threads": len(tasks(os.getpid())), "blas_threads": blas_threads()}
together()
print(json.dumps(report), flush=True)
"""


def launched(tmp_path, extra_env: dict | None = None) -> list[dict]:
    """Two ranks of RANK_REPORT under mlx.launch on this machine: their reports, by rank."""
    from test_distributed import free_port_pair
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    command = [*LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()),
               *(f"--env={k}={v}" for k, v in (extra_env or {}).items()), "--", sys.executable, "-c", RANK_REPORT]
    done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    reports = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1], done.stderr
    return reports


def one_process_blas_threads(tmp_path) -> int:
    done = subprocess.run([sys.executable, "-c", "import json, quantbench.core as c; "
                           "print(json.dumps(c.cpu_blas.blas_threads()))"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    return json.loads(done.stdout)


@linux_only
def test_ranks_idle_their_launcher_and_keep_to_their_half_of_the_cores(tmp_path):
    reports = launched(tmp_path)
    for report in reports:  # the launcher's main loop and one forwarding thread per rank
        assert len(report["parent_policies"]) >= 3 and set(report["parent_policies"]) == {os.SCHED_IDLE}, report
    cores = sorted(os.sched_getaffinity(0))
    halves = [cores[:len(cores) // 2], cores[len(cores) // 2:]] if len(cores) > 1 else [cores, cores]
    assert [r["cores"] for r in reports] == halves  # every thread of each rank, MLX's and OpenBLAS's too
    assert all(r["threads"] > 2 for r in reports)
    assert [r["blas_threads"] for r in reports] == [one_process_blas_threads(tmp_path)] * 2  # the same bits


@linux_only
def test_the_launcher_and_the_cores_are_left_as_they_are_when_asked(tmp_path):
    reports = launched(tmp_path, {"QUANTBENCH_LAUNCHER_PRIORITY": "keep", "QUANTBENCH_RANK_CORES": "all"})
    assert all(set(r["parent_policies"]) == {os.SCHED_OTHER} for r in reports), reports
    assert all(set(r["parent_nice"]) == {os.getpriority(os.PRIO_PROCESS, 0)} for r in reports), reports
    assert all(r["cores"] == sorted(os.sched_getaffinity(0)) for r in reports)


@linux_only
def test_the_launcher_can_go_10_nice_levels_down_instead(tmp_path):
    reports = launched(tmp_path, {"QUANTBENCH_LAUNCHER_PRIORITY": "nice"})
    lowered = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE_OFFSET)  # the ranks run at this test's nice
    for report in reports:
        assert len(report["parent_nice"]) >= 3 and set(report["parent_nice"]) == {lowered}, report
        assert set(report["parent_policies"]) == {os.SCHED_OTHER}


def test_an_unknown_launcher_priority_is_one_line(monkeypatch):
    from quantbench.core.distributed_launcher import calm_launcher
    from quantbench.core.errors import InvalidRequest
    monkeypatch.setenv("QUANTBENCH_LAUNCHER_PRIORITY", "lowest")
    with pytest.raises(InvalidRequest, match="QUANTBENCH_LAUNCHER_PRIORITY='lowest': give idle, nice, keep"):
        calm_launcher()


@linux_only
def test_a_process_not_started_by_the_launcher_changes_no_other_process(tmp_path):
    """calm_launcher in a child of an ordinary process (itself under pytest) finds no launcher and touches
    neither its parent nor pytest."""
    parent = f"""
import os, subprocess, sys
child = subprocess.run([sys.executable, "-c", "from quantbench.core.distributed_launcher import calm_launcher; "
                        "print(calm_launcher())"], capture_output=True, text=True)
policies = {{os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}}
print(child.stdout.strip(), sorted(policies))
"""
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.stdout.strip().split(maxsplit=1) == ["None", f"[{os.SCHED_OTHER}]"], done.stderr
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.parametrize("command_line, launcher", [
    (["/usr/bin/python3", "/home/me/.venv/bin/mlx.launch", "-n", "2", "--", "quantbench", "eval"], True),
    (["python", "-c", "from mlx._distributed_utils.launch import main; main()", "-n", "2"], True),
    (["python", "-m", "mlx._distributed_utils.launch", "--hostfile", "hosts.json"], True),
    (["/bin/bash", "-c", "mlx.launch -n 2 -- quantbench eval"], False),  # a shell that started the launcher
    (["python", "-m", "quantbench.cli.main", "eval", "--model", "mlx.launch"], False),
    (["sshd: me@notty"], False),  # a rank on another host has ssh's server above it
    ([], False),
])
def test_the_launcher_is_known_by_its_command_line(command_line, launcher):
    assert is_launcher(command_line) is launcher


def ring_hostfile(tmp_path, hosts: list[str]) -> str:
    """The hostfile mlx.launch's ring backend gives its ranks: per rank, its "ip:port" addresses."""
    path = tmp_path / "ring.json"
    path.write_text(json.dumps([[f"{host}:{5000 + r}"] for r, host in enumerate(hosts)]))
    return str(path)


@pytest.mark.parametrize("hosts, places", [
    (["127.0.0.1", "127.0.0.1"], [(0, 2), (1, 2)]),  # mlx.launch -n 2 on one machine
    (["10.0.0.1", "10.0.0.2"], [(0, 1), (0, 1)]),  # two Macs: each rank alone on its host
    (["10.0.0.1", "10.0.0.2", "10.0.0.1"], [(0, 2), (0, 1), (1, 2)]),
])
def test_each_rank_knows_how_many_ranks_share_its_host(tmp_path, hosts, places):
    hostfile = ring_hostfile(tmp_path, hosts)
    assert [place_on_host({"MLX_RANK": str(r), "MLX_HOSTFILE": hostfile}) for r in range(len(hosts))] == places


def test_outside_a_job_or_with_an_unreadable_hostfile_a_process_has_its_host_to_itself(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("\n")  # what mlx.launch writes for a single host
    assert place_on_host({}) is None
    assert place_on_host({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) is None
    assert place_on_host({"MLX_RANK": "0", "MLX_HOSTFILE": str(tmp_path / "missing.json")}) is None
    assert place_on_host({"MLX_RANK": "5", "MLX_HOSTFILE": ring_hostfile(tmp_path, ["127.0.0.1"] * 2)}) is None
    assert place_on_host({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == (1, 4)


def test_a_hostfile_nested_too_deeply_for_the_json_parser_is_unreadable_not_a_crash(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert place_on_host({"MLX_RANK": "0", "MLX_HOSTFILE": str(nested)}) is None


@pytest.mark.parametrize("cores, count, shares", [
    ([0, 1], 2, [[0], [1]]),
    (list(range(8)), 2, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    (list(range(8)), 3, [[0, 1], [2, 3, 4], [5, 6, 7]]),
    ([2, 5], 3, [[2], [5], [2]]),  # more ranks than cores: they take turns
])
def test_ranks_on_a_host_split_its_cores_between_them(cores, count, shares):
    assert [share_of_cores(cores, i, count) for i in range(count)] == shares


def test_an_unknown_cores_setting_is_one_line(monkeypatch):
    from quantbench.core.distributed_host import check_cores_setting
    from quantbench.core.errors import InvalidRequest
    monkeypatch.setenv("QUANTBENCH_RANK_CORES", "half")
    with pytest.raises(InvalidRequest, match="QUANTBENCH_RANK_CORES='half': the only value it takes is 'all'"):
        check_cores_setting()
    monkeypatch.setenv("QUANTBENCH_RANK_CORES", "ALL")
    check_cores_setting()
