"""The workbench's 'calibrate on' field: a calibrating method (gptq) calibrates on the user's prompt file, as
`generate --calibration-prompts` does. The field shows only where the transformer's precision calibrates; a bad file
is one line before anything loads; other prompts calibrate the model again, the same ones reuse it; the history keeps
the file and a rerun puts it back. On a tiny random model, calibrating small pictures."""

from pathlib import Path

import numpy as np
from PIL import Image

from quantbench.core.errors import InvalidRequest
from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.compare import CompareScreen
from test_workbench import record_notifications, wait_for
from test_workbench_quant import dirs, model, pick  # noqa: F401  (fixtures)


def prompt_file(folder: Path, name: str, prompts: list[str]) -> Path:
    path = folder / name
    path.write_text("# calibration prompts\n" + "\n".join(prompts) + "\n", encoding="utf-8")
    return path


def form_for_a_quick_run(app) -> None:
    app.query_one("#prompt").value = "a ring"
    app.query_one("#steps").value = "2"
    app.query_one("#seed").value = "5"
    app.query_one("#width").value = app.query_one("#height").value = 64


async def test_the_field_shows_for_methods_that_calibrate_and_a_bad_file_is_one_line(model, dirs):
    app = QuantbenchApp(model=model)
    async with app.run_test(size=(160, 48)) as pilot:
        field = app.query_one("#calibration-field")
        form = app.query_one("#generate")
        form_for_a_quick_run(app)
        await pilot.pause()
        assert not field.display  # unquantized: nothing calibrates
        pick(app, "quantize", "4", "hqq")
        await pilot.pause()
        assert not field.display
        pick(app, "quantize", "4", "gptq")
        await pilot.pause()
        assert field.display and field.region.height == 1
        assert form.request(model).calibration_prompts is None  # blank: the model's own prompts

        app.query_one("#random-seed").value = True
        for text, said in ((str(dirs / "missing.txt"), "no such file"), (str(dirs), "a folder"),
                           (str(prompt_file(dirs, "empty.txt", [])), "no prompts in the file")):
            app.query_one("#calibration-prompts").value = text
            try:
                form.request(model)
                raise AssertionError(f"{text} was taken")
            except InvalidRequest as exc:
                assert said in str(exc) and "\n" not in str(exc)
            assert app.query_one("#seed").value == "5"  # refused before a random seed was drawn into the form

        good = prompt_file(dirs, "mine.txt", ["a green ring", "two red squares"])
        app.query_one("#random-seed").value = False
        app.query_one("#calibration-prompts").value = str(good)
        request = form.request(model)
        assert request.calibration_prompts == ("a green ring", "two red squares") and request.calibration_file == good
        pick(app, "quantize", "4", "rtn")
        await pilot.pause()
        assert not field.display and form.request(model).calibration_prompts is None  # hidden: not used


async def test_other_prompts_calibrate_again_and_the_history_reruns_with_the_file(model, dirs, monkeypatch):
    first = prompt_file(dirs, "first.txt", ["a green ring", "two red squares"])
    second = prompt_file(dirs, "second.txt", ["a yellow star on the right", "a blue stripe"])
    monkeypatch.chdir(dirs)
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        form_for_a_quick_run(app)
        pick(app, "quantize", "2", "gptq", 32)
        history = app.query_one("#history")

        async def run(prompts: str) -> dict:
            app.query_one("#calibration-prompts").value = prompts
            rows = history.row_count
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: history.row_count == rows + 1 and not app.running, 300)
            return history.records[0]

        mine = await run("first.txt")  # relative to where the workbench started: kept absolute
        assert mine["calibration_prompts"] == str(first) and mine["load_seconds"] > 0
        again = await run(str(first))
        assert again["load_seconds"] == 0  # the same prompts: the calibrated model is reused
        other = await run(str(second))
        assert other["load_seconds"] > 0 and other["calibration_prompts"] == str(second)
        own = await run("")
        assert own["load_seconds"] > 0 and "calibration_prompts" not in own
        pictures = [np.asarray(Image.open(r["image"]), dtype=np.int16) for r in (mine, again, other, own)]
        assert np.array_equal(pictures[0], pictures[1])
        assert not np.array_equal(pictures[0], pictures[2]) and not np.array_equal(pictures[0], pictures[3])
        assert not any("Traceback" in m for m in said)

        history.move_cursor(row=history.row_count - 1)  # the oldest: the first file's run, rerun with its file
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: history.row_count == 5 and not app.running, 300)
        assert app.query_one("#calibration-prompts").value == str(first) and app.query_one("#calibration-field").display
        rerun = history.records[0]
        assert rerun["calibration_prompts"] == str(first) and rerun["load_seconds"] > 0
        assert np.array_equal(np.asarray(Image.open(rerun["image"]), dtype=np.int16), pictures[0])  # the same picture


async def test_the_compare_view_calibrates_on_the_file_and_shows_the_field_only_for_methods_that_calibrate(model, dirs):
    mine = prompt_file(dirs, "mine.txt", ["a green ring", "two red squares"])
    app = QuantbenchApp(model=model)
    said = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        form_for_a_quick_run(app)
        app.query_one("#calibration-prompts").value = str(mine)  # typed while the form's precision was rtn
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        row = screen.query_one("#compare-calibration")
        await wait_for(pilot, lambda: not screen.comparing, 300)
        assert not row.display  # the default precisions do not calibrate
        precisions = screen.query_one("#compare-precisions")
        precisions.value = "4:gptq"
        await pilot.pause()
        assert row.display and screen.query_one("#compare-calibration-prompts").value == str(mine)

        screen.query_one("#compare-calibration-prompts").value = str(dirs / "missing.txt")
        screen.start()
        await pilot.pause()
        assert not screen.comparing and any("no such file" in m for m in said)

        screen.query_one("#compare-calibration-prompts").value = str(mine)
        screen.start()
        assert screen.request.calibration_prompts == ("a green ring", "two red squares")
        assert screen.request.calibration_prompts_file == mine
        await wait_for(pilot, lambda: screen.report is not None, 300)
        assert [row.label for row in screen.rows] == ["unquantized", "q4:gptq"]

        precisions.value = "4:hqq"
        await pilot.pause()
        assert not row.display
