"""quantbench compare: one generation at several precisions, the bf16 weights read from disk once."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

import quantbench.core.checkpoint as checkpoint
import quantbench.core.families.flux2.pipeline as pipeline_module
from quantbench.cli.main import main
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.generation import GenerationSettings
from quantbench.core.lab.compare import CompareRequest, run_compare
from quantbench.core.lab.compare_outputs import sheet_size, write_outputs
from quantbench.core.random_model import write_random_model
from reference.pipelines import TEXT_LAYERS

PROMPT = "a small red star on the left"


@pytest.fixture(scope="module")
def compared(tiny_klein):
    """One compare on the tiny Klein fixture, counting every weight file read and component opened."""
    folder, _ = tiny_klein
    reads: dict[str, int] = {}
    opened: dict[str, int] = {}
    real_load, real_open = mx.load, pipeline_module.open_component

    def counting_load(path, *args, **kwargs):
        reads[Path(path).parent.name] = reads.get(Path(path).parent.name, 0) + 1
        return real_load(path, *args, **kwargs)

    def counting_open(path):
        opened[Path(path).name] = opened.get(Path(path).name, 0) + 1
        return real_open(path)

    rows = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint.mx, "load", counting_load)
        patch.setattr(pipeline_module, "open_component", counting_open)
        report = run_compare(CompareRequest(GenerationSettings(str(folder), PROMPT, seed=5, width=64, height=64, steps=3,
                                                               text_encoder_layers=TEXT_LAYERS), "bf16,8,4,3"), on_row=rows.append)
    return report, rows, reads, opened


def test_a_row_per_precision_in_order_reported_as_each_finishes(compared):
    report, rows, _, _ = compared
    assert [r.label for r in report.rows] == ["unquantized", "q8", "q4", "q3"]
    assert rows == report.rows  # on_row saw each one
    lines = report.table_lines()
    assert len(lines) == 5 and lines[0].split()[:2] == ["precision", "transformer"]


def test_the_report_says_what_was_drawn(compared):
    """The settings as drawn (the model's defaults resolved) and the text encoder as it ran: unquantized on the
    CPU is float32, not bf16."""
    report, _, _, _ = compared
    data = report.to_dict()
    assert (data["seed"], data["steps"], data["width"], data["height"]) == (5, 3, 64, 64)
    assert data["guidance"] is not None and data["dtype"] == "float32" and data["prompt"] == PROMPT
    assert data["text_encoder"] == "f32"


def test_bf16_is_the_reference_and_psnr_falls_with_the_bits(compared):
    report, _, _, _ = compared
    bf16, q8, q4, q3 = report.rows
    assert bf16.psnr == float("inf") and bf16.ssim == pytest.approx(1.0)
    assert q8.psnr > q4.psnr > q3.psnr
    assert q8.ssim >= q4.ssim >= q3.ssim
    assert bf16.transformer_bytes > q8.transformer_bytes > q4.transformer_bytes > q3.transformer_bytes
    from quantbench.core.lab.compare_outputs import row_caption  # the sheet's and the workbench's captions
    assert row_caption(bf16)[1].endswith(", reference")  # it said "PSNR inf dB"
    assert row_caption(q4)[1].endswith(f", PSNR {q4.psnr:.2f} dB")
    for row in report.rows:
        assert row.step_seconds and len(row.step_seconds) == 3 and row.total_seconds > 0
        assert row.generate_peak > row.transformer_bytes and row.load_peak > 0
        assert row.generate_peak <= row.generate_peak_measured


def test_the_bf16_weights_are_read_from_disk_once(compared):
    _, _, reads, opened = compared
    assert opened.get("transformer") == 1
    assert reads.get("transformer") == 1 and reads.get("text_encoder") == 1


def test_a_precision_matches_loading_at_that_precision_bit_for_bit(compared, tiny_klein):
    report, _, _, _ = compared
    loaded = Flux2Pipeline.load(tiny_klein[0], quantize=4, text_encoder_layers=TEXT_LAYERS)
    image = loaded.generate(PROMPT, seed=5, steps=3, width=64, height=64).image
    assert np.array_equal(np.asarray(image), np.asarray(report.rows[2].image))
    assert loaded.info.quantization[0].nbytes == report.rows[2].transformer_bytes


def test_out_dir_holds_the_sheet_each_picture_and_the_report(compared, tmp_path):
    report, _, _, _ = compared
    written = write_outputs(report, tmp_path / "cmp")
    with Image.open(written["contact_sheet"]) as sheet:
        assert sheet.size == sheet_size(4, 64, 64)
        assert sheet.size[0] > 4 * 64  # small pictures are scaled up to be legible
    for label in ("unquantized", "q8", "q4", "q3"):
        assert (tmp_path / "cmp" / f"{label}.png").is_file()
    data = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [r["precision"] for r in data["rows"]] == ["unquantized", "q8", "q4", "q3"]
    assert data["rows"][0]["psnr"] == "inf" and isinstance(data["rows"][1]["psnr"], float)
    assert not list((tmp_path / "cmp").glob(".*"))  # no temporary files left behind


def test_the_report_is_written_by_the_shared_json_writer(compared, tmp_path, monkeypatch):
    """report.json had a JSON formatting of its own beside core/atomic.py's (the plans', the rank files'): now
    one writer formats them all, so the same data makes the same bytes whichever command wrote it."""
    from quantbench.core import atomic

    out = tmp_path / "cmp"
    write_outputs(compared[0], out)
    report = (out / "report.json").read_bytes()
    atomic.write_json(tmp_path / "same.json", json.loads(report))
    assert (tmp_path / "same.json").read_bytes() == report and report.endswith(b"}\n")
    formatted = []  # what core/atomic.py formats (its own reference to the json module, not the global one)
    monkeypatch.setattr(atomic, "json", SimpleNamespace(
        dumps=lambda data, **kw: formatted.append(data) or json.dumps(data, **kw)))
    write_outputs(compared[0], out)
    assert [sorted(data) for data in formatted] == [sorted(json.loads(report))]
    assert (out / "report.json").read_bytes() == report


def test_another_programs_report_json_is_not_replaced(compared, random_tiny, tmp_path, monkeypatch, capsys):
    """compare --out DIR replaced whatever report.json the folder held. Its own (a sweep run again into its folder)
    it still replaces; another's is refused before anything loads, and again should one appear during the run."""
    from quantbench.core.errors import InvalidRequest
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.json").write_text('{"quarter": 3}')
    assert _refused_before_loading(random_tiny, out, monkeypatch, capsys) == [
        f"quantbench: error: {out / 'report.json'} exists and is not a report compare wrote: compare --out writes "
        "its report.json there; choose another folder"]
    with pytest.raises(InvalidRequest, match="not a report compare wrote"):
        write_outputs(compared[0], out)
    assert (out / "report.json").read_text() == '{"quarter": 3}' and [p.name for p in out.iterdir()] == ["report.json"]
    (out / "report.json").unlink()
    write_outputs(compared[0], out)
    write_outputs(compared[0], out)  # its own report: replaced
    assert json.loads((out / "report.json").read_text())["rows"]


def test_pictures_in_a_folder_compare_did_not_fill_are_not_replaced(compared, random_tiny, tmp_path, monkeypatch,
                                                                     capsys):
    """compare --out DIR on a folder with no report of an earlier compare replaced the user's own q4.png and
    contact_sheet.png there, exit 0. They are refused before anything loads, and again at the write."""
    from quantbench.core.errors import InvalidRequest
    out = tmp_path / "holiday"
    out.mkdir()
    for name in ("contact_sheet.png", "q4.png", "unquantized.png"):  # the sheet, and pictures of the default rows
        (out / name).write_text("mine")
        assert _refused_before_loading(random_tiny, out, monkeypatch, capsys) == [
            f"quantbench: error: {out / name} exists and no earlier compare wrote it (no report.json of one beside "
            "it): choose another folder"]
        (out / name).unlink()
    picture = out / f"{compared[0].rows[-1].label}.png"
    picture.write_text("mine")
    with pytest.raises(InvalidRequest, match="no earlier compare wrote it"):
        write_outputs(compared[0], out)
    assert picture.read_text() == "mine" and [p.name for p in out.iterdir()] == [picture.name]


def _refused_before_loading(model, out, monkeypatch, capsys) -> list[str]:
    """compare --out `out` on `model`: its stderr lines, having exited 2 without loading the model."""
    from quantbench.cli.main import main
    from quantbench.core import pipelines
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["compare", "--model", str(model), "--prompt", "p", "--out", str(out)]) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_failed_out_dir_write_leaves_no_folder_it_made(compared, tmp_path, monkeypatch):
    """A full disk at report.json once left `cmp/` behind with some pictures in it and exit 2."""
    import quantbench.core.lab.compare_outputs as outputs
    from quantbench.core.atomic import OutputError

    def disk_full(f, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_json_into", disk_full)
    with pytest.raises(OutputError, match="cmp/report.json: could not be written .No space left on device"):
        write_outputs(compared[0], tmp_path / "cmp")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(OutputError):
        write_outputs(compared[0], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "kept"  # a folder the user had stays


def test_a_disk_that_fills_up_midway_leaves_an_earlier_compare_whole(compared, tmp_path, monkeypatch):
    """compare --out over an earlier compare, the disk full at the contact sheet: the new pictures had already
    replaced the earlier ones, beside the earlier contact sheet and report.json (a mixed folder, exit 2). Now every
    file is staged and renamed into place only once all are whole."""
    import quantbench.core.lab.compare_outputs as outputs
    from quantbench.core.atomic import OutputError

    out = tmp_path / "cmp"
    write_outputs(compared[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = outputs.write_png

    def fills_up(image, f, metadata):
        if "precisions" in metadata:  # the contact sheet, after every picture
            f.write(b"half a sheet")
            raise OSError(28, "No space left on device")
        return real(image, f, {**metadata, "prompt": "another prompt"})

    monkeypatch.setattr(outputs, "write_png", fills_up)
    with pytest.raises(OutputError, match="cmp/contact_sheet.png: could not be written .No space left on device"):
        write_outputs(compared[0], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging left, nothing replaced


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny", max_shard_bytes=256 << 10)


def test_bf16_checkpoint_precisions_match_loading_them(random_tiny):
    """A bf16 checkpoint computed in float32: the requantized transformer has the bytes and pixels of a load."""
    report = run_compare(CompareRequest(GenerationSettings(str(random_tiny), "a ring", seed=2, width=64, height=64,
                                                           steps=2), "bf16,4"))
    loaded = Flux2Pipeline.load(random_tiny, quantize=4)
    image = loaded.generate("a ring", seed=2, steps=2, width=64, height=64).image
    assert report.rows[1].transformer_bytes == loaded.info.quantization[0].nbytes
    assert np.array_equal(np.asarray(image), np.asarray(report.rows[1].image))


def test_cli_json_and_table(random_tiny, capsys):
    assert main(["compare", "--model", str(random_tiny), "--prompt", "a ring", "--precisions", "4,bf16",
                 "--width", "64", "--height", "64", "--steps", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["precision"] for r in data["rows"]] == ["unquantized", "q4"]  # the reference always comes first
    assert main(["compare", "--model", str(random_tiny), "--prompt", "a ring", "--precisions", "bf16,8",
                 "--width", "64", "--height", "64", "--steps", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PSNR dB" in out and "q8" in out and "load peak" in out


@pytest.mark.parametrize("precisions, message", [
    ("bf16,7", "unsupported quantization '7'"),
    ("bf16,auto:1.5", "below the smallest possible model"),
    ("bf16,missing-plan.json", "missing-plan.json: no such plan file"),
])
def test_bad_precisions_are_one_line_errors(random_tiny, capsys, precisions, message):
    assert main(["compare", "--model", str(random_tiny), "--prompt", "x", "--precisions", precisions]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_or_corrupt_shard_is_a_one_line_error(random_tiny, tmp_path, capsys):
    missing = Path(shutil.copytree(random_tiny, tmp_path / "missing"))
    sorted((missing / "transformer").glob("*.safetensors"))[1].unlink()
    corrupt = Path(shutil.copytree(random_tiny, tmp_path / "corrupt"))
    shard = sorted((corrupt / "transformer").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    for folder, message in ((missing, "absent"), (corrupt, "truncated")):
        assert main(["compare", "--model", str(folder), "--prompt", "x", "--width", "64", "--height", "64"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_compare_draws_at_the_size_generate_draws(tmp_path, capsys):
    """A model folder of its own (a copy of the built-in demo, whose model_index.json gives 64x64) is compared at
    its native size, as generate draws it (compare took 1024 for any folder not named as a built-in), and one side
    given is a square."""
    from quantbench.core.sources import resolve_model_folder
    copy = tmp_path / "my-demo"
    shutil.copytree(resolve_model_folder("demo"), copy)

    def drawn(*size: str) -> tuple[int, int]:
        assert main(["compare", "--model", str(copy), "--prompt", "a red star", "--precisions", "8", "--steps", "1",
                     "--json", *size]) == 0
        report = json.loads(capsys.readouterr().out)
        return report["width"], report["height"]

    assert drawn() == (64, 64)
    assert drawn("--width", "32") == (32, 32)
