"""Saved quantized Qwen-Image models: load as saved, same pixels bit for bit, refuse to requantize."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.nn as nn  # noqa: E402

from quantbench.core.errors import InvalidRequest  # noqa: E402
from quantbench.core.families.qwen_image.pipeline import QwenImagePipeline  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.qwen_image import build_tiny_qwen_image, rewrite_tokenizer_as_vocab_and_merges  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen-image")
    build_tiny_qwen_image(folder)
    rewrite_tokenizer_as_vocab_and_merges(folder)  # the released repo's tokenizer files must be saved along
    return folder


@pytest.fixture(scope="module")
def on_the_fly(source):
    return QwenImagePipeline.load(source, quantize=4)


@pytest.fixture(scope="module")
def saved(on_the_fly, tmp_path_factory):
    return save_quantized(on_the_fly, tmp_path_factory.mktemp("saved") / "tiny-q4")


def _image(model):
    result = model.generate("a red star", negative_prompt="blurry", steps=3, width=64, height=64, seed=4)
    return np.asarray(result.image)


def test_round_trip_gives_bitwise_the_same_image(on_the_fly, saved):
    assert np.array_equal(_image(on_the_fly), _image(QwenImagePipeline.load(saved)))


def test_saved_folder_says_what_it_is(source, saved):
    model = QwenImagePipeline.load(saved)
    transformer, text = model.info.quantization
    assert transformer.prequantized and transformer.bits_label == "4-bit"
    assert text.bits_label == "unquantized" and model.info.text_encoder_bits is None  # kept in full precision
    assert model.info.transformer_bits == 4
    assert isinstance(model.transformer.transformer_blocks[0].img_mod[1], nn.QuantizedLinear)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.text_encoder.named_modules())
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline" and index["quantbench_saved"]["transformer"] == "4-bit"
    assert (saved / "tokenizer" / "vocab.json").is_file() and (saved / "tokenizer" / "merges.txt").is_file()
    size = lambda folder: sum(f.stat().st_size for f in (folder / "transformer").glob("*.safetensors"))
    assert size(saved) < 0.5 * size(source)


def test_asking_for_other_bits_is_refused(saved):
    with pytest.raises(InvalidRequest, match="holds a 4-bit transformer saved by quantbench .* cannot be requantized"):
        QwenImagePipeline.load(saved, quantize=8)
    assert QwenImagePipeline.load(saved, quantize=4).info.transformer_bits == 4


def test_a_quantized_text_encoder_round_trips_too(source, tmp_path):
    model = QwenImagePipeline.load(source, quantize=8, text_encoder_quantize=8)
    assert model.info.text_encoder_bits == 8
    loaded = QwenImagePipeline.load(save_quantized(model, tmp_path / "q8"))
    assert loaded.info.quantization[1].prequantized and loaded.info.text_encoder_bits == 8
    assert np.array_equal(_image(model), _image(loaded))
