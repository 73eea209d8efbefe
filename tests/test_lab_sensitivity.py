"""quantbench sensitivity: each layer quantized alone, ranked by how far the probe pictures move."""

import json

import numpy as np
import pytest
from mlx.utils import tree_flatten

from quantbench.cli.main import main
from quantbench.core.errors import InvalidRequest
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.lab.layer_bytes import quantizable_layers
from quantbench.core.lab.sensitivity import SensitivityReport, block_of, measure_sensitivity
from quantbench.core.random_model import write_random_model

PROBE = dict(prompts=["a small red star"], size=64, steps=4)


def short_prompts(folder):
    """Pad prompts to 64 tokens instead of 512 (model_index.json says so, as our built-in models do):
    the tiny models' passes are dominated by the text tokens, and these tests are about quantization."""
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_sequence_length": 64}))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return short_prompts(write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny", distilled=False))


@pytest.fixture(scope="module")
def pipeline(model):
    return Flux2Pipeline.load(model)


@pytest.fixture(scope="module")
def report(pipeline):
    before = {k: np.array(v) for k, v in tree_flatten(pipeline.transformer.parameters())}
    result = measure_sensitivity(pipeline, bits=4, **PROBE)
    after = dict(tree_flatten(pipeline.transformer.parameters()))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], np.array(after[k])) for k in before)
    return result


def test_every_quantizable_layer_is_ranked_most_sensitive_first(report, pipeline):
    layers = quantizable_layers(pipeline.transformer)
    assert sorted(u.name for u in report.units) == sorted(layers)
    assert "x_embedder" not in layers and "proj_out" not in layers  # the policy keeps these
    errors = [u.error for u in report.units]
    assert errors == sorted(errors, reverse=True) and all(e > 0 for e in errors)
    assert errors[0] > 5 * errors[-1]  # layers differ: the ranking means something
    assert report.units[0].psnr_db < report.units[-1].psnr_db
    # the reference picture, one per layer, one with every layer quantized
    assert report.draws == len(layers) + 2 and report.steps == 4


def test_every_layer_at_once_hurts_more_than_any_one_alone(report):
    assert report.uniform_error > report.units[0].error


def test_more_bits_do_less_damage(pipeline):
    errors = {bits: measure_sensitivity(pipeline, bits=bits, granularity="block", uniform=False, **PROBE).summed_error
              for bits in (3, 8)}
    assert errors[8] < errors[3] / 20


def test_block_granularity_ranks_blocks(pipeline):
    blocks = measure_sensitivity(pipeline, bits=3, granularity="block", uniform=False, **PROBE)
    names = {u.name for u in blocks.units}
    assert {"transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"} <= names
    assert all(block_of(path) == u.name for u in blocks.units for path in u.layers)
    assert sum(u.elements for u in blocks.units) == sum(quantizable_layers(pipeline.transformer).values())


def test_report_round_trips_through_json(report):
    again = SensitivityReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert [u.name for u in again.units] == [u.name for u in report.units]
    assert again.units[0].error == report.units[0].error and again.draws == report.draws


def test_refuses_bad_bits_and_a_quantized_transformer(model, pipeline):
    with pytest.raises(InvalidRequest, match="unsupported quantization '7'"):
        measure_sensitivity(pipeline, bits=7, **PROBE)
    with pytest.raises(InvalidRequest, match="already quantized"):
        measure_sensitivity(Flux2Pipeline.load(model, quantize=4), **PROBE)


def test_cli_table_and_json(model, capsys, tmp_path):
    args = ["sensitivity", "--model", str(model), "--size", "64", "--steps", "3", "--prompt", "a ring",
            "--granularity", "block"]
    assert main(args + ["--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "pixel MSE" in out and "PSNR dB" in out and "every block at once" in out
    assert main(args + ["--json", "--quantize", "auto:5", "--plan-out", str(tmp_path / "p.json")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["granularity"] == "block" and data["units"][0]["error"] >= data["units"][-1]["error"]
    assert data["plan"]["average_bits"] == pytest.approx(5, abs=0.5) and (tmp_path / "p.json").is_file()
    assert main(["sensitivity", "--model", str(model), "--bits", "2:foo"]) == 2
    assert "unsupported quantization '2:foo'" in capsys.readouterr().err


def test_a_model_folder_can_declare_its_probe(pipeline):
    """Random-weight models declare a small probe in model_index.json (their pictures are noise)."""
    report = measure_sensitivity(pipeline, bits=8, granularity="block", uniform=False)
    assert (report.width, report.steps, len(report.prompts)) == (64, 4, 1)
