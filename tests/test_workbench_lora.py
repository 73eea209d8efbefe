"""The workbench's LoRA field: a run with a LoRA draws another picture, keeps the LoRA in its history record, and
a rerun puts it back in the form; a LoRA that cannot be used is one notice and runs nothing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lora_files import linear_layers, lora_tensors, write_lora
from quantbench.core.builtin import builtin_model_path
from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.generate import GeneratePane
from quantbench.tui.widgets.history import HistoryTable
from test_workbench import WIDE, dirs, models, record_notifications, set_steps, type_prompt, wait_for  # noqa: F401


async def test_a_run_with_a_lora_draws_another_picture_and_a_rerun_keeps_it(models, dirs):
    layers = linear_layers(builtin_model_path("demo-turbo"), count=4)
    lora = write_lora(dirs / "loras" / "style.safetensors", lora_tensors(layers, rank=4, scale=0.5, seed=2))
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a small red star")
        set_steps(app, 2)
        history = app.query_one(HistoryTable)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 1 and not app.running)
        app.query_one("#loras").value = f"{lora}:0.8"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 2 and not app.running)
        plain, adapted = sorted(history.records, key=lambda record: record["time"])
        assert plain["loras"] is None and adapted["loras"] == [[str(lora), 0.8]]
        assert sorted(str(history.get_row_at(i)[5]).strip() for i in range(2)) == ["f32", "f32+LoRA"]
        pictures = [np.asarray(Image.open(record["image"])).astype(float) for record in (plain, adapted)]
        assert np.abs(pictures[0] - pictures[1]).mean() > 1.0  # the LoRA changed the picture
        app.query_one("#loras").value = ""
        app.query_one(GeneratePane).load_request(adapted)  # what ctrl+r on that run does before it runs
        assert app.query_one("#loras").value == f"{lora}:0.8"


async def test_a_lora_for_another_model_is_one_notice_and_runs_nothing(models, dirs):
    lora = write_lora(dirs / "other.safetensors",
                      lora_tensors({"joint_blocks.0.attn.to_q": (64, 64)}, rank=2))
    app = QuantbenchApp(model=models["distilled"])
    said = record_notifications(app)
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a small red star")
        app.query_one("#loras").value = str(lora)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("not a layer of this model's transformer" in m for m in said))
        await wait_for(pilot, lambda: not app.running)
        assert app.query_one(HistoryTable).row_count == 0
        app.query_one("#loras").value = "style.safetensors:strong"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("LoRA strength 'strong' is not a number" in m for m in said))
