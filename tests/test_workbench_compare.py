"""The Compare precisions view, driven like a person drives it (Pilot), on a tiny random model."""

import json
import time

import pytest

from quantbench.core.random_model import write_random_model
from quantbench.tui.app import QuantbenchApp, WorkbenchCommands
from quantbench.tui.widgets.compare import ComparePreview, CompareScreen, align_captions
from test_workbench import record_notifications


def short_prompts(folder):
    """Pad prompts to 64 tokens instead of 512 (model_index.json says so, as our built-in models do):
    the tiny models' passes are dominated by the text tokens, and these tests are about quantization."""
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_sequence_length": 64}))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(short_prompts(write_random_model(tmp_path_factory.mktemp("models") / "distilled", "tiny")))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    slow_compare(monkeypatch)
    return tmp_path


def slow_compare(monkeypatch, row_seconds: float = 0.3, status_seconds: float = 0.02) -> None:
    """A compare's first finished row (and each status line) holds the engine's thread a little, as a real
    model's rows take minutes: on the tiny model a whole compare can end between two looks at the screen. Only
    the first row: one row alone on screen shows that rows arrive one by one; holding each added 1.5 s a compare."""
    import quantbench.tui.app as app_module

    real = app_module.run_compare

    def slowed(request, on_row=None, on_status=None, **kwargs):
        rows = []

        def row(finished):
            on_row(finished)
            rows.append(finished)
            if len(rows) == 1:
                time.sleep(row_seconds)

        def status(text):
            on_status(text)
            time.sleep(status_seconds)
        return real(request, on_row=row if on_row else None, on_status=status if on_status else None, **kwargs)

    monkeypatch.setattr(app_module, "run_compare", slowed)


async def wait_for(pilot, condition, seconds=120.0):  # generous: the test machine is shared
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workbench")
        await pilot.pause(0.05)


async def open_compare(app, pilot, prompt: str, steps: int) -> CompareScreen:
    """Fill the form, press ctrl+o, and return the Compare view (it starts at once)."""
    app.query_one("#prompt").value = prompt
    app.query_one("#steps").value = str(steps)
    await pilot.press("ctrl+o")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
    return app.screen


async def test_compare_view_fills_in_a_row_and_a_preview_per_precision(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        app.query_one("#seed").value = "7"
        screen = await open_compare(app, pilot, "a small red star", 30)
        assert "a small red star" in str(screen.query_one("#compare-title").render())
        table = screen.query_one("#compare-table")
        seen = []
        await wait_for(pilot, lambda: seen.append(table.row_count) or table.row_count == 6)
        assert any(0 < s < 6 for s in seen)  # rows arrived one by one, not all at the end
        await wait_for(pilot, lambda: screen.report is not None)
        assert not app.running
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert labels == ["unquantized", "q8", "q6", "q5", "q4", "q3"]
        assert str(table.get_row_at(0)[6]) == "inf"  # the reference against itself
        previews = list(screen.query(ComparePreview))
        assert [p.label for p in previews] == labels
        assert all(p.image is not None for p in previews)
        assert previews[0].caption_text.endswith("\nreference")  # not "PSNR inf dB"
        assert all("PSNR" in p.caption_text for p in previews[1:])
        assert screen.report.settings.seed == 7 and screen.report.settings.steps == 30
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CompareScreen))


async def test_compare_view_can_be_cancelled_and_reports_bad_precisions(model, dirs):
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(app, pilot, "a ring", 300)
        await pilot.pause(0.3)
        assert app.running  # the workbench knows a heavy job is going: no generation starts meanwhile
        await pilot.press("ctrl+g")  # not a key of this view: nothing starts behind it
        await pilot.pause(0.2)
        assert app.job == "compare"
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        assert "cancelled" in str(screen.query_one("#compare-status").render())
        screen.query_one("#compare-precisions").value = "bf16,7"
        screen.start()
        await pilot.pause()
        assert any("unsupported quantization '7'" in m for m in said)
        assert not app.running


async def test_compare_view_searches_a_mixed_plan_and_shows_its_progress(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(app, pilot, "a small red star", 3)
        await wait_for(pilot, lambda: not screen.comparing)
        screen.query_one("#compare-precisions").value = "bf16,4,auto:4"
        screen.start()
        align_captions(screen)  # a resize as the new row of previews mounts, before they compose: crashed the app
        statuses = []
        status = screen.query_one("#compare-status")
        await wait_for(pilot, lambda: statuses.append(str(status.render())) or screen.report is not None, seconds=120)
        assert any("auto:4: [" in s and "around uniform 4-bit" in s for s in statuses)  # the search's progress
        table = screen.query_one("#compare-table")
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert labels[:2] == ["unquantized", "q4"] and len(labels) == 3 and "auto:4" in labels[2]
        uniform, mixed = screen.rows[1], screen.rows[2]
        assert mixed.transformer_bytes <= uniform.transformer_bytes


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_each_preview_shows_its_size_and_psnr_whole(model, dirs, size):
    """At 80x24 a preview's caption was cut to "229 KB, PSNR": its PSNR, what the view is for, was not shown."""
    from quantbench.core.lab.compare_outputs import row_caption
    from test_workbench_view import screen_lines
    app = QuantbenchApp(model=model)
    async with app.run_test(size=size) as pilot:
        screen = await open_compare(app, pilot, "a ring", 2)
        await wait_for(pilot, lambda: screen.report is not None)
        await pilot.pause(0.3)
        previews = list(screen.query(ComparePreview))
        assert len(previews) == 6
        for preview, row in zip(previews, screen.report.rows):
            name, info = row_caption(row)
            region = preview.content_region
            shown = " ".join(" ".join(line[region.x:region.right] for line in
                                      screen_lines(app)[region.y:region.bottom]).split())
            for part in (name, *info.split(", ")):
                assert part in shown, (part, shown)
        # and they line up: at 80x24 the quantized rows' PSNR wraps, the reference's line does not
        captions = [preview.query_one(".caption").region for preview in previews]
        pictures = [preview.query_one(".picture").region for preview in previews]
        assert len({(c.y, c.height) for c in captions}) == 1, captions
        assert len({(p.y, p.height) for p in pictures}) == 1, pictures


async def test_compare_view_offers_only_its_own_keys(model, dirs, monkeypatch):
    """The Compare view's footer showed the workbench's ^g Generate, ^r Rerun and ^o Compare: ^o did nothing there, and
    ^g and ^r started a generation behind the view, out of sight, said only by a "saved" toast when it ended."""
    from test_workbench_view import screen_lines
    app = QuantbenchApp(model=model)
    monkeypatch.setattr(app, "start_comparison", lambda request, screen: False)  # the keys are what is looked at
    async with app.run_test(size=(80, 24)) as pilot:
        await open_compare(app, pilot, "a ring", 2)
        await pilot.pause(0.2)
        footer = screen_lines(app)[-1]
        assert "Close" in footer and "Cancel" in footer and "Quit" in footer, footer
        for key in ("Generate", "Rerun", "Compare"):
            assert key not in footer, footer
        for key in ("ctrl+g", "ctrl+r", "ctrl+o"):
            await pilot.press(key)
            await pilot.pause(0.2)
            assert not app.running and isinstance(app.screen, CompareScreen), key
        titles = [title for title, _, _ in WorkbenchCommands(app.screen)._commands()]  # the palette's, ctrl+p
        assert "Cancel the run" in titles
        assert not any(title.startswith(("Generate", "Compare", "Rerun", "Switch model")) for title in titles), titles


async def test_the_view_stays_in_sight_while_its_model_loads(model, dirs, monkeypatch):
    """The view kept "is the compare loading?" in an attribute named `loading`, which is Textual's own: each
    "loading ..." status covered the whole view with Textual's loading indicator, its status line too, for as long
    as the model loaded (minutes for a large one), and took the focus off the precisions field."""
    from quantbench.tui.messages import CompareStatus
    from test_workbench_view import screen_lines
    app = QuantbenchApp(model=model)
    monkeypatch.setattr(app, "start_comparison", lambda request, screen: False)  # the status alone is looked at
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare(app, pilot, "a ring", 2)
        await pilot.pause(0.2)
        screen.post_message(CompareStatus("loading the model ..."))
        await pilot.pause(0.3)
        shown = "\n".join(screen_lines(app))
        assert "loading the model ..." in shown and "precisions" in shown, shown
        assert app.focused is screen.query_one("#compare-precisions")


async def test_the_help_over_the_view_lists_the_views_keys(model, dirs, monkeypatch):
    """F1 over Compare listed the workbench's keys (ctrl+g generate, ctrl+r rerun, F2-F7 panes), none of which act
    there, and not how to run, cancel or close the comparison."""
    from test_workbench_view import screen_lines
    app = QuantbenchApp(model=model)
    monkeypatch.setattr(app, "start_comparison", lambda request, screen: False)  # the keys are what is looked at
    async with app.run_test(size=(80, 24)) as pilot:
        await open_compare(app, pilot, "a ring", 2)
        await pilot.press("f1")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "HelpScreen", 10)
        await pilot.pause(0.3)
        shown = "\n".join(screen_lines(app))
    assert "Generate" not in shown.splitlines()[-1], shown  # nor the footer's under the help
    for key in ("esc", "ctrl+x", "Enter"):
        assert key in shown, shown
    for key in ("ctrl+g", "ctrl+r", "F2-F7"):
        assert key not in shown, shown


async def test_a_long_status_reads_whole_at_80x24(model, dirs, monkeypatch):
    """The status was one row: at 80x24 an auto: search's progress line lost its end, the part saying what runs."""
    from quantbench.tui.messages import CompareStatus
    from test_workbench_view import screen_lines
    app = QuantbenchApp(model=model)
    monkeypatch.setattr(app, "start_comparison", lambda request, screen: False)  # the status alone is looked at
    line = "auto:3.5: [12/40] transformer_blocks.11.attn.to_out.0 at 2 bits: 31.42 dB against the reference"
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare(app, pilot, "a ring", 2)
        await pilot.pause(0.2)
        screen.post_message(CompareStatus(line))
        await pilot.pause(0.3)
        shown = " ".join(row.strip() for row in screen_lines(app))
        assert line in shown, shown
