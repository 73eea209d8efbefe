"""Quantization on the fly: the layer policy, the memory arithmetic, and error that grows as bits fall."""

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from quantbench.core.errors import InvalidRequest
from quantbench.core.families.flux2.components import TRANSFORMER_POLICY
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.quant import QuantSpec, parse_spec, quantize_model
from reference.pipelines import TEXT_LAYERS

SIZE = 64


def _load(folder, bits, te_bits=None):
    return Flux2Pipeline.load(folder, quantize=bits, text_encoder_quantize=te_bits, text_encoder_layers=TEXT_LAYERS)


def test_error_grows_as_bits_fall(tiny_klein):
    folder, _ = tiny_klein
    latents = np.random.default_rng(0).standard_normal((1, 128, 4, 4)).astype(np.float32)
    reference = _load(folder, None)
    features = reference.encode_prompts(["a yellow triangle"])
    x = mx.array(latents.reshape(1, 128, 16).transpose(0, 2, 1))
    rope = reference.transformer.rope(*_ids(features.shape[1]))
    expected = np.array(reference.transformer(x, features, mx.array([0.6]), rope))
    errors = {}
    for bits in (8, 6, 4, 3):
        model = _load(folder, bits)
        got = np.array(model.transformer(x, features, mx.array([0.6]), rope))
        errors[bits] = float(np.sqrt(np.mean((got - expected) ** 2)))
    assert errors[8] < errors[6] < errors[4] < errors[3], errors
    assert errors[8] > 0
    # Two more bits quarter the step of the quantization grid: the error must fall by far more than noise,
    # or something else (a layer computing in bf16, say) is hiding the quantization error.
    assert errors[8] < errors[6] / 2 and errors[6] < errors[4] / 2, errors


def test_error_falls_fast_with_bits_on_a_bf16_checkpoint(tmp_path):
    """Real checkpoints are bf16: the layers kept in full precision stay bf16 on the CPU, and must not
    pull the timestep embedding (or anything else) down to bf16 precision."""
    from quantbench.core.random_model import write_random_model

    folder = write_random_model(tmp_path / "tiny", "tiny")
    reference = Flux2Pipeline.load(folder)
    features = reference.encode_prompts(["a yellow triangle"])
    x = mx.array(np.random.default_rng(0).standard_normal((1, 16, 128)).astype(np.float32))
    rope = reference.transformer.rope(*_ids(features.shape[1]))
    expected = np.array(reference.transformer(x, features, mx.array([0.6]), rope))
    errors = {}
    for bits in (8, 6, 4):
        model = Flux2Pipeline.load(folder, quantize=bits)
        errors[bits] = float(np.sqrt(np.mean((np.array(model.transformer(x, features, mx.array([0.6]), rope))
                                              - expected) ** 2)))
    assert errors[8] < errors[6] / 2 < errors[4] / 4, errors


def _ids(txt_len):
    from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids
    return text_position_ids(txt_len), image_position_ids(4, 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_quantized_layers_cost_bits_plus_half_a_bit(tiny_klein, bits):
    folder, _ = tiny_klein
    model = _load(folder, bits)
    report = model.info.quantization[0]
    assert report.layers and set(report.layers.values()) == {QuantSpec(bits)}
    for path, module in model.transformer.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            weights = module.weight.size * 32 // bits
            stored = module.weight.nbytes + module.scales.nbytes + module.biases.nbytes
            assert stored * 8 / weights == pytest.approx(bits + 32 / 64)


def test_policy_keeps_latent_projections_in_full_precision(tiny_klein):
    folder, _ = tiny_klein
    model = _load(folder, 4)
    kept = {p for p, m in model.transformer.named_modules() if isinstance(m, nn.Linear)}
    assert {"x_embedder", "proj_out", "time_guidance_embed.timestep_embedder.linear_1"} <= kept
    for quantized in ("context_embedder", "norm_out.linear", "time_guidance_embed.timestep_embedder.linear_2"):
        assert quantized not in kept
    assert isinstance(model.transformer.transformer_blocks[0].attn.to_q, nn.QuantizedLinear)
    labels = model.info.quantization[0].params
    assert labels["4-bit"] > 0
    assert any("latent input and output projections" in label for label in labels)


def test_policy_keeps_small_and_indivisible_layers():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.big = nn.Linear(128, 128)
            self.odd = nn.Linear(100, 128)
            self.small = nn.Linear(64, 32)
            self.norm = nn.RMSNorm(128)

    model = Toy()
    report = quantize_model(model, 4, TRANSFORMER_POLICY, "toy")
    assert isinstance(model.big, nn.QuantizedLinear)
    assert isinstance(model.odd, nn.Linear) and isinstance(model.small, nn.Linear)
    labels = set(report.params)
    assert "full precision (input size not a multiple of 64)" in labels
    assert "full precision (fewer than 4096 weights)" in labels
    assert report.params["4-bit"] == 128 * 128
    assert report.nbytes == sum(a.nbytes for _, a in tree_flatten(model.parameters()))


def test_text_encoder_quantized_separately(tiny_klein):
    folder, _ = tiny_klein
    model = _load(folder, None, te_bits=8)
    assert not model.info.quantization[0].layers
    assert set(model.info.quantization[1].layers.values()) == {QuantSpec(8)}
    result = model.generate("a circle", steps=2, width=SIZE, height=SIZE)
    assert result.image.size == (SIZE, SIZE)


@pytest.mark.parametrize("value", ["1", "7", "16x", "-4", "4.5"])
def test_unsupported_bits_are_refused(value):
    with pytest.raises(InvalidRequest, match="unsupported quantization"):
        parse_spec(value)


def test_bf16_means_no_quantization():
    assert parse_spec("bf16") is None and parse_spec(None) is None and parse_spec("4") == QuantSpec(4)
