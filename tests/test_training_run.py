"""The training script that rebuilds the built-in models runs end to end into folders our engine loads. It trains
with torch, whose spinning threads a parallel neighbour slowed several times over: ./test.sh runs this file alone
(tests/serial_files.py)."""

import json
import subprocess
import sys

from quantbench.core.builtin.captions import caption
from quantbench.core.builtin.world import eval_prompts
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from test_training_and_eval import REPO, train_demo  # noqa: F401  (train_demo: the script as a module, a fixture)


def test_quick_training_run_loads_through_the_engine(tmp_path, train_demo):
    out, work = tmp_path / "models", tmp_path / "work"
    done = subprocess.run([sys.executable, str(REPO / "training" / "train_demo.py"), "--quick", "--no-card",
                           "--out", str(out), "--work", str(work)], capture_output=True, text=True,
                          timeout=1200)  # 25 s of CPU, but a shared 2-core machine under load stretches it several times
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[parity] demo-turbo" in done.stdout and "loss" in done.stdout
    log = json.loads((out / "demo" / "training_log.json").read_text())
    assert log["transformer"]["curve"] and log["vae"]["curve"] and log["distill"]["curve"]
    # The room checked before the run is a close lower bound of what it wrote.
    from quantbench.core.disk_space import folder_bytes
    stages = tuple(s for s in train_demo.STAGES if s != "card")
    for path, estimate in train_demo.result_bytes(stages, work, out, train_demo.QUICK).items():
        written = folder_bytes(path) if path.is_dir() else path.stat().st_size
        assert 0.5 * written <= estimate <= written, (path, estimate, written)
    for name, steps in (("demo", 20), ("demo-turbo", 4)):
        pipeline = Flux2Pipeline.load(out / name, allow_download=False)
        result = pipeline.generate(caption(eval_prompts()[0]), seed=0, width=64, height=64, preview=False)
        assert result.image.size == (64, 64) and len(result.step_seconds) == steps
