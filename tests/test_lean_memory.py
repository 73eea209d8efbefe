"""Lean generation: freeing the text encoder and the transformer, tiled VAE decode, per-phase peaks."""

import gc

import numpy as np
import pytest

import mlx.core as mx

from quantbench.core.blocks.vae import decode_tiled
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.metrics import psnr
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    # Klein-4B proportions, narrowed: the text encoder is about as big as the transformer, as in Klein.
    return write_random_model(tmp_path_factory.mktemp("rnd") / "k4", "klein-4b", 0.08)


def _run(model, prompt="a red star", size=64, seed=2):
    return model.generate(prompt, steps=2, width=size, height=size, seed=seed)


def test_evicting_the_text_encoder_keeps_the_pixels_and_lowers_the_peak(model_folder):
    gc.collect()
    held = mx.get_active_memory()  # what earlier tests in this process hold: MLX's peaks count it too
    resident = Flux2Pipeline.load(model_folder)
    expected = _run(resident)
    del resident
    mx.clear_cache()
    lean = Flux2Pipeline.load(model_folder, memory=MemoryOptions(evict_text_encoder=True))
    assert lean.transformer is None  # one-shot: the transformer waits until the prompt is encoded
    result = _run(lean)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected.image))
    assert lean.text_encoder is None and lean.transformer is not None
    assert result.peak_memory - held < 0.8 * (expected.peak_memory - held), (held, result.phase_peaks,
                                                                              expected.phase_peaks)
    # A new prompt brings the encoder back for the encoding only.
    again = _run(lean, prompt="a blue ring")
    assert lean.text_encoder is None and again.image.size == (64, 64)


def test_generation_peak_is_close_to_the_largest_phase(model_folder):
    lean = Flux2Pipeline.load(model_folder, memory=MemoryOptions.lean(vae_tile=256))
    result = _run(lean)
    assert set(result.phase_peaks) >= {"encode", "denoise", "decode"}
    assert result.peak_memory == max(result.phase_peaks.values())
    assert lean.transformer is None  # released before the decode
    assert np.array_equal(np.asarray(_run(lean).image), np.asarray(result.image))  # reloaded, same pixels


class LocalDecoder:
    """A decoder with no context beyond each latent pixel: tiling must reproduce it exactly."""

    scale_factor = 8

    def decode(self, z):
        rgb = mx.tanh(z[..., :3] * 0.7 + z[..., 3:6] * 0.3)
        return mx.repeat(mx.repeat(rgb, 8, axis=1), 8, axis=2)


def test_tiles_are_stitched_exactly_where_the_decoder_is_local():
    z = mx.array(np.random.default_rng(1).standard_normal((1, 40, 28, 32)).astype(np.float32))
    whole = np.array(LocalDecoder().decode(z))
    tiled = decode_tiled(LocalDecoder(), z, tile_pixels=128)
    assert tiled.shape == whole.shape == (1, 320, 224, 3)
    assert np.abs(tiled - whole).max() < 1e-6


def test_tiled_decode_matches_the_whole_decode_and_needs_less_memory(model_folder):
    model = Flux2Pipeline.load(model_folder)
    z = mx.array(np.random.default_rng(0).standard_normal((1, 48, 48, 32)).astype(np.float32))
    mx.reset_peak_memory()
    whole = np.array(model.vae.decode(z))
    mx.eval(mx.array(0))
    whole_peak = mx.get_peak_memory()
    mx.reset_peak_memory()
    tiled = decode_tiled(model.vae, z, tile_pixels=128)
    tiled_peak = mx.get_peak_memory()
    assert tiled.shape == whole.shape == (1, 384, 384, 3)
    to8 = lambda img: (np.clip(img / 2 + 0.5, 0, 1) * 255).astype(np.uint8)[0]
    # A random VAE's mid-block attention and group norms see one tile at a time, which random weights
    # exaggerate; the seams are blended, so the images still agree closely.
    assert psnr(to8(whole), to8(tiled)) > 18
    assert tiled_peak < 0.6 * whole_peak
