"""The CLI and the workbench in terminals other than the one we test in: encodings a locale or PYTHONIOENCODING name,
small windows, terminals with few colours or none."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals")

NAMED = "fox × … ≈.png"  # characters neither ASCII nor (… and ≈) latin-1 encodes


@pytest.mark.parametrize("encoding, written", [("ascii", "fox \\xd7 \\u2026 \\u2248.png"),
                                               ("latin-1", "fox × \\u2026 \\u2248.png")])
def test_output_in_an_encoding_that_lacks_a_character_escapes_it(tmp_path, encoding, written):
    """`generate` wrote its PNG, then stdout raised a UnicodeEncodeError traceback (exit 1) on the path's "…"."""
    out = tmp_path / NAMED
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": encoding}
    result = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--prompt", "a fox … × ≈",
                             "--steps", "1", "--out", str(out)], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode(encoding)
    assert b"Traceback" not in result.stderr
    assert result.stdout.decode(encoding).splitlines()[0] == f"wrote {tmp_path}/{written}"
    assert out.is_file()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a POSIX pty")
def test_the_workbench_draws_in_utf8_whatever_the_encoding_python_is_told(tmp_path):
    """Under PYTHONIOENCODING=ascii (or a latin-1 locale) each box and block character was drawn as its escape,
    `\\u256d`, and every line of the screen ran over its width."""
    from test_workbench_hangup import start_workbench

    env = {**os.environ, "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "ascii",
           "QUANTBENCH_DATA_DIR": str(tmp_path / "data"), "QUANTBENCH_CONFIG_DIR": str(tmp_path / "config")}
    process, terminal = start_workbench("demo", env)
    try:
        assert terminal.wait_for("Generate ^g", 120), terminal.text()[-2000:]
        # a pane's rounded corner and its side: whole characters (a border's title may come in a later, partial write)
        assert terminal.wait_for("╭", 30) and terminal.wait_for("│", 30), terminal.text()[-2000:]
        assert "\\u25" not in terminal.text()
        terminal.type(b"\x11")  # ctrl+q
        assert process.wait(timeout=60) == 0
    finally:
        terminal.close(process)


# ---------------------------------------------------------------- small windows

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.mark.parametrize("size, graphs", [((80, 24), ("memory", "steps")), ((70, 20), ("memory",)),
                                          ((56, 16), ()), ((140, 40), None)])
async def test_a_run_s_progress_and_summary_show_in_the_monitor_in_a_small_window(home, size, graphs):
    """Below 80x24 the graphs' minimum heights no longer fitted, and Textual gave them more than the pane: at 70x20
    the memory graph took 21 rows, and the progress bar and the run's summary ("done in ...") were below the pane's
    edge, never seen. Now a graph that has no room is hidden, the step graph first."""
    from test_workbench_view import run_to_the_end, text_in

    from quantbench.tui.app import QuantbenchApp

    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await run_to_the_end(app, pilot, steps=2)
        app.action_show_pane("monitor")
        await pilot.pause(0.5)
        pane = app.query_one("#monitor").content_region
        rows = range(pane.y, pane.bottom + 1)
        for part in ("#peaks", "#step-stats", "#progress", "#progress-text"):
            region = app.query_one(part).region
            assert region.height and region.y in rows and region.bottom in rows, (part, region, pane)
        assert "done in" in text_in(app, "#monitor")
        shown = tuple(name for name, part in (("memory", "#memory-plot"), ("steps", "#step-plot"))
                      if app.query_one(part).region.height)
        assert shown == graphs or graphs is None  # every pane at once: the monitor is 30 columns wide, and wraps
        for part in ("#memory-plot", "#step-plot")[:len(shown)]:
            assert app.query_one(part).region.bottom in rows


def _screen_text(app) -> str:
    from test_workbench_view import screen_lines

    return " ".join(" ".join(screen_lines(app)).split())


async def test_a_window_too_small_for_the_panes_says_so_and_a_run_goes_on_behind_it(home):
    """At 30x8 the panes were drawn cut into each other (the prompt showed "d" and "blue"), and a run's "saved"
    notification over them. Now one message says what size the workbench needs; the run finishes behind it."""
    from quantbench.tui.app import QuantbenchApp
    from test_workbench import wait_for

    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.query_one("#steps").value = "3"
        await pilot.press("ctrl+g")
        await pilot.resize_terminal(30, 8)
        await wait_for(pilot, lambda: "needs at least" in _screen_text(app), 30)
        assert _screen_text(app) == ("This window is 30x8; the workbench needs at least 50x14. Make it larger, "
                                     "or press ctrl+q to quit.")
        history = app.query_one("#history")
        await wait_for(pilot, lambda: history.row_count == 1 and not app.running)
        await pilot.pause(0.5)
        assert "saved" not in _screen_text(app) and "needs at least" in _screen_text(app)
        await pilot.resize_terminal(48, 20)  # still too narrow: the message says the new size
        await wait_for(pilot, lambda: "This window is 48x20" in _screen_text(app), 30)
        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: "needs at least" not in _screen_text(app), 30)
        await pilot.press("f6")
        await wait_for(pilot, lambda: "done in" in _screen_text(app), 30)


async def test_a_notification_given_before_the_window_shrank_is_not_drawn_over_the_message(home):
    """The run's "saved" toast, up when the window shrank below 50x14, was drawn over the message (Textual shows a
    screen's notifications by setting their rack's display itself): hidden there, drawn again once larger."""
    from quantbench.tui.app import QuantbenchApp
    from test_workbench import wait_for

    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        app.query_one("#steps").value = "2"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not app.running and "saved" in app.export_screenshot(), 60)
        await pilot.resize_terminal(40, 12)
        await wait_for(pilot, lambda: "needs at least" in _screen_text(app), 30)
        await pilot.pause(0.3)
        assert "saved" not in app.export_screenshot()
        assert app._notifications, "the toast's time ran out: the test says nothing"


async def test_a_workbench_opened_in_a_small_window_says_so_and_quits_with_ctrl_q(home):
    from quantbench.tui.app import QuantbenchApp
    from test_workbench import wait_for

    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(40, 10)) as pilot:
        await wait_for(pilot, lambda: "This window is 40x10" in _screen_text(app), 30)
        await pilot.press("ctrl+o", "f1", "ctrl+p")  # no screen opens over the message, cut as the panes were
        await pilot.pause(0.3)
        assert _screen_text(app).startswith("This window is 40x10") and len(app.screen_stack) == 2
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: app._exit, 30)
    assert app.return_code == 0


async def test_over_compare_a_window_too_small_opens_no_screen_either(home):
    """With the Compare view open, shrinking the window below 50x14 still let F1 and ctrl+p open their screens,
    drawn cut over the message (Compare's own check of the keys came before the too-small one)."""
    from quantbench.tui.app import QuantbenchApp
    from test_workbench import wait_for

    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CompareScreen", 30)
        await pilot.press("ctrl+x")  # its comparison is not what this is about
        await pilot.resize_terminal(40, 10)
        await wait_for(pilot, lambda: "This window is 40x10" in _screen_text(app), 30)
        stack = len(app.screen_stack)
        await pilot.press("f1", "ctrl+p", "ctrl+t")
        await pilot.pause(0.3)
        assert _screen_text(app).startswith("This window is 40x10") and len(app.screen_stack) == stack


# ---------------------------------------------------------------- colours

@pytest.mark.skipif(not __import__("shutil").which("tput"), reason="needs tput to read terminfo")
@pytest.mark.parametrize("term", ["xterm-mono", "vt100", "xterm-256color", "xterm"])
async def test_on_a_terminal_without_colours_the_preview_is_drawn_in_shades_of_characters(home, monkeypatch, term):
    """TERM=xterm-mono or vt100 shows no colours: the half-block preview was rows of identical "▄", nothing of the
    picture. There it is drawn in characters by brightness (a bright square on a dark ground reads as one)."""
    from PIL import Image, ImageDraw

    from quantbench.tui.app import QuantbenchApp
    from test_workbench_view import text_in

    monkeypatch.setenv("TERM", term)
    monkeypatch.delenv("COLORTERM", raising=False)
    image = Image.new("RGB", (64, 64), (20, 30, 90))
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(220, 40, 40))  # a red square on dark blue
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.action_show_pane("preview")
        await pilot.pause()
        app.preview.show(image, "(64x64, seed 0)")
        await pilot.pause(0.3)
        lines = [line.strip() for line in text_in(app, "#picture").splitlines() if line.strip()]
    if term in ("xterm-mono", "vt100"):
        # 32x32 cells at 80x24: the ground blank, the square's 16 columns by 8 rows in the densest characters
        assert len(lines) == 8 and all(len(line) == 16 and set(line) <= set("#%@") for line in lines), lines
    else:
        assert set("".join(lines)) == {"▄"}  # colour: half blocks, as before


@pytest.mark.parametrize("setting", [("TERM", "xterm-mono"), ("NO_COLOR", "1")])
async def test_without_colours_each_memory_line_has_its_own_mark(home, monkeypatch, setting):
    """The memory graph told its four lines apart by colour alone: on a terminal without colours, or under NO_COLOR
    (where Textual draws in greys, and RSS, MLX active and MLX cache came out as the same grey), the lines were
    alike and the legend four identical "━". There each line is drawn in a character of its own, the legend's."""
    import time

    from quantbench.tui.app import QuantbenchApp
    from quantbench.tui.memory_sampler import MemorySample
    from test_workbench_view import text_in

    def sample(rss: int = 400, at: float = 0.0) -> MemorySample:
        return MemorySample(time=time.time() + at, rss=rss << 20, mlx_active=100 << 20, mlx_cache=10 << 20, swap=0,
                            available=8 << 30)

    monkeypatch.setenv(*setting)
    monkeypatch.delenv("COLORTERM", raising=False)
    # The workbench's own samples too: a loaded machine's real ones (MLX active and cache both 0, drawn over each
    # other) had hidden the cache's line in CI.
    monkeypatch.setattr("quantbench.tui.app.sample_memory", sample)
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        monitor = app.monitor
        for second, rss in enumerate((200, 300, 400)):
            monitor.add_sample(sample(rss, second))
        monitor.memory_plot.draw(monitor.history)
        await pilot.pause(0.2)
        legend, plot = text_in(app, "#memory-legend"), text_in(app, "#memory-plot")
    marks = [legend.split(label)[0].split()[-1] for label in ("RSS", "MLX active", "MLX cache", "swap")]
    assert len(set(marks)) == 4 and "━" not in marks, legend
    for mark in marks[:3]:  # the three lines drawn (swap stays at 0, under the cache's line)
        assert mark in plot, (mark, plot)
