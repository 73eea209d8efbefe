"""benchmarks/quantizers.py: a bad size or prompt count is refused at once, before any model is drawn."""

import json
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


def test_the_peak_column_is_the_peak_over_every_picture_of_a_row(tmp_path, monkeypatch, capsys):
    """A generation resets MLX's peak counter as each phase starts: a row's "peak" must be the highest of
    every picture's phases, not what the counter holds after the last picture's decode. Here the first
    picture of each row holds 64 MB more during its decode; the last picture does not."""
    import importlib.util

    import mlx.core as mx

    from quantbench.core.pipeline_base.pipeline import PipelineBase

    spec = importlib.util.spec_from_file_location("quantizers_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    pictures, spike = 3, 64 * 2**20
    decodes, peaks = [], []
    decode, generate = PipelineBase.decode, PipelineBase.generate

    def decode_with_a_spike_in_each_rows_first_picture(self, packed, h, w):
        decodes.append(1)
        if len(decodes) % pictures == 1:
            held = mx.zeros((spike // 4,), dtype=mx.float32)
            mx.eval(held)
            del held
        return decode(self, packed, h, w)

    def recorded_generate(self, *args, **kwargs):
        result = generate(self, *args, **kwargs)
        peaks.append(result.peak_memory)
        return result

    monkeypatch.setattr(PipelineBase, "decode", decode_with_a_spike_in_each_rows_first_picture)
    monkeypatch.setattr(PipelineBase, "generate", recorded_generate)
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / "cache.json"
    arguments = ["--models", "demo-turbo", "--prompts", str(pictures), "--bits", "4", "--groups", "64",
                 "--methods", "rtn", "--plans", "", "--cache", str(cache)]
    assert benchmark.main(arguments) == 0
    rows = json.loads(cache.read_text())
    assert len(peaks) == 2 * pictures and peaks[0] >= spike and peaks[pictures - 1] < spike
    for row, drawn in zip((rows[f"demo-turbo|bf16|{pictures}"], rows[f"demo-turbo|4:rtn|{pictures}"]),
                          (peaks[:pictures], peaks[pictures:])):
        assert row["peak"] == max(drawn) >= spike
    rtn_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| demo-turbo | 4:rtn"))
    assert f"| {max(peaks[pictures:]) / 1e6:.2f} " in rtn_line

    # a row cached before the fix keeps its figure, marked as the last picture's decode only
    del rows[f"demo-turbo|4:rtn|{pictures}"]["peak_every_picture"]
    cache.write_text(json.dumps(rows))
    assert benchmark.main(arguments) == 0
    out = capsys.readouterr().out
    assert len(peaks) == 2 * pictures  # nothing drawn again
    rtn_line = next(line for line in out.splitlines() if line.startswith("| demo-turbo | 4:rtn"))
    assert f"({max(peaks[pictures:]) / 1e6:.2f})" in rtn_line and "in parentheses" in out
