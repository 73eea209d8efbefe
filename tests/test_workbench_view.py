"""The workbench as a person sees it (issue 14): screenshots that save, a readable prompt, a history that fits,
graphs that keep their legends off the plot, and a run that says how long, how fast and how big."""

import shutil
import time

import pytest
from PIL import Image

from quantbench.tui.app import QuantbenchApp

WIDE, SMALL = (160, 48), (80, 24)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user with a fresh HOME and no ~/Downloads (a server reached over SSH)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("QUANTBENCH_DATA_DIR", "QUANTBENCH_CONFIG_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


async def wait_for(pilot, condition, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workbench")
        await pilot.pause(0.05)


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def screenshot_from_the_palette(pilot):
    await pilot.press("ctrl+p")
    await pilot.press(*"screenshot")
    await pilot.pause(0.3)
    await pilot.press("enter")
    await wait_for(pilot, lambda: any("saved" in m for m in notifications(pilot.app)), 30)
    return next(m for m in notifications(pilot.app) if "saved" in m)


async def test_a_screenshot_saves_where_the_images_go_without_a_downloads_folder(home):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        note = await screenshot_from_the_palette(pilot)
    folder = home / ".local" / "share" / "quantbench" / "screenshots"
    svgs = list(folder.glob("quantbench-*.svg"))
    assert len(svgs) == 1 and str(svgs[0]) in note
    assert "<svg" in svgs[0].read_text() and "Generate" in svgs[0].read_text()
    assert not (home / "Downloads").exists()
    if shutil.which("rsvg-convert"):
        png = svgs[0].with_suffix(".png")
        assert str(png) in note
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 800
    else:
        assert "for a PNG too, install rsvg-convert" in note


async def test_without_a_converter_the_screenshot_says_how_to_get_a_png(home, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(__import__("sys").modules, "cairosvg", None)  # import fails, as when it is not installed
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        note = await screenshot_from_the_palette(pilot)
    assert "for a PNG too, install rsvg-convert (librsvg2-bin) or cairosvg" in note
    assert not list(home.rglob("*.png"))


async def test_a_screenshot_goes_to_the_current_folder_when_the_data_folder_cannot_be_written(home, tmp_path,
                                                                                             monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(blocker / "data"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        app.action_screenshot()
        await wait_for(pilot, lambda: any("saved" in m for m in notifications(app)), 30)
        note = next(m for m in notifications(app) if "saved" in m)
    svgs = list((tmp_path / "work").glob("quantbench-*.svg"))
    assert len(svgs) == 1 and str(svgs[0]) in note


# ---------------------------------------------------------------- what is on the screen

def screen_lines(app) -> list[str]:
    """The terminal's lines as the user sees them."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def text_in(app, selector: str) -> str:
    """What is drawn inside one widget's region, line by line."""
    region = app.query_one(selector).content_region
    return "\n".join(line[region.x:region.right] for line in screen_lines(app)[region.y:region.bottom])


LONG_PROMPT = ("a lighthouse on a granite cliff at dusk, waves breaking below, gulls circling the lamp, "
               "warm light in the keeper's window, painted in thick oils")


@pytest.mark.parametrize("size", [SMALL, WIDE])
async def test_a_long_prompt_reads_from_its_first_word_and_can_be_edited(home, size):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        prompt = app.query_one("#prompt")
        prompt.value = LONG_PROMPT
        await pilot.pause()
        shown = " ".join(text_in(app, "#prompt").split())
        assert shown.startswith("a lighthouse on a granite cliff")
        if size == SMALL:
            assert shown == LONG_PROMPT  # every word on screen at once
        prompt.focus()
        await pilot.press("ctrl+home", *"misty ")
        assert prompt.value == "misty " + LONG_PROMPT
        await pilot.press("enter")  # generates, as the one-line field did; no line break goes in
        await wait_for(pilot, lambda: app.running)
        assert "\n" not in prompt.value
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)


WORST_RUN = {"time": 1.7e9, "model": "/home/someone/models/my-flux-finetune-v3",
             "prompt": LONG_PROMPT, "seed": 2147483647, "steps": 250, "quantize": 4,
             "step_seconds": [12.25] * 3, "total_seconds": 3725.0, "peak_memory": 41 * 2**30}


async def test_every_history_column_shows_at_160x48(home, monkeypatch):
    import json

    data = home / "data"
    data.mkdir()
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(data))
    (data / "history.jsonl").write_text(json.dumps(WORST_RUN) + "\n")
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        table = text_in(app, "#history").splitlines()
        header, row = table[0].split(), table[1]
        assert header == ["when", "model", "prompt", "seed", "steps", "bits", "s/step", "total", "peak"]
        for cell in ("my-flux-f…", "a lighthous…", "2147483647", "250", "q4", "12.2", "62m05",
                     "41.0 GB"):
            assert cell in row, (cell, row)
        assert row.rstrip().endswith("41.0 GB")  # right-aligned, and not cut at the pane's edge
        assert app.query_one("#history").border_subtitle == ""

        await pilot.resize_terminal(60, 24)  # a terminal too narrow for every column: it scrolls, and says so
        await pilot.press("f7")
        await wait_for(pilot, lambda: "scroll right" in app.query_one("#history").border_subtitle, 10)


async def test_resizing_the_terminal_switches_between_all_panes_and_tabs(home):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        panes = ("models", "generate", "preview", "hardware", "monitor", "history")
        assert all(app.query_one(f"#{p}").region.height > 0 for p in panes)
        await pilot.resize_terminal(*SMALL)
        await wait_for(pilot, lambda: app.screen.has_class("-compact"), 10)
        await pilot.pause()
        assert [p for p in panes if app.query_one(f"#{p}").region.height > 0] == ["generate"]
        await pilot.resize_terminal(*WIDE)
        await wait_for(pilot, lambda: not app.screen.has_class("-compact"), 10)
        await pilot.pause()
        assert all(app.query_one(f"#{p}").region.height > 0 for p in panes)
