"""The training script that rebuilds the built-in models runs end to end into folders our engine loads,
and `quantbench eval` refuses bad input in one line. (The shipped models' own tests come with them.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.cli.eval import parse_precisions
from quantbench.cli.main import main
from quantbench.core.builtin.captions import caption
from quantbench.core.builtin.world import eval_prompts
from quantbench.core.families.flux2.pipeline import Flux2Pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "nope: no such folder"),
    (["--quantize", "7"], "unsupported quantization '7'"),
    (["--precisions", "bf16,2:foo"], "unsupported quantization '2:foo'"),
    (["--limit", "0"], "--limit 0"),
])
def test_eval_bad_input_is_one_line(capsys, args, message):
    assert main(["eval", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0]


def test_precisions_put_the_reference_first():
    assert parse_precisions("4,bf16,8,4", None) == ("bf16", "4", "8")
    assert parse_precisions(None, "3") == ("bf16", "3")


def test_eval_and_its_draw_say_progress_alike():
    """`quantbench eval` and EvalSet.draw (benchmarks/quantizers.py) report every 25th picture and the last."""
    from quantbench.cli.eval import EvalSet, evaluate
    from quantbench.core.pipelines import load_pipeline
    said_by_eval, said_by_draw = [], []
    evaluate("demo-turbo", ("bf16",), limit=27, progress=said_by_eval.append)
    eval_set = EvalSet("demo-turbo", limit=27)
    eval_set.draw(load_pipeline(eval_set.folder, allow_download=False), said_by_draw.append, "bf16")
    expected = ["demo-turbo bf16: 25/27 images", "demo-turbo bf16: 27/27 images"]
    assert [line for line in said_by_eval if "images" in line] == expected
    assert said_by_draw == expected


def test_quick_training_run_loads_through_the_engine(tmp_path):
    out, work = tmp_path / "models", tmp_path / "work"
    done = subprocess.run([sys.executable, str(REPO / "training" / "train_demo.py"), "--quick", "--no-card",
                           "--out", str(out), "--work", str(work)], capture_output=True, text=True,
                          timeout=1200)  # 2 min of CPU, but a shared 2-core machine under load stretches it past 10
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[parity] demo-turbo" in done.stdout and "loss" in done.stdout
    log = json.loads((out / "demo" / "training_log.json").read_text())
    assert log["transformer"]["curve"] and log["vae"]["curve"] and log["distill"]["curve"]
    for name, steps in (("demo", 20), ("demo-turbo", 4)):
        pipeline = Flux2Pipeline.load(out / name, allow_download=False)
        result = pipeline.generate(caption(eval_prompts()[0]), seed=0, width=64, height=64, preview=False)
        assert result.image.size == (64, 64) and len(result.step_seconds) == steps
