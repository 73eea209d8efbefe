"""The Qwen-Image VAE decoder (one frame) against diffusers' AutoencoderKLQwenImage (float32)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image.vae import load_vae  # noqa: E402
from reference.qwen_image import tiny_vae  # noqa: E402

# Pixels in [-1, 1] through a dozen float32 convolutions: summation order only (about 5e-6 measured).
MAX_ABS_ERROR = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    vae = tiny_vae()
    folder = tmp_path_factory.mktemp("qwen-vae")
    vae.save_pretrained(folder)
    return vae, folder


def _reference_decode(vae, z):
    """What QwenImagePipeline does with unpacked latents (B, C, 1, h, w): de-normalize, decode, frame 0."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(torch.from_numpy(z) / std + mean, return_dict=False)[0][:, :, 0].numpy()


@pytest.mark.parametrize("h,w", [(5, 6), (4, 4)])
def test_single_frame_decode_matches_diffusers(saved, h, w):
    reference, folder = saved
    ours, _ = load_vae(folder)
    z = np.random.default_rng(h).standard_normal((1, 16, 1, h, w)).astype(np.float32)
    expected = _reference_decode(reference, z).transpose(0, 2, 3, 1)
    assert (np.abs(expected) < 1).mean() > 0.9, "most pixels should be inside the clamp for a meaningful test"
    got = np.array(ours.decode(ours.denormalize(mx.array(z[:, :, 0].transpose(0, 2, 3, 1)))))
    assert got.shape == expected.shape == (1, 8 * h, 8 * w, 3)
    assert float(np.abs(got - expected).max()) < MAX_ABS_ERROR


def test_encoder_and_temporal_layers_are_skipped_with_reasons(saved):
    _, folder = saved
    ours, report = load_vae(folder)
    assert ours.scale_factor == 8
    assert all(k.startswith(("encoder.", "quant_conv.")) for k in report.skipped["encoder: not needed for text-to-image"])
    temporal = report.skipped["temporal upsampling: never used on a single frame"]
    assert temporal and all(".time_conv." in k for k in temporal)
    assert not report.unexpected


def test_latent_statistics_come_from_the_config(saved):
    reference, folder = saved
    ours, _ = load_vae(folder)
    np.testing.assert_allclose(ours.latents_mean, reference.config.latents_mean, rtol=1e-6)
    np.testing.assert_allclose(ours.latents_std, reference.config.latents_std, rtol=1e-6)


def test_config_that_does_not_match_weights_is_refused(saved, tmp_path):
    _, folder = saved
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "base_dim": 16}))
    with pytest.raises(CheckpointError, match="config does not match weights"):
        load_vae(tmp_path)
