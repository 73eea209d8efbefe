"""End to end against diffusers: tiny FLUX.1 schnell and dev pipelines saved with save_pretrained, loaded by our engine."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.core.errors import CheckpointError, InvalidRequest  # noqa: E402
from quantbench.core.families.flux1.pipeline import Flux1Pipeline  # noqa: E402
from quantbench.core.families.flux1.transformer import pack_latents  # noqa: E402
from quantbench.core.pipeline_base import ModelDefaults  # noqa: E402
from quantbench.core.pipelines import load_pipeline  # noqa: E402
from reference.flux1 import MAX_SEQUENCE_LENGTH, build_tiny_flux1  # noqa: E402

SIZE = 64
# Pixel values in [0, 1] after the whole float32 pipeline (CLIP, T5, the steps, VAE): summation order
# differs between torch and MLX, nothing else, so the images agree to well under one 8-bit level.
IMAGE_ATOL = 1e-3


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-schnell")
    return folder, build_tiny_flux1(folder, dev=False)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dev")
    return folder, build_tiny_flux1(folder, dev=True, seed=7)


def _latents(seed=3):
    """diffusers' initial noise before packing: (1, 16, H/8, W/8)."""
    return np.random.default_rng(seed).standard_normal((1, 16, SIZE // 8, SIZE // 8)).astype(np.float32)


def _image(result):
    return np.asarray(result.image).astype(np.float32) / 255


def _reference_image(pipe, prompt, steps, **kwargs):
    out = pipe(prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=steps,
               latents=torch.from_numpy(pack_latents(_latents())), output_type="np",
               max_sequence_length=MAX_SEQUENCE_LENGTH, **kwargs)
    return out.images[0]


def test_schnell_image_matches_diffusers(schnell):
    folder, pipe = schnell
    expected = _reference_image(pipe, "a red circle", 4, guidance_scale=0.0)
    ours = Flux1Pipeline.load(folder)
    assert ours.distilled and ours.default_steps == 4 and ours.family.name == "flux1"
    result = ours.generate("a red circle", width=SIZE, height=SIZE, latents=_latents())
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert len(result.step_seconds) == 4 and result.guidance == 0.0


def test_dev_image_with_embedded_guidance_matches_diffusers(dev):
    folder, pipe = dev
    expected = _reference_image(pipe, "a red circle", 3, guidance_scale=5.0)
    ours = Flux1Pipeline.load(folder)
    assert not ours.distilled and ours.default_steps == 28 and ours.default_guidance == 3.5
    result = ours.generate("a red circle", steps=3, guidance=5.0, width=SIZE, height=SIZE, latents=_latents())
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert result.negative_prompt is None


def test_dev_true_cfg_with_a_negative_prompt_matches_diffusers(dev):
    folder, pipe = dev
    expected = _reference_image(pipe, "a red circle", 2, guidance_scale=3.5, negative_prompt="a blue square",
                                true_cfg_scale=2.5)
    result = Flux1Pipeline.load(folder).generate("a red circle", negative_prompt="a blue square", steps=2,
                                                 true_cfg=2.5, width=SIZE, height=SIZE, latents=_latents())
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert result.negative_prompt == "a blue square"


def test_prompt_features_match_diffusers(dev):
    folder, pipe = dev
    prompts = ["a blue star over the sea", ""]
    with torch.no_grad():
        features, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH)
    got_features, got_pooled = Flux1Pipeline.load(folder).encode_prompts(prompts)
    assert np.abs(np.array(got_features) - features.numpy()).max() < 1e-4 * np.abs(features.numpy()).max()
    assert np.abs(np.array(got_pooled) - pooled.numpy()).max() < 1e-4 * np.abs(pooled.numpy()).max()


def test_the_family_loader_picks_flux1(schnell, dev):
    from quantbench.core.pipelines import model_defaults

    assert model_defaults(schnell[0]) == ModelDefaults(True, 4, 0.0)
    assert model_defaults(dev[0]) == ModelDefaults(False, 28, 3.5, embedded_guidance=True)
    assert model_defaults(dev[0]).guidance_mode == "embedded" and not model_defaults(dev[0]).negative_prompt
    folder, _ = schnell
    model = load_pipeline(folder)
    assert isinstance(model, Flux1Pipeline)
    info = model.info.to_dict()
    assert info["pipeline"] == "FluxPipeline" and info["transformer_source"] == "diffusers folder"
    assert [q["component"] for q in info["quantization"]] == ["transformer", "text_encoder", "text_encoder_2"]
    assert model.info.max_sequence_length == MAX_SEQUENCE_LENGTH


def test_callbacks_report_every_step_with_memory_and_preview(schnell):
    folder, _ = schnell
    seen = []
    result = Flux1Pipeline.load(folder).generate("a green square", steps=3, width=SIZE, height=SIZE, seed=5,
                                                 callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2]
    assert all(s.seconds > 0 and s.memory.rss > 0 and s.memory.mlx_active > 0 for s in seen)
    assert seen[0].sigma == 1.0 > seen[-1].sigma
    assert seen[0].preview.shape == (SIZE // 8, SIZE // 8, 3) and seen[0].preview.dtype == np.uint8
    assert not np.array_equal(seen[0].preview, seen[-1].preview)
    assert {"encode", "denoise", "decode"} <= set(result.phase_peaks) and result.peak_memory > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(negative_prompt="blurry"), "negative prompt needs an unconditional pass, and FLUX.1 \\[schnell\\] has none"),
    (dict(true_cfg=3.0), "negative prompt needs an unconditional pass"),
    (dict(guidance=3.5), "guidance 3.5 cannot be used with FLUX.1 \\[schnell\\]"),
    (dict(width=100), "width 100 is not allowed"),
])
def test_schnell_refuses_in_one_line(schnell, kwargs, message):
    folder, _ = schnell
    with pytest.raises(InvalidRequest, match=message) as info:
        Flux1Pipeline.load(folder).generate("a circle", **{"width": SIZE, "height": SIZE, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(negative_prompt="blurry"), "needs true CFG"),
    (dict(true_cfg=0.5), "true CFG 0.5 is not allowed"),
    (dict(guidance=-1.0), "guidance -1 is not allowed"),
])
def test_dev_refuses_in_one_line(dev, kwargs, message):
    folder, _ = dev
    with pytest.raises(InvalidRequest, match=message) as info:
        Flux1Pipeline.load(folder).validate(kwargs.get("negative_prompt"), kwargs.get("guidance"), SIZE, SIZE, 2,
                                            kwargs.get("true_cfg", 1.0))
    assert "\n" not in str(info.value)


def test_components_that_do_not_fit_are_refused(schnell, tmp_path):
    import json
    import shutil

    folder, _ = schnell
    copy = shutil.copytree(folder, tmp_path / "model")
    config = json.loads((copy / "text_encoder_2" / "config.json").read_text())
    (copy / "text_encoder_2" / "config.json").write_text(json.dumps({**config, "d_model": 32}))
    with pytest.raises(CheckpointError, match="T5's d_model is 32, the transformer expects joint_attention_dim 64"):
        Flux1Pipeline.load(copy)
