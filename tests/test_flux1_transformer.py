"""Parity of our MLX Flux1Transformer with diffusers' FluxTransformer2DModel (float32)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.checkpoint import load_weights, open_component  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.flux1.transformer import (  # noqa: E402
    TRANSFORMER_RULES, Flux1Transformer, image_position_ids, pack_latents, text_position_ids)
from quantbench.core.pipeline_base import unpack_latents  # noqa: E402
from reference.flux1 import TRANSFORMER, build_transformer  # noqa: E402

# float32 on both sides; the only differences are summation order in matmuls and attention, so
# the error relative to the output's scale stays near float32 epsilon times the depth.
RTOL = 3e-4


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module", params=[False, True], ids=["schnell", "dev"])
def saved(request, tmp_path_factory):
    model = build_transformer(guidance_embeds=request.param, seed=3)
    folder = tmp_path_factory.mktemp("transformer")
    model.save_pretrained(folder)
    return model, folder


def _load(folder):
    component = open_component(folder)
    ours = Flux1Transformer.from_config(component.config)
    return ours, load_weights(ours, component, TRANSFORMER_RULES, "transformer")


def test_transformer_matches_diffusers(saved):
    reference, folder = saved
    ours, report = _load(folder)
    assert not report.unexpected and not report.skipped
    guidance_embeds = reference.config.guidance_embeds
    assert ours.embeds_guidance == guidance_embeds

    h, w, txt_len = 3, 4, 7
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, h * w, 64)).astype(np.float32)
    txt = rng.standard_normal((2, txt_len, TRANSFORMER["joint_attention_dim"])).astype(np.float32)
    pooled = rng.standard_normal((2, TRANSFORMER["pooled_projection_dim"])).astype(np.float32)
    timestep = np.array([0.7, 0.3], dtype=np.float32)
    guidance = np.array([3.5, 5.0], dtype=np.float32) if guidance_embeds else None
    txt_ids, img_ids = text_position_ids(txt_len), image_position_ids(h, w)

    with torch.no_grad():
        expected = reference(
            hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(txt),
            pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(timestep),
            img_ids=torch.from_numpy(img_ids).float(), txt_ids=torch.from_numpy(txt_ids).float(),
            guidance=None if guidance is None else torch.from_numpy(guidance), return_dict=False)[0].numpy()
    got = ours(mx.array(x), mx.array(txt), mx.array(pooled), mx.array(timestep), ours.rope(txt_ids, img_ids),
               None if guidance is None else mx.array(guidance))
    assert relative_error(got, expected) < RTOL


def test_position_ids_and_packing_match_the_pipeline():
    from diffusers import FluxPipeline

    expected_ids = FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(image_position_ids(3, 5), expected_ids)
    latents = np.random.default_rng(0).standard_normal((1, 16, 6, 10)).astype(np.float32)
    packed = FluxPipeline._pack_latents(torch.from_numpy(latents), 1, 16, 6, 10).numpy()
    np.testing.assert_array_equal(pack_latents(latents), packed)
    unpacked = FluxPipeline._unpack_latents(torch.from_numpy(packed), 48, 80, 8).numpy()
    np.testing.assert_array_equal(np.array(unpack_latents(mx.array(packed), 3, 5)), unpacked.transpose(0, 2, 3, 1))


def test_config_that_does_not_match_weights_is_refused(saved, tmp_path):
    _, folder = saved
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "pooled_projection_dim": 48}))
    with pytest.raises(CheckpointError, match="config does not match weights: time_text_embed.text_embedder"):
        _load(tmp_path)
