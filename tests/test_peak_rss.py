"""peak_rss is the process's real maximum during a run, not the resident set left at its end."""

import json
import mmap

import numpy as np

from quantbench.cli.main import main
from quantbench.core.memory import RssPeak, memory_snapshot
from quantbench.core.random_model import write_random_model


def test_rss_peak_sees_memory_that_was_freed_before_the_end():
    before = memory_snapshot().rss
    with RssPeak() as peak:
        # 300 MB mapped, touched, then unmapped inside the span. Not from malloc: the engine has it keep
        # freed memory for reuse (core/cpu_blas.py), so a block of that size may come from memory already
        # resident, and a freed one may stay resident.
        block = mmap.mmap(-1, 300 * 2**20)
        np.frombuffer(block, dtype=np.uint8)[:] = 1
        block.close()
    after = memory_snapshot().rss
    assert after < before + 100 * 2**20  # the end of the span no longer holds it...
    assert peak.peak >= before + 280 * 2**20  # ...but its peak does


def test_generate_json_reports_true_peak_honest_label_and_prediction(tmp_path, capsys):
    model = write_random_model(tmp_path / "tiny", "tiny")
    out = tmp_path / "noise.png"
    assert main(["generate", "--model", str(model), "--prompt", "a red star", "--width", "64", "--height", "64",
                 "--steps", "2", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["quantize"] == "unquantized" and summary["text_encoder_quantize"] == "unquantized"
    assert summary["dtype"] == "float32"
    assert summary["peak_rss"] >= memory_snapshot().rss * 0.5 and summary["peak_rss"] > 50 * 2**20
    predicted = summary["predicted"]
    assert predicted["predicted_peak_bytes"] > 0 and predicted["fits"] and predicted["peak_phase"]
