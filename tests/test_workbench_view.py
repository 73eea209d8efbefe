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


async def wait_for(pilot, condition, seconds=60.0):
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
