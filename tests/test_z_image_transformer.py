"""ZImageTransformer2DModel in MLX against diffusers, in float32: one prompt, prompts of different lengths,
and the original training code's key layout."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.checkpoint import open_component  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.component_loading import ComponentLoader  # noqa: E402
from quantbench.core.families.z_image import FAMILY  # noqa: E402
from quantbench.core.families.z_image.components import open_transformer  # noqa: E402
from quantbench.core.families.z_image.pipeline import pack  # noqa: E402
from quantbench.core.families.z_image.transformer import ZImageTransformerConfig  # noqa: E402
from reference.z_image import (TEXT_HIDDEN, TRANSFORMER, rewrite_transformer_keys_as_original,  # noqa: E402
                               tiny_transformer)

ROWS, COLS = 5, 6  # 30 image tokens: padded to 32, so image pad tokens take part too
RTOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return tiny_transformer(seed=3)


@pytest.fixture(scope="module")
def folder(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-z-image")
    reference.save_pretrained(folder / "transformer", safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def ours(folder):
    return ComponentLoader(FAMILY, folder, mx.float32, None, None, "native").transformer()


def _inputs(caption_lengths, seed=0):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((len(caption_lengths), 16, 2 * ROWS, 2 * COLS)).astype(np.float32)
    captions = [rng.standard_normal((n, TEXT_HIDDEN)).astype(np.float32) for n in caption_lengths]
    t = rng.uniform(0, 1, len(caption_lengths)).astype(np.float32)
    return latents, captions, t


def _reference(model, latents, captions, t):
    with torch.no_grad():
        out = model([torch.from_numpy(x[:, None]) for x in latents], torch.from_numpy(t),
                    [torch.from_numpy(c) for c in captions], return_dict=False)[0]
    return np.stack([pack(o.numpy()[:, 0][None])[0] for o in out])


def _ours(model, latents, captions, t):
    longest = max(len(c) for c in captions)
    padded = np.stack([np.pad(c, [(0, longest - len(c)), (0, 0)]) for c in captions])
    layout = model.layout(ROWS, COLS, [len(c) for c in captions])
    return np.array(model(mx.array(pack(latents)), mx.array(padded), mx.array(t), layout))


def _relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("caption_lengths", [(7,), (32,), (7, 40)])
def test_output_matches_diffusers(reference, ours, caption_lengths):
    """(7, 40): prompt and negative prompt of different padded lengths, batched and masked."""
    inputs = _inputs(caption_lengths)
    assert _relative(_ours(ours, *inputs), _reference(reference, *inputs)) < RTOL


def test_a_batched_item_equals_the_same_item_alone(ours):
    latents, captions, t = _inputs((9, 45), seed=1)
    batched = _ours(ours, latents, captions, t)
    alone = _ours(ours, latents[:1], captions[:1], t[:1])
    assert _relative(batched[:1], alone) < 1e-5


def test_original_key_layout_loads_the_same_weights(reference, folder, ours, tmp_path):
    import shutil

    shutil.copytree(folder / "transformer", tmp_path / "transformer")
    rewrite_transformer_keys_as_original(tmp_path, prefix="model.diffusion_model.")
    raw = open_component(tmp_path / "transformer")
    assert any(k.endswith(".attention.qkv.weight") for k in raw.tensors)
    assert not any("to_q" in k or "all_x_embedder" in k for k in raw.tensors)
    original = ComponentLoader(FAMILY, tmp_path, mx.float32, None, None, "native").transformer()
    inputs = _inputs((11,), seed=2)
    assert np.array_equal(_ours(original, *inputs), _ours(ours, *inputs))
    assert set(open_transformer(tmp_path).tensors) == set(open_transformer(folder).tensors)


def test_omni_and_inconsistent_configs_are_one_line_errors():
    with pytest.raises(CheckpointError, match="Omni"):
        ZImageTransformerConfig.from_dict({**TRANSFORMER, "siglip_feat_dim": 1152})
    with pytest.raises(CheckpointError, match="axes_dims"):
        ZImageTransformerConfig.from_dict({**TRANSFORMER, "axes_dims": [8, 8, 8]})
    with pytest.raises(CheckpointError, match="2-1"):
        ZImageTransformerConfig.from_dict({**TRANSFORMER, "all_patch_size": [4]})


def test_real_size_config_gives_the_released_widths():
    cfg = ZImageTransformerConfig.from_dict({"dim": 3840, "n_heads": 30, "n_layers": 30, "cap_feat_dim": 2560})
    assert (cfg.head_dim, cfg.ffn_dim, cfg.adaln_dim, cfg.patch_channels) == (128, 10240, 256, 64)
