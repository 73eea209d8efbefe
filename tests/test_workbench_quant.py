"""The workbench's side of quantization methods (issue 16): menus of bits, method and group size; a run whose
method calibrates shows block i of N with an ETA and can be cancelled leaving nothing behind; the Compare
view puts methods side by side. On a tiny random model, calibrating on two small prompts."""

import dataclasses
import json
import time

import pytest
from textual.widgets import Select

from quantbench.core.quant import method_names
from quantbench.core.random_model import write_random_model
from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.compare import ComparePreview, CompareScreen
from quantbench.tui.widgets.precision import PrecisionPicker
from test_workbench import record_notifications, wait_for


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_random_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_sequence_length": 64}))
    return str(folder)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    from quantbench.core.quant.calibration import settings

    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    # Calibrate on two small pictures: the method and the workbench are the same, in seconds instead of minutes.
    monkeypatch.setattr(settings, "GENERAL_PROMPTS", ("a red ring", "a blue square on the left"))
    monkeypatch.setattr(settings, "GENERAL_SIZE", 64)
    return tmp_path


def pick(app, picker_id: str, bits: str, method: str | None = None, group: int | None = None) -> PrecisionPicker:
    picker = app.query_one(f"#{picker_id}", PrecisionPicker)
    picker.query_one(".bits", Select).value = bits
    if method is not None:
        picker.query_one(".method", Select).value = method
    if group is not None:
        picker.query_one(".group", Select).value = group
    return picker


def slow_calibration(app, seconds: float = 0.5) -> None:
    """Each calibration stage and block shows for `seconds` at least (the engine's thread waits after its first
    report), as on a real model, where a block takes minutes: on the tiny model the whole calibration can end
    between two looks at the screen. Only the first report of each: the later ones added a minute a test."""
    run = app.session.run

    def slowed(request, *args, on_calibration=None, **kwargs):
        seen = set()

        def report(progress):
            on_calibration(progress)
            if (progress.stage, progress.block) not in seen:
                seen.add((progress.stage, progress.block))
                time.sleep(seconds)
        return run(request, *args, on_calibration=report if on_calibration else None, **kwargs)

    app.session.run = slowed


def options(picker: PrecisionPicker, kind: str) -> list:
    return [value for _, value in picker.query_one(f".{kind}", Select)._options if value is not Select.NULL]


async def test_the_menus_offer_bits_methods_and_group_sizes_as_one_spec(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        transformer, text_encoder = app.query_one("#quantize"), app.query_one("#te-quantize")
        assert options(transformer, "bits") == ["bf16", "8", "6", "5", "4", "3", "2"]
        assert set(options(transformer, "method")) == set(method_names()) >= {"rtn", "mse", "hqq", "gptq"}
        assert options(transformer, "group") == [32, 64, 128]
        assert "gptq" not in options(text_encoder, "method")  # calibration samples the transformer's inputs
        assert transformer.spec is None and transformer.query_one(".method", Select).disabled

        pick(app, "quantize", "3", "hqq", 32)
        await pilot.pause()
        assert not transformer.query_one(".method", Select).disabled
        assert not app.query_one("#calibration-field").display
        pick(app, "quantize", "3", "gptq", 32)
        await pilot.pause()
        assert app.query_one("#calibration-field").display  # where its prompts come from, and that it takes minutes
        assert "gptq calibrates before loading (minutes)" in str(app.query_one("#calibration-prompts").tooltip)
        pick(app, "quantize", "3", "hqq", 32)
        await pilot.pause()
        pick(app, "te-quantize", "8")
        form = app.query_one("#generate")
        request = form.request(model)
        assert request.quantize == "3:hqq:32" and request.text_encoder_quantize == 8
        pick(app, "quantize", "4", "rtn", 64)
        assert form.request(model).quantize == 4  # as history has always kept plain 4-bit

        form.load_request({"prompt": "a ring", "quantize": "2:gptq:32", "text_encoder_quantize": None})
        await pilot.pause()
        assert form.request(model).quantize == "2:gptq:32" and form.request(model).text_encoder_quantize is None


async def test_a_gptq_run_shows_its_calibration_block_by_block_and_saves_its_spec(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        slow_calibration(app)
        app.query_one("#steps").value = "2"
        app.query_one("#width").value = app.query_one("#height").value = 64
        pick(app, "quantize", "4", "gptq")
        statuses = []
        await pilot.press("ctrl+g")
        history = app.query_one("#history")
        await wait_for(pilot, lambda: statuses.append(str(app.query_one("#run-status").render()))
                       or history.row_count == 1, 300)
        blocks = [s for s in statuses if "calibrating: block " in s]
        assert blocks and all(" of " in s and "left" in s and "elapsed" in s for s in blocks)
        record = history.records[0]
        assert record["quantize"] == "4:gptq"
        assert "q4:gptq" in str(history.get_row_at(0))


async def test_cancelling_a_calibration_leaves_no_picture_no_history_and_no_transformer(model, dirs):
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        app.query_one("#steps").value = "2"
        app.query_one("#width").value = app.query_one("#height").value = 64
        slow_calibration(app)
        pick(app, "quantize", "2", "gptq", 32)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "calibrating" in app.monitor.phase, 120)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running, 120)
        assert any("run cancelled" in m for m in said)
        assert app.query_one("#history").row_count == 0
        assert not list((dirs / "data").rglob("*.png")) and not (dirs / "data" / "history.jsonl").exists()
        pipeline = app.session.slot.pipeline
        assert pipeline is None or pipeline.transformer is None  # nothing half-quantized kept for the next run


async def test_a_lean_session_recalibrates_each_run_and_each_run_can_cancel_it(model, dirs):
    """Lean memory frees the transformer before the decode, so the next run calibrates again: with that run's
    progress and that run's cancel, not the first run's."""
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        app.session.set_lean(True)
        slow_calibration(app)
        app.query_one("#steps").value = "2"
        app.query_one("#width").value = app.query_one("#height").value = 64
        pick(app, "quantize", "4", "gptq")
        history = app.query_one("#history")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 1 and not app.running, 300)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "calibrating" in app.monitor.phase, 120)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running, 60)
        assert any("run cancelled" in m for m in said) and history.row_count == 1
        assert app.session.slot.pipeline.transformer is None


async def test_the_compare_view_puts_methods_and_group_sizes_side_by_side(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        app.query_one("#prompt").value = "a ring"
        app.query_one("#steps").value = "2"
        app.query_one("#width").value = app.query_one("#height").value = 64
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        await pilot.press("ctrl+x")  # the default precisions are not what this test is about
        await wait_for(pilot, lambda: not screen.comparing, 300)
        screen.query_one("#compare-precisions").value = "4,4:gptq,3:gptq,2:gptq:32"
        screen.start()
        statuses = []
        status = screen.query_one("#compare-status")
        await wait_for(pilot, lambda: statuses.append(str(status.render())) or screen.report is not None, 600)
        labels = [p.label for p in screen.query(ComparePreview)]
        assert labels == ["unquantized", "q4", "q4:gptq", "q3:gptq", "q2:gptq:32"]  # the reference, always
        assert any("calibrating: block " in s and " of " in s for s in statuses)
        regions = [p.region for p in screen.query(ComparePreview)]
        assert len({r.y for r in regions}) == 1 and all(a.right <= b.x for a, b in zip(regions, regions[1:]))


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_keep_dense_trades_memory_for_speed_and_the_memory_check_counts_it(model, dirs, size):
    """The form's 'keep dense' field is generate --keep-dequantized: it shows in full at both sizes; 'all' keeps
    every quantized transformer layer dense too, the memory model predicts exactly those bytes (as the CLI's
    JSON says), the run's summary names them, and a value that is not a budget is one line and no run."""
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        field, form = app.query_one("#keep-dequantized"), app.query_one("#generate")
        assert field.region.height == 1 and form.region.contains_region(field.region) and form.max_scroll_y == 0
        app.query_one("#steps").value = "2"
        pick(app, "quantize", "4")
        field.value = "lots"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("keep dense: 'lots' is not a number" in m for m in said))
        assert not app.running and app.query_one("#history").row_count == 0

        field.value = "all"
        request = form.request(model)
        predicted = app.session.check(request).fit
        unkept = app.session.check(dataclasses.replace(request, keep_dequantized=0.0)).fit
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.query_one("#history").row_count == 1, 300)
        kept = app.session.pipeline.info.kept_dequantized_bytes
        assert kept > 0 and predicted.kept_dequantized == kept and unkept.kept_dequantized == 0
        assert predicted.peak - unkept.peak <= kept  # the peak grows by at most them (it may be the encoder's)
        assert "kept dense" in str(app.query_one("#progress-text").render())


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_a_calibrations_progress_shows_whole_on_the_form(model, dirs, size):
    """The form's run status during a calibration ("calibrating: sampling ... · 2.5s elapsed") once wrapped past
    the form's last line: at 80x24 a scrollbar appeared and the elapsed time was cut off."""
    from test_workbench_view import text_in
    app = QuantbenchApp(model=model)
    async with app.run_test(size=size) as pilot:
        slow_calibration(app, 1.0)
        app.query_one("#steps").value = "2"
        app.query_one("#width").value = app.query_one("#height").value = 64
        pick(app, "quantize", "2", "gptq", 32)
        form, status = app.query_one("#generate"), app.query_one("#run-status")
        await pilot.press("ctrl+g")
        for stage in ("sampling", "block"):
            await wait_for(pilot, lambda: stage in app.monitor.phase, 120)
            await pilot.pause(0.5)
            shown = " ".join(text_in(app, "#generate").split())
            assert form.max_scroll_y == 0 and form.content_region.contains_region(status.region), stage
            assert "calibrating: " in shown and stage in shown
            assert "elapsed" in shown and "left)" in shown
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running, 120)
