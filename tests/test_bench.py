"""quantbench bench as a user runs it: the table's numbers are measured and hang together."""

import json

from quantbench.cli.main import main


def test_bench_on_random_weights_reports_every_precision_and_memory_mode(capsys):
    assert main(["bench", "--random-weights", "tiny", "--precisions", "bf16,8,4", "--size", "64", "--steps", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["precision"], r["memory"]): r for r in report["rows"]}
    assert set(rows) == {(p, m) for p in ("unquantized", "q8", "q4") for m in ("resident", "lean")}
    assert rows[("q4", "lean")]["transformer_bytes"] < rows[("q8", "lean")]["transformer_bytes"] \
        < rows[("unquantized", "lean")]["transformer_bytes"]
    for row in report["rows"]:
        assert row["generation_peak"] == max(row["phase_peaks"].values()) > 0
        assert row["load_peak"] > 0 and row["seconds_per_step"] > 0 and len(row["step_seconds"]) == 2
    # Freeing what a phase does not need: the lean run's peak is its largest phase; the resident run keeps the
    # transformer and the text encoder through the decode, so its decode holds more than the lean one's.
    assert report["ratios"]["unquantized lean"]["peak_over_largest_phase"] == 1.0
    resident, lean = rows[("unquantized", "resident")], rows[("unquantized", "lean")]
    assert resident["phase_peaks"]["decode"] > lean["phase_peaks"]["decode"]
    assert report["matmul"]["mlx_gflops"] > 0 and report["matmul"]["numpy_gflops"] > 0


def test_bench_refuses_bad_input(capsys):
    assert main(["bench", "--random-weights", "tiny", "--precisions", "3:gptq:48"]) == 2
    assert main(["bench", "--random-weights", "tiny", "--size", "100"]) == 2
    err = capsys.readouterr().err
    assert "unsupported quantization '3:gptq:48'" in err and "size 100 is not allowed" in err


def test_bench_refuses_a_width_scale_it_would_not_use(capsys):
    """--width-scale narrows the random model --random-weights writes; with --model it used to be ignored."""
    assert main(["bench", "--model", "demo", "--width-scale", "0.5", "--size", "64", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--width-scale 0.5 narrows a random model: give it with --random-weights" in err
