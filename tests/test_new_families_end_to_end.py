"""Z-Image (Turbo and base) and Qwen-Image 2.1 (base and Turbo) end to end, as a person runs them: `quantbench
generate` and the workbench on tiny folders saved by diffusers write a PNG, which must be diffusers' picture from
the same seed's noise (the engine's seed noise handed to diffusers as `latents`), in float32, to within one 8-bit
level where a value sits on a rounding edge."""

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.cli.main import main  # noqa: E402
from quantbench.core.generation import initial_noise  # noqa: E402
from quantbench.core.metrics import psnr  # noqa: E402
from quantbench.tui.app import QuantbenchApp  # noqa: E402
from quantbench.tui.widgets.history import HistoryTable  # noqa: E402

from reference.qwen_image21 import LATENT_CHANNELS, build_tiny_qwen_image21  # noqa: E402
from reference.z_image import build_tiny_z_image  # noqa: E402
from test_workbench import WIDE, dirs, set_steps, type_prompt, wait_for  # noqa: E402,F401
from test_workbench_families import size_to  # noqa: E402

SIZE, STEPS, SEED, PROMPT = 64, 3, 7, "a red star"
MIN_PSNR_DB = 60.0
BUILDERS = {
    "z-image-turbo": lambda folder: build_tiny_z_image(folder, "turbo"),
    "z-image": lambda folder: build_tiny_z_image(folder, "base", seed=5),
    "qwen-image-2.1": build_tiny_qwen_image21,
    "qwen-image-2.1-turbo": lambda folder: build_tiny_qwen_image21(folder, seed=5, turbo=True),
}
# model: (our options, diffusers' arguments for the same run)
RUNS = {
    "z-image-turbo": ([], {"guidance_scale": 0.0}),
    "z-image": (["--guidance", "4", "--negative-prompt", "blurry"], {"guidance_scale": 4.0, "negative_prompt": "blurry"}),
    "qwen-image-2.1": (["--guidance", "4", "--negative-prompt", "blurry"],
                       {"true_cfg_scale": 4.0, "negative_prompt": "blurry"}),
    "qwen-image-2.1-turbo": ([], {}),  # its own 8-step grid: another step count reads that grid, not diffusers'
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("new-families")
    return {name: (root / name, build(root / name)) for name, build in BUILDERS.items()}


def diffusers_png(name: str, pipe, steps: int | None, **arguments) -> np.ndarray:
    """diffusers' picture from the noise our engine draws for SEED, rounded to 8 bits as its numpy_to_pil does."""
    if name.startswith("z-image"):
        noise = initial_noise(SEED, (1, 16, SIZE // 8, SIZE // 8))
    else:
        noise = initial_noise(SEED, (1, (SIZE // 16) ** 2, LATENT_CHANNELS))
    if steps:
        arguments["num_inference_steps"] = steps
    image = pipe(prompt=PROMPT, height=SIZE, width=SIZE, latents=torch.from_numpy(noise), output_type="np",
                 **arguments).images[0]
    return (image * 255).round().astype(np.uint8)


def assert_same_picture(png_path, expected: np.ndarray) -> None:
    ours = np.asarray(Image.open(png_path))
    assert ours.shape == expected.shape  # RGB for Z-Image, RGBA for Qwen-Image 2.1
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    assert psnr(ours.astype(np.float64), expected.astype(np.float64)) > MIN_PSNR_DB


@pytest.mark.parametrize("name", sorted(RUNS))
def test_cli_generate_draws_diffusers_picture(models, name, tmp_path, capsys):
    folder, pipe = models[name]
    options, arguments = RUNS[name]
    steps = None if name == "qwen-image-2.1-turbo" else STEPS
    out = tmp_path / "cli.png"
    assert main(["generate", "--model", str(folder), "--prompt", PROMPT, "--seed", str(SEED), "--width", str(SIZE),
                 "--height", str(SIZE), "--dtype", "float32", "--out", str(out), "--quiet", "--json", *options,
                 *(["--steps", str(steps)] if steps else [])]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == SEED
    assert_same_picture(out, diffusers_png(name, pipe, steps, **arguments))


@pytest.mark.parametrize("name", ["z-image-turbo", "qwen-image-2.1"])
async def test_workbench_generate_draws_diffusers_picture(models, name, dirs):
    folder, pipe = models[name]
    app = QuantbenchApp(model=str(folder))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await type_prompt(pilot, PROMPT)
        size_to(app, SIZE)
        set_steps(app, STEPS)
        app.query_one("#seed").value = str(SEED)
        await pilot.press("enter")
        history = app.query_one(HistoryTable)
        await wait_for(pilot, lambda: history.row_count == 1, seconds=120)
        record = history.records[0]
    assert record["seed"] == SEED and record["steps"] == STEPS
    # the workbench's defaults: Turbo without guidance, Qwen-Image 2.1's base sampled without guidance
    assert_same_picture(record["image"], diffusers_png(name, pipe, STEPS, **RUNS["z-image-turbo"][1]
                                                       if name == "z-image-turbo" else {}))


@pytest.mark.parametrize("name", ["z-image", "qwen-image-2.1-turbo"])
def test_cli_save_gives_bitwise_the_picture_of_quantizing_on_the_fly(models, name, tmp_path, capsys):
    folder, _ = models[name]
    saved = tmp_path / "saved-q4"
    assert main(["save", "--model", str(folder), "--quantize", "4", "--text-encoder-quantize", "8", "--out",
                 str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transformer"] == "4-bit"
    run = ["--prompt", PROMPT, "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--steps", "2",
           "--quiet"]
    assert main(["generate", "--model", str(folder), "--quantize", "4", "--text-encoder-quantize", "8", *run,
                 "--out", str(tmp_path / "on-the-fly.png")]) == 0
    assert main(["generate", "--model", str(saved), *run, "--out", str(tmp_path / "saved.png")]) == 0
    on_the_fly, from_saved = (np.asarray(Image.open(tmp_path / f)) for f in ("on-the-fly.png", "saved.png"))
    assert np.array_equal(on_the_fly, from_saved)
    unquantized = tmp_path / "unquantized.png"
    assert main(["generate", "--model", str(folder), *run, "--out", str(unquantized)]) == 0
    assert not np.array_equal(on_the_fly, np.asarray(Image.open(unquantized)))  # the quantization is in the picture
