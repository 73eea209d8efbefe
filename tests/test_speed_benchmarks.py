"""benchmarks/step_speed.py and benchmarks/dense_slices.py: bad input in one line (exit 2, before any model is
loaded), and dense_slices' comparison of the tile kernel's two kinds of product."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.core.quant import tile_kernel

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)


def _one_line_error(done: subprocess.CompletedProcess, *words: str):
    assert done.returncode == 2 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and all(word in lines[0] for word in words), lines


def test_step_speed_refuses_a_folder_that_is_no_model_and_an_unknown_precision(tmp_path):
    _one_line_error(run("step_speed.py", "--model", str(tmp_path / "missing"), "--blas-tiles"),
                    "missing/model_index.json", "cannot be read")
    (tmp_path / "file").write_text("x")
    _one_line_error(run("step_speed.py", "--model", str(tmp_path / "file")), "file/model_index.json")
    from quantbench.core.random_model import write_random_model

    folder = write_random_model(tmp_path / "tiny", "tiny")
    _one_line_error(run("step_speed.py", "--model", str(folder), "--precisions", "none,x"),
                    "unsupported quantization 'x'")


@pytest.mark.parametrize("text, words", [
    (None, ["cannot be read"]),
    ("not json", ["not valid JSON"]),
    ('{"num_layers": "x"}', ["num_layers should be a whole number, at least 0", "'x'"]),
    ('{"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 1.5, "attention_head_dim": 64}',
     ["num_attention_heads should be a whole number, at least 1", "1.5"]),
    ('{"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 64, '
     '"mlp_ratio": 0}', ["mlp_ratio should be a number above 0"]),
])
def test_dense_slices_refuses_a_config_without_a_transformers_sizes(tmp_path, text, words):
    config = tmp_path / "config.json"
    if text is not None:
        config.write_text(text)
    _one_line_error(run("dense_slices.py", "--config", str(config), "--compare", "products"), str(config), *words)


@pytest.mark.skipif(not tile_kernel.ready(), reason=f"no tile kernel here: {tile_kernel.status().detail}")
def test_dense_slices_times_the_own_products_against_openblas_a_tile():
    done = run("dense_slices.py", "--layer", "256,512,24", "--compare", "products", "--rounds", "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["variant"] for row in report["rows"]] == [
        "unquantized", "8-bit OpenBLAS's sgemm a tile (before)", "8-bit own products (now)",
        "4-bit OpenBLAS's sgemm a tile (before)", "4-bit own products (now)"]
    assert all(row["cpu_seconds"] > 0 for row in report["rows"])
