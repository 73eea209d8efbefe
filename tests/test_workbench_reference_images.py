"""The workbench's reference image field (FLUX.2's multi-reference editing, on the seed's row): a run with a reference
draws another picture, its history record names the file and its History row says [ref], and a rerun puts it back;
a file that cannot be used is one notice and runs nothing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.generate import GeneratePane
from quantbench.tui.widgets.history import HistoryTable
from test_reference_images import _picture
from test_workbench import SMALL, dirs, models, record_notifications, set_steps, type_prompt, wait_for  # noqa: F401


async def test_a_run_with_a_reference_draws_another_picture_and_a_rerun_keeps_it(models, dirs):
    reference = _picture(dirs / "refs" / "stripes.png", (96, 80), seed=3)
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=SMALL) as pilot:  # 80x24: the field shares the seed's row
        await type_prompt(pilot, "a small red star")
        set_steps(app, 2)
        history = app.query_one(HistoryTable)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 1 and not app.running)
        field = app.query_one("#reference-images")
        assert field.region.width >= 12  # visible at 80x24, room to type a name
        field.value = str(reference)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 2 and not app.running)
        plain, edited = sorted(history.records, key=lambda record: record["time"])
        assert plain["reference_images"] is None and edited["reference_images"] == [str(reference)]
        assert sorted(str(history.get_row_at(i)[2]).startswith("[ref]") for i in range(2)) == [False, True]
        pictures = [np.asarray(Image.open(record["image"])).astype(float) for record in (plain, edited)]
        assert pictures[0].shape == pictures[1].shape  # drawn at the form's size, not the reference's
        assert np.abs(pictures[0] - pictures[1]).mean() > 0.1
        field.value = ""
        app.query_one(GeneratePane).load_request(edited)  # what ctrl+r on that run does before it runs
        assert field.value == str(reference)


async def test_a_reference_that_cannot_be_used_is_one_notice_and_runs_nothing(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    said = record_notifications(app)
    async with app.run_test(size=SMALL) as pilot:
        await type_prompt(pilot, "a small red star")
        app.query_one("#reference-images").value = str(dirs / "absent.png")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("no such file" in m for m in said))
        (dirs / "tiny.png").parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16)).save(dirs / "tiny.png")
        app.query_one("#reference-images").value = str(dirs / "tiny.png")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("16x16 is too small" in m for m in said))
        await wait_for(pilot, lambda: not app.running)
        assert app.query_one(HistoryTable).row_count == 0
