"""Ctrl-X and quit while the model loads: the load stops within a layer, the workbench says the load was cancelled,
keeps nothing, and the next Generate loads afresh; a quit during a load is over in a second or two, not when the
load would have ended.

The load is made slow and observable the same way every time: each layer's evaluation (read from the checkpoint,
quantized, materialized: core/quant/model.py evaluate_in_units) takes LAYER_SECONDS longer, as a full-size model's
layers take on a slow disk, so the built-in model's ~90 layers load in about 30 s."""

import asyncio
import sys
import time

import mlx.core as mx
import pytest

from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.compare import CompareScreen
from quantbench.tui.widgets.generate import GeneratePane
from quantbench.tui.widgets.history import HistoryTable
from quantbench.tui.widgets.monitor import MonitorPane
from test_workbench import WIDE, dirs, models, record_notifications, set_steps, type_prompt, wait_for  # noqa: F401

LAYER_SECONDS = 0.35
WHOLE_LOAD_SECONDS = 30  # about: the built-in model has ~90 layers


class SlowLayers:
    """mlx.core as core/quant/model.py sees it, with each layer's evaluation LAYER_SECONDS longer (counted)."""

    def __init__(self, seconds: float = LAYER_SECONDS):
        self.seconds, self.count = seconds, 0

    def __getattr__(self, name):
        return getattr(mx, name)

    def eval(self, *args):
        self.count += 1
        time.sleep(self.seconds)
        mx.eval(*args)


@pytest.fixture
def slow_layers(monkeypatch):
    slow = SlowLayers()
    monkeypatch.setattr(sys.modules["quantbench.core.quant.model"], "mx", slow)
    return slow


def status_text(app) -> str:
    return str(app.query_one(MonitorPane).query_one("#progress-text").render())


def form_text(app) -> str:
    return str(app.query_one(GeneratePane).query_one("#run-status").render())


async def start_loading(app, pilot, slow: SlowLayers) -> None:
    """Generate pressed; back once the workbench says it is loading and the engine is reading layers."""
    await type_prompt(pilot, "a ring")
    set_steps(app, 2)
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: "loading" in status_text(app) and slow.count >= 2)


async def test_ctrl_x_while_the_model_loads_stops_the_load_and_the_next_generate_loads_afresh(models, dirs,
                                                                                                 slow_layers):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        await start_loading(app, pilot, slow_layers)
        pressed = time.monotonic()
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        assert app.monitor.phase == "cancelling the load"  # what it said until the load stopped (a moment)
        stopped = time.monotonic() - pressed
        assert stopped < WHOLE_LOAD_SECONDS / 3, stopped  # (within a layer; the whole load takes ~30 s)
        assert status_text(app) == "load cancelled: nothing was saved"
        assert form_text(app) == "load cancelled: nothing was saved"
        await wait_for(pilot, lambda: "load cancelled" in said)
        assert app.query_one(HistoryTable).row_count == 0 and not list((dirs / "data").rglob("*.png"))
        assert app.session.loaded_key is None  # nothing half-loaded kept
        assert not app.query_one("Button#generate").disabled and app.query_one("Button#cancel").disabled  # idle

        layers_before = slow_layers.count
        slow_layers.seconds = 0
        await pilot.click("Button#generate")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1 and not app.running)
        assert slow_layers.count - layers_before > 20  # loaded afresh, every layer read again
        assert len(list((dirs / "data").rglob("*.png"))) == 1
        assert "cancelled" not in status_text(app)


def test_quit_while_the_model_loads_is_over_in_seconds(models, dirs, slow_layers):
    """ctrl+q mid-load: the app exits and its MLX thread (which was loading) ends, as the event loop's end waits
    for it, in seconds; before, the quit waited for the whole load."""

    async def quit_mid_load() -> float:
        app = QuantbenchApp(model=models["distilled"])
        async with app.run_test(size=WIDE) as pilot:
            await start_loading(app, pilot, slow_layers)
            pressed = time.monotonic()
            await pilot.press("ctrl+q")
        return pressed

    with asyncio.Runner() as runner:  # as the workbench's asyncio.run ends: the loop's executor is joined
        pressed = runner.run(quit_mid_load())
    elapsed = time.monotonic() - pressed
    assert elapsed < 3, f"the quit took {elapsed:.1f}s (the whole load takes ~{WHOLE_LOAD_SECONDS}s)"
    from quantbench.core import mlx_thread
    assert not mlx_thread.ENGINE.alive


async def test_ctrl_x_in_the_compare_view_while_it_loads_stops_the_load(models, dirs, slow_layers):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a ring")
        set_steps(app, 2)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        status = screen.query_one("#compare-status")
        await wait_for(pilot, lambda: str(status.render()).startswith("loading") and slow_layers.count >= 2)
        pressed = time.monotonic()
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        stopped = time.monotonic() - pressed
        assert stopped < WHOLE_LOAD_SECONDS / 3, stopped
        assert str(status.render()) == "load cancelled"
        assert not screen.comparing and screen.report is None and screen.rows == []


async def test_a_lean_runs_transformer_loaded_again_inside_the_run_is_said_and_ctrl_x_stops_it(models, dirs,
                                                                                                slow_layers):
    """A lean run frees its transformer after each picture and loads it again inside the next run, where the model
    is already "loaded": the monitor said nothing of that load (it showed the run's start until the first step),
    so a press there read "cancelling at the next step". Now it says which component loads, and what comes next."""
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        app.session.set_lean(True)
        said = record_notifications(app)
        slow_layers.seconds = 0
        await type_prompt(pilot, "a ring")
        set_steps(app, 2)
        phases = []
        set_phase = app.monitor.set_phase
        app.monitor.set_phase = lambda phase: phases.append(phase) or set_phase(phase)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1 and not app.running)
        assert phases[-2:] == ["loading the transformer", "denoising"], phases  # after encoding, before the steps

        slow_layers.seconds, slow_layers.count = LAYER_SECONDS, 0
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "loading the transformer" in status_text(app) and slow_layers.count >= 2)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        assert app.monitor.phase == "cancelling the load"
        assert status_text(app) == "load cancelled: nothing was saved"
        await wait_for(pilot, lambda: "load cancelled" in said)
        assert app.query_one(HistoryTable).row_count == 1

        slow_layers.seconds = 0
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 2 and not app.running)
