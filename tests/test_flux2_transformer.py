"""Parity of our MLX Flux2Transformer with diffusers' Flux2Transformer2DModel (float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.checkpoint import open_component, load_weights  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.flux2.transformer import (  # noqa: E402
    TRANSFORMER_RULES, Flux2Transformer, image_position_ids, text_position_ids)

TINY = dict(in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=32,
            num_attention_heads=2, joint_attention_dim=96, timestep_guidance_channels=256,
            mlp_ratio=3.0, axes_dims_rope=(8, 8, 8, 8), rope_theta=2000, eps=1e-6)

# float32 on both sides; the only differences are summation order in matmuls and attention, so
# the error relative to the output's scale stays near float32 epsilon times the depth.
RTOL = 3e-4


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def _build(tmp_path_factory, guidance_embeds):
    torch.manual_seed(0)
    model = diffusers.Flux2Transformer2DModel(**TINY, guidance_embeds=guidance_embeds).eval()
    # Random init leaves some weights at zero (e.g. output projections); give every tensor signal.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp("transformer")
    model.save_pretrained(folder)
    return model, folder


def _load(folder):
    component = open_component(folder)
    ours = Flux2Transformer.from_config(component.config)
    report = load_weights(ours, component, TRANSFORMER_RULES, "transformer")
    return ours, report


@pytest.mark.parametrize("guidance_embeds", [False, True])
def test_transformer_matches_diffusers(tmp_path_factory, guidance_embeds):
    reference, folder = _build(tmp_path_factory, guidance_embeds)
    ours, report = _load(folder)
    assert not report.unexpected and not report.skipped

    h, w, txt_len = 3, 4, 5
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, h * w, 128)).astype(np.float32)
    txt = rng.standard_normal((2, txt_len, 96)).astype(np.float32)
    sigma = np.array([0.7, 0.3], dtype=np.float32)
    guidance = np.array([4.0, 3.5], dtype=np.float32) if guidance_embeds else None
    txt_ids, img_ids = text_position_ids(txt_len), image_position_ids(h, w)

    with torch.no_grad():
        expected = reference(
            hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(txt),
            timestep=torch.from_numpy(sigma), img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
            guidance=None if guidance is None else torch.from_numpy(guidance), return_dict=False)[0].numpy()
    got = ours(mx.array(x), mx.array(txt), mx.array(sigma), ours.rope(txt_ids, img_ids),
               None if guidance is None else mx.array(guidance))
    assert relative_error(got, expected) < RTOL


def test_config_that_does_not_match_weights_is_refused(tmp_path_factory):
    _, folder = _build(tmp_path_factory, False)
    import json
    config = json.loads((folder / "config.json").read_text())
    config["joint_attention_dim"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config does not match weights: context_embedder.weight"):
        _load(folder)
