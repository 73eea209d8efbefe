"""End to end against diffusers: tiny QwenImage21Pipelines (base and Turbo) saved with save_pretrained, loaded by
our engine, the final image drawn from the same initial noise."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from quantbench.core.errors import Cancelled, CheckpointError, InvalidRequest  # noqa: E402
from quantbench.core.families.qwen_image21.pipeline import QwenImage21Pipeline, resampled_grid  # noqa: E402
from quantbench.core.generation import CancelToken  # noqa: E402
from quantbench.core.metrics import psnr  # noqa: E402
from quantbench.core.pipelines import load_pipeline  # noqa: E402
from reference.qwen_image21 import LATENT_CHANNELS, TURBO_SIGMAS  # noqa: E402

SIZE, STEPS = 64, 3
# Pixels in [0, 1] after the whole float32 pipeline (text encoder, every step, VAE): only summation order
# differs between torch and MLX.
IMAGE_ATOL = 1e-4
MIN_PSNR_DB = 60.0


@pytest.fixture(scope="module")
def model(tiny_qwen_image21):
    return QwenImage21Pipeline.load(tiny_qwen_image21[0], dtype=mx.float32)


@pytest.fixture(scope="module")
def turbo(tiny_qwen_image21_turbo):
    return QwenImage21Pipeline.load(tiny_qwen_image21_turbo[0], dtype=mx.float32)


def _latents(seed=3, size=SIZE):
    """(1, tokens, 16) noise, the layout QwenImage21Pipeline's `latents` argument takes."""
    return np.random.default_rng(seed).standard_normal((1, (size // 16) ** 2, LATENT_CHANNELS)).astype(np.float32)


def _compare(result, expected):
    """Max abs error and PSNR of our float pixels in [0, 1] against diffusers'; the 8-bit PNGs (both rounded as
    diffusers' numpy_to_pil rounds) differ by at most one level where a value sits on a rounding edge."""
    ours = np.clip(result.pixels / 2 + 0.5, 0, 1)
    png_levels = np.abs(np.asarray(result.image).astype(int) - (expected * 255).round().astype(int)).max()
    assert png_levels <= 1
    return np.abs(ours - expected).max(), psnr(ours * 255, expected * 255)


@pytest.mark.parametrize("negative,guidance,reference_negative", [
    (None, None, None),  # the default: no guidance, one pass per step
    ("blurry, low quality", 4.0, "blurry, low quality"),  # true CFG, prompt and negative batched
    (None, 3.0, " "),  # guidance without a negative prompt uses " ", as diffusers' modular pipeline does
])
def test_final_image_matches_diffusers(tiny_qwen_image21, model, negative, guidance, reference_negative):
    _, pipe = tiny_qwen_image21
    expected = pipe(prompt="a red circle", negative_prompt=reference_negative, true_cfg_scale=guidance or 1.0,
                    height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=torch.from_numpy(_latents()),
                    output_type="np").images[0]
    result = model.generate("a red circle", negative_prompt=negative, guidance=guidance, steps=STEPS, width=SIZE,
                            height=SIZE, latents=_latents())
    error, db = _compare(result, expected)
    assert error < IMAGE_ATOL and db > MIN_PSNR_DB
    assert result.image.mode == "RGBA" and expected.shape == (SIZE, SIZE, 4)
    assert result.negative_prompt == negative and len(result.step_seconds) == STEPS


def test_a_wide_image_matches_diffusers(tiny_qwen_image21, model):
    _, pipe = tiny_qwen_image21
    latents = np.random.default_rng(8).standard_normal((1, 2 * 6, LATENT_CHANNELS)).astype(np.float32)
    expected = pipe(prompt="a wide landscape", height=32, width=96, num_inference_steps=2,
                    latents=torch.from_numpy(latents), output_type="np").images[0]
    result = model.generate("a wide landscape", steps=2, width=96, height=32, latents=latents)
    assert result.image.size == (96, 32)
    assert _compare(result, expected)[0] < IMAGE_ATOL


def test_turbo_samples_on_its_own_grid_like_diffusers(tiny_qwen_image21_turbo, turbo):
    _, pipe = tiny_qwen_image21_turbo
    assert turbo.distilled and turbo.default_steps == len(TURBO_SIGMAS) and turbo.default_guidance == 1.0
    expected = pipe(prompt="a blue square", height=SIZE, width=SIZE, latents=torch.from_numpy(_latents(5)),
                    output_type="np").images[0]
    result = turbo.generate("a blue square", width=SIZE, height=SIZE, latents=_latents(5))
    error, db = _compare(result, expected)
    assert error < IMAGE_ATOL and db > MIN_PSNR_DB and len(result.step_seconds) == len(TURBO_SIGMAS)


@pytest.mark.parametrize("turbo_model,size", [(False, 64), (True, 64), (False, 1024)])
def test_sigmas_match_the_reference_scheduler(tiny_qwen_image21, tiny_qwen_image21_turbo, model, turbo, turbo_model,
                                              size):
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

    folder_pipe, ours = (tiny_qwen_image21_turbo, turbo) if turbo_model else (tiny_qwen_image21, model)
    pipe = folder_pipe[1]
    steps = ours.default_steps if turbo_model else 7
    tokens = (size // 16) ** 2
    base = pipe.config.sample_sigmas or np.linspace(1.0, 1 / steps, steps)
    config = pipe.scheduler.config
    pipe.scheduler.set_timesteps(sigmas=base, mu=calculate_shift(tokens, config.base_image_seq_len,
                                                                 config.max_image_seq_len, config.base_shift,
                                                                 config.max_shift))
    expected = pipe.scheduler.sigmas.numpy()
    assert np.abs(ours.schedule.sigmas(steps, tokens, ours.sample_sigmas) - expected).max() < 1e-6


def test_defaults_and_api(model):
    assert model.family.name == "qwen_image21" and not model.distilled
    assert (model.default_steps, model.default_guidance, model.pixels_per_token) == (40, 1.0, 16)
    assert model.info.defaults.guidance_mode == "true-cfg"
    assert model.validate("blurry", 4.0, SIZE, SIZE, 4) == 4.0
    assert model.info.to_dict()["pipeline"] == "QwenImage21Pipeline"


def test_callbacks_report_every_step_with_memory_and_preview(model):
    seen = []
    result = model.generate("a green square", steps=4, width=SIZE, height=SIZE, seed=5, callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2, 3]
    assert all(s.seconds > 0 and s.memory.rss > 0 for s in seen)
    assert seen[0].sigma == pytest.approx(model.schedule.sigmas(4, 16)[0]) and seen[0].sigma > seen[-1].sigma
    assert seen[0].preview.shape == (SIZE // 16, SIZE // 16, 3) and seen[0].preview.dtype == np.uint8
    assert {"encode", "denoise", "decode"} <= set(result.phase_peaks)


def test_same_seed_same_image(model):
    a, b, c = (model.generate("a star", steps=2, width=SIZE, height=SIZE, seed=s) for s in (11, 11, 12))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_cancel_stops_between_steps(model):
    token, seen = CancelToken(), []

    def cancel_after_two(step):
        seen.append(step.index)
        if step.index == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        model.generate("a ring", steps=6, width=SIZE, height=SIZE, callback=cancel_after_two, cancel=token)
    assert seen == [0, 1]


def test_quantized_transformer_keeps_the_policy_layers_and_the_text_encoder(tiny_qwen_image21):
    quantized = QwenImage21Pipeline.load(tiny_qwen_image21[0], quantize=4)
    assert quantized.info.transformer_bits == 4 and quantized.info.text_encoder_bits is None
    assert isinstance(quantized.transformer.transformer_blocks[0].attn.to_q, nn.QuantizedLinear)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in quantized.text_encoder.named_modules())
    kept = quantized.info.quantization[0].kept
    assert {"img_in", "proj_out", "modulation.1", "time_text_embed.timestep_embedder.linear_1",
            "time_text_embed.timestep_embedder.linear_2"} <= set(kept)
    result = quantized.generate("a red circle", steps=2, width=SIZE, height=SIZE, seed=2)
    assert np.asarray(result.image).std() > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(width=48), "multiples of 32"),
    (dict(latents=np.zeros((1, 16, 8))), "latents must have shape"),
    (dict(guidance=-1.0), "guidance -1 is not allowed"),
    (dict(negative_prompt="blurry"), "negative prompt is used only with guidance above 1"),
    (dict(steps=2000), "steps 2000 is not allowed"),
])
def test_bad_requests_are_refused_in_one_line(model, kwargs, message):
    with pytest.raises(InvalidRequest, match=message) as info:
        model.generate("a circle", **{"width": SIZE, "height": SIZE, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(negative_prompt="blurry"), "Turbo has none"),
    (dict(guidance=3.0), "samples without guidance"),
])
def test_turbo_refuses_what_it_cannot_do(turbo, kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        turbo.generate("a circle", width=SIZE, height=SIZE, **kwargs)


def test_turbo_at_another_step_count_samples_its_grid_resampled(turbo):
    """The shipped grid at its own length; at another length the grid read at evenly spaced positions, from its
    first sigma to its last."""
    grid = turbo.sample_sigmas
    assert resampled_grid(grid, len(grid)) == grid
    two, seven = resampled_grid(grid, 2), resampled_grid(grid, 7)
    assert two == [grid[0], grid[-1]] and len(seven) == 7 and (seven[0], seven[-1]) == (grid[0], grid[-1])
    assert all(a > b for a, b in zip(seven, seven[1:]))
    result = turbo.generate("a circle", steps=2, width=SIZE, height=SIZE, preview=False)
    assert result.steps == 2 and np.isfinite(result.pixels).all()


def test_load_pipeline_dispatches_on_the_pipeline_class(tiny_qwen_image21, tmp_path):
    assert isinstance(load_pipeline(tiny_qwen_image21[0]), QwenImage21Pipeline)
    (tmp_path / "model_index.json").write_text('{"_class_name": "QwenImagePipeline"}')
    with pytest.raises(CheckpointError, match="not Qwen-Image 2.1"):
        QwenImage21Pipeline.load(tmp_path)
