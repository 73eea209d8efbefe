"""Calibrating methods as a user meets them: generate, save and reload, bad prompt files, memory refusals."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.catalog import find_entry, shipped_builtin
from quantbench.core.memory_model import Plan, predict
from quantbench.core.quant import parse_spec

PROMPT = "a large blue star on the left over a flat yellow background"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "prompts.txt"
    path.write_text("# two of the world's captions\na small red circle in the center over a flat blue background\n"
                    "a large green square at the top over a striped white background\n", encoding="utf-8")
    return path


def test_generate_calibrates_shows_progress_and_a_saved_copy_draws_the_same_picture(prompts, tmp_path, capsys):
    direct = tmp_path / "direct.png"
    assert main(["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", "2:gptq:32",
                 "--calibration-prompts", str(prompts), "--out", str(direct)]) == 0
    err = capsys.readouterr().err
    assert "calibrating: sampling the prompts" in err and "calibrating: block 5 of 5" in err
    assert "2-bit gptq g32" in err
    assert Image.open(direct).text["calibration_prompts"] == str(prompts)  # the picture says what calibrated it
    saved = tmp_path / "saved"
    assert main(["save", "--model", "demo-turbo", "--quantize", "2:gptq:32", "--calibration-prompts", str(prompts),
                 "--out", str(saved)]) == 0
    again = tmp_path / "again.png"
    assert main(["generate", "--model", str(saved), "--prompt", PROMPT, "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(direct)), np.asarray(Image.open(again)))
    assert "calibration_prompts" not in Image.open(again).text  # loaded as saved: nothing calibrated in this run
    # A saved calibrated model is used as saved: asking for other bits is refused, its own spec is accepted.
    assert main(["generate", "--model", str(saved), "--prompt", PROMPT, "--quantize", "3:gptq",
                 "--out", str(tmp_path / "other.png"), "--quiet"]) == 2
    assert main(["generate", "--model", str(saved), "--prompt", PROMPT, "--quantize", "2:gptq:32",
                 "--out", str(tmp_path / "same.png"), "--quiet"]) == 0


def _bad_prompt_file(kind: str, folder):
    """A --calibration-prompts argument that is not a prompt list."""
    path = folder / "prompts.txt"
    if kind == "comments only":
        path.write_text("# nothing but a comment\n\n", encoding="utf-8")
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif kind == "nul bytes":
        path.write_bytes(b"a red circle\x00\x00\n")
    elif kind == "huge":
        with open(path, "wb") as handle:  # sparse: 64 MB on paper, nothing on disk
            handle.truncate(64 << 20)
    elif kind == "folder":
        path.mkdir()
    return path


def _commands(one: str, several: str) -> dict:
    """Each command that takes --calibration-prompts, with `one` as its --quantize or `several` as its --precisions."""
    return {
        "generate": lambda file, out: ["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", one,
                                       "--calibration-prompts", str(file), "--out", str(out / "x.png")],
        "save": lambda file, out: ["save", "--model", "demo-turbo", "--quantize", one, "--calibration-prompts",
                                   str(file), "--out", str(out / "saved")],
        "compare": lambda file, out: ["compare", "--model", "demo-turbo", "--prompt", PROMPT, "--precisions",
                                      several, "--calibration-prompts", str(file), "--out", str(out / "sweep")],
        "eval": lambda file, out: ["eval", "--model", "demo-turbo", "--limit", "1", "--precisions", several,
                                   "--calibration-prompts", str(file)],
    }


CALIBRATING_COMMANDS = _commands("3:gptq", "bf16,3:gptq")


@pytest.mark.parametrize("command", CALIBRATING_COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "comments only", "binary", "nul bytes", "huge", "folder"])
def test_a_bad_prompt_file_is_one_line_before_loading(kind, command, tmp_path, capsys):
    bad = _bad_prompt_file(kind, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert main(CALIBRATING_COMMANDS[command](bad, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration prompts" in err[0] and str(bad) in err[0], err
    assert not list(out.iterdir())  # nothing written


def test_a_calibration_folder_that_is_a_file_is_one_line(monkeypatch, tmp_path, capsys):
    not_a_folder = tmp_path / "calibration"
    not_a_folder.write_text("my notes\n", encoding="utf-8")
    monkeypatch.setenv("QUANTBENCH_CALIBRATION_DIR", str(not_a_folder))
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", "3:gptq",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"QUANTBENCH_CALIBRATION_DIR={not_a_folder} names a file, not a folder" in err[0], err
    assert not out.exists() and not_a_folder.read_text(encoding="utf-8") == "my notes\n"
    # A method that does not calibrate never looks at the folder.
    assert main(["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", "3", "--out", str(out),
                 "--quiet"]) == 0


def test_the_memory_model_predicts_calibration_for_calibrating_methods_only():
    entry = shipped_builtin(find_entry("demo-turbo"))
    plan = Plan(transformer_bits=parse_spec("3:gptq"), width=64, height=64, dtype="float32", backend="cpu",
                text_encoder="staged")
    calibrating = predict(entry, plan)
    plain = predict(entry, dataclasses.replace(plan, transformer_bits=parse_spec("3")))
    assert "calibration" not in plain.phases
    transformer = calibrating.component_bytes("transformer")
    assert calibrating.phases["calibration"] > transformer + calibrating.component_bytes("vae")
    # A real model drawn small with a quantized text encoder: calibration (at 512 pixels, with one block's
    # weights and the largest X^T X) is the largest phase.
    klein = find_entry("klein-4b")
    small = Plan(transformer_bits=parse_spec("8:gptq"), text_encoder_bits=parse_spec("4"), width=256, height=256,
                 text_encoder="staged")
    assert predict(klein, small).bottleneck == "calibration"


def test_a_calibration_that_will_not_fit_is_refused_unless_forced(monkeypatch, tmp_path):
    from quantbench.core import fit, hardware
    from quantbench.core.fit import RunShape, refuse_if_too_big

    klein = find_entry("klein-4b")
    shape = RunShape(parse_spec("8:gptq"), parse_spec("4"), 256, 256, True, None, "bfloat16")
    calibration = predict(klein, fit._plan(tmp_path, shape, "metal")).phases["calibration"]
    generation = predict(klein, fit._plan(tmp_path, dataclasses.replace(shape, transformer_bits=parse_spec("8")),
                                          "metal")).peak
    assert calibration > generation
    ram = int((generation + calibration) / 2) + int(0.75 * 2 ** 30)  # between the two, plus the OS reserve
    real = hardware.detect()
    monkeypatch.setattr(hardware, "detect", lambda: dataclasses.replace(real, total_ram=ram, backend="metal",
                                                                       gpu_memory=None))
    refuse_if_too_big("klein-4b", tmp_path, dataclasses.replace(shape, transformer_bits=parse_spec("8")))
    with pytest.raises(fit.WillNotFit, match="calibration"):
        refuse_if_too_big("klein-4b", tmp_path, shape)
    assert refuse_if_too_big("klein-4b", tmp_path, shape, force=True) is not None


def test_the_predicted_calibration_peak_is_the_measured_one():
    """demo-turbo calibrated for 3:gptq with its own 16 prompts, float32 on the CPU: MLX's peak from before the
    load to the calibrated model is the memory model's calibration phase (which is then the load's peak)."""
    import gc

    import mlx.core as mx

    from quantbench.core.memory import reset_peak
    from quantbench.core.pipelines import load_pipeline

    spec = parse_spec("3:gptq")
    entry = shipped_builtin(find_entry("demo-turbo"))
    predicted = predict(entry, Plan(transformer_bits=spec, width=64, height=64, dtype="float32", backend="cpu",
                                    text_encoder="resident")).phases["calibration"]
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    reset_peak()
    pipeline = load_pipeline("demo-turbo", quantize=spec, dtype=mx.float32, allow_download=False)
    pipeline.ensure_transformer()
    measured = mx.get_peak_memory() - before
    assert pipeline.info.quantization[0].calibration["prompts"] == 16
    assert measured * 0.9 <= predicted <= measured * 1.25, (predicted, measured)


def test_a_calibration_folder_that_cannot_be_made_names_the_variable(monkeypatch, tmp_path, capsys):
    """It said only "/path/sub: cannot be created (Not a directory)", for a run whose --out was elsewhere."""
    (tmp_path / "notes").write_text("mine\n", encoding="utf-8")
    monkeypatch.setenv("QUANTBENCH_CALIBRATION_DIR", str(tmp_path / "notes" / "calibration"))
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", "3:gptq",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration's temporary folder" in err[0] and "QUANTBENCH_CALIBRATION_DIR" in err[0]
    assert not out.exists()


def test_a_nearly_full_calibration_disk_is_refused_before_anything_is_written(monkeypatch, tmp_path, capsys):
    """With a few KB free, the first recorded call's write failed with MLX's "[write] Unable to write 8 bytes"."""
    import shutil

    from quantbench.core.quant.calibration import spill
    monkeypatch.setenv("QUANTBENCH_CALIBRATION_DIR", str(tmp_path / "calibration"))
    monkeypatch.setattr(spill.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 1 << 40, 12 << 10))

    def no_write(*args, **kwargs):
        raise AssertionError("a temporary file was written on a full disk")

    monkeypatch.setattr(spill.Spill, "save", no_write)
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "demo-turbo", "--prompt", PROMPT, "--quantize", "3:gptq",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MB of temporary space is free" in err[0] and "QUANTBENCH_CALIBRATION_DIR" in err[0], err
    assert not out.exists() and not list((tmp_path / "calibration").iterdir())


UNCALIBRATED_COMMANDS = _commands("auto:3", "bf16,4,3:mse") | {
    "generate 3:hqq": _commands("3:hqq", "")["generate"],
    "generate unquantized": lambda file, out: ["generate", "--model", "demo-turbo", "--prompt", PROMPT,
                                               "--calibration-prompts", str(file), "--out", str(out / "x.png")],
}


@pytest.mark.parametrize("command", UNCALIBRATED_COMMANDS)
def test_calibration_prompts_where_nothing_calibrates_are_one_line_not_silently_ignored(command, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    assert main(UNCALIBRATED_COMMANDS[command](prompts, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--calibration-prompts {prompts}: nothing here calibrates" in err[0], err
    assert "only awq and gptq do" in err[0] and "Traceback" not in err[0]
    assert not list(out.iterdir())  # refused before any work


def test_which_precisions_calibrate(tmp_path):
    from quantbench.core.lab.precisions import parse_precisions

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": 1, "layers": {"transformer_blocks.0.attn.to_q": "3:gptq", "proj_out": 8}}))
    uniform = tmp_path / "uniform.json"
    uniform.write_text(json.dumps({"format": 1, "layers": {"transformer_blocks.0.attn.to_q": "3:hqq", "proj_out": 8}}))
    calibrates = {p.text: p.calibrates for p in parse_precisions(
        ["bf16", "4", "3:hqq:32", "2:gptq:32", "4:awq", "auto:3", "auto:3:gptq", "auto:2GB", str(plan), str(uniform)])}
    assert calibrates == {"bf16": False, "4": False, "3:hqq:32": False, "2:gptq:32": True, "4:awq": True,
                          "auto:3": False, "auto:3:gptq": True, "auto:2GB": False, str(plan): True,
                          str(uniform): False}


def test_a_prompt_file_given_alone_is_read_as_the_plan_is_made(prompts, monkeypatch):
    """A Python caller may give CalibrationOptions a file and no prompts: the plan reads it, so that the loaded model's
    key, the record and a saved model's check see the prompts that calibrate (a bad file is one line before loading)."""
    from quantbench.core.errors import InvalidRequest
    from quantbench.core.generate import plan_generation
    from quantbench.core.generation import GenerationSettings
    from quantbench.core.quant.calibration import CalibrationOptions
    monkeypatch.chdir(prompts.parent)
    file_only = CalibrationOptions(prompts_file=prompts.name)
    plan = plan_generation(GenerationSettings(model="demo-turbo", prompt=PROMPT, quantize="2:gptq:32"),
                           calibration=file_only)
    assert plan.calibration_prompts == ("a small red circle in the center over a flat blue background",
                                        "a large green square at the top over a striped white background")
    assert plan.calibration_file == prompts  # absolute, as the record keeps it
    rtn = plan_generation(GenerationSettings(model="demo-turbo", prompt=PROMPT, quantize=4), calibration=file_only)
    assert rtn.calibration_prompts is None and rtn.calibration_file is None  # nothing calibrates on them
    with pytest.raises(InvalidRequest, match="no such file"):
        plan_generation(GenerationSettings(model="demo-turbo", prompt=PROMPT, quantize="2:gptq:32"),
                        calibration=CalibrationOptions(prompts_file="missing.txt"))
