"""Mixed-precision plans: the search under a budget, plan files, --quantize values, one-line errors."""

import json

import numpy as np
import pytest

from quantbench.cli.main import main
from quantbench.core.errors import InvalidRequest
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.errors import Cancelled
from quantbench.core.generation import CancelToken
from quantbench.core.lab.planner import make_plan, search_plan
from quantbench.core.lab.budgets import parse_budget
from quantbench.core.lab.layer_bytes import plan_bytes, quantizable_layers
from quantbench.core.lab.plans import QuantPlan, check_plan_layers, load_plan
from quantbench.core.lab.structure import transformer_structure
from quantbench.core.lab.quantize_option import parse_quantize_spec
from quantbench.core.quant import QuantSpec, quantized_weight_bytes
from quantbench.core.random_model import write_random_model


# A synthetic model: unit -> (weights, sensitivity). Its error adds up over units and falls 4x per bit, as
# rounding error does; layer0 is very sensitive for its size, layer7 hardly at all.
UNITS = {"layer0": (4096, 1e3), "layer1": (8192, 5e2), "layer2": (4096, 1e2), "layer3": (16384, 5e1),
         "layer4": (8192, 1e1), "layer5": (4096, 5.0), "layer6": (16384, 1.0), "layer7": (8192, 0.1)}
SIZES = {name: n for name, (n, _) in UNITS.items()}


def additive_error(config: dict[str, int]) -> float:
    return sum(UNITS[name][1] * 4.0 ** -bits for name, bits in config.items())


def test_auto_4_trades_bits_from_insensitive_to_sensitive_units_within_uniform_4_bits_bytes():
    result = search_plan(SIZES, parse_budget("auto:4"), additive_error)
    assert result.start_bits == 4 and result.start_error == additive_error({n: 4 for n in SIZES})
    assert result.bits["layer0"] == 5 and result.bits["layer7"] == 3
    assert result.error < result.start_error / 2 and result.error == additive_error(result.bits)
    assert sum(SIZES[n] * b for n, b in result.bits.items()) <= 4 * sum(SIZES.values())
    # one draw at the start, one step up and one down per unit, one per trade tried
    assert 1 + 2 * len(SIZES) < result.evaluations <= 1 + 3 * len(SIZES)


def test_a_trade_that_does_not_help_is_not_kept():
    equal = {f"layer{i}": 4096 for i in range(6)}  # same size, same sensitivity: uniform is best
    result = search_plan(equal, parse_budget("auto:4"), lambda config: sum(4.0 ** -b for b in config.values()))
    assert set(result.bits.values()) == {4} and result.moves == [] and result.error == result.start_error


def test_slack_in_the_budget_buys_upgrades_without_downgrades():
    result = search_plan(SIZES, parse_budget("auto:4.5"), additive_error)
    assert result.bits["layer0"] == 5 and list(result.bits.values()).count(5) > list(result.bits.values()).count(3)
    assert result.moves[0]["down"] == []  # the first upgrades are paid by the slack
    assert 4 < sum(SIZES[n] * b for n, b in result.bits.items()) / sum(SIZES.values()) <= 4.5


def test_a_budget_for_8_bits_everywhere_needs_no_search():
    result = search_plan(SIZES, parse_budget("auto:8"), additive_error)
    assert set(result.bits.values()) == {8} and result.evaluations == 1


def test_a_memory_budget_is_respected_and_one_below_the_smallest_model_refused():
    fixed = 1000
    smallest = fixed + sum(quantized_weight_bytes(n, QuantSpec(2)) for n in SIZES.values())
    budget = smallest + 2000  # less than uniform 3-bit needs: the search starts at 2 bits
    result = search_plan(SIZES, parse_budget(f"auto:{budget / 2**20}MB"), additive_error, fixed=fixed)
    assert smallest < plan_bytes(result.bits, SIZES, fixed) <= budget and result.start_bits == 2
    with pytest.raises(InvalidRequest, match="below the smallest possible transformer") as error:
        search_plan(SIZES, parse_budget(f"auto:{(smallest - 1) / 2**20}MB"), additive_error, fixed=fixed)
    assert "\n" not in str(error.value)


def test_a_cancelled_search_stops():
    cancel = CancelToken()
    calls = []

    def evaluate(config):
        calls.append(config)
        if len(calls) == 3:
            cancel.cancel()
        return additive_error(config)

    with pytest.raises(Cancelled):
        search_plan(SIZES, parse_budget("auto:4"), evaluate, cancel=cancel)
    assert len(calls) == 3


@pytest.mark.parametrize("value, message", [
    ("auto:1.5", "below the smallest possible model"),
    ("auto:9", "above the most a plan gives"),
    ("auto:lots", "give the average bits"),
    ("auto:nan", "give the average bits"),  # was "an average of nan bits is below the smallest possible model"
    ("auto:inf", "give the average bits"),  # was "... inf bits is below ..."
])
def test_bad_budgets_are_one_line_errors(value, message):
    with pytest.raises(InvalidRequest, match=message) as error:
        parse_budget(value)
    assert "\n" not in str(error.value)


def test_plan_files_round_trip(tmp_path):
    plan = QuantPlan({"a.to_q": 5, "a.to_k": 3}, model="synthetic", average_bits=4.0, transformer_bytes=1234,
                     made_by="auto:4", search={"start_bits": 4, "psnr_db": 40.5, "start_psnr_db": 39.0})
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert {"format", "model", "group_size", "layers", "average_bits", "transformer_bytes", "made_by"} <= set(data)
    assert data["format"] == 1 and data["group_size"] == 64 and data["made_by"] == "auto:4"
    again = load_plan(path)
    assert again.to_dict() == plan.to_dict()
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nested too deep: was a RecursionError traceback
    ({"format": 2, "layers": {"a": 4}}, "unknown plan format 2"),
    ({"format": 1, "group_size": 48, "layers": {"a": 4}}, "group size 48 is not supported"),
    ({"format": 1, "layers": {"a": 4, "b": 7}}, "layer b: unsupported bits 7"),
    ({"format": 1, "layers": {}}, "names no layers"),
])
def test_bad_plan_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InvalidRequest, match=message) as error:
        load_plan(path)
    assert "\n" not in str(error.value)


SHOWN_PLAN = {"format": 1, "model": "m", "group_size": 64, "layers": {"a.to_q": 4, "a.to_k": "3:hqq:32"},
              "average_bits": 3.5, "transformer_bytes": 1234, "made_by": "auto:3.5", "dtype": "float32",
              "sensitivity": {"method": "search from uniform", "steps": 1},
              "search": {"start_bits": 3, "start_psnr_db": 40.5, "psnr_db": 42.0, "draws": 5, "trades": 2}}


def test_plan_show_says_what_is_wrong_with_any_field_in_one_line(tmp_path, capsys):
    """`plan show` of a plan whose descriptive fields were edited (a text transformer_bytes, a list as the search)
    raised from the printing: "bad operand type for abs(): 'str'". Any JSON value in any field, or a field left
    out, is shown or refused in one line."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    def fields(data, prefix=()):
        for key, value in data.items():
            yield prefix + (key,)
            if isinstance(value, dict):
                yield from fields(value, prefix + (key,))

    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6))
    values = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                          max_leaves=5)
    path = tmp_path / "plan.json"

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(list(fields(SHOWN_PLAN))), values, st.booleans(), st.sampled_from([[], ["--json"]]))
    def shown(field, value, left_out, options):
        data = json.loads(json.dumps(SHOWN_PLAN))
        node = data
        for key in field[:-1]:
            node = node[key]
        if left_out:
            node.pop(field[-1])
        else:
            node[field[-1]] = value
        path.write_text(json.dumps(data))
        capsys.readouterr()
        code = main(["plan", "show", str(path), *options])
        err = capsys.readouterr().err.splitlines()
        assert (code, err) == (0, []) or (code == 2 and len(err) == 1 and err[0].startswith("quantbench: error:"))

    shown()
    path.write_text(json.dumps({**SHOWN_PLAN, "transformer_bytes": "1 GB"}))
    assert main(["plan", "show", str(path)]) == 2
    assert "transformer_bytes is '1 GB', expected a whole number (or leave it out)" in capsys.readouterr().err


@pytest.mark.parametrize("kind, message", [("folder", "a folder, not a plan file"),
                                           ("fifo", "not a regular file"), ("missing", "no such plan file")])
def test_a_plan_that_is_not_a_file_says_what_it_is(tmp_path, kind, message):
    """A folder or a FIFO given as a plan was said to be missing."""
    import os
    path = tmp_path / "plan.json"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(InvalidRequest, match=message):
        load_plan(path)


def test_a_plan_file_larger_than_any_plan_is_refused_before_it_is_read(tmp_path, capsys):
    """A 17 MB plan (a million made-up layers, valid JSON) was read, parsed and checked twice before `save` said its
    first layer was not the model's: half a minute here (44 MB), minutes on a loaded machine. A plan names each
    layer once (the largest models' are about 100 KB): a file over MAX_PLAN_BYTES is refused from its size."""
    from quantbench.core.lab.plans import MAX_PLAN_BYTES
    path = tmp_path / "huge.json"
    layers = ",".join(f'"transformer_blocks.{i}.attn.to_q":4' for i in range(MAX_PLAN_BYTES // 36 + 1))
    path.write_text('{"format": 1, "layers": {' + layers + "}}")
    assert path.stat().st_size > MAX_PLAN_BYTES
    for argv in (["save", "--model", "demo", "-q", str(path), "--out", str(tmp_path / "out")],
                 ["plan", "show", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "too large for a quantbench plan" in err, err
    assert not (tmp_path / "out").exists()


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
    assert parse_quantize_spec("4", model) == QuantSpec(4)
    assert parse_quantize_spec("3:rtn:32", model) == QuantSpec(3, 32)
    with pytest.raises(InvalidRequest, match="auto:BITS"):
        parse_quantize_spec("7", model)
    with pytest.raises(InvalidRequest, match="below the smallest possible transformer"):
        parse_quantize_spec("auto:0.01MB", model)  # refused before anything is loaded
    layers = {"transformer_blocks.0.attn.to_q": 8, "transformer_blocks.0.ff.linear_in": 3}
    QuantPlan(layers).save(tmp_path / "plan.json")
    assert parse_quantize_spec(str(tmp_path / "plan.json"), model) == {p: QuantSpec(b) for p, b in layers.items()}


def test_plan_command_then_generate_and_show(model, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", str(model), "--quantize", "auto:4", "--size", "64", "--steps", "3",
                 "--prompt", "a ring", "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    plan = load_plan(out)
    assert plan.average_bits <= 4 and plan.layers.keys() == quantizable_layers(transformer_structure(model)).keys()
    assert len(set(plan.layers.values())) > 1 and plan.search["psnr_db"] > plan.search["start_psnr_db"]
    assert main(["plan", "--model", str(model), "--quantize", "auto:4.5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    layers = parse_quantize_spec(str(out), model)
    mixed = Flux2Pipeline.load(model, quantize=layers)
    assert mixed.info.transformer_bits == "mixed" and mixed.info.quantization[0].layers == plan.layers
    assert mixed.info.quantization[0].nbytes == plan.transformer_bytes
    assert np.asarray(mixed.generate("a ring", seed=1, steps=2, width=64, height=64).image).std() > 0

    assert main(["plan", "show", str(out), "--model", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "mixed 3-" in shown and "auto:4" in shown and "transformer_blocks.0.attn.to_q" in shown
    assert "probe pictures:" in shown
    assert main(["plan", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == {p: s.bits for p, s in plan.layers.items()}
    assert main(["plan", "--model", str(model), "--memory-budget", "0.00001", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "below the smallest possible transformer" in err and len(err.strip().splitlines()) == 1


def test_make_plan_searches_on_the_model_and_leaves_it_unchanged(model):
    from mlx.utils import tree_flatten
    pipeline = Flux2Pipeline.load(model)
    before = {k: np.array(v) for k, v in tree_flatten(pipeline.transformer.parameters())}
    plan = make_plan(pipeline, parse_budget("auto:4"), granularity="block", prompts=["a ring"], size=64, steps=3)
    after = dict(tree_flatten(pipeline.transformer.parameters()))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], np.array(after[k])) for k in before)
    uniform = {path: QuantSpec(4) for path in plan.layers}
    assert plan.transformer_bytes <= plan_bytes(uniform, quantizable_layers(pipeline.transformer), 0) + \
        (plan.transformer_bytes - plan_bytes(plan.layers, quantizable_layers(pipeline.transformer), 0))
    assert plan.sensitivity["granularity"] == "block" and plan.search["psnr_db"] >= plan.search["start_psnr_db"]
    assert "a ring" not in pipeline._prompt_cache  # the probe's prompts are not left in the caller's cache


def test_make_plan_refuses_a_quantized_transformer(model):
    with pytest.raises(InvalidRequest, match="already quantized"):
        make_plan(Flux2Pipeline.load(model, quantize=4), parse_budget("auto:4"))


def test_plan_and_sensitivity_take_calibration_prompts_for_a_calibrating_budget_only(model, tmp_path, capsys,
                                                                                   monkeypatch):
    """`plan -q auto:3:gptq` calibrates: it takes --calibration-prompts as generate and save do (read before
    loading), and a budget that calibrates nothing refuses them in one line; so does sensitivity --plan-out."""
    from quantbench.core.lab import planner
    model = str(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ring\na blue square on the left\n")
    probe = ["--size", "32", "--steps", "1", "--prompt", "a red star", "--granularity", "block"]
    for command in (["plan", "--model", model, *probe, "--out", str(tmp_path / "p.json")],
                    ["sensitivity", "--model", model, *probe, "--plan-out", str(tmp_path / "p.json")]):
        assert main([*command, "-q", "auto:3", "--calibration-prompts", str(prompts)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nothing here calibrates (auto:3)" in err[0], err
        assert main([*command, "-q", "auto:3:gptq", "--calibration-prompts", str(tmp_path / "none.txt")]) == 2
        assert "none.txt: no such file" in capsys.readouterr().err
        assert not (tmp_path / "p.json").exists()

    used = []
    real = planner.layer_statistics
    monkeypatch.setattr(planner, "layer_statistics",
                        lambda pipeline, layers, options: used.append(options.prompts) or real(pipeline, layers, options))
    assert main(["plan", "--model", model, *probe, "-q", "auto:3:gptq", "--calibration-prompts", str(prompts),
                 "--out", str(tmp_path / "p.json"), "--quiet"]) == 0
    assert used == [("a red ring", "a blue square on the left")]
    assert load_plan(tmp_path / "p.json").layers


def test_sensitivity_plan_out_replaces_a_plan_but_not_another_file(tmp_path, monkeypatch, capsys):
    """`sensitivity --plan-out FILE` replaced any file there, unasked (`--plan-out model/transformer/config.json`
    put a plan in the config's place); a plan from an earlier search it still replaces."""
    from quantbench.core import pipelines
    from quantbench.cli.sensitivity import check_plan_replaceable
    config = tmp_path / "config.json"
    config.write_text('{"num_layers": 5}')
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["sensitivity", "--model", "demo", "-q", "auto:4.5", "--plan-out", str(config)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"quantbench: error: {config} exists and is not a quantbench plan: --plan-out replaces only a plan; choose "
        "another file"]
    assert config.read_text() == '{"num_layers": 5}'
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(SHOWN_PLAN))
    check_plan_replaceable(plan)  # an earlier plan: taken
    check_plan_replaceable(tmp_path / "new.json")


def test_a_group_size_that_does_not_divide_some_layers_leaves_them_out_of_plans_and_sensitivity(model, tmp_path,
                                                                                              capsys):
    """The tiny model's 64-wide inputs cannot be grouped by 128: `plan -q auto:3:rtn:128` and `sensitivity --bits
    3:rtn:128` raised MLX's ValueError as a traceback; they now search and measure the layers that can be, and the
    plan they write loads."""
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", str(model), "--quantize", "auto:3:rtn:128", "--size", "64", "--steps", "2",
                 "--granularity", "block", "--prompt", "a ring", "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    structure = transformer_structure(model)
    wide = quantizable_layers(structure, group_size=128)
    assert 0 < len(wide) < len(quantizable_layers(structure))
    assert load_plan(out).layers == {path: QuantSpec(3, 128) for path in wide}
    assert main(["generate", "--model", str(model), "--quantize", str(out), "--prompt", "a ring", "--steps", "1",
                 "--width", "64", "--height", "64", "--out", str(tmp_path / "ring.png"), "--quiet"]) == 0
    assert (tmp_path / "ring.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sensitivity", "--model", str(model), "--bits", "3:rtn:128", "--size", "64", "--steps", "2",
                 "--granularity", "block", "--prompt", "a ring", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["layer_sizes"]) == set(wide)
    from quantbench.core.lab.layer_bytes import check_quantizable
    with pytest.raises(InvalidRequest, match="no layer of this model's transformer can be quantized in groups of "
                                             "128 .*use a smaller group, e.g. 32"):
        check_quantizable({}, 128)
