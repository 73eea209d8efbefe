"""Saved quantized Qwen-Image 2.1 models: load as saved, same pixels bit for bit, refuse to requantize."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import mlx.nn as nn  # noqa: E402

from quantbench.core.errors import InvalidRequest  # noqa: E402
from quantbench.core.families.qwen_image21.pipeline import QwenImage21Pipeline  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.qwen_image21 import fuse_gate_up_like_comfyui  # noqa: E402


@pytest.fixture(scope="module")
def on_the_fly(tiny_qwen_image21):
    return QwenImage21Pipeline.load(tiny_qwen_image21[0], quantize=4)


@pytest.fixture(scope="module")
def saved(on_the_fly, tmp_path_factory):
    return save_quantized(on_the_fly, tmp_path_factory.mktemp("saved") / "tiny-q4")


def _image(model, **kwargs):
    result = model.generate("a red star", steps=3, width=64, height=64, seed=4, **kwargs)
    return np.asarray(result.image)


def test_round_trip_gives_bitwise_the_same_image(on_the_fly, saved):
    loaded = QwenImage21Pipeline.load(saved)
    assert np.array_equal(_image(on_the_fly), _image(loaded))
    assert np.array_equal(_image(on_the_fly, negative_prompt="blurry", guidance=4.0),
                          _image(loaded, negative_prompt="blurry", guidance=4.0))


def test_saved_folder_says_what_it_is(tiny_qwen_image21, saved):
    source = tiny_qwen_image21[0]
    model = QwenImage21Pipeline.load(saved)
    transformer, text = model.info.quantization
    assert transformer.prequantized and transformer.bits_label == "4-bit"
    assert text.bits_label == "unquantized" and model.info.text_encoder_bits is None
    assert isinstance(model.transformer.transformer_blocks[0].img_mlp.proj, nn.QuantizedLinear)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImage21Pipeline" and index["quantbench_saved"]["transformer"] == "4-bit"
    assert (saved / "processor" / "chat_template.jinja").is_file() and (saved / "scheduler").is_dir()
    size = lambda folder: sum(f.stat().st_size for f in (folder / "transformer").glob("*.safetensors"))
    assert size(saved) < 0.5 * size(source)
    # the vision tower, LM head and final norm are never loaded, so they are not saved either
    assert not model.loader.reports["text_encoder"].skipped


def test_asking_for_other_bits_is_refused(saved):
    with pytest.raises(InvalidRequest, match="holds a 4-bit transformer saved by quantbench .* cannot be requantized"):
        QwenImage21Pipeline.load(saved, quantize=8)


def test_a_quantized_text_encoder_round_trips_too(tiny_qwen_image21, tmp_path):
    model = QwenImage21Pipeline.load(tiny_qwen_image21[0], quantize=8, text_encoder_quantize=8)
    assert model.info.text_encoder_bits == 8
    loaded = QwenImage21Pipeline.load(save_quantized(model, tmp_path / "q8"))
    assert loaded.info.quantization[1].prequantized and loaded.info.text_encoder_bits == 8
    assert np.array_equal(_image(model), _image(loaded))


def test_a_comfyui_layout_source_saves_under_diffusers_keys(tiny_qwen_image21, tmp_path):
    import shutil
    source = tmp_path / "comfy"
    shutil.copytree(tiny_qwen_image21[0], source)
    fuse_gate_up_like_comfyui(source)
    model = QwenImage21Pipeline.load(source, quantize=6)
    loaded = QwenImage21Pipeline.load(save_quantized(model, tmp_path / "q6"))
    assert np.array_equal(_image(model), _image(loaded))
