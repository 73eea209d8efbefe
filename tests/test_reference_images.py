"""Reference images (FLUX.2's multi-reference editing, `generate --image`): the same picture diffusers draws from the
same files, the same pixels its image processor makes of them, one-line refusals before anything loads, the records
and the memory model."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import GenerationSettings
from quantbench.core.images import read_png_metadata
from quantbench.core.random_model import write_random_model
from quantbench.core.reference_images import check_references, reference_pixels, reference_size

SIZE, STEPS = 64, 3
IMAGE_ATOL = 1e-3  # as tests/test_flux2_pipeline.py: float32 summation order, nothing else


def _picture(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A picture of smooth colour gradients (what a VAE encodes as a picture, not noise), saved at `path`."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    channels = [127 + 120 * np.sin(x / width * rng.uniform(2, 8) + y / height * rng.uniform(2, 8) + phase)
                for phase in rng.uniform(0, 6, 4)]
    pixels = np.stack(channels, axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels[..., :3]) if mode == "RGB" else Image.fromarray(pixels, "RGBA")
    image = image.convert(mode) if mode not in ("RGB", "RGBA") else image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _latents(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 128, SIZE // 16, SIZE // 16)).astype(np.float32)


@pytest.mark.parametrize("fixture,guidance", [("tiny_klein", 1.0), ("tiny_klein_base", 4.0)])
def test_references_draw_the_picture_diffusers_draws_from_them(request, tmp_path, fixture, guidance):
    """Two references of other sizes than the picture (one cropped to a multiple of 16), a distilled model and a base
    one (the references batched beside both prompts): our picture is diffusers' to the float32 tolerance, and the
    references changed it by far more than that."""
    import torch

    from quantbench.core.families.flux2.pipeline import Flux2Pipeline
    from reference.pipelines import TEXT_LAYERS

    folder, pipe = request.getfixturevalue(fixture)
    files = [_picture(tmp_path / "first.png", (100, 80), seed=1), _picture(tmp_path / "second.png", (64, 64), seed=2)]

    def diffusers_image(images):
        kwargs = {"image": [Image.open(f) for f in images]} if images else {}
        return pipe(prompt="a red circle", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                    latents=torch.from_numpy(_latents()), output_type="np", text_encoder_out_layers=TEXT_LAYERS,
                    **kwargs).images[0]

    ours = Flux2Pipeline.load(folder, text_encoder_layers=TEXT_LAYERS)
    result = ours.generate("a red circle", steps=STEPS, guidance=None if ours.distilled else guidance, width=SIZE,
                           height=SIZE, latents=_latents(), images=tuple(files))
    got = np.asarray(result.image).astype(np.float32) / 255
    expected = diffusers_image(files)
    assert np.abs(got - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert np.abs(expected - diffusers_image([])).max() > 4 * (0.5 / 255 + IMAGE_ATOL)
    assert result.phase_peaks["encode"] > 0


@pytest.mark.parametrize("size,mode", [((1100, 1000), "RGBA"), ((200, 300), "P"), ((900, 1500), "L"),
                                       ((500, 70), "RGB"), ((64, 64), "RGB")])
def test_an_image_becomes_the_pixels_diffusers_image_processor_makes_of_it(tmp_path, size, mode):
    """Scaled to 1024x1024 px of area in the file's own mode (an RGBA image scales premultiplied), made RGB, cropped
    about its centre to multiples of 16, in [-1, 1]: exactly diffusers' Flux2ImageProcessor, bit for bit."""
    pytest.importorskip("diffusers")
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    path = _picture(tmp_path / f"{mode}.png", size, mode)
    processor = Flux2ImageProcessor(vae_scale_factor=16)
    image = Image.open(path)
    if image.width * image.height > 1024 * 1024:
        image = processor._resize_to_target_area(image, 1024 * 1024)
    width, height = image.width // 16 * 16, image.height // 16 * 16
    expected = processor.preprocess(image, height=height, width=width, resize_mode="crop").numpy()
    got = reference_pixels(path)
    assert reference_size(path) == (width, height)
    assert np.array_equal(got, expected.transpose(0, 2, 3, 1))


def _truncated(path: Path) -> Path:
    full = _picture(path.with_name("full.png"), (128, 128))
    path.write_bytes(full.read_bytes()[:300])
    return path


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "absent.png", "no such file"),
    (lambda d: d, "not a file"),
    (lambda d: (d / "notes.png").write_text("not a picture") and d / "notes.png", "not an image Pillow can read"),
    (lambda d: _picture(d / "small.png", (32, 100)), "32x100 is too small"),
    (lambda d: _picture(d / "thin.png", (600, 64)), "600x64 is too thin"),
    (lambda d: Image.new("1", (12000, 12000)).save(d / "huge.png") or d / "huge.png", "more than 128 megapixels"),
])
def test_a_reference_that_cannot_be_used_is_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InvalidRequest, match=message) as info:
        check_references([path], 10, "FLUX.2")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_damaged_picture_is_one_line_before_anything_loads(tmp_path):
    """Its header reads, its pixels do not: refused as the run is planned, not when the loaded model encodes it."""
    path = _truncated(tmp_path / "cut.png")
    assert reference_size(path) == (128, 128)
    with pytest.raises(InvalidRequest, match="cannot be decoded") as info:
        check_references([path], 10, "FLUX.2")
    assert "\n" not in str(info.value)


def test_a_family_without_references_and_too_many_are_refused(tmp_path):
    image = _picture(tmp_path / "a.png", (64, 64))
    with pytest.raises(InvalidRequest, match="Z-Image models take no reference image"):
        check_references([image], 0, "Z-Image")
    with pytest.raises(InvalidRequest, match="3 reference images: FLUX.2 takes at most 2"):
        check_references([image] * 3, 2, "FLUX.2")
    from quantbench.core.families import FAMILIES
    assert {family.name: family.supports.reference_images > 0 for family in FAMILIES} == {
        "flux2": True, "flux1": False, "qwen_image": False, "z_image": False, "qwen_image21": False}


def test_a_record_names_its_references_and_a_bad_one_is_refused():
    settings = GenerationSettings(model="demo", prompt="a star", reference_images=("~/a.png",))
    record = settings.to_record()
    assert record["reference_images"] == [str(Path("~/a.png").expanduser())]
    assert GenerationSettings.from_record(record).reference_images == tuple(record["reference_images"])
    assert GenerationSettings(model="demo", prompt="a star").to_record()["reference_images"] is None
    with pytest.raises(InvalidRequest, match="not a list of files"):
        GenerationSettings.from_record({**record, "reference_images": "a.png"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny")


def _generate(model, out, *extra):
    return main(["generate", "--model", str(model), "--prompt", "a red star", "--steps", "2", "--out", str(out),
                 "--quiet", "--json", *extra])


def test_generate_with_references_sizes_the_picture_and_records_them(model, tmp_path, capsys, monkeypatch):
    """The first reference sets the size a side not given takes; the JSON, the PNG and the memory model's
    prediction know the references; the prediction of the encode phase (the VAE's encoder reading a 256 px
    reference) holds the measured one."""
    first = _picture(tmp_path / "pics" / "first.png", (260, 200))
    _picture(tmp_path / "pics" / "second.png", (64, 96), seed=4)
    monkeypatch.chdir(tmp_path / "pics")
    out = tmp_path / "edit.png"
    gc.collect()
    held = mx.get_active_memory()  # what earlier tests in this process hold: MLX's peak counts it too
    assert _generate(model, out, "--image", "first.png", "--image", "second.png") == 0
    summary = json.loads(capsys.readouterr().out)
    encode = summary["phase_peaks"]["encode"] - held
    assert (summary["width"], summary["height"]) == (256, 192) and Image.open(out).size == (256, 192)
    assert summary["reference_images"] == [str(first), str(tmp_path / "pics" / "second.png")]
    assert json.loads(read_png_metadata(out)["reference_images"]) == summary["reference_images"]
    predicted = summary["predicted"]
    assert encode <= predicted["phase_peaks"]["encode"] <= 1.5 * encode, (held, summary["phase_peaks"])
    assert _generate(model, tmp_path / "plain.png", "--width", "256", "--height", "192") == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["predicted"]["phase_peaks"]["denoise"] < predicted["phase_peaks"]["denoise"]
    assert plain["predicted"]["phase_peaks"]["encode"] < predicted["phase_peaks"]["encode"]
    pictures = [np.asarray(Image.open(p)).astype(float) for p in (out, tmp_path / "plain.png")]
    assert np.abs(pictures[0] - pictures[1]).mean() > 0.1  # the references changed the picture
    assert _generate(model, tmp_path / "wide.png", "--image", "first.png", "--width", "128") == 0
    assert (lambda s: (s["width"], s["height"]))(json.loads(capsys.readouterr().out)) == (128, 192)


@pytest.mark.parametrize("value,message", [("absent.png", "no such file"), ("", "--image is empty"),
                                           (".", "not a file")])
def test_a_bad_image_option_is_one_line_and_exit_2_with_nothing_written(model, tmp_path, capsys, monkeypatch, value,
                                                                        message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never.png"
    assert _generate(model, out, "--image", value) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert message in error and "\n" not in error
    assert not out.exists()


def test_a_vae_saved_without_its_encoder_is_one_line(model, tmp_path, capsys):
    """A folder whose VAE holds the decoder only (as random-model wrote it before): refused in one line when the
    reference is to be encoded, and no PNG."""
    import shutil

    import mlx.core as mx

    folder = tmp_path / "decoder-only"
    shutil.copytree(model, folder)
    for weights in (folder / "vae").glob("*.safetensors"):
        tensors = {k: v for k, v in mx.load(str(weights)).items() if not k.startswith(("encoder.", "quant_conv."))}
        mx.save_safetensors(str(weights), tensors)
    image = _picture(tmp_path / "ref.png", (64, 64))
    assert _generate(folder, tmp_path / "never.png", "--image", str(image)) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "the VAE has no encoder weights" in error and "\n" not in error
    assert not (tmp_path / "never.png").exists()


def test_compare_draws_the_edit_at_each_precision(model, tmp_path, capsys):
    """compare --image: every precision draws the edit, at the reference's size, and the report names the
    reference."""
    reference = _picture(tmp_path / "ref.png", (128, 96))
    assert main(["compare", "--model", str(model), "--prompt", "a red star", "--precisions", "bf16,4", "--steps", "2",
                 "--image", str(reference), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference_images"] == [str(reference)]
    assert (report["width"], report["height"]) == (128, 96)
    assert [row["precision"] for row in report["rows"]] == ["unquantized", "q4"]
    assert isinstance(report["rows"][1]["psnr"], float)  # scored against the unquantized edit
