"""What `quantbench recommend` tells a user to do must exist: every option it names is one of the command it
names (or of generate), every command it names is a quantbench command, and no caveat about the engine is
out of date."""

import re

import pytest

from quantbench.cli.main import build_parser, main

STALE = ("for now", "keeps everything loaded", "decodes whole")
VERBS = {"does", "can", "runs", "uses", "is"}  # "as quantbench does": a sentence, not a command


def options_by_command() -> dict[str, set[str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    return {name: {o for a in sub._actions for o in a.option_strings} for name, sub in commands.items()}


@pytest.mark.parametrize("args", [["--ram", "8"], ["--ram", "16"], ["--ram", "24"], ["--ram", "64"],
                                  ["--ram", "512"], ["--ram", "16", "--model", "klein-9b"],
                                  ["--ram", "8", "--size", "2048x2048"]])
def test_recommendation_text_names_only_features_that_exist(capsys, args):
    assert main(["recommend", *args]) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the wrapping
    commands = options_by_command()
    for command in set(re.findall(r"quantbench (\w[\w-]*)", text)) - VERBS:
        assert command in commands, f"recommend names 'quantbench {command}', which does not exist"
    known = commands["generate"] | commands["save"] | commands["recommend"]
    for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):
        assert option in known, f"recommend names {option}, which no command it points to has"
    for phrase in STALE:
        assert phrase not in text, f"recommend still says '{phrase}'"


def test_the_memory_measures_recommend_explains_map_to_generate_options(capsys):
    """Each "how" a plan can need (TE alone, TE q8, tiled N) is explained with the option that does it."""
    main(["recommend", "--ram", "16"])
    text = " ".join(capsys.readouterr().out.split())
    how = text[text.index("how: "):]
    for measure, option in (("TE alone", "--keep-text-encoder"), ("TE q8", "--text-encoder-quantize 8"),
                            ("tiled N", "--vae-tile N")):
        assert measure in how and option in how


@pytest.mark.parametrize("backend, shown, hidden", [("cpu", "f32", "bf16"), ("metal", "bf16", "f32")])
def test_an_unquantized_pick_is_named_by_the_dtype_it_computes_in(capsys, backend, shown, hidden):
    """On the CPU an unquantized model is held and computed in float32: the table must not call it bf16."""
    assert main(["recommend", "--ram", "64", "--backend", backend]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("demo ")]
    assert rows and rows[0][2] == shown
    assert f"{shown} = unquantized" in " ".join(out.split())
    assert main(["recommend", "--ram", "64", "--backend", backend, "--json"]) == 0
    import json
    demo = next(a for a in json.loads(capsys.readouterr().out)["models"] if a["model"] == "demo")
    assert demo["precision"] == shown and demo["plan"]["transformer"] == shown and hidden not in demo["precision"]
