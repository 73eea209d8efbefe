"""Parity of our MLX Qwen-Image 2.1 VAE decoder with diffusers' AutoencoderKLQwenImage21 (float32, one frame)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image21.vae import duplicate_up_indices, load_vae  # noqa: E402
from reference.qwen_image21 import LATENT_CHANNELS, tiny_vae  # noqa: E402

ATOL = 1e-4  # pixels in [-1, 1]


def _decode_both(vae, folder, latent_hw=(3, 4), seed=0):
    vae.save_pretrained(folder)
    ours, report = load_vae(folder)
    z = np.random.default_rng(seed).standard_normal((1, LATENT_CHANNELS, 1, *latent_hw)).astype(np.float32)
    with torch.no_grad():
        expected = vae.decode(torch.from_numpy(z)).sample[:, :, 0].numpy().transpose(0, 2, 3, 1)
    got = np.array(ours.decode(mx.array(z[:, :, 0].transpose(0, 2, 3, 1))))
    return ours, report, got, expected


def test_decoder_matches_diffusers_and_decodes_rgba(tmp_path):
    ours, report, got, expected = _decode_both(tiny_vae(seed=3), tmp_path)
    assert got.shape == expected.shape == (1, 48, 64, 4) and ours.channels == 4 and ours.scale_factor == 16
    assert np.abs(got - expected).max() < ATOL
    assert 0.05 < np.mean(np.abs(expected) < 1) and expected.std() > 0.1  # not all clamped, not flat
    assert not report.unexpected
    skipped = {reason.split(":")[0]: keys for reason, keys in report.skipped.items()}
    assert set(skipped) == {"encoder", "temporal upsampling"}
    assert all(".time_conv." in key for key in skipped["temporal upsampling"])


def test_patch_size_unfolds_the_decoders_channels_as_diffusers_does(tmp_path):
    """With patch_size 2 the decoder upsamples 8x and each output pixel group holds 2x2 pixels in its channels."""
    vae = tiny_vae(seed=4, dim_mult=[1, 2, 2, 2], temperal_downsample=[False, True, True], patch_size=2,
                   in_channels=16, out_channels=16)
    ours, _, got, expected = _decode_both(vae, tmp_path, latent_hw=(2, 3))
    assert got.shape == (1, 32, 48, 4) and ours.scale_factor == 16
    assert np.abs(got - expected).max() < ATOL


@pytest.mark.parametrize("temporal", [False, True])
def test_duplicate_up_reads_the_last_time_slot_of_the_repeated_channels(temporal):
    """The reference repeats each input channel, views them as (out, time, 2, 2) and keeps the last time slot."""
    cin, cout = 8, 4
    x = torch.arange(cin, dtype=torch.float32).view(1, cin, 1, 1, 1)
    factor_t = 2 if temporal else 1
    repeated = x.repeat_interleave(cout * factor_t * 4 // cin, dim=1).view(cout, factor_t, 2, 2)
    assert np.array_equal(duplicate_up_indices(cin, cout, temporal), repeated[:, -1].numpy().astype(int))


def test_non_residual_layout_is_refused(tmp_path):
    tiny_vae(seed=1).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["is_residual"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is_residual false"):
        load_vae(tmp_path)
