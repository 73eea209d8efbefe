"""A prompt longer than a text encoder reads is said, not cut silently: one warning line per encoder that cuts it,
counted as the encoder counts (chat template, start and end tokens), so a prompt exactly at the limit is quiet and
one token more warns; the negative prompt is said as such; FLUX.1 names CLIP and T5 apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from quantbench.core.blocks.prompt_cut import PromptCut, prompt_cut  # noqa: E402
from quantbench.core.pipelines import model_defaults, prompt_warnings  # noqa: E402
from reference.families import TINY_MODELS  # noqa: E402

# (family, variant, the encoder each cut names, a limit small enough for the tiny tokenizers' vocabularies)
CASES = [("flux2", "klein", "Qwen3", 40), ("flux2", "dev", "Mistral", 140), ("z_image", "turbo", "Qwen3", 40),
         ("qwen_image", "qwen-image", "Qwen2.5-VL", 80)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-cut")
    made = {}
    for family, variant in {(c[0], c[1]) for c in CASES} | {("flux1", "dev")}:
        folder = root / f"{family}-{variant}"
        TINY_MODELS[family][variant].build(folder)
        made[family, variant] = folder
    return made


def _set_length(folder: Path, length: int) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_sequence_length": length}))


def _tokenizer(family: str, folder: Path):
    if family == "qwen_image":
        from quantbench.core.families.qwen_image.tokenizer import QwenImageTokenizer
        return QwenImageTokenizer(folder / "tokenizer")
    from quantbench.core.blocks.chat_tokenizer import PromptTokenizer
    if family == "z_image":
        from quantbench.core.families.z_image.pipeline import CHAT
        return PromptTokenizer(folder / "tokenizer", CHAT)
    from quantbench.core.checkpoint import open_component
    from quantbench.core.families.flux2.components import text_encoder_kind_for
    return PromptTokenizer(folder / "tokenizer", text_encoder_kind_for(open_component(folder / "text_encoder").config).chat)


def _ids(family: str, folder: Path, prompt: str) -> list[int]:
    """The prompt's tokens as the engine's own encoder input holds them, read at a length nothing reaches (Qwen-Image:
    after the template's first tokens, which its features drop)."""
    tokenizer = _tokenizer(family, folder)
    if family == "qwen_image":
        from quantbench.core.families.qwen_image.tokenizer import TEMPLATE_TOKENS
        return list(tokenizer.encode([prompt])[0][0][TEMPLATE_TOKENS:])
    ids, mask = tokenizer.encode([prompt], 10_000)
    return list(ids[0][mask[0] == 1])


def _tokens(family: str, folder: Path, prompt: str) -> int:
    return len(_ids(family, folder, prompt))


def _dropped_words(family: str, folder: Path, prompt: str, limit: int) -> list[str]:
    """The words of the tokens past the limit, decoded: what the encoder does not read."""
    return _tokenizer(family, folder)._tokenizer.decode(_ids(family, folder, prompt)[limit:],
                                                         skip_special_tokens=True).split()


def _at_and_over(count, limit: int, last: str = "fox") -> tuple[str, str]:
    """Prompts of exactly `limit` and `limit` + 1 tokens, "a a ... a fox" (each "a" one token)."""
    for k in range(0, 4 * limit):
        over = " ".join(["a"] * k + [last])
        if count(over) == limit + 1:
            at = " ".join(["a"] * (k - 1) + [last])
            assert count(at) == limit
            return at, over
    raise AssertionError("no prompt of limit + 1 tokens")


def _warnings(folder: Path, *prompts: str) -> list[str]:
    return prompt_warnings(folder, model_defaults(folder), prompts)


@pytest.mark.parametrize("family, variant, encoder, limit", CASES)
def test_one_token_over_the_limit_warns_and_exactly_at_it_does_not(folders, family, variant, encoder, limit):
    folder = folders[family, variant]
    _set_length(folder, limit)
    at, over = _at_and_over(lambda p: _tokens(family, folder, p), limit)
    assert _warnings(folder, at) == []
    [line] = _warnings(folder, over)
    assert line.startswith(f"the prompt is {limit + 1} tokens with the chat template; the {encoder} text encoder "
                           f"reads the first {limit}, so ")
    # what the encoder really gets: the prompt at the limit whole, one token more not
    long = " ".join(["a"] * limit + ["the", "quiet", "grey", "fox", "sleeps", "under", "old", "trees"])
    [line] = _warnings(folder, long)
    quoted = re.search(r'so "(.*) \.\.\." onward is ignored$', line).group(1)
    assert quoted.split() == _dropped_words(family, folder, long, limit)[:6]
    # the negative prompt, said as such, after the prompt's own line; a short one says nothing
    lines = _warnings(folder, over, long)
    assert len(lines) == 2 and lines[1].startswith(f"the negative prompt is {_tokens(family, folder, long)} tokens")
    assert _warnings(folder, at, "blurry") == []


def test_flux1_names_clip_and_t5_apart(folders):
    from transformers import CLIPTokenizer, T5TokenizerFast
    folder = folders["flux1", "dev"]
    clip = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    t5 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")
    clip_at, clip_over = _at_and_over(lambda p: len(clip(p).input_ids), 77)
    _set_length(folder, 256)  # T5 reads them all: CLIP alone cuts, at its 77 (start and end tokens counted)
    assert _warnings(folder, clip_at) == []
    assert _warnings(folder, clip_over) == [
        'the prompt is 78 tokens; the CLIP text encoder reads the first 77, so "fox" onward is ignored']
    _set_length(folder, 20)  # both cut, each at its own limit and count
    t5_at, t5_over = _at_and_over(lambda p: len(t5(p).input_ids), 20, last="hound")
    assert _warnings(folder, t5_at) == []
    assert _warnings(folder, t5_over) == [
        'the prompt is 21 tokens; the T5 text encoder reads the first 20, so "hound" onward is ignored']
    assert _warnings(folder, clip_over) == [
        'the prompt is 78 tokens; the CLIP text encoder reads the first 77, so "fox" onward is ignored',
        f'the prompt is {len(t5(clip_over).input_ids)} tokens; the T5 text encoder reads the first 20, so '
        '"a a a a a a ..." onward is ignored']


def test_the_words_quoted_are_where_the_encoder_stops():
    text = "<s>one two three four five six seven eight</s>"
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+|<s>|</s>", text)]
    start, end = 3, len(text) - 4
    cut = prompt_cut("T5", text, start, end, words, read=range(4), tokens=10, limit=4)
    assert cut.message() == ('the prompt is 10 tokens; the T5 text encoder reads the first 4, so '
                             '"four five six seven eight" onward is ignored')
    # left truncation: the start is lost, said as such; a word the cut splits is quoted whole
    halves = words[:2] + [(7, 9), (9, 11)] + words[3:]  # "two" as "tw" + "o"
    cut = prompt_cut("Qwen3", text, start, end, halves, read=range(5, 11), tokens=11, limit=6, template=True)
    assert cut.message("negative prompt") == (
        'the negative prompt is 11 tokens with the chat template; the Qwen3 text encoder reads the last 6, so '
        'everything up to "one two three" is ignored')
    # only the template's closing tokens lost: every word is read, and the line says so
    cut = prompt_cut("Qwen3", text, start, end, words, read=range(9), tokens=10, limit=9, template=True)
    assert "template's closing tokens are cut (every word of the prompt is read)" in cut.message()
    assert prompt_cut("T5", text, start, end, words, read=range(10), tokens=10, limit=10) is None
    assert PromptCut("T5", 4, 40, "w " * 40).message().endswith('so "w w w w w w ..." onward is ignored')


def _demo_prompts() -> tuple[Path, str, str]:
    """The built-in demo (Klein layout, 32 prompt tokens): prompts of exactly 32 tokens and of 33."""
    from quantbench.core.sources import resolve_model_folder
    folder = resolve_model_folder("demo")
    return (folder, *_at_and_over(lambda p: _tokens("flux2", folder, p), 32, last="circle"))


def test_generate_says_it_on_stderr_before_loading_and_in_the_json(tmp_path, capsys):
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()

    def generate(prompt, *extra):
        code = main(["generate", "--model", "demo", "--prompt", prompt, "--steps", "1", "--out",
                     str(tmp_path / "x.png"), "--overwrite", "--json", *extra])
        captured = capsys.readouterr()
        return code, captured.err.splitlines(), json.loads(captured.out)

    code, err, summary = generate(at)
    assert code == 0 and summary["warnings"] == [] and not [line for line in err if "warning" in line]
    code, err, summary = generate(over, "--negative-prompt", " ".join(["blurry"] * 40))
    lines = [line for line in err if line.startswith("quantbench: warning: ")]
    assert code == 0 and lines == [f"quantbench: warning: {w}" for w in summary["warnings"]]
    assert summary["warnings"][0].startswith("the prompt is 33 tokens with the chat template; the Qwen3 text encoder "
                                             "reads the first 32, so ")
    assert re.fullmatch(r'the negative prompt is \d+ tokens with the chat template; the Qwen3 text encoder reads the '
                        r'first 32, so "blurry blurry blurry blurry blurry blurry \.\.\." onward is ignored',
                        summary["warnings"][1])
    assert err.index(lines[0]) < err.index("loading demo ...")  # known before the model loads


def test_compare_and_sensitivity_say_it_once_per_run(tmp_path, capsys):
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()
    assert main(["compare", "--model", "demo-turbo", "--prompt", over, "--precisions", "bf16,8,4", "--steps", "1",
                 "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    [line] = [line for line in captured.err.splitlines() if "warning" in line]
    assert report["warnings"] == [line.removeprefix("quantbench: warning: ")]
    assert line.startswith("quantbench: warning: the prompt is 33 tokens")
    assert main(["sensitivity", "--model", "demo-turbo", "--prompt", at, "--prompt", over, "--steps", "1",
                 "--size", "32", "--json"]) == 0
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if "warning" in line]
    assert line.startswith("quantbench: warning: the 2nd prompt is 33 tokens")
    assert json.loads(captured.out)["warnings"] == [line.removeprefix("quantbench: warning: ")]


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_the_workbench_says_it_once_as_the_run_begins(tmp_path, monkeypatch, size):
    """A warning notification, on screen whole while the run goes, said once (not again when the run ends)."""
    import time
    from quantbench.tui.app import QuantbenchApp
    from quantbench.tui.widgets.history import HistoryTable
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    _, _, over = _demo_prompts()
    app = QuantbenchApp(model="demo-turbo")
    said = []
    notify = app.notify

    def recorded(message, *args, **kwargs):
        said.append((str(message), kwargs.get("severity")))
        return notify(message, *args, **kwargs)

    app.notify = recorded
    async with app.run_test(size=size, notifications=True) as pilot:  # toasts drawn, as a person sees them
        app.query_one("#prompt").value = over
        app.query_one("#steps").value = "1"
        await pilot.press("ctrl+g")
        deadline = time.monotonic() + 120
        while app.query_one(HistoryTable).row_count < 1:
            assert time.monotonic() < deadline, "timed out waiting for the run"
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        warnings = [(m, s) for m, s in said if "tokens with the chat template" in m]
        assert len(warnings) == 1 and warnings[0][1] == "warning", said
        assert warnings[0][0].startswith("the prompt is 33 tokens with the chat template; the Qwen3 text encoder reads")
        drawn = _screen_text(app)
        # the toast's lines, its border and wrapping undone: the whole line is on screen
        toast = " ".join(line.split("▌", 1)[1].rstrip(" │─╮╯").strip() for line in drawn.splitlines() if "▌" in line)
        assert warnings[0][0] in " ".join(toast.split()), drawn


def _screen_text(app) -> str:
    """The screen as a terminal shows it, in plain text (what App.export_screenshot draws, without the SVG)."""
    import io
    from rich.console import Console
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def test_the_prompt_is_found_in_its_template():
    from quantbench.core.blocks.prompt_cut import prompt_span
    text = "<|im_start|>user\n a fox <|im_end|>\n<|im_start|>assistant\n"
    assert prompt_span(text, " a fox ") == (17, 24)
    assert prompt_span(text.replace(" a fox ", "a fox"), " a fox ") == (17, 22)  # a template that strips it
    assert prompt_span(text, "") == prompt_span(text, " ") == (len(text), len(text))  # no words to quote


def _calibration_file(path: Path, *prompts: str) -> Path:
    path.write_text("# calibration prompts\n" + "\n\n".join(prompts) + "\n", encoding="utf-8")
    return path


def test_calibration_prompts_the_text_encoder_cuts_are_said_by_their_lines(tmp_path, capsys):
    """A prompt file for gptq or awq whose prompts the text encoder reads only in part: one line naming the file's
    lines, said before anything loads, quiet for prompts read whole."""
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()
    longer = at + " under a sky full of stars over the quiet sea"  # words past the template's closing tokens
    cut = _calibration_file(tmp_path / "cut.txt", at, longer, "a tall " + longer)  # lines 2, 4 and 6

    def save(prompts: Path) -> list[str]:
        assert main(["save", "--model", "demo-turbo", "--quantize", "4:gptq", "--calibration-prompts", str(prompts),
                     "--out", str(tmp_path / prompts.stem)]) == 0
        err = capsys.readouterr().err.splitlines()
        warnings = [line for line in err if "warning" in line]
        loading = next(i for i, line in enumerate(err) if line.startswith("loading "))
        assert all(err.index(line) < loading for line in warnings), err
        return warnings

    assert save(cut) == [f"quantbench: warning: 2 of the 3 calibration prompts in {cut} (lines 4, 6) are longer than "
                         "the Qwen3 text encoder reads (32 tokens with the chat template): calibration sees only the "
                         "start of each"]
    # `over` loses only the chat template's closing token: every word is read
    assert save(_calibration_file(tmp_path / "whole.txt", at, over, at.replace("circle", "square"))) == []


def test_generate_says_cut_calibration_prompts_once_before_loading(tmp_path, capsys):
    """generate said them only once calibration began, after the text encoder and VAE had loaded (minutes at full
    size); now before anything loads, once, and in the JSON."""
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()
    prompts = _calibration_file(tmp_path / "prompts.txt", at, over + " under a sky full of stars over the quiet sea")
    assert main(["generate", "--model", "demo-turbo", "--prompt", at, "--quantize", "4:gptq", "--steps", "1",
                 "--calibration-prompts", str(prompts), "--out", str(tmp_path / "x.png"), "--json"]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    [line] = [line for line in err if "warning" in line]
    assert line == (f"quantbench: warning: 1 of the 2 calibration prompts in {prompts} (line 4) is longer than the "
                    "Qwen3 text encoder reads (32 tokens with the chat template): calibration sees only the start of it")
    assert err.index(line) < next(i for i, said in enumerate(err) if said.startswith(("loading", "calibrating"))), err
    assert json.loads(captured.out)["warnings"] == [line.removeprefix("quantbench: warning: ")]


# Where each command's long work begins, after everything is checked: a plan search, or the model's load before one.
SEARCH_STARTS = {"generate": "quantbench.core.lab.quantize_option.parse_quantize_spec",
                 "save": "quantbench.cli.save.parse_quantize_spec",
                 "sensitivity": "quantbench.cli.sensitivity.load_from_args",
                 "plan": "quantbench.cli.plan.load_from_args"}


@pytest.mark.parametrize("command", list(SEARCH_STARTS))
def test_an_auto_search_hears_of_cut_calibration_prompts_before_it_begins(tmp_path, capsys, monkeypatch, command):
    """An auto: search that calibrates (minutes at full size) said them only as its calibration began, after the
    model had loaded; now once, before the search or the load begins (stopped there: what follows is timed
    elsewhere)."""
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()
    prompts = _calibration_file(tmp_path / "prompts.txt", over + " under a sky full of stars over the quiet sea")
    reached = []

    def begin(*args, **kwargs):
        reached.append(capsys.readouterr().err)
        raise KeyboardInterrupt

    monkeypatch.setattr(SEARCH_STARTS[command], begin)
    out = {"generate": ["--out", str(tmp_path / "x.png"), "--prompt", at], "save": ["--out", str(tmp_path / "saved")],
           "sensitivity": ["--plan-out", str(tmp_path / "s.json")], "plan": ["--out", str(tmp_path / "p.json")]}
    assert main([command, "--model", "demo-turbo", "--quantize", "auto:5:gptq", "--calibration-prompts", str(prompts),
                 *out[command]]) == 130
    [said] = reached
    assert [line for line in said.splitlines() if "warning" in line] == [
        f"quantbench: warning: the calibration prompt in {prompts} (line 2) is longer than the Qwen3 text encoder "
        "reads (32 tokens with the chat template): calibration sees only the start of it"], said
    assert "warning" not in capsys.readouterr().err


def test_compare_says_cut_calibration_prompts_once_before_loading(tmp_path, capsys):
    from quantbench.cli.main import main
    _, at, over = _demo_prompts()
    prompts = _calibration_file(tmp_path / "prompts.txt", over + " under a sky full of stars over the quiet sea")
    assert main(["compare", "--model", "demo-turbo", "--prompt", at, "--precisions", "4,4:gptq,3:gptq", "--steps", "1",
                 "--calibration-prompts", str(prompts), "--json"]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    [line] = [line for line in err if "warning" in line]
    assert line == (f"quantbench: warning: the calibration prompt in {prompts} (line 2) is longer than the Qwen3 "
                    "text encoder reads (32 tokens with the chat template): calibration sees only the start of it")
    assert json.loads(captured.out)["warnings"] == [line.removeprefix("quantbench: warning: ")]


def test_the_cut_calibration_prompts_line_lists_a_few_and_counts_the_rest():
    from quantbench.core.blocks.prompt_cut import calibration_cut_lines
    cut = [PromptCut("T5", 512, 600, "the rest of it")]
    left = [PromptCut("Qwen2.5-VL", 80, 90, "the start of it", at_start=True, template=True)]
    lines = calibration_cut_lines([cut] * 11 + [[]] + [left], list(range(1, 14)))
    assert lines == ["11 of the 13 calibration prompts (prompts 1, 2, 3, 4, 5, 6, 7, 8 and 3 more) are longer than "
                     "the T5 text encoder reads (512 tokens): calibration sees only the start of each",
                     "1 of the 13 calibration prompts (prompt 13) is longer than the Qwen2.5-VL text encoder reads "
                     "(80 tokens with the chat template): calibration sees only the end of it"]
    assert calibration_cut_lines([[PromptCut("T5", 512, 513, " ")]], [1]) == []  # every word read
