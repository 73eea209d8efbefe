"""Mixed-precision plans: allocation under a budget, plan files, --quantize values, one-line errors."""

import json

import numpy as np
import pytest

from quantbench.cli.main import main
from quantbench.core.errors import InvalidRequest
from quantbench.core.flux2.pipeline import Flux2Pipeline
from quantbench.core.lab.plans import (GROUP_SIZE, QuantPlan, allocate, check_plan_layers, load_plan, parse_budget,
                                       parse_quantize_spec, plan_bytes, quantized_weight_bytes, transformer_structure)
from quantbench.core.lab.sensitivity import SensitivityReport, UnitSensitivity
from quantbench.core.quantize import SUPPORTED_BITS
from quantbench.core.random_model import write_random_model


def synthetic_report(errors: list[float], elements: list[int], fixed: int = 1000) -> SensitivityReport:
    """A sensitivity report without a model: weight errors that fall 4x per bit, as uniform rounding does."""
    units = [UnitSensitivity(f"layer{i}", (f"layer{i}",), n, e, {b: n * 4.0 ** -b for b in SUPPORTED_BITS}, order=i)
             for i, (e, n) in enumerate(zip(errors, elements))]
    units.sort(key=lambda u: -u.error)
    return SensitivityReport("synthetic", 4, "layer", GROUP_SIZE, "float32", 64, 64, ["p"], 0, [0.5], units,
                             {u.name: u.elements for u in units}, fixed)


REPORT = synthetic_report(errors=[1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6, 1e-7],
                          elements=[4096, 8192, 4096, 16384, 8192, 4096, 16384, 8192])


def test_auto_average_is_met_and_the_sensitive_layers_get_more_bits():
    plan = allocate(REPORT, parse_budget("auto:4.5"))
    assert 4.3 <= plan.average_bits <= 4.5
    assert plan.layers["layer0"] >= 6 and plan.layers["layer7"] == 3
    bits = [plan.layers[f"layer{i}"] for i in range(8)]
    assert bits[0] > bits[-1] and bits[0] >= max(bits[1:])
    assert plan.made_by == "auto:4.5" and plan.predicted_error < sum(u.error * 2 for u in REPORT.units)


def test_auto_4_has_the_bytes_of_uniform_4_bit_or_fewer_and_a_lower_predicted_error():
    plan = allocate(REPORT, parse_budget("auto:4"))
    uniform = {name: 4 for name in REPORT.layer_sizes}
    assert plan.transformer_bytes <= plan_bytes(uniform, REPORT.layer_sizes, REPORT.fixed_bytes)
    assert plan.predicted_error < sum(u.error for u in REPORT.units)  # uniform 4-bit's predicted error


def test_a_memory_budget_is_respected_and_one_below_the_smallest_model_refused():
    smallest = REPORT.fixed_bytes + sum(quantized_weight_bytes(n, 3) for n in REPORT.layer_sizes.values())
    budget = smallest + 20000
    plan = allocate(REPORT, parse_budget(f"auto:{budget / 2**20}MB"))
    assert smallest < plan.transformer_bytes <= budget
    with pytest.raises(InvalidRequest, match="below the smallest possible transformer") as error:
        allocate(REPORT, parse_budget(f"auto:{(smallest - 1) / 2**20}MB"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value, message", [
    ("auto:2.5", "below the smallest possible model"),
    ("auto:9", "above the most a plan gives"),
    ("auto:lots", "give the average bits"),
])
def test_bad_budgets_are_one_line_errors(value, message):
    with pytest.raises(InvalidRequest, match=message) as error:
        parse_budget(value)
    assert "\n" not in str(error.value)


def test_plan_files_round_trip(tmp_path):
    plan = allocate(REPORT, parse_budget("auto:5"), model="synthetic")
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert {"format", "model", "group_size", "layers", "average_bits", "transformer_bytes", "made_by"} <= set(data)
    assert data["format"] == 1 and data["group_size"] == 64 and data["made_by"] == "auto:5"
    again = load_plan(path)
    assert again.to_dict() == plan.to_dict()
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ({"format": 2, "layers": {"a": 4}}, "unknown plan format 2"),
    ({"format": 1, "group_size": 128, "layers": {"a": 4}}, "group size 128 is not supported"),
    ({"format": 1, "layers": {"a": 4, "b": 7}}, "layer b: unsupported bits 7"),
    ({"format": 1, "layers": {}}, "names no layers"),
])
def test_bad_plan_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InvalidRequest, match=message) as error:
        load_plan(path)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny")
    index = json.loads((folder / "model_index.json").read_text())  # pad prompts to 64 tokens: faster passes
    (folder / "model_index.json").write_text(json.dumps({**index, "max_sequence_length": 64}))
    return folder


def test_a_plan_naming_a_layer_the_model_lacks_is_refused(model, tmp_path):
    plan = QuantPlan({"transformer_blocks.0.attn.to_q": 4, "transformer_blocks.9.attn.to_q": 4})
    with pytest.raises(InvalidRequest, match="layer 'transformer_blocks.9.attn.to_q' is not a layer"):
        check_plan_layers(plan, transformer_structure(model))
    with pytest.raises(InvalidRequest, match="layer 'x_embedder' stays in full precision"):
        check_plan_layers(QuantPlan({"x_embedder": 4}), transformer_structure(model))
    plan.save(tmp_path / "unknown.json")
    assert main(["compare", "--model", str(model), "--prompt", "x", "--width", "64", "--height", "64",
                 "--precisions", f"bf16,{tmp_path / 'unknown.json'}"]) == 2


def test_parse_quantize_spec(model, tmp_path):
    assert parse_quantize_spec(None, model) is None
    assert parse_quantize_spec("bf16", model) is None
    assert parse_quantize_spec("4", model) == 4
    with pytest.raises(InvalidRequest, match="auto:BITS"):
        parse_quantize_spec("7", model)
    with pytest.raises(InvalidRequest, match="below the smallest possible transformer"):
        parse_quantize_spec("auto:0.01MB", model)  # refused before anything is loaded
    layers = {"transformer_blocks.0.attn.to_q": 8, "transformer_blocks.0.ff.linear_in": 3}
    QuantPlan(layers).save(tmp_path / "plan.json")
    assert parse_quantize_spec(str(tmp_path / "plan.json"), model) == layers


def test_plan_command_then_generate_and_show(model, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", str(model), "--quantize", "auto:4.5", "--size", "64", "--prompt", "a ring",
                 "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    plan = load_plan(out)
    assert abs(plan.average_bits - 4.5) <= 0.25 and len(set(plan.layers.values())) > 1
    assert main(["plan", "--model", str(model), "--quantize", "auto:4.5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    layers = parse_quantize_spec(str(out), model)
    mixed = Flux2Pipeline.load(model, quantize=layers)
    assert mixed.info.transformer_bits == "mixed" and mixed.info.quantization[0].layers == plan.layers
    assert mixed.info.quantization[0].nbytes == plan.transformer_bytes
    assert np.asarray(mixed.generate("a ring", seed=1, steps=2, width=64, height=64).image).std() > 0

    assert main(["plan", "show", str(out), "--model", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "mixed 3-" in shown and "auto:4.5" in shown and "transformer_blocks.0.attn.to_q" in shown
    assert main(["plan", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == plan.layers
    assert main(["plan", "--model", str(model), "--memory-budget", "0.00001", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "below the smallest possible transformer" in err and len(err.strip().splitlines()) == 1
