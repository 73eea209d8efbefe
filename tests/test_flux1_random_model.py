"""Random-weight FLUX.1 models: the released folder layout (diffusers and transformers load every weight, and
diffusers draws our picture), [schnell] or [dev] by --base, real shapes at full width, and a memory-model entry
read from the folder that predicts what the engine measures."""

import json
import math

import numpy as np
import pytest
from mlx.utils import tree_flatten

from quantbench.cli.main import main
from quantbench.core.catalog import entry_from_folder
from quantbench.core.checkpoint import open_component
from quantbench.core.families.flux1.random_model import ARCHITECTURES, component_configs
from quantbench.core.families.flux1.t5 import T5Encoder
from quantbench.core.families.flux1.transformer import Flux1Transformer, pack_latents
from quantbench.core.lab.probe import psnr_of
from quantbench.core.memory_model import architecture
from quantbench.core.pipelines import load_pipeline, model_defaults
from quantbench.core.random_model import parameter_count, write_random_model

NARROW = 0.0625  # 2 heads of 128, CLIP at 64 wide, T5 at 4 heads: the released depths (19 + 38, 12, 24)


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random") / "flux1-schnell", "flux1", NARROW)


def test_full_size_shapes_are_the_released_configs():
    configs = component_configs(ARCHITECTURES["flux1"], distilled=True)
    transformer = configs["transformer"]
    assert (transformer["num_layers"], transformer["num_single_layers"], transformer["num_attention_heads"],
            transformer["joint_attention_dim"], transformer["pooled_projection_dim"]) == (19, 38, 24, 4096, 768)
    clip, t5 = configs["text_encoder"], configs["text_encoder_2"]
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["num_attention_heads"]) == (768, 12, 12)
    assert (t5["d_model"], t5["num_layers"], t5["num_heads"], t5["d_ff"]) == (4096, 24, 64, 10240)
    # the published sizes (transformer 11.9 B, T5-XXL's encoder 4.76 B with its real vocabulary), counted on the
    # engine's own modules at full size (built lazily: nothing is allocated)
    assert abs(_parameters(Flux1Transformer.from_config(transformer)) - 11.9e9) < 0.01e9
    t5_vocabulary = (32128 - t5["vocab_size"]) * t5["d_model"]
    assert abs(_parameters(T5Encoder.from_config(t5)) + t5_vocabulary - 4.76e9) < 0.01e9


def _parameters(module) -> int:
    return sum(math.prod(v.shape) for _, v in tree_flatten(module.parameters()))


def test_schnell_and_dev_differ_as_the_released_folders(schnell, tmp_path):
    dev = write_random_model(tmp_path / "dev", "flux1", NARROW, distilled=False)
    schedulers = [json.loads((f / "scheduler" / "scheduler_config.json").read_text()) for f in (schnell, dev)]
    assert [s["use_dynamic_shifting"] for s in schedulers] == [False, True]
    assert model_defaults(schnell).distilled and not model_defaults(dev).distilled
    assert model_defaults(dev).guidance == 3.5 and model_defaults(dev).embedded_guidance


def test_diffusers_loads_it_and_draws_our_picture(schnell):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(schnell), dtype=torch.float32)
    noise = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    expected = pipe("a red cat", height=64, width=64, num_inference_steps=1, guidance_scale=0.0,
                    max_sequence_length=256, latents=torch.from_numpy(pack_latents(noise)),
                    output_type="np").images[0]
    ours = load_pipeline(schnell).generate("a red cat", steps=1, width=64, height=64, latents=noise)
    error = np.mean(np.square((np.asarray(ours.image).astype(np.float32) / 255 - expected) * 255))
    assert psnr_of(float(error)) > 50  # 59 dB: ours is rounded to 8 bits, theirs is not


def test_the_memory_model_reads_the_folder(schnell):
    entry = entry_from_folder(schnell)
    assert entry.family == "flux1" and entry.distilled
    loaded = {c.role: architecture(c, entry.text_encoder_layers).params for c in entry.components}
    files = {c.role: sum(math.prod(t.shape) for t in open_component(schnell / c.subfolder).tensors.values())
             for c in entry.components}
    assert loaded["transformer"] == files["transformer"]
    assert loaded["text_encoder_2"] == files["text_encoder_2"]
    assert sum(files.values()) == parameter_count(schnell)


def test_cli_writes_a_dev_model_and_bench_runs_it(tmp_path, capsys):
    out = tmp_path / "dev"
    assert main(["random-model", "--arch", "flux1", "--base", "--width-scale", str(NARROW), "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "flux1" and not summary["distilled"] and summary["parameters"] == parameter_count(out)
    assert main(["bench", "--random-weights", "flux1", "--width-scale", str(NARROW), "--precisions", "bf16,4",
                 "--size", "64", "--steps", "1", "--memory", "lean", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows["q4"]["transformer_bytes"] < rows["unquantized"]["transformer_bytes"] / 3
    assert all(len(r["step_seconds"]) == 1 and r["generation_peak"] > 0 for r in rows.values())
