"""Every command checks its options as it parses them (issue 13, item 6): one line, exit 2, nothing loaded."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantbench.cli.main import main
from quantbench.core.generation import GenerationSettings
from quantbench.core.errors import InvalidRequest

NON_UTF8 = b"a red \xff star".decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv


@pytest.fixture(autouse=True)
def no_loading(monkeypatch):
    from quantbench.core import pipelines

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded for a request with a bad option")

    monkeypatch.setattr(pipelines, "load_pipeline", refuse)


GENERATE = ["generate", "--prompt", "a red star", "--out", "{tmp}/x.png"]
COMPARE = ["compare", "--model", "demo", "--prompt", "a red star"]
SENSITIVITY = ["sensitivity", "--model", "demo"]


@pytest.mark.parametrize("argv,message", [
    (GENERATE + ["--seed", "-1"], "seed -1 is not allowed"),
    (GENERATE + ["--seed", str(2**64)], "is not allowed"),
    (GENERATE + ["--seed", "1.5"], "'1.5' is not a whole number"),
    (GENERATE + ["--width", "0"], "width 0 is not allowed"),
    (GENERATE + ["--height", "0"], "height 0 is not allowed"),
    (GENERATE + ["--width", "-16"], "width -16 is not allowed"),
    (GENERATE + ["--width", "8192"], "width 8192 is not allowed"),
    (GENERATE + ["--steps", "0"], "steps 0 is not allowed"),
    (GENERATE + ["--steps", "-4"], "steps -4 is not allowed"),
    (GENERATE + ["--steps", "100000"], "steps 100000 is not allowed"),
    (GENERATE + ["--guidance", "nan"], "argument --guidance: 'nan' is not a number"),
    (GENERATE + ["--guidance", "inf"], "'inf' is not a number"),
    (GENERATE + ["--guidance", "-1"], "guidance -1 is not allowed"),
    (GENERATE + ["--guidance", "1e300"], "is not allowed"),
    (GENERATE + ["--true-cfg", "nan"], "argument --true-cfg: 'nan' is not a number"),
    (GENERATE + ["--vae-tile", "0"], "--vae-tile 0 is not allowed"),
    (GENERATE + ["--keep-text-encoder", "--low-memory"], "--low-memory: not allowed with argument --keep-text-encoder"),
    (["generate", "--prompt", NON_UTF8, "--out", "{tmp}/x.png"], "the prompt is not valid UTF-8"),
    (GENERATE + ["--negative-prompt", NON_UTF8], "the negative prompt is not valid UTF-8"),
    (["generate", "--prompt", "  ", "--out", "{tmp}/x.png"], "the prompt is empty"),
    (COMPARE + ["--seed", "-1"], "seed -1 is not allowed"),
    (COMPARE + ["--steps", "0"], "steps 0 is not allowed"),
    (COMPARE + ["--width", "0"], "width 0 is not allowed"),
    (COMPARE + ["--guidance", "nan"], "'nan' is not a number"),
    (["compare", "--model", "demo", "--prompt", NON_UTF8], "not valid UTF-8"),
    (SENSITIVITY + ["--steps", "0"], "steps 0 is not allowed"),
    (SENSITIVITY + ["--size", "0"], "size 0 is not allowed"),
    (SENSITIVITY + ["--seed", "-1"], "seed -1 is not allowed"),
    (SENSITIVITY + ["--prompt", NON_UTF8], "not valid UTF-8"),
    (SENSITIVITY + ["--top", "0"], "--top 0 is not allowed"),
    (["plan", "--model", "demo", "--memory-budget", "nan", "--out", "{tmp}/p.json"], "--memory-budget: 'nan' is not"),
    (["plan", "--model", "demo", "--memory-budget", "-1", "--out", "{tmp}/p.json"], "--memory-budget -1"),
    (["bench", "--random-weights", "tiny", "--size", "0"], "size 0 is not allowed"),
    (["bench", "--random-weights", "tiny", "--steps", "0"], "steps 0 is not allowed"),
    (["bench", "--random-weights", "tiny", "--width-scale", "nan"], "--width-scale: 'nan' is not a number"),
    (["random-model", "--width-scale", "0", "--out", "{tmp}/r"], "--width-scale 0 is not allowed"),
    (["random-model", "--width-scale", "1e999", "--out", "{tmp}/r"], "'1e999' is out of range"),
    (["random-model", "--seed", "-1", "--out", "{tmp}/r"], "seed -1 is not allowed"),
    (["random-model", "--shard-mb", "0", "--out", "{tmp}/r"], "--shard-mb 0 is not allowed"),
    (["eval", "--steps", "0"], "steps 0 is not allowed"),
    (["eval", "--limit", "0"], "--limit 0 is not allowed"),
    (["eval", "--guidance", "inf"], "'inf' is not a number"),
    (["recommend", "--size", "0x0"], "width 0 is not allowed"),
    (["recommend", "--ram", "nan"], "nan"),
    (GENERATE + ["--text-encoder-quantize", "4:gptq"], "gptq calibrates, and only the transformer is calibrated"),
    (["save", "--model", "demo", "--quantize", "4", "--text-encoder-quantize", "3:awq", "--out", "{tmp}/s"],
     "awq calibrates"),
    (COMPARE + ["--text-encoder-quantize", "4:gptq:32"], "give the text encoder rtn, hqq, mse (e.g. 4:hqq)"),
    (SENSITIVITY + ["--bits", "3:gptq"], "--bits '3:gptq': gptq calibrates, and each layer is quantized alone"),
    # an empty value (an unset shell variable) is not quietly the default
    (GENERATE + ["--quantize", ""], "--quantize is empty: give a value"),
    (GENERATE + ["--text-encoder-quantize", " "], "--text-encoder-quantize is empty"),
    (GENERATE + ["--dtype="], "--dtype is empty"),
    (["generate", "--prompt", "a red star", "--out", ""], "--out is empty"),
    (["save", "--model", "", "-q", "4", "--out", "{tmp}/s"], "--model is empty"),
    (COMPARE + ["--precisions", ""], "--precisions is empty"),
    (["recommend", "--size", ""], "--size is empty"),
    (["plan", "show", ""], "FILE is empty"),  # as its usage names it
    # a control character in a value is written as its escape: the error stays one line
    (["recommend", "--size", "4\r"], "--size '4\\r': give WIDTHxHEIGHT"),
    (["save", "--model", "no\nsuch", "-q", "4", "--out", "{tmp}/s"], "no\\nsuch: no such folder"),
    # ~user of no user is the path as written (pathlib's expanduser raised: a traceback)
    (["generate", "--model", "~nosuchuser/x", "--prompt", "a", "--out", "{tmp}/a.png"], "~nosuchuser/x: no such folder"),
    (["download", "--model", "~nosuchuser/x"], "~nosuchuser/x: no such folder"),
    (GENERATE + ["--lora", "~0"], "~0: no such LoRA file"),
])
def test_a_bad_option_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    GENERATE + ["--steps", "1_0"], GENERATE + ["--seed", "\u0661\u0660"], GENERATE + ["--width", "6_4"],
    GENERATE + ["--steps", " 4"], GENERATE + ["--steps", "4\n"], GENERATE + ["--guidance", "1_5"],
    GENERATE + ["--true-cfg", " 2"], GENERATE + ["--vae-tile", "12_8"], GENERATE + ["--keep-dequantized", "1_0"],
    GENERATE + ["--quantize", "\u0664"], GENERATE + ["--quantize", "4:rtn:\u0666\u0664"],
    GENERATE + ["--text-encoder-layers", "1_0"], COMPARE + ["--precisions", "bf16,\u0664"],
    COMPARE + ["--precisions", "auto:4.2_5"], SENSITIVITY + ["--top", "1_0"],
    ["recommend", "--ram", "1_6"], ["recommend", "--size", "6_4x64"], ["recommend", "--hosts", "2x1_6"],
    ["recommend", "--hosts", "\u0662x16"],
    ["plan", "--model", "demo", "--memory-budget", "1_0", "--out", "{tmp}/p.json"],
    ["random-model", "--shard-mb", "1_0", "--out", "{tmp}/r"], ["eval", "--limit", "1_0"],
])
def test_a_number_is_only_what_a_user_writes(tmp_path, capsys, argv):
    """int() and float() read "1_0" as 10, " 4" and "4\\n" as 4, and "\u0661\u0660" (Arabic-Indic digits) as 10:
    each of these ran (or loaded a model) as if the number had been typed plainly. Plain digits only."""
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [GENERATE + ["--quantize", "9" * 5000], GENERATE + ["--quantize", "4:rtn:" + "6" * 5000],
                                  COMPARE + ["--precisions", "auto:" + "9" * 5000], GENERATE + ["--steps", "9" * 5000]])
def test_a_pasted_value_is_not_repeated_back_whole(tmp_path, capsys, argv):
    """A paste of 5,000 digits came back whole in the error line (or, as a spec's bits, int() refused it)."""
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and len(err[0]) < 400, err


@pytest.mark.parametrize("text,value", [("10", 10), ("-4", -4), ("+3", 3), ("007", 7)])
def test_plain_whole_numbers_still_parse(text, value):
    from quantbench.core.numbers import whole
    assert whole(text) == value


@pytest.mark.parametrize("text,value", [("2.5", 2.5), (".5", 0.5), ("4.", 4.0), ("1e-3", 1e-3), ("-2E+2", -200.0)])
def test_plain_decimal_numbers_still_parse(text, value):
    from quantbench.core.numbers import decimal
    assert decimal(text) == value


def test_digits_and_whole_numbers_share_one_length_limit():
    """is_digits (a rank, a spec's bits) and whole() stop at the same MAX_DIGITS: the limit is written once."""
    from quantbench.core.numbers import MAX_DIGITS, is_digits, whole
    longest, longer = "7" * MAX_DIGITS, "7" * (MAX_DIGITS + 1)
    assert is_digits(longest) and whole(longest) == int(longest)
    assert not is_digits(longer)
    with pytest.raises(ValueError, match="too long"):
        whole(longer)
    assert not is_digits("") and not is_digits("\u0664") and not is_digits("+4")


def test_recommend_takes_every_size_generate_takes(capsys):
    assert main(["recommend", "--size", "16x16", "--model", "demo"]) == 0
    assert "16x16" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    ({"seed": -1}, "seed -1"), ({"steps": 0}, "steps 0"), ({"width": 0}, "width 0"),
    ({"guidance": float("nan")}, "guidance nan"), ({"guidance": float("inf")}, "guidance inf"),
    ({"prompt": NON_UTF8}, "not valid UTF-8"), ({"negative_prompt": NON_UTF8}, "not valid UTF-8"),
    ({"seed": True}, "seed True"), ({"steps": 2.5}, "steps 2.5"),
])
def test_the_workbench_and_the_engine_follow_the_same_rules(change, message):
    """The form's request is a GenerationSettings: the same checks as the options, in the same words."""
    settings = GenerationSettings(**{"model": "demo", "prompt": "a red star", **change})
    with pytest.raises(InvalidRequest, match=message):
        settings.validate()


def _typed_options():
    """(command, option) for every option of every command whose value is checked as it is parsed."""
    import argparse

    from quantbench.cli.main import build_parser
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action.option_strings[0]) for name, command in commands.items() for action in command._actions
            if action.option_strings and action.type not in (None, str) and action.nargs != 0
            and getattr(action.type, "__module__", "") == "quantbench.cli.arguments"]


@pytest.mark.parametrize("command,option", _typed_options())
@pytest.mark.parametrize("value", ["nan", "-1", "0", "lots", "2.5"])
def test_a_bad_value_names_its_option_once(capsys, command, option, value):
    """`--keep-dequantized nan` once said "argument --keep-dequantized: --keep-dequantized nan is not allowed"."""
    from quantbench.cli.main import build_parser
    try:  # parsing only: a value the option takes ends on a missing required option, or parses
        build_parser().parse_args([command, option, value])
        return
    except SystemExit:
        pass
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("quantbench: error:"), line
    if "the following arguments are required" not in line:
        assert line.count(option) <= 1, line
        assert f"'{value}'" in line or f" {value} " in line, line


def test_quantbench_with_only_workbench_options_opens_the_workbench(monkeypatch, capsys):
    """`quantbench --model demo-turbo` (what ./quantbench.sh passes on) said "argument COMMAND: invalid choice:
    'demo-turbo'", though the workbench is the default command."""
    import quantbench.cli.workbench as workbench_command
    import quantbench.tui.app as app_module
    opened = []

    class Workbench:
        return_code = 0

        def __init__(self, model=None):
            opened.append(model)

        def run(self):
            pass

    monkeypatch.setattr(app_module, "QuantbenchApp", Workbench)
    monkeypatch.setattr(workbench_command, "terminal_problem", lambda: None)  # pytest's stdin is no terminal
    assert main(["--model", "demo-turbo"]) == 0 and opened == ["demo-turbo"]
    assert main([]) == 0 and opened == ["demo-turbo", None]
    assert main(["--version"]) == 0 and "quantbench" in capsys.readouterr().out
    assert main(["--bogus"]) == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv, line", [
    (["sensitivity", "--model", "demo", "--out", "x.json"],
     "unrecognized arguments: --out x.json (see quantbench sensitivity --help)"),  # was: see quantbench --help
    (["plan", "--model", "demo", "--budget", "auto:4", "--out", "p.json"],  # was: argument show: invalid choice
     "unrecognized arguments: --budget (see quantbench plan --help)"),
    (["generate", "--prompt", "x", "--out", "x.png", "--seeed", "3"],
     "unrecognized arguments: --seeed 3 (see quantbench generate --help)"),
])
def test_an_unknown_option_is_named_with_its_commands_help(capsys, argv, line):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"quantbench: error: {line}\n"


def _value_options():
    """(command, option) for every option of every command that takes a value, checked or not."""
    import argparse

    from quantbench.cli.main import build_parser
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return sorted({(name, max(action.option_strings, key=len)) for name, command in commands.items()
                   for action in command._actions if action.option_strings and action.nargs != 0
                   and action.dest != "help"})


ODD_VALUES = ["nan", "-nan", "inf", "-inf", "1e999", "-0", "0x10", "9" * 5000, "1_000", "١٢٣", "½", " 4 ", "\t",
              "4:", ":4", "4::", "auto:", "auto:nan", "auto:1e999GB", "x" * 10_000]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_for_any_option_parses_or_is_one_line(data, capsys):
    """Whatever text an option is given (odd numbers, other scripts' digits, huge, blank), parsing it either
    takes it or ends with one line and exit 2: never a traceback (a converter raising something else)."""
    from quantbench.cli.main import build_parser
    command, option = data.draw(st.sampled_from(_value_options()))
    value = data.draw(st.sampled_from(ODD_VALUES) | st.text(st.characters(exclude_categories=("Cs",),
                                                                           exclude_characters="\x00"), max_size=30))
    capsys.readouterr()
    try:
        build_parser().parse_args([command, f"{option}={value}"])
    except SystemExit as exc:
        line = capsys.readouterr().err
        assert exc.code == 2 and len(line.strip().splitlines()) == 1 and line.startswith("quantbench: error:"), line


def test_plan_shows_help_names_its_arguments_as_its_usage_does(capsys):
    """Its usage said `plan show FILE [--model M]` and the options below it `file` and `--model SHOW_MODEL`."""
    assert main(["plan", "show", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: quantbench plan show FILE [--model M]" in out
    assert "FILE        the plan file (JSON) to print" in out and "--model M " in out and "SHOW_MODEL" not in out
