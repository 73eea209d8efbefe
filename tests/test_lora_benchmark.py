"""benchmarks/lora_cost.py: loads with and without a LoRA alternate, each in its own process, and the transformer
ends the same size (the LoRA is fused before quantizing)."""

import json
import subprocess
import sys
from pathlib import Path

from quantbench.core.random_model import write_random_model

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_rounds_alternate_and_the_fused_transformer_is_the_same_size(tmp_path):
    folder = write_random_model(tmp_path / "tiny", "tiny")
    out = subprocess.run([sys.executable, str(BENCHMARKS / "lora_cost.py"), "--model", str(folder), "--rank", "4",
                          "--rounds", "2", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert [(row["round"], row["lora"]) for row in report["rows"]] == [(1, False), (1, True), (2, True), (2, False)]
    assert report["lora_layers"] > 0 and report["lora_bytes"] > 0
    assert len({row["final"] for row in report["rows"]}) == 1
    assert all(row["mlx_peak"] >= row["final"] and row["seconds"] > 0 for row in report["rows"])
