"""End to end against diffusers: a tiny Klein pipeline saved with save_pretrained, loaded by our engine."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantbench.core.errors import InvalidRequest  # noqa: E402
from quantbench.core.families.flux2.pipeline import Flux2Pipeline  # noqa: E402
from reference.pipelines import TEXT_LAYERS  # noqa: E402

SIZE, STEPS = 64, 3
# Pixel values in [0, 1] after the whole float32 pipeline (text encoder, 3 steps, VAE): summation
# order differs between torch and MLX, nothing else, so the images agree to well under one 8-bit level.
IMAGE_ATOL = 1e-3


def _latents(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 128, SIZE // 16, SIZE // 16)).astype(np.float32)


def _reference_image(pipe, prompt, guidance):
    out = pipe(prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
               latents=torch.from_numpy(_latents()), output_type="np", text_encoder_out_layers=TEXT_LAYERS)
    return out.images[0]


def _ours(folder, **kwargs):
    return Flux2Pipeline.load(folder, text_encoder_layers=TEXT_LAYERS, **kwargs)


def _image(result):
    return np.asarray(result.image).astype(np.float32) / 255


@pytest.mark.parametrize("fixture,guidance", [("tiny_klein", 1.0), ("tiny_klein_base", 4.0)])
def test_final_image_matches_diffusers(request, fixture, guidance):
    folder, pipe = request.getfixturevalue(fixture)
    expected = _reference_image(pipe, "a red circle", guidance)
    ours = _ours(folder)
    assert ours.distilled == (fixture == "tiny_klein")
    result = ours.generate("a red circle", steps=STEPS, guidance=None if ours.distilled else guidance,
                           width=SIZE, height=SIZE, latents=_latents())
    # Our PNG is quantized to 8 bits; compare at that resolution plus the float tolerance.
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert len(result.step_seconds) == STEPS


def test_prompt_features_match_diffusers(tiny_klein):
    folder, pipe = tiny_klein
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(["a blue star", ""], max_sequence_length=512,
                                         text_encoder_out_layers=TEXT_LAYERS)
    expected = expected.numpy()
    got = np.array(_ours(folder).encode_prompts(["a blue star", ""]))
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_callbacks_report_every_step_with_memory_and_preview(tiny_klein):
    folder, _ = tiny_klein
    seen = []
    _ours(folder).generate("a green square", steps=4, width=SIZE, height=SIZE, seed=5, callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2, 3]
    assert all(s.seconds > 0 and s.memory.rss > 0 and s.memory.mlx_active > 0 for s in seen)
    assert seen[0].sigma == 1.0 > seen[-1].sigma
    assert seen[0].preview.shape == (SIZE // 8, SIZE // 8, 3) and seen[0].preview.dtype == np.uint8
    assert not np.array_equal(seen[0].preview, seen[-1].preview)


@pytest.mark.parametrize("kwargs,message", [
    (dict(negative_prompt="blurry"), "negative prompt needs an unconditional pass"),
    (dict(guidance=3.5), "guidance 3.5 cannot be used with this distilled model"),
    (dict(width=100), "width 100 is not allowed"),
    (dict(height=8192), "height 8192 is not allowed"),
])
def test_bad_requests_are_refused_in_one_line(tiny_klein, kwargs, message):
    folder, _ = tiny_klein
    with pytest.raises(InvalidRequest, match=message) as info:
        _ours(folder).generate("a circle", **{"width": SIZE, "height": SIZE, **kwargs})
    assert "\n" not in str(info.value)


def test_base_model_accepts_a_negative_prompt(tiny_klein_base):
    folder, _ = tiny_klein_base
    model = _ours(folder)
    plain = model.generate("a red circle", steps=2, width=SIZE, height=SIZE, seed=1)
    negative = model.generate("a red circle", negative_prompt="blue", steps=2, width=SIZE, height=SIZE, seed=1)
    assert negative.negative_prompt == "blue"
    assert not np.array_equal(np.asarray(plain.image), np.asarray(negative.image))


def test_text_encoder_layers_come_from_the_catalog_for_known_models(tiny_klein, monkeypatch):
    """Klein stacks 9, 18, 27; the catalog says so, and an explicit choice still wins."""
    from quantbench.core import pipelines
    from quantbench.core.pipeline_base import pipeline as pipeline_base

    assert pipelines.catalog_layers("black-forest-labs/FLUX.2-klein-4B") == (9, 18, 27)
    assert pipelines.catalog_layers("black-forest-labs/FLUX.2-dev") == (10, 20, 30)
    folder, _ = tiny_klein
    for module in (pipeline_base, pipelines):
        monkeypatch.setattr(module, "resolve_model_folder", lambda source, allow_download=True: folder)
    monkeypatch.setattr(pipelines, "catalog_layers", lambda source: TEXT_LAYERS)
    assert pipelines.load_pipeline("acme/tiny-klein").info.text_encoder_layers == TEXT_LAYERS
