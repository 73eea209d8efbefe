"""Random-weight Z-Image models: the released folder layout (diffusers loads it and draws our picture), Turbo or
base by the scheduler, real shapes at full width, and a memory-model entry read from the folder."""

import json
import math

import numpy as np
import pytest

from quantbench.cli.main import main
from quantbench.core.catalog import entry_from_folder
from quantbench.core.checkpoint import open_component
from quantbench.core.families.z_image.random_model import ARCHITECTURES, component_configs
from quantbench.core.families.z_image.transformer import ZImageTransformerConfig
from quantbench.core.lab.probe import psnr_of
from quantbench.core.memory_model import architecture
from quantbench.core.pipelines import load_pipeline, model_defaults
from quantbench.core.random_model import parameter_count, write_random_model

NARROW = 0.05  # 2 heads of 128: the released depth (30 + 2 + 2 layers, 36 text layers) at a twentieth of the width


@pytest.fixture(scope="module")
def turbo(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random") / "z-image-turbo", "z-image", NARROW)


def test_full_size_shapes_are_the_released_configs():
    configs = component_configs(ARCHITECTURES["z-image"])
    cfg = ZImageTransformerConfig.from_dict(configs["transformer"])
    assert (cfg.dim, cfg.n_heads, cfg.n_layers, cfg.n_refiner_layers, cfg.axes_dims) == (3840, 30, 30, 2, (32, 48, 48))
    text = configs["text_encoder"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]) == (2560, 36, 9728)


def test_turbo_and_base_differ_as_the_released_folders(turbo, tmp_path):
    base = write_random_model(tmp_path / "base", "z-image", NARROW, distilled=False)
    shifts = [json.loads((f / "scheduler" / "scheduler_config.json").read_text())["shift"] for f in (turbo, base)]
    assert shifts == [3.0, 6.0]
    assert model_defaults(turbo).distilled and not model_defaults(base).distilled


def test_diffusers_loads_it_and_draws_our_picture(turbo):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(turbo), dtype=torch.float32)  # transformers 5 would keep bf16
    noise = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    expected = pipe("a red cat", height=64, width=64, num_inference_steps=1, guidance_scale=0.0,
                    latents=torch.from_numpy(noise), output_type="np").images[0]
    ours = load_pipeline(turbo).generate("a red cat", steps=1, width=64, height=64, latents=noise)
    error = np.mean(np.square((np.clip(np.asarray(ours.pixels) / 2 + 0.5, 0, 1) - expected) * 255))
    assert psnr_of(float(error)) > 60


def test_the_memory_model_reads_the_folder(turbo):
    entry = entry_from_folder(turbo)
    assert entry.family == "z_image" and entry.distilled and entry.guidance == "none"
    loaded = {c.role: architecture(c, entry.text_encoder_layers).params for c in entry.components}
    counted = {c.role: architecture(c).download_params for c in entry.components}
    files = {c.role: sum(math.prod(t.shape) for t in open_component(turbo / c.subfolder).tensors.values())
             for c in entry.components}
    assert loaded["transformer"] == counted["transformer"] == files["transformer"]
    assert loaded["text_encoder"] < counted["text_encoder"] == files["text_encoder"]  # the last layer is not read
    assert counted["vae"] < files["vae"]  # the folder holds the VAE's encoder half too, which is never built
    assert sum(files.values()) == parameter_count(turbo)


def test_cli_writes_a_base_model(tmp_path, capsys):
    out = tmp_path / "z"
    assert main(["random-model", "--arch", "z-image", "--base", "--width-scale", str(NARROW), "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "z-image" and not summary["distilled"] and summary["parameters"] > 40e6


def test_bench_runs_a_random_z_image(capsys):
    assert main(["bench", "--random-weights", "z-image", "--width-scale", str(NARROW), "--precisions", "bf16,4",
                 "--size", "64", "--steps", "1", "--memory", "lean", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows["q4"]["transformer_bytes"] < rows["unquantized"]["transformer_bytes"]
    assert all(len(r["step_seconds"]) == 1 and r["generation_peak"] > 0 for r in rows.values())
