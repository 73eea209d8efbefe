"""random-model --arch qwen-image: Qwen/Qwen-Image's folder layout at its real depth (narrowed), loaded by the engine
and by diffusers + transformers with every key where they expect it, drawing the same picture in both."""

import json
import math

import numpy as np
import pytest

from quantbench.cli.main import main
from quantbench.core.catalog import get_entry
from quantbench.core.catalog.architectures import QWEN25_VL_VISION_PARAMS, QWEN_IMAGE_VAE_DOWNLOAD_PARAMS
from quantbench.core.errors import InvalidRequest
from quantbench.core.families.qwen_image.pipeline import QwenImagePipeline
from quantbench.core.families.qwen_image.random_model import (QwenImageShape, component_configs, narrowed_shape,
                                                              wan_vae_weights)
from quantbench.core.random_model import parameter_count, write_random_model

SCALE = 0.03  # one transformer head of 128, two text heads: the released depth (60 blocks, 28 + 32 layers), small


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random") / "qwen-image", "qwen-image", SCALE)


def test_full_size_shapes_are_the_released_ones():
    configs = component_configs(QwenImageShape())
    entry = get_entry("qwen-image")
    published = {k: v for k, v in entry.transformer.config.items() if k != "mlp_ratio"}  # not a diffusers key: 4x
    assert {k: configs["transformer"][k] for k in published} == published
    text = entry.component("text_encoder").config
    assert all(configs["text_encoder"][k] == v for k, v in text.items() if k in configs["text_encoder"])
    # the whole VAE as diffusers counts it, drawn lazily (nothing is made until written)
    vae = wan_vae_weights(configs["vae"])
    assert sum(math.prod(a.shape) for a in vae.values()) == QWEN_IMAGE_VAE_DOWNLOAD_PARAMS


def test_the_engine_loads_every_key_and_generates(folder):
    model = QwenImagePipeline.load(folder, quantize=4)
    for report in model.info.weights:
        assert not report.unexpected, report.component
    assert not model.distilled and model.default_steps == 50 and model.default_guidance == 4.0
    assert model.transformer.config.num_layers == 60 and len(model.text_encoder.layers) == 28
    result = model.generate("a red star", steps=1, width=64, height=64)
    assert result.image.size == (64, 64) and np.asarray(result.image).std() > 0


def test_diffusers_loads_every_key(folder):
    """Every tensor where diffusers and transformers look for it, none missing (the pipeline's parity with diffusers
    is tests/test_qwen_image_pipeline.py's, on a diffusers-built model)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    for cls, sub in ((QwenImageTransformer2DModel, "transformer"), (AutoencoderKLQwenImage, "vae")):
        _, info = cls.from_pretrained(str(folder), subfolder=sub, output_loading_info=True)
        assert not any(info.values()), (sub, info)
    encoder, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder / "text_encoder"),
                                                                       output_loading_info=True)
    assert not any(info.values()), info  # the vision tower and the LM head too, as released
    vision = sum(p.numel() for p in encoder.model.visual.parameters())
    assert 0 < vision < QWEN25_VL_VISION_PARAMS * SCALE  # narrowed with the rest


def test_width_scale_narrows_widths_not_depth():
    narrow = narrowed_shape(QwenImageShape(), 0.25)
    assert (narrow.layers, narrow.text_layers, narrow.vision_depth) == (60, 28, 32)
    assert (narrow.heads, narrow.text_hidden, narrow.text_kv_heads, narrow.vae_base) == (6, 896, 1, 32)
    with pytest.raises(InvalidRequest, match="width scale 1.5 is not allowed"):
        narrowed_shape(QwenImageShape(), 1.5)


def test_the_command_writes_a_base_model_and_counts_it(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["random-model", "--arch", "qwen-image", "--width-scale", "0.02", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "qwen-image" and not summary["distilled"]  # Qwen-Image is released as a base model
    assert summary["parameters"] == parameter_count(out) > 0
