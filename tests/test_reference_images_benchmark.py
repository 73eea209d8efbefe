"""benchmarks/reference_images.py: the encoder alone against the memory model's figure, and generate runs without
and with references, alternating, each in its own process."""

import json
import subprocess
import sys
from pathlib import Path

from quantbench.core.random_model import write_random_model

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_runs_alternate_and_the_prediction_holds_the_encoder_and_the_encode_phase(tmp_path):
    folder = write_random_model(tmp_path / "tiny", "tiny")
    out = subprocess.run([sys.executable, str(BENCHMARKS / "reference_images.py"), "--model", str(folder), "--size",
                          "64", "--reference-size", "128", "--rounds", "2", "--encode-sizes", "128", "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert [(row["round"], row["references"]) for row in report["generate"]] == [(1, 0), (1, 1), (2, 1), (2, 0)]
    (encoder,) = report["encoder"]
    assert encoder["size"] == 128 and encoder["measured"] <= encoder["predicted"] <= 1.5 * encoder["measured"]
    for row in report["generate"]:
        assert row["step_seconds"] > 0 and row["encode_peak"] <= row["predicted_encode"]
    with_references = [row for row in report["generate"] if row["references"]]
    without = [row for row in report["generate"] if not row["references"]]
    assert min(r["encode_peak"] for r in with_references) > max(r["encode_peak"] for r in without)
