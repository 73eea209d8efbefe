"""The workbench as a person sees it (issue 14): screenshots that save, a readable prompt, a history that fits,
graphs that keep their legends off the plot, and a run that says how long, how fast and how big."""

import shutil

import pytest
from PIL import Image
from rich.cells import cell_len

from quantbench.tui.app import QuantbenchApp
from test_workbench import SMALL, WIDE, notifications, record_notifications, slow_steps, wait_for


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user with a fresh HOME and no ~/Downloads (a server reached over SSH)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("QUANTBENCH_DATA_DIR", "QUANTBENCH_CONFIG_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


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
        app.query_one("#steps").value = "500"  # a run long enough to be seen running, then cancelled
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


def test_the_bits_column_says_what_an_unquantized_run_computed_in_and_names_a_method():
    from quantbench.tui.widgets.history import precision

    run = {"time": 1.7e9, "model": "demo", "prompt": "a ring"}
    assert precision({**run, "quantize": None, "dtype": "float32"}) == "f32"  # the CPU: not bf16
    assert precision({**run, "quantize": None, "dtype": "bfloat16"}) == "bf16"
    assert precision({**run, "quantize": None}) == "full"  # a record from before the dtype was kept
    assert precision({**run, "quantize": 4}) == "q4"
    assert precision({**run, "quantize": "3:hqq:32"}) == "q3:hqq:32"
    assert precision({**run, "quantize": "mixed 3-8 (auto:4.5)"}) == "plan"


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


# ---------------------------------------------------------------- the monitor and a run's numbers

async def run_to_the_end(app, pilot, steps=3):
    app.query_one("#steps").value = str(steps)
    history = app.query_one("#history")
    rows = history.row_count  # before the run: a short one ends before pilot.press returns
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: history.row_count == rows + 1 and not app.running)
    await pilot.pause(0.3)


async def test_the_memory_legend_sits_above_the_plot_in_one_unit_convention(home):
    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=WIDE) as pilot:
        await run_to_the_end(app, pilot)
        legend, plot = app.query_one("#memory-legend").region, app.query_one("#memory-plot").region
        assert legend.bottom <= plot.y and not legend.overlaps(plot)
        plot_text = text_in(app, "#memory-plot")
        assert not any(label in plot_text for label in ("RSS", "MLX", "cache", "swap"))
        assert all(label in text_in(app, "#memory-legend") for label in ("RSS", "MLX active", "MLX cache", "swap"))
        monitor = text_in(app, "#monitor")
        assert "GiB" not in monitor and "MiB" not in monitor
        peak_rss = app.monitor.history.peaks["rss"]
        unit = "GB" if peak_rss >= 2**30 else "MB"
        assert unit in plot_text.split()  # the axis says the unit its numbers are in
        top_tick = max(float(line.split("┤")[0]) for line in plot_text.splitlines() if "┤" in line)
        assert top_tick == pytest.approx(peak_rss / 2**(30 if unit == "GB" else 20), rel=0.15)


async def test_the_memory_figures_each_fit_on_one_line_of_the_monitor_at_160x48(home):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: app.monitor.history.samples, 10)
        await pilot.pause(0.3)
        lines = [" ".join(line.split()) for line in text_in(app, "#peaks").splitlines()]
        assert lines[0].startswith("RSS now ") and " · peak " in lines[0]
        assert lines[1].startswith("MLX now ") and " · peak " in lines[1]
        assert lines[2].startswith("cache ") and lines[2].endswith(" B")  # "... · swap 0 B": not cut


async def test_step_times_show_now_mean_and_max_and_the_run_ends_with_a_summary(home):
    from quantbench.tui.widgets.monitor import short_bytes

    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=WIDE) as pilot:
        await run_to_the_end(app, pilot, steps=4)
        seconds = app.monitor.step_seconds
        assert len(seconds) == 4
        stats = " ".join(text_in(app, "#step-stats").split())
        assert stats == (f"s/step now {seconds[-1]:.2f} · mean {sum(seconds) / 4:.2f} · max {max(seconds):.2f}")
        record = app.query_one("#history").records[0]
        summary = " ".join(text_in(app, "#progress-text").split())
        assert summary.startswith("done in ") and f"{sum(seconds) / 4:.2f} s/step" in summary
        assert f"peak {short_bytes(record['peak_memory'])}" in summary
        assert "predicted " in summary  # the memory model knows the built-in models


def test_a_summary_points_out_a_prediction_more_than_10_percent_off():
    from quantbench.tui.widgets.monitor import RunSummary

    def prediction_style(measured, predicted):
        text = RunSummary(2.0, 0.0, (0.5, 0.5), measured, predicted).text()
        span = next(s for s in text.spans if "predicted" in text.plain[s.start:s.end])
        return text.plain[span.start:span.end], str(span.style)

    assert prediction_style(109 * 2**20, 100 * 2**20) == (" · predicted 100 MB (+9%)", "dim")
    assert prediction_style(112 * 2**20, 100 * 2**20) == (" · predicted 100 MB (+12%)", "bold yellow")
    assert prediction_style(80 * 2**20, 100 * 2**20) == (" · predicted 100 MB (-20%)", "bold yellow")
    assert "no prediction" in RunSummary(2.0, 0.0, (0.5,), 2**20, None).text().plain


async def test_elapsed_and_eta_show_on_the_form_while_a_run_goes_at_80x24(home):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=SMALL) as pilot:
        slow_steps(app)
        app.query_one("#steps").value = "1000"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: len(app.monitor.step_seconds) >= 2)
        await pilot.pause(0.5)
        status = text_in(app, "#run-status")
        assert "step " in status and "/1000" in status and "elapsed" in status and "ETA" in status
        assert app.query_one("#run-status").region.bottom <= app.query_one("#generate").content_region.bottom
        first = float(status.split(" elapsed")[0].split("·")[-1].strip().rstrip("s"))
        await pilot.pause(1.5)
        later = text_in(app, "#run-status")
        assert float(later.split(" elapsed")[0].split("·")[-1].strip().rstrip("s")) > first  # it keeps counting
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)


async def test_recommendations_say_what_they_assume_and_what_tight_means(home):
    from quantbench.core.hardware import detect
    from quantbench.core.memory import format_bytes
    from quantbench.core.memory_model import default_dtype
    from quantbench.core.recommend import budget_from_hardware

    hardware = detect()
    budget = budget_from_hardware(hardware)
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(100, 60)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: getattr(app.hardware, "recommendation", None) is not None)
        await pilot.pause()
        text = " ".join(text_in(app, "#hardware").split())
        assert f"{default_dtype(hardware.backend)} compute on {hardware.backend}" in text
        assert f"tight ≤ {format_bytes(budget.tight)} ({budget.tight_rule}): close other apps" in text
        assert f"fits ≤ {format_bytes(budget.comfortable)}" in text


@pytest.mark.parametrize("size", [WIDE, SMALL])
async def test_the_recommendations_scroll_to_what_fits_means_and_the_models_notes(home, size):
    """At 160x48 and 80x24 the table filled the pane and the legend and the chosen model's notes below it were
    cut off, with no way to scroll to them."""
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: getattr(app.hardware, "recommendation", None) is not None)
        await pilot.pause()
        app.hardware.scroll_end(animate=False)
        await pilot.pause(0.3)
        text = " ".join(text_in(app, "#hardware").split())
        assert "fits ≤" in text and "tight ≤" in text
        assert "demo: " in text  # the chosen model's notes, last


@pytest.mark.parametrize("size", [WIDE, SMALL])
async def test_every_key_in_the_footer_shows_with_what_it_does(home, size):
    """At 80x24 the footer ended "^t ▏^p palette": the theme key's label was cut off."""
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "^p palette" in screen_lines(app)[-1].replace("▏", ""), 20)
        footer = screen_lines(app)[-1]
        for key in ("^x Cancel", "^q Quit", "^g Generate", "^r Rerun", "^o Compare", "F1 Help", "^t Theme"):
            assert key in footer, (key, footer)


# ---------------------------------------------------------------- the main screen, snapshot-style

MAIN_SCREEN = {
    # pane: (x, y, width, height) of its region, borders included
    WIDE: {"models": (0, 1, 46, 23), "generate": (46, 1, 46, 23), "preview": (92, 1, 68, 23),
           "hardware": (0, 24, 42, 23), "monitor": (42, 24, 42, 23), "history": (84, 24, 76, 23)},
    SMALL: {"generate": (0, 3, 80, 20)},
}


@pytest.mark.parametrize("size", [WIDE, SMALL])
async def test_the_main_screen_is_laid_out_as_recorded(home, size):
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "^p palette" in screen_lines(app)[-1].replace("▏", ""), 20)  # footer drawn
        shown = {pane: tuple(app.query_one(f"#{pane}").region) for pane in
                 ("models", "generate", "preview", "hardware", "monitor", "history")
                 if app.query_one(f"#{pane}").region.height}
        assert shown == MAIN_SCREEN[size]
        lines = screen_lines(app)
        assert len(lines) == size[1] and all(len(line) == size[0] for line in lines)
        assert "quantbench" in lines[0] and "^p palette" in lines[-1].replace("▏", "")
        for pane in shown:  # every pane's border title is drawn in its top border
            title = app.query_one(f"#{pane}").border_title
            x, y, w, _ = shown[pane]
            assert title in lines[y][x:x + w]
        form = text_in(app, "#generate")
        assert "a small red star" in form and "Generate ^g" in form and "Cancel ^x" in form
        for label in ("prompt", "negative", "steps", "guidance", "seed", "size", "transformer", "text encoder"):
            assert label in form  # every field on screen without scrolling
        if size == SMALL:
            assert all(tab in lines[1] for tab in ("Models", "Generate", "Preview", "Hardware", "Monitor", "History"))


@pytest.mark.parametrize("size", [WIDE, SMALL])
async def test_the_help_shows_each_key_beside_what_it_does(home, size):
    from quantbench.tui.app import KEYS

    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "HelpScreen", 10)
        await pilot.pause(0.3)
        lines = screen_lines(app)
        for key, action in KEYS[:6 if size == SMALL else None]:  # 80x24 shows the first keys, then scrolls
            first_words = " ".join(action.split()[:3])
            assert any(key in line and first_words in line for line in lines), (key, first_words)


async def test_during_a_run_the_graphs_are_redrawn_about_once_a_second_and_end_complete(home, monkeypatch):
    """A plotext redraw holds the event loop, so during a run each graph is redrawn at most once a second (keys
    typed meanwhile repaint sooner); the last step and the end of the run still draw every step."""
    import time

    from quantbench.tui.widgets import monitor

    draws = {"memory": [], "steps": []}
    for cls, name in ((monitor.MemoryPlot, "memory"), (monitor.StepPlot, "steps")):
        real = cls.draw
        monkeypatch.setattr(cls, "draw", lambda self, data, real=real, name=name:
                            draws[name].append((time.monotonic(), len(data) if name == "steps" else 0))
                            or real(self, data))
    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause(0.3)
        started = time.monotonic()
        await run_to_the_end(app, pilot, steps=150)
        during = [t for t, _ in draws["steps"] if t >= started]
        seconds = time.monotonic() - started
        assert seconds > 2, "the run was too short to show the throttle"
        assert len(during) <= seconds / monitor.PLOT_INTERVAL_SECONDS + 4  # 150 steps, a handful of draws
        assert draws["steps"][-1][1] == 150  # the graph ends with every step
        memory = [t for t, _ in draws["memory"] if t >= started]
        assert len(memory) <= seconds / monitor.PLOT_INTERVAL_SECONDS + 4


async def test_the_palette_shows_model_names_with_their_brackets(home):
    """The palette read each title as markup: "Switch model: FLUX.2  4B" for FLUX.2 [klein] 4B, and FLUX.1
    [schnell] and [dev] both as "Switch model: FLUX.1"."""
    from textual.command import CommandList

    app = QuantbenchApp(model="demo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p")
        await pilot.press(*"switch model flux")
        results = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: results.option_count >= 7, 30)
        titles = [str(results.get_option_at_index(i).prompt).splitlines()[0] for i in range(results.option_count)]
    for name in ("FLUX.2 [klein] 4B", "FLUX.2 [klein] base 9B", "FLUX.2 [dev]", "FLUX.1 [schnell]", "FLUX.1 [dev]"):
        assert f"Switch model: {name}" in titles, titles


@pytest.mark.parametrize("size", [SMALL, WIDE])
async def test_a_failed_save_stays_readable_in_the_generate_pane(home, size, monkeypatch):
    """A data folder on a full disk: at 80x24, where the form is the one pane on show, the refusal was said by a
    toast (and the hidden Monitor) only, so once the toast went the pane showed the form as if nothing had
    happened. It stays under the buttons, every word of it in view, also after the terminal is resized."""
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 20, 1 << 20, 0))
    data = home / "a-rather-long-folder-name" / "for-the-pictures-of-this-user"
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(data))
    said = "".join(f"failed: {data / 'images'}: the picture needs about 4 KB and its disk has 0 B free: free some "
                   "space there or set QUANTBENCH_DATA_DIR to a folder on another disk (pictures and history go "
                   "there) and start the workbench again".split())
    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "^p palette" in screen_lines(app)[-1].replace("▏", ""), 20)
        notes = record_notifications(app)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("needs about 4 KB" in note for note in notes) and not app.running)
        app.clear_notifications()  # the toast gone, as it is after 10 s
        for shape in (size, SMALL if size == WIDE else WIDE, size):
            await pilot.resize_terminal(*shape)
            await wait_for(pilot, lambda: said in "".join(text_in(app, "#generate").split()), 30)


@pytest.mark.parametrize("size", [SMALL, WIDE])
async def test_the_header_names_a_model_folder_deep_in_a_long_path(home, size):
    """The header shows the open model; for a folder it showed the path from its start, cut at the header's end:
    "quantbench — /home/.../a-rather-long-folder-na…", the model's own name gone."""
    from quantbench.core.builtin import builtin_model_path
    folder = home / "models" / "a-rather-long-folder-name-for-models" / "another-long-folder-level" / "my-own-model"
    shutil.copytree(builtin_model_path("demo-turbo"), folder)
    app = QuantbenchApp(model=str(folder))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for shape in (size, SMALL if size == WIDE else WIDE):
            await pilot.resize_terminal(*shape)
            await pilot.pause(0.2)
            assert "/my-own-model" in screen_lines(app)[0], screen_lines(app)[0]


@pytest.mark.parametrize("size", [SMALL, WIDE])
async def test_a_chinese_prompt_keeps_the_history_columns_in_the_pane(home, monkeypatch, size):
    """The columns were measured and cut in characters, and a Chinese character (Qwen-Image's prompts) takes two
    cells: a Chinese prompt's cell came out twice as wide as its column, and pushed seed, steps, ..., peak off the
    pane at 80x24 (an emoji, one cell, the rows out of line with the header)."""
    import json

    data = home / "data"
    data.mkdir()
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(data))
    runs = [{**WORST_RUN, "prompt": "一只红色的狐狸在雪地里奔跑，远处是覆盖着白雪的松树林和群山"},
            {**WORST_RUN, "prompt": "a fox ✨ in the snow"}]
    (data / "history.jsonl").write_text("".join(json.dumps(run) + "\n" for run in runs))
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        app.action_show_pane("history")
        await pilot.pause(0.3)
        lines = screen_lines(app)  # whole: a wide character is one character of a line but two of its cells
    at = next(i for i, line in enumerate(lines) if "when  model" in line)
    header, rows = lines[at], lines[at + 1:at + 3]
    assert header.rstrip(" │").endswith("peak"), header  # the last column in the pane
    peak_ends = cell_len(header[:header.rindex("peak") + len("peak")])  # its right edge, on screen
    for row in rows:
        assert "41.0 GB" in row and cell_len(row[:row.rindex("41.0 GB") + len("41.0 GB")]) == peak_ends, (header, row)
