"""The README's command list ("## Commands") against each subcommand's parser, the one --help prints: every
option a command takes is listed on its lines and every option listed there exists; an option the parser
requires is written outside brackets, one written outside them is required; and the choices written for an option
are the parser's. `save --out DIR` without `[--overwrite]` (which save takes) failed here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from quantbench.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Written as alternatives (`[--a | --b]`) but refused together by the command rather than by argparse; the last test
# checks the refusals.
EXCLUSIVE_BY_THE_COMMAND = {"recommend": {("--ram", "--hosts")}}
# Written outside brackets but checked by the command rather than by argparse (`plan show FILE` shares the
# parser, so `plan`'s own required options cannot be argparse-required); the last test checks the refusals.
REQUIRED_BY_THE_COMMAND = {"plan": {"--model", "--out"}}


def command_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Commands\n", 1)[1]
    return section.split("```", 2)[1]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by its name as typed ('generate', 'plan show')."""
    found = {}

    def walk(name: str, parser: argparse.ArgumentParser):
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(f"{name} {sub}", child)

    for name, parser in build_parser().commands.items():
        walk(name, parser)
    return found


def readme_commands() -> dict[str, str]:
    """The README's text for each command: its `quantbench ...` line and the indented lines that follow it."""
    known = parsers()
    commands: dict[str, str] = {}
    current = None
    for line in command_block().splitlines():
        if line.startswith("quantbench"):
            words = [w.strip("[]") for w in line.split()[1:3]]
            name = words[0] if f"{words[0]} {words[1]}" not in known else f"{words[0]} {words[1]}"
            assert name in known, f"the README lists a command quantbench does not have: {line}"
            assert name not in commands, f"the README lists {name} twice"
            current = name
            commands[name] = line.split("  the workbench", 1)[0]
        elif line.strip():
            assert current is not None and line.startswith(" "), f"a stray line in the command list: {line}"
            commands[current] += "\n" + line
    return commands


def options_with_depth(text: str) -> dict[str, int]:
    """Each --option in the text and how many brackets or parentheses enclose it (0: written as required)."""
    depth, found, i = 0, {}, 0
    while i < len(text):
        match = OPTION.match(text, i) if text[i] == "-" and (i == 0 or not (text[i - 1].isalnum() or
                                                                            text[i - 1] in "-_")) else None
        if match:
            found.setdefault(match.group(), depth)
            i = match.end()
            continue
        if text[i] in "[(":
            depth += 1
        elif text[i] in "])":
            depth -= 1
        i += 1
    return found


def parser_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {max(a.option_strings, key=len): a for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and "--help" not in a.option_strings}


def test_the_readme_lists_every_command():
    assert sorted(set(parsers()) - set(readme_commands())) == []


@pytest.mark.parametrize("name", sorted(parsers()))
def test_the_readme_lists_exactly_the_commands_options(name):
    listed = set(options_with_depth(readme_commands()[name]))
    taken = set(parser_options(parsers()[name]))
    assert sorted(taken - listed) == [], f"quantbench {name} takes options its README line does not list"
    assert sorted(listed - taken) == [], f"the README lists options quantbench {name} does not take"


@pytest.mark.parametrize("name", sorted(parsers()))
def test_the_readme_brackets_exactly_the_optional_options(name):
    listed = options_with_depth(readme_commands()[name])
    actions = parser_options(parsers()[name])
    in_groups = {max(a.option_strings, key=len) for group in parsers()[name]._mutually_exclusive_groups
                 for a in group._group_actions}
    required = {option for option, action in actions.items() if action.required}
    written_required = {option for option, depth in listed.items() if depth == 0 and option not in in_groups}
    assert sorted(required - written_required) == [], f"quantbench {name} requires these; the README brackets them"
    assert sorted(written_required - required - REQUIRED_BY_THE_COMMAND.get(name, set())) == [], \
        f"the README writes these as required; quantbench {name} does without them"


@pytest.mark.parametrize("name", sorted(parsers()))
def test_the_readme_writes_the_parsers_choices(name):
    text = readme_commands()[name]
    for option, action in parser_options(parsers()[name]).items():
        if not action.choices:
            continue
        written = re.search(re.escape(option) + r"[ =]\{?([\w.|,-]+)", text)
        assert written, f"the README gives no value for quantbench {name} {option}"
        assert set(re.split(r"[|,]", written.group(1))) == set(action.choices), (name, option)


def alternatives(text: str) -> set[tuple[str, str]]:
    """The options written as one or the other, `[--a X | --b Y]`: the last option before each spaced bar and the
    first after it (a value's own choices, `{SPEC|auto:BITS}`, are written without spaces)."""
    pairs = set()
    for bar in re.finditer(r" \| ", text):
        before, after = OPTION.findall(text[:bar.start()]), OPTION.match(text, bar.end())
        assert before and after, f"a bar not between two options: {text[bar.start() - 40:bar.end() + 20]}"
        pairs.add((before[-1], after.group()))
    return pairs


@pytest.mark.parametrize("name", sorted(parsers()))
def test_what_the_readme_writes_as_alternatives_cannot_be_given_together(name):
    """`generate [--keep-text-encoder | --low-memory]` took both, and --low-memory dropped the other unsaid."""
    groups = [{max(a.option_strings, key=len) for a in group._group_actions}
              for group in parsers()[name]._mutually_exclusive_groups]
    for pair in alternatives(readme_commands()[name]):
        assert any(set(pair) <= group for group in groups) or pair in EXCLUSIVE_BY_THE_COMMAND.get(name, set()), \
            f"the README writes quantbench {name} {pair[0]} | {pair[1]}, but it takes both"


def test_what_the_command_refuses_together_is_refused(capsys):
    from quantbench.cli.main import main

    assert main(["recommend", "--ram", "16", "--hosts", "2x16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --ram or --hosts, not both" in err[0], err


@pytest.mark.parametrize("argv, option", [
    (["plan", "--quantize", "auto:4", "--out", "{tmp}/p.json"], "--model"),
    (["plan", "--model", "demo", "--quantize", "auto:4"], "--out"),
])
def test_what_the_readme_writes_as_required_the_command_requires(argv, option, tmp_path, capsys):
    from quantbench.cli.main import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0], err
    assert not (tmp_path / "p.json").exists()
