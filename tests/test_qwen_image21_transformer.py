"""Parity of our MLX QwenImage21Transformer with diffusers' QwenImage21Transformer2DModel (float32), both key
layouts of the released checkpoints, and the text prefix computed once per generation."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.blocks import elementwise_kernel  # noqa: E402
from quantbench.core.checkpoint import load_weights  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image21.components import open_transformer  # noqa: E402
from quantbench.core.families.qwen_image21.transformer import (  # noqa: E402
    TRANSFORMER_RULES, QwenImage21Transformer, QwenImage21TransformerConfig)
from reference.qwen_image21 import LATENT_CHANNELS, TEXT_HIDDEN, fuse_gate_up_like_comfyui, tiny_transformer  # noqa: E402

# float32 on both sides; the differences are summation order and the last bits of the RoPE and timestep
# angles, so the error relative to the output's scale stays near float32 epsilon times depth.
RTOL = 1e-4


KERNEL_PASSES = ("norm_rope", "norm_modulate", "activation")


@pytest.fixture(params=["kernel", "off"])
def kernel_passes(request, monkeypatch):
    """The blocks with the CPU's elementwise kernel (where it is built here) and with MLX's ops
    (QUANTBENCH_ELEMENTWISE_KERNEL=off); yields how many times each kernel pass ran."""
    if request.param == "off":
        monkeypatch.setattr(elementwise_kernel, "KERNEL", False)
    ran = dict.fromkeys(KERNEL_PASSES, 0)
    for name in KERNEL_PASSES:
        def counted(*args, _pass=getattr(elementwise_kernel, name), _name=name, **kwargs):
            out = _pass(*args, **kwargs)
            ran[_name] += out is not None
            return out
        monkeypatch.setattr(elementwise_kernel, name, counted)
    yield ran
    if request.param == "off" or not elementwise_kernel.ready():
        assert not any(ran.values())
    else:  # every block's query/key norms, its two modulated norms and its SwiGLU ran as kernel passes
        assert all(ran.values()), ran


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_transformer(seed=3, num_layers=3)
    folder = tmp_path_factory.mktemp("qwen21-transformer")
    model.save_pretrained(folder / "transformer")
    return model, folder


def _load(folder):
    component = open_transformer(folder)
    ours = QwenImage21Transformer.from_config(component.config)
    return ours, load_weights(ours, component, TRANSFORMER_RULES, "transformer")


def _reference(model, x, txt, sigma, h, w):
    """The image tokens' velocity, one prompt at a time (text then target image, as the pipeline lays them out)."""
    with torch.no_grad():
        img_mask = torch.cat([torch.zeros(1, txt.shape[1], dtype=torch.bool), torch.ones(1, h * w // 4, dtype=torch.bool)],
                             dim=1)
        out = model(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(txt),
                    timestep=torch.from_numpy(sigma), img_shapes=[[(1, h, w)]], img_mask=img_mask, return_dict=False)[0]
    return out[:, -h * w:].numpy()


def _ours(model, x, prompts, sigma, h, w):
    prefix = model.text_prefix([mx.array(p) for p in prompts])
    return np.array(model(mx.array(x), mx.array(sigma), prefix, model.image_rope(prefix, h, w)))


@pytest.mark.parametrize("h,w,sigma", [(4, 4, 0.93), (2, 6, 0.31), (6, 4, 0.02)])
def test_transformer_matches_diffusers(saved, h, w, sigma, kernel_passes):
    reference, folder = saved
    ours, report = _load(folder)
    assert not report.unexpected and not report.skipped
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, h * w, LATENT_CHANNELS)).astype(np.float32)
    txt = rng.standard_normal((1, 7, TEXT_HIDDEN)).astype(np.float32)
    s = np.array([sigma], dtype=np.float32)
    expected = _reference(reference, x, txt, s, h, w)
    assert relative_error(_ours(ours, x, [txt[0]], s, h, w), expected) < RTOL


def test_prompts_of_different_lengths_batch_as_each_alone(saved, kernel_passes):
    """True CFG batches the prompt and the negative prompt: the shorter one's padded keys must stay unseen
    and its image tokens' frame position must follow its own length."""
    reference, folder = saved
    ours, _ = _load(folder)
    rng = np.random.default_rng(2)
    h = w = 4
    x = rng.standard_normal((1, h * w, LATENT_CHANNELS)).astype(np.float32)
    long, short = (rng.standard_normal((n, TEXT_HIDDEN)).astype(np.float32) for n in (9, 3))
    s = np.array([0.6], dtype=np.float32)
    batched = _ours(ours, np.concatenate([x, x]), [long, short], np.concatenate([s, s]), h, w)
    for row, txt in enumerate((long, short)):
        assert relative_error(batched[row:row + 1], _reference(reference, x, txt[None], s, h, w)) < RTOL


def test_the_text_stream_ignores_the_step_and_the_image(saved):
    """causal_condition: the prompt's keys and values are the same at every step, so computing them once is exact."""
    _, folder = saved
    ours, _ = _load(folder)
    txt = mx.array(np.random.default_rng(3).standard_normal((5, TEXT_HIDDEN)).astype(np.float32))
    first, second = ours.text_prefix([txt]), ours.text_prefix([txt])
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(first.keys, second.keys))
    assert len(first.keys) == 3 and first.keys[0].shape == (1, 5, 2, 32) and first.mask is None


def test_comfyui_single_file_layout_loads_the_same_weights(saved, tmp_path):
    """Comfy-Org's repack prefixes every key with `model.diffusion_model.` and fuses gate and up projections."""
    reference, folder = saved
    import shutil
    shutil.copytree(folder / "transformer", tmp_path / "transformer")
    fuse_gate_up_like_comfyui(tmp_path)
    component = open_transformer(tmp_path)
    assert "transformer_blocks.0.img_mlp.gate_layer.weight" in component.tensors
    ours, report = _load(tmp_path)
    assert not report.unexpected and report.used == len(reference.state_dict())
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, LATENT_CHANNELS)).astype(np.float32)
    txt = rng.standard_normal((1, 4, TEXT_HIDDEN)).astype(np.float32)
    s = np.array([0.5], dtype=np.float32)
    assert relative_error(_ours(ours, x, [txt[0]], s, 4, 4), _reference(reference, x, txt, s, 4, 4)) < RTOL


@pytest.mark.parametrize("override,message", [
    ({"patch_size": 2}, "patch_size 2 is not supported"),
    ({"causal_condition": False}, "causal_condition false is not supported"),
    ({"axes_dims_rope": [8, 8, 8]}, "must add up to attention_head_dim"),
])
def test_unsupported_configs_are_refused(override, message):
    with pytest.raises(CheckpointError, match=message):
        QwenImage21TransformerConfig.from_dict({"attention_head_dim": 32, "axes_dims_rope": [8, 12, 12], **override})


def test_config_that_does_not_match_weights_is_refused(saved, tmp_path):
    _, folder = saved
    import shutil
    shutil.copytree(folder / "transformer", tmp_path / "transformer")
    config_path = tmp_path / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["mlp_ratio"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config does not match weights"):
        _load(tmp_path)
