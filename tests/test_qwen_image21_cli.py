"""Qwen-Image 2.1 through every command: generate, save, compare, sensitivity, plan and bench on the tiny
diffusers-built base and Turbo folders, and the family's one-line refusals."""

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.cli.main import main  # noqa: E402
from quantbench.core.images import read_png_metadata  # noqa: E402

PROBE = ["--size", "32", "--steps", "2", "--prompt", "a red star"]


def _generate(folder, out, *extra):
    return main(["generate", "--model", str(folder), "--prompt", "a red star", "--width", "32", "--height", "32",
                 "--out", str(out), "--quiet", "--json", *extra])


def test_generate_quantized_with_true_cfg(tiny_qwen_image21, tmp_path, capsys):
    out = tmp_path / "cfg.png"
    assert _generate(tiny_qwen_image21[0], out, "--steps", "2", "--quantize", "8", "--guidance", "3",
                     "--negative-prompt", "blurry") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantize"] == 8 and summary["negative_prompt"] == "blurry" and summary["guidance"] == 3
    assert read_png_metadata(out)["steps"] == "2"


@pytest.mark.parametrize("turbo,args,message", [
    (False, ["--negative-prompt", "blurry"], "guidance above 1"),
    (False, ["--width", "48"], "multiples of 32"),
    (True, ["--negative-prompt", "blurry"], "Turbo has none"),
])
def test_refusals_are_one_line_and_write_nothing(tiny_qwen_image21, tiny_qwen_image21_turbo, turbo, args, message,
                                                 tmp_path, capsys):
    folder = (tiny_qwen_image21_turbo if turbo else tiny_qwen_image21)[0]
    out = tmp_path / "refused.png"
    assert _generate(folder, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_save_then_generate_from_the_quantized_copy(tiny_qwen_image21_turbo, tmp_path, capsys):
    saved = tmp_path / "turbo-q4"
    assert main(["save", "--model", str(tiny_qwen_image21_turbo[0]), "--quantize", "4", "--out", str(saved),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transformer"] == "4-bit"
    assert _generate(saved, tmp_path / "from-saved.png") == 0


def test_compare_at_uniform_bits(tiny_qwen_image21, tmp_path, capsys):
    assert main(["compare", "--model", str(tiny_qwen_image21[0]), "--prompt", "a red star", "--width", "32",
                 "--height", "32", "--steps", "2", "--precisions", "bf16,8,4", "--out", str(tmp_path / "cmp"),
                 "--json"]) == 0
    rows = {row["precision"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["q4"]["transformer_bytes"] < rows["q8"]["transformer_bytes"] < rows["unquantized"]["transformer_bytes"]
    assert rows["q8"]["psnr"] > rows["q4"]["psnr"]


def test_sensitivity_ranks_every_layer_and_a_plan_is_searched_and_used(tiny_qwen_image21, tmp_path, capsys):
    from quantbench.core.lab.layer_bytes import quantizable_layers
    from quantbench.core.lab.structure import transformer_structure
    folder = tiny_qwen_image21[0]
    assert main(["sensitivity", "--model", str(folder), *PROBE, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = quantizable_layers(transformer_structure(folder))
    assert sorted(u["name"] for u in report["units"]) == sorted(layers)
    # one stream: every layer touches the image tokens (no text-only outputs that the picture never sees)
    assert all(u["error"] > 0 for u in report["units"])
    plan = tmp_path / "plan.json"
    assert main(["plan", "--model", str(folder), "--quantize", "auto:4", *PROBE, "--out", str(plan), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["layers"].keys() == layers.keys() and made["average_bits"] <= 4
    assert _generate(folder, tmp_path / "mixed.png", "--steps", "2", "--quantize", str(plan)) == 0
    transformer = json.loads(capsys.readouterr().out)["load"]["quantization"][0]
    assert transformer["quantized_layers"] == len(made["layers"]) and transformer["bytes"] == made["transformer_bytes"]


def test_bench_on_a_random_qwen_image21(capsys):
    """bench's random models are distilled: Qwen-Image 2.1 Turbo, on its 8-step grid."""
    assert main(["bench", "--random-weights", "qwen-image-2.1", "--width-scale", "0.03", "--precisions", "bf16,4",
                 "--size", "64", "--steps", "8", "--memory", "resident", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["precision"]: row for row in report["rows"]}
    assert rows["q4"]["transformer_bytes"] < 0.5 * rows["unquantized"]["transformer_bytes"]
    assert report["model"] == "random qwen-image-2.1 x0.03"


def test_a_prompt_longer_than_it_reads_is_refused_before_loading_a_calibration_prompt_with_its_line(
        tiny_qwen_image21, tmp_path, capsys):
    """Qwen-Image 2.1 refuses a prompt over 1024 tokens rather than cut it: said before the model loads (it was said
    once the whole model had loaded), and a calibration prompt so long is named by its line of the file."""
    folder, long = tiny_qwen_image21[0], "a cat " * 1100
    assert main(["generate", "--model", str(folder), "--prompt", long, "--width", "32", "--height", "32",
                 "--out", str(tmp_path / "x.png")]) == 2
    [line] = capsys.readouterr().err.splitlines()  # no "loading ..." before it
    assert re.fullmatch(r"quantbench: error: the prompt is \d+ tokens long; Qwen-Image 2.1 reads at most 1024 here: "
                        r"shorten it", line)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# mine\na red star\n\n{long}\n", encoding="utf-8")
    refused = f"quantbench: error: calibration prompts in {prompts}, line 4: the prompt is "
    assert main(["save", "--model", str(folder), "--quantize", "4:gptq", "--calibration-prompts", str(prompts),
                 "--out", str(tmp_path / "saved")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(refused)
    assert not (tmp_path / "saved").exists()
    assert main(["compare", "--model", str(folder), *PROBE[2:], "--prompt", "a red star", "--width", "32", "--height",
                 "32", "--precisions", "4:gptq", "--calibration-prompts", str(prompts)]) == 2
    [line] = capsys.readouterr().err.splitlines()  # before the compare loads anything
    assert line.startswith(refused)
