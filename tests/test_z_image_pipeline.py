"""Z-Image end to end against diffusers: tiny Turbo and base pipelines saved with save_pretrained, loaded by
our engine; prompt features, sigmas, VAE decode and the final image from the same noise, in float32."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from quantbench.core.errors import CheckpointError, InvalidRequest  # noqa: E402
from quantbench.core.families.z_image.pipeline import Guidance, ZImagePipeline, model_time  # noqa: E402
from quantbench.core.lab.probe import psnr_of  # noqa: E402
from quantbench.core.pipelines import load_pipeline  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.z_image import build_tiny_z_image, rewrite_text_encoder_keys_as_causal_lm  # noqa: E402

SIZE, STEPS = 64, 3
MIN_PSNR_DB = 60  # the whole float32 pipeline; torch and MLX differ in summation order only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-z-image")
    return {variant: (root / variant, build_tiny_z_image(root / variant, variant, seed=seed))
            for variant, seed in (("turbo", 0), ("base", 5))}


@pytest.fixture(scope="module")
def turbo(tiny):
    return ZImagePipeline.load(tiny["turbo"][0])


@pytest.fixture(scope="module")
def base(tiny):
    return ZImagePipeline.load(tiny["base"][0])


def _noise(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 16, SIZE // 8, SIZE // 8)).astype(np.float32)


def _psnr(ours, expected) -> float:
    """Our float pixels in [-1, 1] against diffusers' in [0, 1], on the 0-255 scale."""
    mine = np.clip(np.asarray(ours) / 2 + 0.5, 0, 1)
    return psnr_of(float(np.mean(np.square((mine - expected) * 255))))


def _reference_image(pipe, **kwargs):
    return pipe(prompt="a red circle", height=SIZE, width=SIZE, num_inference_steps=STEPS,
                latents=torch.from_numpy(_noise()), output_type="np", **kwargs).images[0]


def test_turbo_image_matches_diffusers(tiny, turbo):
    expected = _reference_image(tiny["turbo"][1], guidance_scale=0.0)
    result = turbo.generate("a red circle", steps=STEPS, width=SIZE, height=SIZE, latents=_noise())
    assert _psnr(result.pixels, expected) > MIN_PSNR_DB
    assert result.guidance == 0.0 and result.negative_prompt is None and len(result.step_seconds) == STEPS


@pytest.mark.parametrize("negative,guidance,options", [
    ("blurry, low quality", 4.0, {}),  # true CFG, prompt and negative batched in one pass
    (None, 4.0, {}),  # the negative prompt defaults to "" as in diffusers
    (None, 0.0, {}),  # guidance 0: the conditional pass alone
    ("blurry", 3.0, {"cfg_normalization": 1.0}),  # the guided norm capped at the conditional one's
    ("blurry", 3.0, {"cfg_truncation": 0.5}),  # guidance only in the first half of the model's time
])
def test_base_image_matches_diffusers(tiny, base, negative, guidance, options):
    expected = _reference_image(tiny["base"][1], negative_prompt=negative, guidance_scale=guidance, **options)
    result = base.generate("a red circle", negative_prompt=negative, guidance=guidance, steps=STEPS, width=SIZE,
                           height=SIZE, latents=_noise(), **options)
    assert _psnr(result.pixels, expected) > MIN_PSNR_DB
    assert result.negative_prompt == (negative if guidance > 0 else None)


def test_guidance_options_change_the_image(base):
    args = dict(negative_prompt="blurry", steps=2, width=SIZE, height=SIZE, seed=1)
    plain = np.asarray(base.generate("a red circle", **args).image)
    capped = np.asarray(base.generate("a red circle", cfg_normalization=0.5, **args).image)
    truncated = np.asarray(base.generate("a red circle", cfg_truncation=0.0, **args).image)
    assert not np.array_equal(plain, capped) and not np.array_equal(plain, truncated)


def test_guidance_caps_the_norm_and_truncates_by_model_time():
    rng = np.random.default_rng(0)
    cond, uncond = (mx.array(rng.standard_normal((1, 8, 64)).astype(np.float32)) for _ in range(2))
    capped = Guidance(3.0, normalization=1.0)(cond, uncond)
    assert float(mx.linalg.norm(capped.reshape(-1))) == pytest.approx(float(mx.linalg.norm(cond.reshape(-1))), 1e-5)
    assert Guidance(3.0, truncation=0.5).active(0.5) and not Guidance(3.0, truncation=0.5).active(0.51)
    assert model_time(1.0) == 0.0 and model_time(0.25) == np.float32(0.75)


def test_prompt_features_match_diffusers(tiny, base):
    pipe = tiny["base"][1]
    with torch.no_grad():
        expected, negative = pipe.encode_prompt("a blue star", negative_prompt="a much longer negative prompt here")
    features, lengths = base.encode_prompts(["a blue star", "a much longer negative prompt here"])
    assert lengths == [expected[0].shape[0], negative[0].shape[0]] and lengths[0] < lengths[1]
    assert np.abs(np.array(features[0, :lengths[0]]) - expected[0].numpy()).max() < 1e-4
    assert np.abs(np.array(features[1]) - negative[0].numpy()).max() < 1e-4
    assert not np.array(features[0, lengths[0]:]).any()  # zero-padded to the longer prompt


def test_chat_template_renders_as_transformers_with_thinking_on(tiny, base):
    reference = tiny["base"][1].tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert base.tokenizer.render("a cat") == reference
    assert "<think>" not in reference and reference.endswith("<|im_start|>assistant\n")


def test_sigmas_match_the_schedulers(tiny, turbo, base):
    for model, (_, pipe) in ((turbo, tiny["turbo"]), (base, tiny["base"])):
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 9, 9).tolist())
        np.testing.assert_allclose(model.schedule.sigmas(9, 16), pipe.scheduler.sigmas.numpy(), rtol=1e-6)
    assert (turbo.schedule.shift, base.schedule.shift) == (3.0, 6.0)


def test_vae_decode_matches_diffusers(tiny, turbo):
    pipe = tiny["turbo"][1]
    tokens = np.random.default_rng(4).standard_normal((1, 16, 64)).astype(np.float32)
    latents = tokens.reshape(1, 4, 4, 2, 2, 16).transpose(0, 5, 1, 3, 2, 4).reshape(1, 16, 8, 8)
    with torch.no_grad():
        z = torch.from_numpy(latents) / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        expected = pipe.vae.decode(z).sample.numpy().transpose(0, 2, 3, 1)
    ours = turbo.decode(mx.array(tokens), 4, 4)
    assert np.abs(ours - expected).max() < 1e-4 * np.abs(expected).max() * 10


def test_turbo_and_base_are_told_apart_by_the_scheduler_or_the_index(tiny, turbo, base, tmp_path):
    assert turbo.distilled and (turbo.default_steps, turbo.default_guidance) == (9, 0.0)
    assert not base.distilled and (base.default_steps, base.default_guidance) == (50, 4.0)
    assert turbo.info.defaults.guidance_mode == "none" and base.info.defaults.guidance_mode == "true-cfg"
    folder = tmp_path / "declared"
    shutil.copytree(tiny["turbo"][0], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "is_distilled": False, "default_steps": 28}))
    from quantbench.core.pipelines import model_defaults
    defaults = model_defaults(folder)
    assert not defaults.distilled and defaults.steps == 28


@pytest.mark.parametrize("negative,guidance,message", [
    ("blurry", None, "Z-Image-Turbo has none"),
    (None, 4.0, "guidance 4 cannot be used with Z-Image-Turbo"),
])
def test_turbo_refuses_what_a_distilled_model_cannot_do(turbo, negative, guidance, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        turbo.generate("a star", negative_prompt=negative, guidance=guidance, steps=1, width=SIZE, height=SIZE)
    assert "\n" not in str(err.value)


def test_base_refuses_bad_requests(base):
    for kwargs, message in ((dict(guidance=-1.0), "guidance -1"), (dict(width=60), "width 60"),
                            (dict(latents=np.zeros((1, 16, 4, 4), np.float32)), "latents must have shape")):
        with pytest.raises(InvalidRequest, match=message):
            base.generate("a star", steps=1, **{"width": SIZE, "height": SIZE, **kwargs})


def test_each_step_reports_its_sigma_and_a_preview(turbo):
    """Same seed, cancel and the step callback's order are the family contract test's."""
    seen = []
    result = turbo.generate("a green square", steps=3, width=SIZE, height=SIZE, seed=5, callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2] and seen[0].sigma == 1.0 > seen[-1].sigma
    assert seen[0].preview.shape == (SIZE // 8, SIZE // 8, 3) and seen[0].preview.dtype == np.uint8
    assert {"encode", "denoise", "decode"} <= set(result.phase_peaks)


def test_the_family_is_found_from_model_index(tiny):
    model = load_pipeline(tiny["turbo"][0])
    assert isinstance(model, ZImagePipeline) and model.family.name == "z_image"
    assert model.info.to_dict()["pipeline"] == "ZImagePipeline"


def test_causal_lm_text_encoder_keys_load_the_same(tiny, turbo, tmp_path):
    folder = tmp_path / "causal-lm"
    shutil.copytree(tiny["turbo"][0], folder)
    rewrite_text_encoder_keys_as_causal_lm(folder)
    prefixed = ZImagePipeline.load(folder)
    report = prefixed.info.loader.reports["text_encoder"]
    assert not report.unexpected and report.used == turbo.info.loader.reports["text_encoder"].used
    a, _ = prefixed.encode_prompts(["a red fox"])
    b, _ = turbo.encode_prompts(["a red fox"])
    assert np.array_equal(np.array(a), np.array(b))


def test_every_key_is_used_or_reported(turbo):
    reports = turbo.info.loader.reports
    assert not any(r.unexpected for r in reports.values())
    text = reports["text_encoder"]
    assert set(text.skipped) == {"layers after the last one the pipeline reads",
                                 "final norm and LM head: not used for encoding"}


def test_a_component_that_does_not_fit_is_a_one_line_error(tiny, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(tiny["turbo"][0], folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "cap_feat_dim": 32}))
    with pytest.raises(CheckpointError, match="cap_feat_dim"):
        ZImagePipeline.load(folder)


@pytest.fixture(scope="module")
def quantized(tiny):
    return ZImagePipeline.load(tiny["base"][0], quantize=4, text_encoder_quantize=8)


def test_quantized_save_round_trips_bitwise(quantized, tmp_path):
    saved = save_quantized(quantized, tmp_path / "base-q4")
    reloaded = ZImagePipeline.load(saved)
    args = dict(negative_prompt="blurry", steps=2, width=SIZE, height=SIZE, seed=4)
    assert np.array_equal(np.asarray(quantized.generate("a red star", **args).image),
                          np.asarray(reloaded.generate("a red star", **args).image))
    transformer, text = reloaded.info.quantization
    assert transformer.prequantized and transformer.bits_label == "4-bit" and text.bits_label == "8-bit"
    assert not reloaded.distilled  # the scheduler (shift 6) travels with the saved folder
    with pytest.raises(InvalidRequest, match="cannot be requantized"):
        ZImagePipeline.load(saved, quantize=8)


def test_quantization_follows_the_layer_policy(quantized):
    transformer = quantized.transformer
    assert isinstance(transformer.layers[0].attention.to_q, nn.QuantizedLinear)
    assert isinstance(transformer.layers[0].feed_forward.w2, nn.QuantizedLinear)
    assert type(transformer.all_x_embedder["2-1"]) is nn.Linear
    assert type(transformer.all_final_layer["2-1"].linear) is nn.Linear
    # the final modulation ranks 48th of 52 at the released widths (benchmarks/layer_policy.py): quantized
    assert isinstance(transformer.all_final_layer["2-1"].adaLN_modulation[1], nn.QuantizedLinear)
    kept = quantized.info.quantization[0].kept
    assert kept["all_x_embedder.2-1"] == kept["all_final_layer.2-1.linear"] == "latent input and output layers"
    assert kept["t_embedder.mlp.0"] == kept["t_embedder.mlp.2"] == "timestep embedder"
    assert "all_final_layer.2-1.adaLN_modulation.1" not in kept
