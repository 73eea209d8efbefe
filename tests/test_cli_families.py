"""Every family through the same commands: `quantbench generate`, `save`, `compare`, `sensitivity` and `plan`
on tiny FLUX.1, Qwen-Image, FLUX.2 [dev] and Z-Image folders saved by diffusers, and the one-line refusals
each family has."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.cli.main import main  # noqa: E402
from quantbench.core.images import read_png_metadata  # noqa: E402

from reference.flux1 import build_tiny_flux1  # noqa: E402
from reference.pipelines import build_tiny_dev  # noqa: E402
from reference.qwen_image import build_tiny_qwen_image  # noqa: E402
from reference.z_image import build_tiny_z_image  # noqa: E402

BUILDERS = {
    "flux1-schnell": lambda folder: build_tiny_flux1(folder, dev=False),
    "flux1-dev": lambda folder: build_tiny_flux1(folder, dev=True),
    "qwen-image": build_tiny_qwen_image,
    "flux2-dev": build_tiny_dev,
    "z-image-turbo": lambda folder: build_tiny_z_image(folder, "turbo"),
    "z-image": lambda folder: build_tiny_z_image(folder, "base", seed=5),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}
    for name, build in BUILDERS.items():
        build(root / name)
        made[name] = root / name
    return made


def _generate(folder, out, *extra):
    # the tiny FLUX.2 [dev] stacks hidden states 1, 3, 5 of its 6-layer Mistral (the real one: 10, 20, 30)
    layers = ["--text-encoder-layers", "1,3,5"] if folder.name == "flux2-dev" else []
    return main(["generate", "--model", str(folder), "--prompt", "a red star", "--width", "32", "--height", "32",
                 "--steps", "2", "--out", str(out), "--quiet", "--json", *layers, *extra])


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_generate_runs_every_family_quantized(folders, family, tmp_path, capsys):
    out = tmp_path / f"{family}.png"
    assert _generate(folders[family], out, "--quantize", "8") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantize"] == 8 and summary["load"]["quantization"][0]["component"] == "transformer"
    assert read_png_metadata(out)["steps"] == "2"


@pytest.mark.parametrize("family,args,message", [
    ("flux1-schnell", ["--negative-prompt", "blurry"], "FLUX.1 [schnell] has none"),
    ("flux1-dev", ["--negative-prompt", "blurry"], "needs true CFG"),
    ("flux2-dev", ["--negative-prompt", "blurry"], "negative prompt"),
    ("qwen-image", ["--true-cfg", "3"], "not a Qwen-Image option"),
    ("qwen-image", ["--quantize", "auto:0.001MB"], "below the smallest possible transformer"),
    ("z-image-turbo", ["--negative-prompt", "blurry"], "Z-Image-Turbo has none"),
    ("z-image-turbo", ["--guidance", "3"], "distilled into the weights"),
    ("z-image", ["--true-cfg", "3"], "not a Z-Image option"),
])
def test_family_refusals_are_one_line_and_write_nothing(folders, family, args, message, tmp_path, capsys):
    out = tmp_path / "refused.png"
    assert _generate(folders[family], out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_flux1_dev_negative_prompt_with_true_cfg(folders, tmp_path, capsys):
    out = tmp_path / "cfg.png"
    assert _generate(folders["flux1-dev"], out, "--negative-prompt", "blurry", "--true-cfg", "3") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["true_cfg"] == 3 and summary["negative_prompt"] == "blurry"


def test_save_then_generate_a_qwen_image_quantized_copy(folders, tmp_path, capsys):
    saved = tmp_path / "qwen-q4"
    assert main(["save", "--model", str(folders["qwen-image"]), "--quantize", "4", "--out", str(saved),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["transformer"] == "4-bit" and summary["bytes"]["transformer"] > 0
    assert _generate(saved, tmp_path / "from-saved.png") == 0


@pytest.mark.parametrize("family", ["flux1-dev", "qwen-image", "z-image"])
def test_compare_runs_other_families_at_uniform_bits(folders, family, tmp_path, capsys):
    assert main(["compare", "--model", str(folders[family]), "--prompt", "a red star", "--width", "32",
                 "--height", "32", "--steps", "2", "--precisions", "bf16,8,4", "--out", str(tmp_path / "cmp"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["precision"]: row for row in report["rows"]}
    assert set(rows) == {"unquantized", "q8", "q4"}
    assert rows["q4"]["transformer_bytes"] < rows["q8"]["transformer_bytes"] < rows["unquantized"]["transformer_bytes"]
    assert rows["q8"]["psnr"] > rows["q4"]["psnr"]
    assert (tmp_path / "cmp").is_dir()


@pytest.mark.parametrize("family", ["flux1-dev", "qwen-image", "z-image"])
def test_sensitivity_and_mixed_plans_run_other_families(folders, family, tmp_path, capsys):
    from quantbench.core.lab.layer_bytes import quantizable_layers
    from quantbench.core.lab.structure import transformer_structure
    folder = folders[family]
    probe = ["--size", "32", "--steps", "1", "--prompt", "a red star"]
    assert main(["sensitivity", "--model", str(folder), *probe, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = quantizable_layers(transformer_structure(folder))
    assert sorted(u["name"] for u in report["units"]) == sorted(layers)
    assert report["units"][0]["error"] > 0
    harmless = {u["name"] for u in report["units"] if u["error"] == 0}
    # only what the picture never sees: the last dual-stream block's text-side outputs (single-stream Z-Image: none)
    last = max((int(name.split(".")[1]) for name in layers if name.startswith("transformer_blocks.")), default=-1)
    text_side = ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.", "ff_context.")
    assert all(name.startswith(f"transformer_blocks.{last}.") and any(part in name for part in text_side)
               for name in harmless), harmless

    plan = tmp_path / "plan.json"
    assert main(["plan", "--model", str(folder), "--quantize", "auto:4", *probe, "--out", str(plan), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["layers"].keys() == layers.keys() and made["average_bits"] <= 4
    assert made["search"]["psnr_db"] >= made["search"]["start_psnr_db"]
    assert _generate(folder, tmp_path / "mixed.png", "--quantize", str(plan)) == 0
    result = json.loads(capsys.readouterr().out)
    transformer = result["load"]["quantization"][0]
    assert transformer["quantized_layers"] == len(made["layers"]) and transformer["bytes"] == made["transformer_bytes"]


def test_compare_searches_a_mixed_plan_for_other_families(folders, tmp_path, capsys):
    assert main(["compare", "--model", str(folders["qwen-image"]), "--prompt", "a red star", "--width", "32",
                 "--height", "32", "--steps", "2", "--precisions", "bf16,4,auto:4", "--json"]) == 0
    rows = {row["precision"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert len(rows) == 3
    mixed = next(row for name, row in rows.items() if name.startswith("auto") or "auto:4" in name)
    assert mixed["transformer_bytes"] <= rows["q4"]["transformer_bytes"]
