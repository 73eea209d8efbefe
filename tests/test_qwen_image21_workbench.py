"""The workbench on Qwen-Image 2.1: tiny base and Turbo folders saved by diffusers, opened, generated with live
steps and previews, the form fitted to each (guidance off by default on the base, no negative prompt on Turbo)."""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.tui.app import QuantbenchApp  # noqa: E402
from quantbench.tui.widgets.history import HistoryTable  # noqa: E402
from quantbench.tui.widgets.monitor import MonitorPane  # noqa: E402
from quantbench.tui.widgets.preview import PreviewPane  # noqa: E402

from test_workbench import WIDE, dirs, notifications, set_steps, type_prompt, wait_for  # noqa: E402,F401
from test_workbench_families import size_to  # noqa: E402


async def _generate(app, pilot, steps=None):
    await type_prompt(pilot, "a red star")
    size_to(app, 64)
    if steps:
        set_steps(app, steps)
    await pilot.press("enter")
    history = app.query_one(HistoryTable)
    await wait_for(pilot, lambda: history.row_count == 1, seconds=120)
    return history.records[0]


async def test_the_base_model_generates_without_guidance_and_says_how_cfg_works(tiny_qwen_image21, dirs):
    folder = str(tiny_qwen_image21[0])
    app = QuantbenchApp(model=folder)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert not app.query_one("#negative").disabled
        assert "without guidance by default" in str(app.query_one("#distilled-note").render())
        assert app.query_one("#steps").placeholder == "40"
        record = await _generate(app, pilot, steps=3)
        monitor = app.query_one(MonitorPane)
        assert len(monitor.step_seconds) == 3 and "done" in str(monitor.query_one("#progress-text").render())
        assert record["steps"] == 3 and record["guidance"] == 1.0 and record["width"] == 64
        assert Path(record["image"]).name in str(app.query_one(PreviewPane).query_one("#caption").render())


async def test_a_negative_prompt_without_guidance_is_refused_in_a_notification(tiny_qwen_image21, dirs):
    app = QuantbenchApp(model=str(tiny_qwen_image21[0]))
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a ring")
        app.query_one("#negative").value = "blurry"
        size_to(app, 64)
        set_steps(app, 2)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("guidance above 1" in m for m in notifications(app)))
        assert app.query_one(HistoryTable).row_count == 0


async def test_turbo_generates_on_its_own_grid_without_a_negative_prompt(tiny_qwen_image21_turbo, dirs):
    app = QuantbenchApp(model=str(tiny_qwen_image21_turbo[0]))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.query_one("#negative").disabled and app.query_one("#guidance").disabled
        record = await _generate(app, pilot)
        assert record["steps"] == 4 and len(app.query_one(MonitorPane).step_seconds) == 4
