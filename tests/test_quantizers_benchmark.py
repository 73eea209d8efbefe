"""benchmarks/quantizers.py: a bad size or prompt count is refused at once, before any model is drawn."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "quantizers.py"


@pytest.mark.parametrize("args, says", [
    (["--random-size", "0"], "--random-size 0: give a multiple of 16"),
    (["--random-size", "100"], "--random-size 100: give a multiple of 16"),
    (["--random-size", "999999984"], "from 16 to 2048"),
    (["--prompts", "0"], "--prompts 0: give at least 1"),
])
def test_a_bad_argument_stops_the_benchmark_before_it_draws(args, says, tmp_path):
    # --random without --random-only: the built-in models' rows would be drawn first if the check came late
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "demo-turbo", "--random", *args,
                           "--cache", str(tmp_path / "cache.json")],
                          capture_output=True, text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and says in done.stderr
    assert done.stdout == "" and not (tmp_path / "cache.json").exists()
