"""benchmarks/blas_cores.py: MLX's float32 matmul under each OpenBLAS core, a fresh process each."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.core.cpu_blas import blas_status

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "blas_cores.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_each_core_is_timed_in_its_own_process_and_named_as_openblas_ran_it():
    if blas_status().blas != "openblas" or platform.machine() != "x86_64":
        pytest.skip(f"no system OpenBLAS with Haswell's kernels here: {blas_status().detail}")
    done = run("--cores", "chosen,detected,Haswell", "--rounds", "1", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["core"]: row for row in json.loads(done.stdout)["rows"]}
    assert "chosen by" not in rows["detected"]["blas"]  # OPENBLAS_CORETYPE unset, whatever the caller's was
    assert "chosen by OPENBLAS_CORETYPE" not in rows["chosen"]["blas"]
    assert rows["Haswell"]["blas"].endswith("(Haswell, chosen by OPENBLAS_CORETYPE)")
    assert all(len(row["gflops_median"]) == 5 and min(row["gflops_median"]) > 1 for row in rows.values())


def test_no_core_or_no_round_is_refused_in_one_line():
    for args in (["--cores", ","], ["--rounds", "0"], ["--repeats", "0"]):
        done = run(*args)
        assert done.returncode == 2 and done.stdout == "" and done.stderr.strip().splitlines()[-1].startswith(
            "blas_cores.py: error: give at least one core, one round and one repeat")
