"""benchmarks/peers.py: the same noise through quantbench and diffusers gives the same picture, timed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def tiny_klein_random(tmp_path_factory):
    from quantbench.core.random_model import write_random_model
    return write_random_model(tmp_path_factory.mktemp("peers") / "tiny", "tiny")


def test_peers_agree_from_the_same_noise_and_missing_peers_say_why(tiny_klein_random):
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_klein_random), "--size", "32",
                          "--steps", "2", "--rounds", "1", "--json",
                          "--tools", "quantbench unquantized,quantbench 4-bit,diffusers float32,mflux"],
                         capture_output=True, text=True, check=True)
    rows = {row["tool"]: row for row in json.loads(out.stdout)["rows"]}
    ours, theirs, q4 = rows["quantbench unquantized"], rows["diffusers float32"], rows["quantbench 4-bit"]
    assert ours["dtype"] == "float32" and ours["seconds_per_step"] > 0 and ours["peak_rss"] > 0
    assert ours["cpu_seconds_per_step"] > 0 and theirs["cpu_seconds_per_step"] > 0
    assert theirs["psnr_db"]["vs quantbench unquantized"] > 80  # float32 against float32: summation order only
    assert 20 < q4["psnr_db"]["vs quantbench unquantized"] < theirs["psnr_db"]["vs quantbench unquantized"]
    if "skipped" in rows["mflux"]:
        assert "mflux" in rows["mflux"]["skipped"]
    else:  # $QUANTBENCH_MFLUX_PYTHON names a venv with mflux: its bfloat16 run from the same noise
        assert rows["mflux"]["dtype"] == "bfloat16" and rows["mflux"]["seconds_per_step"] > 0
        assert 30 < rows["mflux"]["psnr_db"]["vs quantbench unquantized"] < 80
