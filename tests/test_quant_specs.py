"""Precision specs BITS[:METHOD[:GROUP]] everywhere: parsing, one-line refusals on every command, exact bytes,
and 2 bits and groups of 32 and 128 end to end (generate, save, reload), with what a saved model records."""

import json
import re

import mlx.core as mx
import numpy as np
import pytest

from quantbench.cli.main import main
from quantbench.core.catalog import entry_from_folder
from quantbench.core.errors import InvalidRequest
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.lab.budgets import parse_budget
from quantbench.core.lab.layer_bytes import quantizable_layers
from quantbench.core.lab.structure import transformer_structure
from quantbench.core.memory_model import Plan, predict
from quantbench.core.quant import QuantSpec, all_methods, choices, menu_specs, parse_spec
from quantbench.core.random_model import write_random_model
from quantbench.core.safetensors import LAYOUT_KEY
from quantbench.core.saved_models import save_quantized

DATA_FREE = [name for name, method in all_methods().items() if not method.needs_calibration]


@pytest.mark.parametrize("text, spec", [
    ("4", QuantSpec(4)), ("4:mse", QuantSpec(4, 64, "mse")), ("3:hqq:32", QuantSpec(3, 32, "hqq")),
    ("2:rtn:128", QuantSpec(2, 128)), (" 8:RTN ", QuantSpec(8)), ("bf16", None), ("none", None), ("unquantized", None),
])
def test_good_specs(text, spec):
    assert parse_spec(text) == spec
    if spec is not None:
        assert parse_spec(str(spec)) == spec


def test_menus_are_offered_every_method_bits_and_group_and_which_ones_calibrate():
    offered = choices()
    assert {m.name: m.calibrates for m in offered.methods} == {"rtn": False, "mse": False, "hqq": False,
                                                              "gptq": True, "awq": True}
    assert offered.bits == (8, 6, 5, 4, 3, 2) and offered.group_sizes == (32, 64, 128)
    assert offered.default == parse_spec("4") == QuantSpec(4, 64, "rtn")
    assert QuantSpec(2, 32, "gptq") not in menu_specs() and QuantSpec(2, 32, "gptq") in menu_specs(calibrated=True)
    assert all(parse_spec(str(spec)) == spec for spec in menu_specs(calibrated=True))


BAD_SPECS = ["4:foo", "7", "3:gptq:48", "3:hqq:48", "1", "0", "16x", "4.5", "-4", "4:", ":4", "4:rtn:",
             "4:rtn:64:1", "4::64", "hqq", "4:hqq:sixty"]


@pytest.mark.parametrize("text", BAD_SPECS)
def test_bad_specs_are_one_line_errors(text):
    with pytest.raises(InvalidRequest, match="unsupported quantization") as error:
        parse_spec(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("auto:2.5:bar", "the method must be one of"), ("auto:2.5:hqq:48", "the group size must be one of"),
    ("auto:2.5:hqq:32:1", "auto:BUDGET"), ("auto:2.5:", "the method must be one of"), ("auto::hqq", "give the average"),
])
def test_bad_budgets_are_one_line_errors(text, message):
    with pytest.raises(InvalidRequest, match=message) as error:
        parse_budget(text)
    assert "\n" not in str(error.value)


def test_budgets_carry_their_method_and_group():
    budget = parse_budget("auto:2.5:hqq:32")
    assert (budget.kind, budget.value, budget.method, budget.group_size) == ("bits", 2.5, "hqq", 32)
    assert budget.label == "auto:2.5:hqq:32" and budget.spec(3) == QuantSpec(3, 32, "hqq")
    assert parse_budget("auto:1GB:mse").label == "auto:1GB:mse" and parse_budget("auto:4").label == "auto:4"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("src") / "tiny", "tiny")


COMMANDS = {
    "generate": lambda src, spec, tmp: ["generate", "--model", str(src), "--prompt", "a ring", "--steps", "1",
                                        "--quantize", spec, "--out", str(tmp / "x.png")],
    "generate-te": lambda src, spec, tmp: ["generate", "--model", str(src), "--prompt", "a ring", "--steps", "1",
                                           "--text-encoder-quantize", spec, "--out", str(tmp / "x.png")],
    "save": lambda src, spec, tmp: ["save", "--model", str(src), "--quantize", spec, "--out", str(tmp / "saved")],
    "compare": lambda src, spec, tmp: ["compare", "--model", str(src), "--prompt", "a ring", "--width", "64",
                                       "--height", "64", "--precisions", f"bf16,{spec}"],
    "eval": lambda src, spec, tmp: ["eval", "--model", "demo-turbo", "--limit", "1", "--precisions", f"bf16,{spec}"],
    "bench": lambda src, spec, tmp: ["bench", "--random-weights", "tiny", "--precisions", f"bf16,{spec}"],
    "plan": lambda src, spec, tmp: ["plan", "--model", str(src), "--quantize", f"auto:3:{spec.split(':', 1)[-1]}",
                                    "--out", str(tmp / "p.json")],
    "sensitivity": lambda src, spec, tmp: ["sensitivity", "--model", str(src), "--bits", spec],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spec", ["4:foo", "7", "3:gptq:48"])
def test_every_command_refuses_a_bad_spec_in_one_line(source, tmp_path, capsys, command, spec):
    assert main(COMMANDS[command](source, spec, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "unsupported quantization" in err or "must be one of" in err, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_auto_with_a_bad_method_is_refused_everywhere(source, tmp_path, capsys):
    for args in (["generate", "--model", str(source), "--prompt", "a", "--quantize", "auto:2.5:bar", "--out",
                  str(tmp_path / "x.png")],
                 ["compare", "--model", str(source), "--prompt", "a", "--precisions", "bf16,auto:2.5:bar"],
                 ["plan", "--model", str(source), "--quantize", "auto:2.5:bar", "--out", str(tmp_path / "p.json")],
                 ["save", "--model", str(source), "--quantize", "auto:2.5:bar", "--out", str(tmp_path / "s")]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the method must be one of" in err, err
    # The commands that take no mixed plan refuse it in one line too, naming it.
    for args in (["eval", "--model", "demo-turbo", "--limit", "1", "--precisions", "bf16,auto:2.5:bar"],
                 ["bench", "--random-weights", "tiny", "--precisions", "bf16,auto:2.5:bar"],
                 ["sensitivity", "--model", str(source), "--bits", "auto:2.5:bar"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'auto:2.5:bar'" in err, err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Bytes: the memory model, the report and the engine agree for every bits and group size
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [QuantSpec(2, 32), QuantSpec(3, 128, "mse"), QuantSpec(5, 32, "hqq"), QuantSpec(8)])
def test_predicted_bytes_are_the_engines_for_every_bits_and_group(source, spec):
    pipe = Flux2Pipeline.load(source, quantize=spec, text_encoder_quantize=QuantSpec(4, 128), dtype=mx.float32)
    prediction = predict(entry_from_folder(source), Plan(backend="cpu", dtype="float32", transformer_bits=spec,
                                                         text_encoder_bits=QuantSpec(4, 128)))
    reports = {q.component: q for q in pipe.info.quantization}
    assert prediction.component_bytes("transformer") == reports["transformer"].nbytes
    assert prediction.component_bytes("text_encoder") == reports["text_encoder"].nbytes
    quantized = reports["transformer"].params[spec.label]
    layers = [m for _, m in pipe.transformer.named_modules() if hasattr(m, "scales")]
    stored = sum(m.weight.nbytes + m.scales.nbytes + m.biases.nbytes for m in layers)
    assert stored * 8 / quantized == pytest.approx(spec.bits + 32 / spec.group_size)


def _mixed_plan(source, choices) -> dict:
    """Each quantizable layer gets the next of `choices` whose group size divides its input size."""
    structure = transformer_structure(source)
    plan = {}
    for i, path in enumerate(quantizable_layers(structure)):
        width = dict(structure.named_modules())[path].weight.shape[-1]
        plan[path] = next(c for c in choices[i % len(choices):] + choices if width % c.group_size == 0)
    return plan


def test_a_mixed_plan_is_predicted_layer_by_layer(source):
    plan = _mixed_plan(source, [QuantSpec(2, 32), QuantSpec(4, 128, "hqq"), QuantSpec(8), QuantSpec(3, 64, "mse")])
    assert len(set(plan.values())) >= 3
    pipe = Flux2Pipeline.load(source, quantize=plan, dtype=mx.float32)
    prediction = predict(entry_from_folder(source), Plan(backend="cpu", dtype="float32", transformer_bits=plan))
    assert prediction.component_bytes("transformer") == pipe.info.quantization[0].nbytes
    assert pipe.info.quantization[0].layers == plan


# ---------------------------------------------------------------------------------------------
# End to end: generate, save, reload
# ---------------------------------------------------------------------------------------------

def _pixels(path):
    from PIL import Image
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("spec", ["2", "2:rtn:32", "3:rtn:128", "2:hqq:32", "3:mse:128"])
def test_two_bits_and_every_group_size_from_generate_to_save_to_reload(source, tmp_path, capsys, spec):
    common = ["--prompt", "a red star", "--steps", "2", "--seed", "3", "--width", "64", "--height", "64"]
    fly, again = tmp_path / "fly.png", tmp_path / "again.png"
    assert main(["generate", "--model", str(source), *common, "--quantize", spec, "--out", str(fly), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantize"] == QuantSpec(int(spec[0])).to_json() if ":" not in spec else summary["quantize"] == spec
    assert main(["save", "--model", str(source), "--quantize", spec, "--out", str(tmp_path / "saved")]) == 0
    assert main(["generate", "--model", str(tmp_path / "saved"), *common, "--out", str(again)]) == 0
    assert np.array_equal(_pixels(fly), _pixels(again))
    loaded = Flux2Pipeline.load(tmp_path / "saved")
    assert set(loaded.info.quantization[0].layers.values()) == {parse_spec(spec)}


def _image(model):
    return np.asarray(model.generate("a red star", steps=2, width=64, height=64, seed=4).image)


@pytest.mark.parametrize("method", DATA_FREE)
def test_saved_models_of_every_method_round_trip_bitwise(source, tmp_path, method):
    spec = QuantSpec(3, 32, method)
    on_the_fly = Flux2Pipeline.load(source, quantize=spec, text_encoder_quantize=QuantSpec(4, 64, method))
    out = save_quantized(on_the_fly, tmp_path / method)
    loaded = Flux2Pipeline.load(out)
    assert np.array_equal(_image(on_the_fly), _image(loaded))
    for name in ("transformer", "text_encoder"):
        saved = _record(out / name)
        assert saved["format"] == 2 and saved["version"] and saved["calibration"] is None
        assert {json.dumps(v, sort_keys=True) for v in saved["layers"].values()} == {
            json.dumps({"bits": 3 if name == "transformer" else 4, "group_size": 32 if name == "transformer" else 64,
                        "method": method}, sort_keys=True)}


def _record(folder) -> dict:
    _, metadata = mx.load(str(next(folder.glob("*.safetensors"))), return_metadata=True)
    return json.loads(metadata["quantbench"])


def test_a_mixed_save_records_each_layer_and_round_trips_bitwise(source, tmp_path):
    plan = _mixed_plan(source, [QuantSpec(2, 32, "hqq"), QuantSpec(4, 128), QuantSpec(8, 64, "mse"), QuantSpec(3)])
    layers = list(plan)
    on_the_fly = Flux2Pipeline.load(source, quantize=plan)
    out = save_quantized(on_the_fly, tmp_path / "mixed")
    loaded = Flux2Pipeline.load(out)
    assert loaded.info.quantization[0].layers == plan and loaded.info.quantization[0].prequantized
    assert np.array_equal(_image(on_the_fly), _image(loaded))
    recorded = _record(out / "transformer")["layers"]
    assert {p: QuantSpec(v["bits"], v["group_size"], v["method"]) for p, v in recorded.items()} == plan
    with pytest.raises(InvalidRequest, match="cannot be requantized to another plan"):
        Flux2Pipeline.load(out, quantize={layers[0]: QuantSpec(4)})
    assert Flux2Pipeline.load(out, quantize=plan).info.quantization[0].layers == plan  # asking for what it is


def test_a_saved_model_refuses_to_be_quantized_again(source, tmp_path, capsys):
    out = save_quantized(Flux2Pipeline.load(source, quantize=QuantSpec(3, 64, "hqq")), tmp_path / "q3")
    for other in (QuantSpec(3), QuantSpec(3, 32, "hqq"), QuantSpec(4, 64, "hqq")):
        with pytest.raises(InvalidRequest, match="holds a 3-bit hqq transformer .* cannot be requantized"):
            Flux2Pipeline.load(out, quantize=other)
    assert main(["generate", "--model", str(out), "--prompt", "a", "--quantize", "4", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "cannot be requantized" in capsys.readouterr().err


def test_folders_saved_before_methods_still_load(source, tmp_path):
    """Format 1 ({path: bits}, one group size) loads as round-to-nearest in groups of 64, bit for bit."""
    on_the_fly = Flux2Pipeline.load(source, quantize=4)
    out = save_quantized(on_the_fly, tmp_path / "v1")
    shard = next((out / "transformer").glob("*.safetensors"))
    tensors, metadata = mx.load(str(shard), return_metadata=True)
    record = json.loads(metadata["quantbench"])
    old = {"format": 1, "bits": 4, "group_size": 64, "kept": record["kept"], "source": record["source"],
           "revision": record["revision"], "version": "0.1.0",
           "layers": {p: v["bits"] for p, v in record["layers"].items()}}
    # As that quantbench wrote it: without the layout digest (which mx.save_safetensors' own layout would not match)
    metadata = {key: value for key, value in metadata.items() if key != LAYOUT_KEY}
    mx.save_safetensors(str(shard), tensors, metadata={**metadata, "quantbench": json.dumps(old)})
    loaded = Flux2Pipeline.load(out)
    assert set(loaded.info.quantization[0].layers.values()) == {QuantSpec(4)}
    assert np.array_equal(_image(on_the_fly), _image(loaded))


def test_unknown_or_corrupt_records_are_one_line(source, tmp_path):
    from quantbench.core.errors import CheckpointError
    out = save_quantized(Flux2Pipeline.load(source, quantize=4), tmp_path / "bad")
    shard = next((out / "transformer").glob("*.safetensors"))
    tensors, metadata = mx.load(str(shard), return_metadata=True)
    metadata = {key: value for key, value in metadata.items() if key != LAYOUT_KEY}  # MLX lays the tensors out anew
    for record, message in (({"format": 9, "layers": {}}, "unknown format 9"),
                            ({"format": 2, "layers": {"x": {"bits": 7, "group_size": 64, "method": "rtn"}}},
                             "corrupt quantbench metadata")):
        mx.save_safetensors(str(shard), tensors, metadata={**metadata, "quantbench": json.dumps(record)})
        with pytest.raises(CheckpointError, match=message) as error:
            Flux2Pipeline.load(out)
        assert "\n" not in str(error.value)


def test_metadata_that_disagrees_with_the_tensors_is_one_line_naming_the_layer(source, tmp_path, capsys):
    """A saved 8-bit model whose quantbench record was edited: groups of 128 over the tiny model's 64-wide inputs
    raised MLX's ValueError as a traceback; 4 bits over 8-bit tensors, or no record at all over quantized tensors,
    said config.json did not match the weights (config.json was never touched)."""
    out = save_quantized(Flux2Pipeline.load(source, quantize=8), tmp_path / "q8")
    shard = next((out / "transformer").glob("*.safetensors"))
    tensors, metadata = mx.load(str(shard), return_metadata=True)
    metadata = {key: value for key, value in metadata.items() if key != LAYOUT_KEY}  # MLX lays the tensors out anew
    record = json.loads(metadata["quantbench"])

    def every_layer(**change):
        return {**metadata, "quantbench": json.dumps({**record, "layers": {p: {**v, **change}
                                                                           for p, v in record["layers"].items()}})}

    cases = ((every_layer(group_size=128), "says layer .* is quantized in groups of 128, which its input size 64 "
                                           "cannot be"),
             (every_layer(bits=4), r"has shape \[\d+, \d+\], but the quantbench metadata says .* is 4-bit in groups of "
                                   r"64, stored as \[\d+, \d+\]: the metadata and the tensors disagree"),
             ({k: v for k, v in metadata.items() if k != "quantbench"},
              "is stored quantized .*but no quantbench metadata says the layer is quantized"))
    for edited, message in cases:
        mx.save_safetensors(str(shard), tensors, metadata=edited)
        assert main(["generate", "--model", str(out), "--prompt", "a ring", "--steps", "1", "--width", "64",
                     "--height", "64", "--out", str(tmp_path / "ring.png"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"quantbench: error: {shard}: "), err
        assert re.search(message, err), err
        assert not (tmp_path / "ring.png").exists()


def test_the_python_api_takes_a_spec_as_users_write_it():
    """load_pipeline(quantize="3:hqq:32") said "unsupported quantization '3:hqq:32'" (only ints and QuantSpec)."""
    import mlx.nn as nn

    from quantbench.core.pipelines import load_pipeline
    from quantbench.core.quant import QuantSpec, as_spec
    assert as_spec("3:hqq:32") == QuantSpec(3, 32, "hqq") and as_spec(" 4 ") == QuantSpec(4)
    pipeline = load_pipeline("demo-turbo", quantize="3:hqq:32", allow_download=False)
    layers = [m for _, m in pipeline.transformer.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert layers and all((m.bits, m.group_size) == (3, 32) for m in layers)
