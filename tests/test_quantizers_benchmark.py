"""benchmarks/quantizers.py: a bad size or prompt count is refused at once, before any model is drawn."""

import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "quantizers.py"


@pytest.mark.parametrize("args, says", [
    (["--random-size", "0"], "--random-size 0 is not allowed: use 16 to 2048"),
    (["--random-size", "100"], "--random-size 100: give a multiple of 16"),
    (["--random-size", "999999984"], "use 16 to 2048"),
    (["--prompts", "0"], "--prompts 0 is not allowed: use 1 to 125"),
    # numbers as the quantbench commands read them (core/numbers.py): int() took "1_0" as 10 and " 64" as 64
    (["--prompts", "1_0"], "'1_0' is not a whole number"),
    (["--random-size", " 64"], "' 64' is not a whole number"),
    # Its report, written at the end of a run of hours: a destination it could never write fails now.
    (["--json", "/nonexistent-folder/report.json"], "argument --json: /nonexistent-folder: no such folder"),
])
def test_a_bad_argument_stops_the_benchmark_before_it_draws(args, says, tmp_path):
    # --random without --random-only: the built-in models' rows would be drawn first if the check came late
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "demo-turbo", "--random", *args,
                           "--cache", str(tmp_path / "cache.json")],
                          capture_output=True, text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == "" and not (tmp_path / "cache.json").exists()


SPIKE = 64 * 2**20


def _benchmark_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("quantizers_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def _hold_a_spike() -> None:
    """SPIKE more bytes in MLX for a moment."""
    import mlx.core as mx
    held = mx.zeros((SPIKE // 4,), dtype=mx.float32)
    mx.eval(held)
    del held


def _cells(printed: str, precision: str) -> dict[str, str]:
    """The printed table's row of `precision`, by column."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in printed.splitlines()
            if line.startswith("| ")]
    return dict(zip(rows[0], next(r for r in rows if r[1] == precision)))


def test_the_peak_column_is_the_peak_over_every_picture_of_a_row(tmp_path, monkeypatch, capsys):
    """A generation resets MLX's peak counter as each phase starts: a row's "peak" must be the highest of
    every picture's phases, not what the counter holds after the last picture's decode. Here the first
    picture of each row holds 64 MB more during its decode; the last picture does not. And no row's peak
    counts the model of the row before."""
    from quantbench.core.pipeline_base.pipeline import PipelineBase

    benchmark = _benchmark_module()
    pictures = 3
    decodes, peaks, drawing, resident = [], [], [], []
    decode, generate = PipelineBase.decode, PipelineBase.generate

    def decode_with_a_spike_in_each_rows_first_picture(self, packed, h, w):
        decodes.append(1)
        if len(decodes) % pictures == 1:
            _hold_a_spike()
        return decode(self, packed, h, w)

    def recorded_generate(self, *args, **kwargs):
        drawing.append(weakref.ref(self))
        resident.append(len({id(model()) for model in drawing if model() is not None}))
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
    assert len(peaks) == 2 * pictures and peaks[0] >= SPIKE and peaks[pictures - 1] < SPIKE
    for row, drawn in zip((rows[f"demo-turbo|bf16|{pictures}"], rows[f"demo-turbo|4:rtn|{pictures}"]),
                          (peaks[:pictures], peaks[pictures:])):
        assert row["peak"] == max(drawn) >= SPIKE
    assert resident == [1] * len(peaks)  # the bf16 model is gone before the next row draws: not in its peak
    assert _cells(capsys.readouterr().out, "4:rtn")["peak MB"] == f"{max(peaks[pictures:]) / 1e6:.2f}"

    # a row cached before the fix keeps its figure, marked as the last picture's decode only
    del rows[f"demo-turbo|4:rtn|{pictures}"]["peak_every_picture"]
    cache.write_text(json.dumps(rows))
    assert benchmark.main(arguments) == 0
    out = capsys.readouterr().out
    assert len(peaks) == 2 * pictures  # nothing drawn again
    assert _cells(out, "4:rtn")["peak MB"] == f"({max(peaks[pictures:]) / 1e6:.2f})" and "in parentheses" in out


def test_the_quantize_peak_counts_what_happens_before_the_load(tmp_path, monkeypatch, capsys):
    """An auto: precision's plan is searched before the transformer is loaded at it: "quantize peak" must count
    the search too. Here the search (what turns the --quantize text into what the loader takes) holds 64 MB."""
    from quantbench.core.lab import quantize_option

    benchmark = _benchmark_module()
    parse = quantize_option.parse_quantize_spec

    def parse_holding_a_spike(*args, **kwargs):
        _hold_a_spike()
        return parse(*args, **kwargs)

    monkeypatch.setattr(quantize_option, "parse_quantize_spec", parse_holding_a_spike)
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / "cache.json"
    assert benchmark.main(["--models", "demo-turbo", "--prompts", "1", "--bits", "4", "--groups", "64",
                           "--methods", "rtn", "--plans", "", "--cache", str(cache)]) == 0
    row = json.loads(cache.read_text())["demo-turbo|4:rtn|1"]
    assert row["quantize_peak"] >= SPIKE
    assert _cells(capsys.readouterr().out, "4:rtn")["quantize peak MB"] == f"{row['quantize_peak'] / 1e6:.2f}"
