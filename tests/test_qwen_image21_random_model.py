"""random-model --arch qwen-image-2.1: real depth and layout (narrowed), loaded and run by the engine like a
downloaded Qwen-Image 2.1; Turbo's grid when distilled."""

import json

import numpy as np
import pytest
from mlx.utils import tree_flatten

from quantbench.cli.main import main
from quantbench.core.catalog import get_entry
from quantbench.core.errors import InvalidRequest
from quantbench.core.families.qwen_image21.pipeline import QwenImage21Pipeline
from quantbench.core.families.qwen_image21.random_model import TURBO_SIGMAS, Shapes, component_configs, scaled
from quantbench.core.families.qwen_image21.vae import QwenImage21VAE
from quantbench.core.memory_model import architecture
from quantbench.core.random_model import parameter_count, write_random_model

SCALE = 0.03  # 32 blocks of width 128: fast, with the real depth and file layout


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random") / "qwen21", "qwen-image-2.1", SCALE, distilled=False)


def test_full_size_configs_are_the_catalogs():
    configs = component_configs(Shapes())
    entry = get_entry("qwen-image-2.1")
    assert {k: configs["transformer"][k] for k in entry.transformer.config} == dict(entry.transformer.config)
    text = entry.component("text_encoder").config["text_config"]
    assert all(configs["text_encoder"]["text_config"][k] == v for k, v in text.items())
    vae = QwenImage21VAE.from_config(configs["vae"])
    assert sum(a.size for _, a in tree_flatten(vae.parameters())) == architecture(entry.vae).params


def test_the_engine_loads_every_key_and_generates(base):
    model = QwenImage21Pipeline.load(base, quantize=4)
    for report in model.info.weights:
        assert not report.unexpected, report.component
    assert model.loader.reports["text_encoder"].skipped  # the final norm, present as in the released files
    assert model.transformer.config.num_layers == 32 and len(model.text_encoder.layers) == 36
    result = model.generate("a red star", steps=2, width=64, height=64)
    assert result.image.size == (64, 64) and np.asarray(result.image).std() > 0
    index = json.loads((base / "model_index.json").read_text())
    assert index["quantbench"]["random_weights"] == "qwen-image-2.1" and index["sample_sigmas"] is None


def test_distilled_is_turbo_on_its_grid(tmp_path):
    folder = write_random_model(tmp_path / "turbo", "qwen-image-2.1", SCALE, distilled=True)
    model = QwenImage21Pipeline.load(folder)
    assert model.distilled and model.default_steps == len(TURBO_SIGMAS) == 8
    assert model.schedule.sigmas(8, 16, model.sample_sigmas)[:-1].tolist() == pytest.approx(TURBO_SIGMAS)


def test_width_scale_narrows_widths_not_depth():
    narrow = scaled(Shapes(), 0.25)
    assert (narrow.layers, narrow.text_layers, narrow.head_dim) == (32, 36, 128)
    assert (narrow.heads, narrow.text_hidden, narrow.vae_base) == (8, 1024, 32)
    with pytest.raises(InvalidRequest, match="width scale 0 is not allowed"):
        scaled(Shapes(), 0)


def test_the_command_writes_and_counts_it(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["random-model", "--arch", "qwen-image-2.1", "--width-scale", str(SCALE), "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "qwen-image-2.1" and summary["parameters"] == parameter_count(out) > 0
