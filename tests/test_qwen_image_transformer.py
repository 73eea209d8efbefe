"""Parity of our MLX QwenImageTransformer with diffusers' QwenImageTransformer2DModel (float32)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.checkpoint import load_weights, open_component  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image.transformer import (  # noqa: E402
    TRANSFORMER_RULES, QwenImageTransformer, image_position_ids, text_position_ids)
from reference.qwen_image import TEXT_HIDDEN, tiny_transformer  # noqa: E402

# float32 on both sides; the differences are summation order and the last bits of the RoPE and
# timestep angles, so the error relative to the output's scale stays near float32 epsilon times depth.
RTOL = 3e-4


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_transformer(seed=3)
    folder = tmp_path_factory.mktemp("qwen-transformer")
    model.save_pretrained(folder)
    return model, folder


def _load(folder):
    component = open_component(folder)
    ours = QwenImageTransformer.from_config(component.config)
    return ours, load_weights(ours, component, TRANSFORMER_RULES, "transformer")


def _reference(model, x, txt, sigma, mask, h, w):
    with torch.no_grad():
        return model(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(txt),
                     encoder_hidden_states_mask=None if mask is None else torch.from_numpy(mask),
                     timestep=torch.from_numpy(sigma), img_shapes=[[(1, h, w)]] * x.shape[0],
                     return_dict=False)[0].numpy()


@pytest.mark.parametrize("h,w", [(3, 4), (4, 4), (5, 2)])  # odd sizes exercise the centred positions
def test_transformer_matches_diffusers(saved, h, w):
    reference, folder = saved
    ours, report = _load(folder)
    assert not report.unexpected and not report.skipped
    rng = np.random.default_rng(1)
    txt_len = 6
    x = rng.standard_normal((2, h * w, 64)).astype(np.float32)
    txt = rng.standard_normal((2, txt_len, TEXT_HIDDEN)).astype(np.float32)
    sigma = np.array([0.93, 0.31], dtype=np.float32)
    expected = _reference(reference, x, txt, sigma, None, h, w)
    got = ours(mx.array(x), mx.array(txt), mx.array(sigma), ours.rope(h, w, txt_len))
    assert relative_error(got, expected) < RTOL


def test_padded_text_is_masked_like_diffusers(saved):
    """Two prompts of different lengths padded to one batch: the mask hides the padding from attention."""
    reference, folder = saved
    ours, _ = _load(folder)
    rng = np.random.default_rng(2)
    h, w, txt_len = 4, 3, 7
    x = rng.standard_normal((2, h * w, 64)).astype(np.float32)
    txt = rng.standard_normal((2, txt_len, TEXT_HIDDEN)).astype(np.float32)
    mask = np.ones((2, txt_len), dtype=np.int64)
    mask[1, 4:] = 0
    txt[1, 4:] = 0
    sigma = np.array([0.5, 0.5], dtype=np.float32)
    expected = _reference(reference, x, txt, sigma, mask, h, w)
    got = ours(mx.array(x), mx.array(txt), mx.array(sigma), ours.rope(h, w, txt_len), mx.array(mask))
    assert relative_error(got, expected) < RTOL
    # The padded prompt alone, unpadded, gives the same velocity: padding changes nothing.
    alone = ours(mx.array(x[1:]), mx.array(txt[1:, :4]), mx.array(sigma[1:]), ours.rope(h, w, 4))
    assert relative_error(got[1:], np.array(alone)) < RTOL


def test_positions_are_centred():
    ids = image_position_ids(3, 4)
    assert sorted(set(ids[:, 1])) == [-2, -1, 0] and sorted(set(ids[:, 2])) == [-2, -1, 0, 1]
    assert (ids[:, 0] == 0).all()
    text = text_position_ids(3, 3, 4)
    assert text.tolist() == [[2, 2, 2], [3, 3, 3], [4, 4, 4]]


def test_config_that_does_not_match_weights_is_refused(saved, tmp_path):
    _, folder = saved
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "joint_attention_dim": 96}))
    with pytest.raises(CheckpointError, match="config does not match weights: txt_(?:in|norm).weight"):
        _load(tmp_path)


def test_unsupported_variants_are_refused():
    with pytest.raises(CheckpointError, match="zero_cond_t"):
        QwenImageTransformer.from_config({"zero_cond_t": True})
