"""A folder quantbench saved quantized, asked for something it cannot give: every command says so in one line
naming what the folder holds, exit 2, before it loads anything; asking for what it holds (or nothing) runs."""

import dataclasses
import json

import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.pipeline_base import PipelineBase

PROMPT = "a large blue star on the left over a flat yellow background"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    used, other = folder / "used.txt", folder / "other.txt"
    used.write_text("a small red circle in the center over a flat blue background\n", encoding="utf-8")
    other.write_text("a large green square at the top over a striped white background\n", encoding="utf-8")
    return used, other


@pytest.fixture(scope="module")
def saved(tmp_path_factory, prompts):
    """demo-turbo saved at 4 bits (round-to-nearest), and at 2:gptq:32 calibrated on the `used` prompts."""
    folder = tmp_path_factory.mktemp("saved")
    assert main(["save", "--model", "demo-turbo", "--quantize", "4", "--out", str(folder / "q4")]) == 0
    assert main(["save", "--model", "demo-turbo", "--quantize", "2:gptq:32", "--calibration-prompts",
                 str(prompts[0]), "--out", str(folder / "gptq")]) == 0
    return folder / "q4", folder / "gptq"


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: the refusals must come first."""
    def refuse(cls, *args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr(PipelineBase, "load", classmethod(refuse))


def _commands(model, out):
    """Each command that loads a model, asked for another precision than the saved 4 bits."""
    m = str(model)
    return {
        "generate": ["generate", "--model", m, "--prompt", PROMPT, "-q", "3", "--out", str(out / "x.png")],
        "generate bf16": ["generate", "--model", m, "--prompt", PROMPT, "-q", "bf16", "--out", str(out / "x.png")],
        "generate 4:gptq": ["generate", "--model", m, "--prompt", PROMPT, "-q", "4:gptq", "--out",
                            str(out / "x.png")],
        "generate auto": ["generate", "--model", m, "--prompt", PROMPT, "-q", "auto:4.5", "--out", str(out / "x.png")],
        "generate text encoder": ["generate", "--model", m, "--prompt", PROMPT, "--text-encoder-quantize", "8",
                                  "--out", str(out / "x.png")],
        "save": ["save", "--model", m, "-q", "3:hqq", "--out", str(out / "saved")],
        "bench": ["bench", "--model", m, "--precisions", "4,8", "--size", "64", "--steps", "1"],
        "eval": ["eval", "--model", m, "--limit", "1", "-q", "4"],
        "compare": ["compare", "--model", m, "--prompt", PROMPT, "--precisions", "bf16,4", "--out",
                    str(out / "sweep")],
        "sensitivity": ["sensitivity", "--model", m, "--steps", "1"],
        "plan": ["plan", "--model", m, "-q", "auto:4.5", "--out", str(out / "plan.json")],
    }


@pytest.mark.parametrize("command", list(_commands("m", __import__("pathlib").Path("o"))))
def test_another_precision_than_the_saved_one_is_one_line_before_loading(command, saved, tmp_path, capsys,
                                                                        no_loading):
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    assert main(_commands(saved[0], out)[command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    what = "an unquantized text encoder" if command == "generate text encoder" else "a 4-bit transformer"
    assert f"{saved[0]} holds {what} saved by quantbench" in err[0], err
    assert not list(out.iterdir())  # nothing written


def test_the_saved_precision_or_none_runs_and_says_what_it_is(saved, tmp_path, capsys):
    for i, quantize in enumerate(([], ["-q", "4"], ["-q", "4:rtn:64"])):
        out = tmp_path / f"x{i}.png"
        assert main(["generate", "--model", str(saved[0]), "--prompt", PROMPT, *quantize, "--out", str(out),
                     "--width", "64", "--height", "64", "--json", "--quiet"]) == 0
        record = json.loads(capsys.readouterr().out)
        # Not "unquantized": the folder's own 4 bits, in the summary and in the PNG's settings.
        assert record["quantize"] == 4, record["quantize"]
        assert Image.open(out).text["quantize"] == "4"
    # bench measures a saved folder at its own precision by default, not bf16 first and then a refusal.
    assert main(["bench", "--model", str(saved[0]), "--size", "64", "--steps", "1", "--memory", "resident",
                 "--json"]) == 0
    assert [row["precision"] for row in json.loads(capsys.readouterr().out)["rows"]] == ["q4"]


def test_calibration_prompts_that_would_never_be_used_are_refused(saved, prompts, tmp_path, capsys, no_loading):
    used, other = prompts
    generate = ["generate", "--model", str(saved[1]), "--prompt", PROMPT, "--quantize", "2:gptq:32"]
    for command in (generate + ["--out", str(tmp_path / "x.png")],
                    ["save", "--model", str(saved[1]), "--quantize", "2:gptq:32", "--out", str(tmp_path / "again")]):
        capsys.readouterr()
        assert main(command + ["--calibration-prompts", str(other)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--calibration-prompts {other}" in err[0], err
        assert f"{saved[1]} holds a 2-bit gptq g32 transformer saved by quantbench" in err[0]
        assert "calibrated on 1 other prompts" in err[0]
        assert err[0].endswith("give the model it was saved from, demo-turbo)"), err  # not where it is installed
    # On a saved round-to-nearest model a calibrating spec is another precision: refused as such.
    assert main(["generate", "--model", str(saved[0]), "--prompt", PROMPT, "--quantize", "4:gptq",
                 "--calibration-prompts", str(used), "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot be requantized to 4-bit gptq" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_prompts_it_was_calibrated_on_are_what_it_holds(saved, prompts, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "--model", str(saved[1]), "--prompt", PROMPT, "--quantize", "2:gptq:32",
                 "--calibration-prompts", str(prompts[0]), "--out", str(out), "--quiet"]) == 0
    assert out.is_file()


def test_a_saved_text_encoder_loads_as_saved_on_a_tight_machine(saved, tmp_path, monkeypatch):
    """The memory model's default 8-bit text encoder for a tight run is not forced on a saved one (it was
    refused at load, naming an option the user never gave)."""
    from quantbench.core import hardware
    from quantbench.core.generate import generate_image
    from quantbench.core.generation import GenerationSettings

    real = hardware.detect()
    monkeypatch.setattr(hardware, "detect", lambda: dataclasses.replace(real, total_ram=int(0.3 * 2**30),
                                                                        backend="cpu", gpu_memory=None))
    settings = GenerationSettings(model=str(saved[0]), prompt="a square", steps=1, width=512, height=512)
    outcome = generate_image(settings, out=tmp_path / "tight.png", force=True)
    reports = {report.component: report for report in outcome.pipeline.info.quantization}
    assert reports["transformer"].prequantized and reports["text_encoder"].prequantized
    assert not reports["text_encoder"].layers  # saved in full precision, loaded as saved
