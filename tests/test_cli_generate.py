"""The generate command as a user runs it: PNG with metadata, JSON summary, refusals before loading."""

import json

import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.atomic import OutputError
from quantbench.core.images import read_png_metadata, save_png
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny")


def _generate(model, out, *extra):
    return main(["generate", "--model", str(model), "--prompt", "a red star", "--width", "48", "--height", "32",
                 "--steps", "3", "--seed", "7", "--out", str(out), "--quiet", *extra])


def test_json_summary_and_png_metadata(model, tmp_path, capsys):
    out = tmp_path / "star.png"
    assert _generate(model, out, "--json", "--quantize", "4") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and summary["quantize"] == 4 and len(summary["step_seconds"]) == 3
    assert summary["load"]["quantization"][0]["quantized_layers"] > 0
    metadata = read_png_metadata(out)
    assert metadata["prompt"] == "a red star" and metadata["seed"] == "7" and metadata["steps"] == "3"
    assert metadata["quantize"] == "4" and metadata["width"] == "48" and metadata["quantbench_version"]
    assert len(json.loads(metadata["step_seconds"])) == 3 and int(metadata["peak_memory"]) > 0
    assert Image.open(out).size == (48, 32)


def test_keeping_dequantized_weights_trades_predicted_memory_for_the_same_image(model, tmp_path, capsys):
    """--keep-dequantized all: every quantized transformer layer also kept dense (float32 on the CPU). The
    summary says how many bytes; the memory model predicted exactly those bytes more for the phases that
    hold the transformer; the picture is the one the sliced dense path draws (to a float32 rounding)."""
    import numpy as np

    runs = {}
    for name, extra in (("sliced", ()), ("kept", ("--keep-dequantized", "all"))):
        out = tmp_path / f"{name}.png"
        assert _generate(model, out, "--json", "--quantize", "4", *extra) == 0
        runs[name] = (json.loads(capsys.readouterr().out), np.asarray(Image.open(out)).astype(int))
    sliced, kept = runs["sliced"][0], runs["kept"][0]
    transformer = kept["load"]["quantization"][0]
    quantized_weights = transformer["params"]["4-bit"]
    assert sliced["load"]["kept_dequantized_bytes"] == 0
    assert 0 < kept["load"]["kept_dequantized_bytes"] <= quantized_weights * 4
    assert kept["predicted"]["kept_dequantized_bytes"] == kept["load"]["kept_dequantized_bytes"]
    grown = kept["predicted"]["predicted_peak_bytes"] - sliced["predicted"]["predicted_peak_bytes"]
    assert 0 <= grown <= kept["load"]["kept_dequantized_bytes"]  # the run's peak may be the text encoder's
    assert np.abs(runs["kept"][1] - runs["sliced"][1]).max() <= 1
    from quantbench.core.catalog import entry_from_folder
    from quantbench.core.memory_model import Plan, predict
    plans = [Plan(transformer_bits=4, width=48, height=32, dtype="float32", backend="cpu", keep_dequantized=budget,
                  tile_kernel=kernel, elementwise_kernel=False) for kernel in (False, True)
             for budget in (0.0, float("inf"))]
    predictions = [predict(entry_from_folder(model), plan) for plan in plans]
    phases = [p.phases for p in predictions]
    extra = kept["load"]["kept_dequantized_bytes"]
    # each phase that holds the transformer; in the slices the step no longer dequantizes a weight whole (every
    # one is kept); the tile kernel never holds one in MLX's memory, and runs the step a layer at a time, each
    # layer evaluating its input: with every layer kept, no layer runs in it, and the step is one lazy graph again
    assert predictions[1].dequantizing == 0 < predictions[0].dequantizing
    assert phases[1]["denoise"] - phases[0]["denoise"] == extra - predictions[0].dequantizing
    assert phases[1]["decode"] - phases[0]["decode"] == extra
    assert predictions[2].dequantizing == predictions[3].dequantizing == 0
    assert predictions[3].denoise_activations == predictions[1].denoise_activations > predictions[2].denoise_activations
    assert phases[3]["denoise"] - phases[2]["denoise"] == extra + (predictions[3].denoise_activations
                                                                   - predictions[2].denoise_activations)
    assert phases[3]["decode"] - phases[2]["decode"] == extra


def test_refuses_to_overwrite_unless_told(model, tmp_path, capsys):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    assert _generate(model, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert _generate(model, out, "--overwrite") == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize("args,message", [
    (["--quantize", "4:foo"], "unsupported quantization '4:foo'"),
    (["--text-encoder-quantize", "7"], "unsupported quantization '7'"),
    (["--width", "50"], "width 50 is not allowed"),
    (["--negative-prompt", "blurry"], "negative prompt needs an unconditional pass"),
    (["--guidance", "4"], "guidance 4 cannot be used with this distilled model"),
    (["--text-encoder-layers", "a,b"], "give comma-separated integers"),
    (["--keep-dequantized", "-1"], "--keep-dequantized -1 is not allowed"),
    (["--keep-dequantized", "lots"], "'lots' is not a number"),
])
def test_bad_input_is_one_line_and_writes_nothing(model, tmp_path, capsys, args, message):
    out = tmp_path / "bad.png"
    assert _generate(model, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("quantbench: error:")
    assert not out.exists()


def test_output_must_be_png_in_an_existing_folder(model, tmp_path, capsys):
    assert _generate(model, tmp_path / "x.jpg") == 2
    assert _generate(model, tmp_path / "nowhere" / "x.png") == 2
    err = capsys.readouterr().err
    assert "must be a .png file" in err and "no such folder" in err


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    image = Image.new("RGB", (8, 8))

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OutputError, match="a.png: could not be written .No space left on device"):
        save_png(image, tmp_path / "a.png", {"prompt": "x"})
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_will_not_fit_is_refused_before_loading_unless_forced(model, tmp_path, capsys, monkeypatch):
    import dataclasses

    from quantbench.core import hardware

    real = hardware.detect()
    # 0.8 GiB of RAM: the OS reserve leaves about 50 MB, less than the tiny model's predicted peak
    monkeypatch.setattr(hardware, "detect", lambda: dataclasses.replace(real, total_ram=int(0.8 * 2 ** 30),
                                                                       backend="cpu", gpu_memory=None))
    out = tmp_path / "big.png"
    assert _generate(model, out, "--width", "512", "--height", "512", "--steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at full precision (float32) needs about" in err[0] and "pass --force" in err[0]
    assert not out.exists()
    assert _generate(model, out, "--width", "512", "--height", "512", "--steps", "1", "--force") == 0
    assert out.exists()


def test_a_mixed_plan_from_measured_sensitivity(model, tmp_path, capsys):
    out = tmp_path / "mixed.png"
    assert _generate(model, out, "--json", "--quantize", "auto:5") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantize"].startswith("mixed") and "auto:5" in summary["quantize"]
    assert read_png_metadata(out)["quantize"] == summary["quantize"]
    # the loaded transformer really holds layers at more than one precision (its report counts them by bits)
    transformer = summary["load"]["quantization"][0]
    assert transformer["component"] == "transformer"
    assert len([key for key in transformer["params"] if key.endswith("-bit")]) > 1


@pytest.mark.parametrize("args", [["generate", "--steps", "x"], ["sensitivity", "--granularity", "blocks"],
                                  ["no-such-command"]])
def test_bad_options_are_one_line_errors(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "--help" in err[0]


def test_the_guidance_help_states_the_defaults_the_models_have(capsys):
    """--help said "default: the model's, 4.0 for all of these", while demo runs at 1.5 and Qwen-Image 2.1 at 1."""
    import re

    from quantbench.core.pipelines import model_defaults
    from quantbench.core.sources import resolve_model_folder
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:"):]
    guidance = options[options.index("--guidance GUIDANCE"):options.index("--true-cfg SCALE")]
    stated = float(re.search(r"([0-9.]+) for demo", guidance).group(1))
    assert stated == model_defaults(resolve_model_folder("demo", allow_download=False)).guidance
    assert "4.0 for all of these" not in guidance and "1 (none) for Qwen-" in guidance  # argparse wraps at "-"


def test_keep_dense_that_keeps_nothing_says_so(tmp_path, capsys):
    """--keep-dequantized on an unquantized run was taken without a word and kept nothing."""
    args = ["generate", "--model", "demo-turbo", "--prompt", "a red ring", "--keep-dequantized", "all", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert "keep dense (--keep-dequantized) kept nothing: the transformer has no quantized layer" in \
        capsys.readouterr().err
    assert main([*args, "--quantize", "4", "--out", str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    import mlx.core as mx
    if mx.default_device() == mx.cpu:  # the dense path keeps the layers
        assert "kept nothing" not in err
    else:  # Metal and CUDA run MLX's quantized kernels: nothing to keep, and it says why
        assert "kept nothing: quantized layers run MLX's own quantized kernels" in err
