"""FLUX.1 with what the engine does for every family: quantization by layer policy, lean memory, saved models."""

import json

import mlx.nn as nn
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.core.errors import Cancelled, InvalidRequest  # noqa: E402
from quantbench.core.families.flux1.pipeline import Flux1Pipeline  # noqa: E402
from quantbench.core.generation import CancelToken  # noqa: E402
from quantbench.core.pipeline_base import MemoryOptions  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.flux1 import build_tiny_flux1  # noqa: E402

SIZE = 64
RUN = dict(steps=2, width=SIZE, height=SIZE, seed=4)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dev")
    build_tiny_flux1(folder, dev=True, seed=2)
    return folder


@pytest.fixture(scope="module")
def quantized(dev):
    return Flux1Pipeline.load(dev, quantize=4, text_encoder_quantize=8)


def _image(model, prompt="a red star", **kwargs):
    return np.asarray(model.generate(prompt, **{**RUN, **kwargs}).image)


def test_quantized_generation_follows_the_layer_policy(quantized):
    transformer, clip, t5 = quantized.info.quantization
    assert [r.component for r in (transformer, clip, t5)] == ["transformer", "text_encoder", "text_encoder_2"]
    assert quantized.info.transformer_bits == 4 and quantized.info.text_encoder_bits == 8
    assert {s.bits for s in transformer.layers.values()} == {4}
    assert {s.bits for s in clip.layers.values()} == {s.bits for s in t5.layers.values()} == {8}
    assert transformer.kept["x_embedder"] == "input embedders"
    assert transformer.kept["time_text_embed.guidance_embedder.linear_1"].startswith("timestep, guidance")
    assert transformer.kept["proj_out"] == transformer.kept["norm_out.linear"] == "output layers"
    assert "transformer_blocks.0.attn.to_q" in transformer.layers
    assert isinstance(quantized.transformer.single_transformer_blocks[0].proj_mlp, nn.QuantizedLinear)
    assert t5.kept["encoder.block.0.layer.0.SelfAttention.relative_attention_bias"] != ""


def test_quantized_generation_reports_steps_previews_and_phases(quantized):
    seen = []
    result = quantized.generate("a green square", callback=seen.append, **RUN)
    assert [s.index for s in seen] == [0, 1] and seen[0].preview.shape == (SIZE // 8, SIZE // 8, 3)
    assert {"encode", "denoise", "decode"} <= set(result.phase_peaks)


def test_quantized_generation_can_be_cancelled(quantized):
    token = CancelToken()
    with pytest.raises(Cancelled):
        quantized.generate("a ring", callback=lambda step: token.cancel(), cancel=token, **{**RUN, "steps": 4})


def test_lean_memory_gives_the_same_image(dev, quantized):
    lean = Flux1Pipeline.load(dev, quantize=4, text_encoder_quantize=8, memory=MemoryOptions.lean(vae_tile=1024))
    assert lean.transformer is None, "the transformer loads only after the prompt is encoded"
    result = lean.generate("a red star", **RUN)
    assert lean.text_encoder is None and lean.transformer is None
    assert "load transformer" in result.phase_peaks
    assert np.array_equal(np.asarray(result.image), _image(quantized))


def test_tiled_decode_runs_with_the_flux1_vae(dev):
    """Tiles of 32 pixels (4 latent pixels) on a 64-pixel image: the tiled path, not the whole-image one."""
    tiled = Flux1Pipeline.load(dev, memory=MemoryOptions(vae_tile=32))
    untiled = Flux1Pipeline.load(dev)
    a, b = (np.asarray(m.generate("a red star", **RUN).image) for m in (tiled, untiled))
    assert a.shape == b.shape == (SIZE, SIZE, 3) and not np.array_equal(a, b)


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    return save_quantized(quantized, tmp_path_factory.mktemp("saved") / "tiny-dev-q4")


def test_saved_round_trip_gives_bitwise_the_same_image(quantized, saved):
    loaded = Flux1Pipeline.load(saved)
    assert all(q.prequantized for q in loaded.info.quantization)
    assert loaded.info.transformer_bits == 4 and loaded.info.text_encoder_bits == 8
    assert np.array_equal(_image(loaded), _image(quantized))
    index = json.loads((saved / "model_index.json").read_text())
    assert index["quantbench_saved"]["text_encoder_2"] == "8-bit"
    assert {p.name for p in saved.iterdir()} >= {"tokenizer", "tokenizer_2", "scheduler", "vae", "text_encoder_2"}


def test_a_saved_model_refuses_other_bits(saved):
    with pytest.raises(InvalidRequest, match="holds a 4-bit transformer saved by quantbench"):
        Flux1Pipeline.load(saved, quantize=8)
    with pytest.raises(InvalidRequest, match="holds an 8-bit CLIP text encoder"):
        Flux1Pipeline.load(saved, text_encoder_quantize=4)
