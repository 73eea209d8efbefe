"""The workbench on the other families: tiny FLUX.1, Qwen-Image and Z-Image folders saved by diffusers,
opened, generated with live steps and previews, cancelled, the same way a person does on FLUX.2."""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.tui.app import QuantbenchApp  # noqa: E402
from quantbench.tui.widgets.history import HistoryTable  # noqa: E402
from quantbench.tui.widgets.monitor import MonitorPane  # noqa: E402
from quantbench.tui.widgets.preview import PreviewPane  # noqa: E402

from reference.flux1 import build_tiny_flux1  # noqa: E402
from reference.qwen_image import build_tiny_qwen_image  # noqa: E402
from reference.z_image import build_tiny_z_image  # noqa: E402
from test_workbench import WIDE, record_notifications, set_steps, slow_steps, type_prompt, wait_for  # noqa: E402

BUILDERS = {
    "flux1-schnell": lambda folder: build_tiny_flux1(folder, dev=False),
    "flux1-dev": lambda folder: build_tiny_flux1(folder, dev=True),
    "qwen-image": build_tiny_qwen_image,
    "z-image-turbo": lambda folder: build_tiny_z_image(folder, "turbo"),
    "z-image": lambda folder: build_tiny_z_image(folder, "base", seed=5),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for name, build in BUILDERS.items():
        build(root / name)
    return {name: root / name for name in BUILDERS}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


def size_to(app, pixels):
    app.query_one("#width").value = pixels
    app.query_one("#height").value = pixels


@pytest.mark.parametrize("family, negative_allowed", [
    ("flux1-schnell", False), ("flux1-dev", True), ("qwen-image", True), ("z-image-turbo", False), ("z-image", True)])
async def test_each_family_generates_with_steps_previews_and_history(folders, dirs, family, negative_allowed):
    folder = str(folders[family])
    app = QuantbenchApp(model=folder)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.query_one("#models").row(folder).weights == "local folder"
        assert app.query_one("#negative").disabled is not negative_allowed
        await type_prompt(pilot, "a red star")
        size_to(app, 64)
        set_steps(app, 3)
        await pilot.press("enter")
        history = app.query_one(HistoryTable)
        await wait_for(pilot, lambda: history.row_count == 1, seconds=120)
        monitor = app.query_one(MonitorPane)
        assert len(monitor.step_seconds) == 3 and "done" in str(monitor.query_one("#progress-text").render())
        record = history.records[0]
        assert record["steps"] == 3 and record["width"] == 64
        assert Path(record["image"]).name in str(app.query_one(PreviewPane).query_one("#caption").render())


async def test_a_qwen_image_run_cancels_and_saves_nothing(folders, dirs):
    app = QuantbenchApp(model=str(folders["qwen-image"]))
    async with app.run_test(size=WIDE) as pilot:
        slow_steps(app)
        await type_prompt(pilot, "a ring")
        size_to(app, 64)
        set_steps(app, 1000)
        await pilot.press("ctrl+g")
        monitor = app.query_one(MonitorPane)
        await wait_for(pilot, lambda: len(monitor.step_seconds) >= 2, seconds=120)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        assert "cancelled" in str(monitor.query_one("#progress-text").render())
        assert app.query_one(HistoryTable).row_count == 0
        assert not list((dirs / "data").rglob("*.png"))


async def test_flux1_dev_takes_a_negative_prompt_with_true_cfg_and_refuses_one_without(folders, dirs):
    app = QuantbenchApp(model=str(folders["flux1-dev"]))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.query_one("#true-cfg-field").display and not app.query_one("#negative").disabled
        assert "needs a true CFG above 1" in str(app.query_one("#distilled-note").render())
        await type_prompt(pilot, "a red star")
        app.query_one("#negative").value = "blurry"
        size_to(app, 64)
        set_steps(app, 2)
        said = record_notifications(app)  # as given: a loaded machine can answer after the toast has gone
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("needs true CFG" in note for note in said))
        assert app.query_one(HistoryTable).row_count == 0
        app.query_one("#true-cfg").value = "3"
        await pilot.press("ctrl+g")
        history = app.query_one(HistoryTable)
        await wait_for(pilot, lambda: history.row_count == 1, seconds=120)
        record = history.records[0]
        assert record["true_cfg"] == 3 and record["negative_prompt"] == "blurry"


async def test_the_true_cfg_field_is_only_for_flux1_dev(folders, dirs):
    for family in ("flux1-schnell", "qwen-image"):
        app = QuantbenchApp(model=str(folders[family]))
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            assert not app.query_one("#true-cfg-field").display


async def test_a_z_image_turbo_form_shows_its_fixed_guidance_of_zero(folders, dirs):
    app = QuantbenchApp(model=str(folders["z-image-turbo"]))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        guidance = app.query_one("#guidance")
        assert guidance.disabled and guidance.placeholder == "0"
        assert "stays 0" in str(app.query_one("#distilled-note").render())
