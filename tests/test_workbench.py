"""The workbench driven like a person drives it: App.run_test() and Pilot against the real engine."""

import json
import time
from pathlib import Path

import pytest

from quantbench.core.random_model import write_random_model
from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.generate import GeneratePane
from quantbench.tui.widgets.history import HistoryTable
from quantbench.tui.widgets.monitor import MonitorPane
from quantbench.tui.widgets.preview import PreviewPane

WIDE, SMALL = (160, 48), (80, 24)


@pytest.fixture(scope="module")
def models():
    """The shipped built-in models: the workbench does real work on them with no download."""
    from quantbench.core.builtin import builtin_model_path

    for name in ("demo", "demo-turbo"):
        if not (builtin_model_path(name) / "model_index.json").is_file():
            pytest.skip(f"the built-in model {name} is not in this installation")
    return {"distilled": "demo-turbo", "base": "demo"}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


async def wait_for(pilot, condition, seconds=120.0):  # generous: the test machine is shared
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workbench")
        await pilot.pause(0.05)


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


def record_notifications(app) -> list[str]:
    """Every message the app notifies from now on, kept after its toast expires (a loaded machine can take
    longer to answer a key than a toast stays up)."""
    said = []
    notify = app.notify

    def recorded(message, *args, **kwargs):
        said.append(str(message))
        return notify(message, *args, **kwargs)

    app.notify = recorded
    return said


async def type_prompt(pilot, text):
    pilot.app.query_one("#prompt").value = text
    pilot.app.query_one("#prompt").focus()


def set_steps(app, steps):
    app.query_one("#steps").value = str(steps)


def slow_steps(app, seconds: float = 0.02) -> None:
    """Each denoising step takes `seconds` longer (in the engine's thread), as on a real model, where a step
    takes seconds: the built-in model's 1000 steps can end on a quiet machine before a test's keys are read."""
    run = app.session.run

    def slowed(request, on_step, *args, **kwargs):
        def step(report):
            on_step(report)
            time.sleep(seconds)
        return run(request, step, *args, **kwargs)

    app.session.run = slowed


async def start_a_long_run(app, pilot, prompt: str, steps_drawn: int = 1) -> MonitorPane:
    """A 1000-step run (slow_steps: it outlasts what the test does next) started with ctrl+g; returns the
    monitor once `steps_drawn` steps are drawn."""
    slow_steps(app)
    await type_prompt(pilot, prompt)
    set_steps(app, 1000)
    await pilot.press("ctrl+g")
    monitor = app.query_one(MonitorPane)
    await wait_for(pilot, lambda: len(monitor.step_seconds) >= steps_drawn)
    return monitor


async def test_launch_opens_on_the_builtin_model_with_every_pane_at_160x48(models, dirs):
    app = QuantbenchApp()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.model == "demo"
        assert not app.screen.has_class("-compact")
        for pane in ("models", "generate", "preview", "hardware", "monitor", "history"):
            assert app.query_one(f"#{pane}").display
        assert app.query_one("#models").row("demo").weights == "built in"
        assert app.query_one("#width").value == 64  # the built-in model's native size


async def test_a_local_folder_is_listed_and_generates(dirs, tmp_path):
    folder = str(write_random_model(tmp_path / "local", "tiny"))
    app = QuantbenchApp(model=folder)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.query_one("#models").row(folder).weights == "local folder"
        await type_prompt(pilot, "a square")
        set_steps(app, 1)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1)


async def test_generate_updates_preview_graphs_and_history(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    slow_steps(app, 0.25)  # the graphs sample memory 4 times a second: the run must outlast a few samples
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a small red star")
        set_steps(app, 5)
        await pilot.press("enter")
        history = app.query_one(HistoryTable)
        await wait_for(pilot, lambda: history.row_count == 1)
        monitor = app.query_one(MonitorPane)
        assert len(monitor.step_seconds) == 5 and "done" in str(monitor.query_one("#progress-text").render())
        assert len(monitor.history.samples) >= 2  # memory was sampled while it ran
        record = history.records[0]
        assert record["prompt"] == "a small red star" and record["steps"] == 5
        stored = (dirs / "data" / "history.jsonl").read_text().splitlines()
        assert json.loads(stored[0])["image"] == record["image"]
        assert (dirs / "data" / "images").glob("*.png")
        assert Path(record["image"]).name in str(app.query_one(PreviewPane).query_one("#caption").render())

    # A new session shows the runs of earlier sessions.
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.query_one(HistoryTable).row_count == 1


async def test_a_history_that_cannot_be_written_does_not_lose_the_picture(models, dirs):
    """The PNG was written, then the history's append raised (here the file is a folder; a full disk or a
    history.jsonl left read-only by another user does the same): the run showed 'unexpected error' and no picture."""
    (dirs / "data").mkdir(parents=True, exist_ok=True)
    (dirs / "data" / "history.jsonl").mkdir()
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a small red star")
        set_steps(app, 2)
        await pilot.press("enter")
        # the run's end, not its start: two steps of demo-turbo can be over before a first look at app.running
        await wait_for(pilot, lambda: any("could not record it" in n for n in notifications(app)))
        await wait_for(pilot, lambda: not app.running)
        await pilot.pause()
        notes = notifications(app)
        caption = str(app.query_one(PreviewPane).query_one("#caption").render())
    pictures = list((dirs / "data" / "images").glob("*.png"))
    assert len(pictures) == 1 and pictures[0].name in caption
    history = dirs / "data" / "history.jsonl"
    assert any(f"is saved, but the history {history} could not record it (Is a directory)" in note
               for note in notes), notes
    assert not any("unexpected error" in note for note in notes), notes


COMPILER_SCREENFUL = ('[Compile::eval_cpu] Failed to compile function Cf4ISigmoid_contiguous: Failed to execute command '
                      'with return code 1: "g++ -std=c++17 -O3 -shared "/tmp/full/mlx/0.32.4/cpu/tmp_a07ccb4d.cpp" -o '
                      '"/tmp/full/mlx/0.32.4/cpu/tmp_a07ccb4d.so" 2>&1", the output is: In file included from ...\n'
                      + "warning: dereferencing type-punned pointer\n" * 40
                      + "fatal error: error writing to /tmp/full/ccT79uDp.s: No space left on device\n")


async def test_a_full_temporary_folder_is_one_line_not_the_compilers_output(models, dirs, monkeypatch):
    """MLX's CPU backend builds its compiled kernels in $TMPDIR/mlx: with that disk full the run failed with
    'unexpected error: RuntimeError: ' and forty lines of g++'s output in a toast."""
    app = QuantbenchApp(model=models["distilled"])

    def full(*args, **kwargs):
        raise RuntimeError(COMPILER_SCREENFUL)

    monkeypatch.setattr(app.session, "run", full)
    said = record_notifications(app)
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a small red star")
        await pilot.press("enter")
        await wait_for(pilot, lambda: said and not app.running)
    assert said == ["MLX could not build a CPU kernel in /tmp/full/mlx/0.32.4/cpu (No space left on device): free "
                    "some space there, or point TMPDIR at a folder with room"], said


async def test_a_data_folder_that_cannot_be_written_says_what_to_do(models, dirs, unwritable_folder, monkeypatch):
    """A read-only HOME (over SSH, a shared account): every run failed with "cannot be created (Operation not
    permitted)" and nothing said how to go on."""
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(unwritable_folder / "quantbench"))
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        set_steps(app, 2)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("QUANTBENCH_DATA_DIR" in n for n in notifications(app)))
        await wait_for(pilot, lambda: not app.running)
        notes = notifications(app)
    line = next(n for n in notes if "QUANTBENCH_DATA_DIR" in n)
    assert line.startswith(f"{unwritable_folder / 'quantbench' / 'images'}: cannot ") and "\n" not in line


async def test_cancel_mid_run_saves_nothing(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        monitor = await start_a_long_run(app, pilot, "a ring", steps_drawn=2)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)
        assert "cancelled" in str(monitor.query_one("#progress-text").render())
        assert len(monitor.step_seconds) < 1000
        assert app.query_one(HistoryTable).row_count == 0
        assert not list((dirs / "data").rglob("*.png"))


async def test_a_tick_while_the_app_closes_mid_run_does_not_crash_it(models, dirs):
    """Closing the workbench mid-run removes the form's children while the run's 4-a-second timer still ticks:
    a tick that then asked for the status line crashed the app on its way out (a traceback at exit)."""
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        monitor = await start_a_long_run(app, pilot, "a ring", steps_drawn=2)
        await app.query_one(GeneratePane).remove_children()  # as the app's teardown leaves the form
        app._tick()
        app.action_cancel()
        await wait_for(pilot, lambda: not app.running)
    assert app.return_code in (None, 0) and app._exception is None


async def test_keys_are_handled_while_a_run_goes(models, dirs):
    app = QuantbenchApp(model=models["base"])
    async with app.run_test(size=SMALL) as pilot:
        monitor = await start_a_long_run(app, pilot, "a star")  # 1000 steps outlast the keys below
        await pilot.press("f6")  # show the monitor pane
        assert app.running and app.query_one("#monitor").has_class("-active")
        await pilot.press("f1")  # the help screen opens mid-run
        assert app.screen.__class__.__name__ == "HelpScreen"
        await pilot.press("escape")
        steps_seen = len(monitor.step_seconds)
        await wait_for(pilot, lambda: len(monitor.step_seconds) > steps_seen)  # and the run went on meanwhile
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)


async def test_distilled_model_disables_negative_prompt_and_guidance(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        form = app.query_one(GeneratePane)
        assert form.query_one("#negative").disabled and form.query_one("#guidance").disabled
        assert "distilled" in str(form.query_one("#distilled-note").render())
        app.select_model(models["base"])
        await pilot.pause()
        assert not form.query_one("#negative").disabled and not form.query_one("#guidance").disabled


async def test_engine_errors_become_notifications_and_the_app_stays_usable(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a square")
        set_steps(app, 5000)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("steps 5000 is not allowed" in m for m in notifications(app)))
        assert not app.running
        set_steps(app, 2)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1)


async def test_a_run_too_big_for_this_machine_is_refused_until_generated_anyway(models, dirs, monkeypatch):
    import dataclasses

    from quantbench.core import hardware

    real = hardware.detect()
    monkeypatch.setattr(hardware, "detect", lambda: dataclasses.replace(real, total_ram=int(0.8 * 2 ** 30),
                                                                       backend="cpu", gpu_memory=None))
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await type_prompt(pilot, "a square")
        set_steps(app, 1)
        # 256x256 needs about 80 MB here, over the 51 MB this 0.8 GB machine gives (512x512 ran 4 times longer)
        app.query_one("#width").value = app.query_one("#height").value = 256
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("needs about" in m for m in notifications(app)))
        assert any("Generate anyway" in m for m in notifications(app))
        assert not app.running and app.query_one(HistoryTable).row_count == 0
        app.action_generate_anyway()
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1)


async def test_missing_weights_are_a_notification(dirs):
    app = QuantbenchApp(model="acme/not-downloaded")
    said = record_notifications(app)  # as given: the startup's warning is up for 15 s, which a loaded start can take
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert any("acme/not-downloaded" in m for m in said)


async def test_layout_holds_at_80x24(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-compact")
        visible = [p for p in ("models", "generate", "preview", "hardware", "monitor", "history")
                   if app.query_one(f"#{p}").display and app.query_one(f"#{p}").region.height > 0]
        assert visible == ["generate"]
        generate = app.query_one("#generate").region
        assert generate.width <= 80 and generate.height >= 15
        await pilot.press("f4")
        assert app.query_one("#preview").region.height > 0 and app.query_one("#generate").region.height == 0


async def test_theme_choice_persists(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        assert app.theme == "quantbench-dark"
        await pilot.press("ctrl+t")
        chosen = app.theme
        assert chosen != "quantbench-dark"
    saved = json.loads((dirs / "config" / "config.json").read_text())
    assert saved["theme"] == chosen
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.theme == chosen


async def test_a_setting_that_cannot_be_saved_says_why_in_plain_words(models, dirs):
    (dirs / "config").write_text("a file where the settings folder should be")
    app = QuantbenchApp(model=models["distilled"])
    said = record_notifications(app)  # as given: a toast is up for 5 s, which a loaded start can take
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+t")
        await pilot.pause()
        unsaved = [n for n in said if "not saved" in n]
    # the model chosen at start and then the theme: each change says so, in words, not "[Errno 17] ..."
    assert unsaved and set(unsaved) == {f"settings not saved: {dirs / 'config'}: File exists"}


async def test_a_setting_a_full_disk_cannot_take_names_the_file_and_keeps_the_old_one(models, dirs, monkeypatch):
    """On a full disk the write itself fails (ENOSPC from a write or fsync names no file): the warning was only
    "settings not saved: No space left on device", which does not say what was lost."""
    import errno
    import os
    (dirs / "config").mkdir()
    config = dirs / "config" / "config.json"
    config.write_text(json.dumps({"theme": "quantbench-light"}))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    app = QuantbenchApp(model=models["distilled"])
    said = record_notifications(app)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        before = config.read_text()
        with monkeypatch.context() as full_disk:
            full_disk.setattr(os, "fsync", full)
            await pilot.press("ctrl+t")
            await pilot.pause()
            unsaved = [n for n in said if "not saved" in n]
            assert config.read_text() == before  # the old settings, whole
    assert unsaved == [f"settings not saved: {config}: No space left on device"]
    assert json.loads(before)["theme"] == "quantbench-light"
    assert os.listdir(dirs / "config") == ["config.json"]  # no staged half-file left beside it


async def test_quitting_during_a_run_exits_promptly(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    started = time.monotonic()
    async with app.run_test(size=WIDE) as pilot:
        await start_a_long_run(app, pilot, "a circle")
        await pilot.press("ctrl+q")
    assert time.monotonic() - started < 20
    assert not list((dirs / "data").rglob("*.png"))


async def test_lean_memory_from_the_palette_frees_the_text_encoder(models, dirs):
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)  # as given: the toast is up for 4 s, which a loaded machine can take
        app.action_toggle_memory()
        assert app.session.lean
        await pilot.pause()
        assert any("lean" in m for m in said)
        await type_prompt(pilot, "a square")
        set_steps(app, 2)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one(HistoryTable).row_count == 1)
        assert app.session.pipeline.text_encoder is None and app.session.pipeline.transformer is None


@pytest.mark.parametrize("size", [WIDE, SMALL])
async def test_typing_a_prompt_on_a_fresh_start_replaces_the_example(models, dirs, size):
    """The prompt starts filled in (ctrl+g draws at once) and focused; the Preview says "type a prompt and press
    Enter". Typing gave "a red ringa small red star ...": the example is now selected, so typing replaces it. Once
    the user's own text is there, coming back to the field edits it where the cursor was."""
    from quantbench.tui.widgets.generate import EXAMPLE_PROMPT
    app = QuantbenchApp()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        prompt = app.query_one("#prompt")
        assert app.focused is prompt and prompt.value == EXAMPLE_PROMPT
        await pilot.press(*"a red ring")
        assert prompt.value == "a red ring"
        app.query_one("#steps").focus()
        await pilot.pause()
        prompt.focus()
        await pilot.press("!")
        assert prompt.value == "a red ring!"


FORM_NUMBERS = [
    ("#steps", "1_0", "steps: '1_0' is not a whole number"),  # Textual's integer field takes "_"; int() read 10
    ("#steps", "\u0661\u0660", "steps: '\u0661\u0660' is not a whole number"),  # Arabic-Indic digits: int() read 10
    ("#seed", "9" * 5000, "seed: '" + "9" * 40 + "...' is too long for a number"),  # a paste, cut short in the line
    ("#guidance", "1_5", "guidance: '1_5' is not a number"),
    ("#keep-dequantized", "nan", "keep dense: 'nan' is not a number"),
]


async def test_a_form_number_is_only_what_a_user_writes(models, dirs):
    """The form's number fields take what the CLI's options take, and say what is wrong in the field's name (the
    true CFG field once said "guidance must be a number")."""
    app = QuantbenchApp(model=models["base"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        await type_prompt(pilot, "a square")
        for field, value, message in FORM_NUMBERS:
            before = app.query_one(field).value
            app.query_one(field).value = value
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: any(message in m for m in said))
            assert not app.running and app.query_one(HistoryTable).row_count == 0
            app.query_one(field).value = before
        assert all("\n" not in m and len(m) < 200 for m in said)


async def test_a_full_data_disk_names_the_images_folder(models, dirs, monkeypatch):
    """A data folder on a full disk was refused as "<images>/picture.png: the picture needs about 4 KB": a file
    that does not exist and never would (pictures are named by time and seed). And it said "or choose another
    destination", the CLI's advice: the workbench has no destination to choose, only QUANTBENCH_DATA_DIR."""
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 0))
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        await type_prompt(pilot, "a square")
        set_steps(app, 2)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: any("needs about" in m for m in said))
        images = dirs / "data" / "images"
        assert any(m.startswith(f"{images}: the picture needs about 4 KB and its disk has 0 B free") for m in said), said
        refusal = next(m for m in said if "needs about" in m)
        assert "QUANTBENCH_DATA_DIR" in refusal and "destination" not in refusal, refusal
        assert not app.running and app.query_one(HistoryTable).row_count == 0 and not list(images.iterdir())


def _past_run(dirs, **fields):
    record = {"time": 1.7e9, "model": "demo-turbo", "prompt": "a ring", "seed": 3, "steps": 2, "width": 64,
              "height": 64, "quantize": None, **fields}
    (dirs / "data").mkdir(exist_ok=True)
    (dirs / "data" / "history.jsonl").write_text(json.dumps(record) + "\n")


async def test_rerunning_a_run_whose_model_cannot_be_opened_runs_nothing(models, dirs):
    """ctrl+r on a run of a model that is gone said so, then ran the form on the model already open: a picture
    of another model, saved as a rerun."""
    _past_run(dirs, model="acme/not-downloaded")
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any(m.startswith("cannot rerun it: acme/not-downloaded") for m in said))
        await pilot.pause(0.3)
        assert not app.running and app.model == models["distilled"], said
        assert app.query_one(HistoryTable).row_count == 1 and not (dirs / "data" / "images").exists()


async def test_rerun_pressed_during_a_run_leaves_the_form_alone(models, dirs):
    """ctrl+r mid-run filled the form (and switched the model) from the selected run, then said a run is going:
    what the user had typed for the next run was gone."""
    _past_run(dirs, prompt="the old prompt", steps=7)
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        slow_steps(app)
        await type_prompt(pilot, "a star")
        set_steps(app, 1000)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.running)
        app.query_one("#prompt").value = "my next prompt"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any("a run is already going" in m for m in said))
        assert app.query_one("#prompt").value == "my next prompt" and app.query_one("#steps").value == "1000"
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.running)


async def test_a_rerun_the_menus_cannot_show_leaves_the_form_alone(models, dirs):
    """A run made with a mixed plan cannot be shown in the menus: ctrl+r said so, but only after the form's prompt,
    steps and seed had been replaced by the run's, losing what was typed."""
    _past_run(dirs, prompt="the old prompt", steps=7, quantize={"transformer_blocks.0.ff.linear_in": 4})
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        said = record_notifications(app)
        await type_prompt(pilot, "my next prompt")
        set_steps(app, 3)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any("the menus cannot show the precision" in m for m in said))
        assert app.query_one("#prompt").value == "my next prompt" and app.query_one("#steps").value == "3"
        assert not app.running


async def test_the_run_selected_in_history_stays_selected_as_new_runs_arrive(models, dirs):
    """A new run's row goes on top, and the cursor stayed at its row number: the run selected before was no longer
    the one selected (the one above it was), so ctrl+r then reran a run the user had not chosen."""
    older = {"time": 1.7e9, "model": "demo-turbo", "prompt": "a ring", "seed": 3, "steps": 2, "width": 64,
             "height": 64, "quantize": None}
    (dirs / "data").mkdir()
    (dirs / "data" / "history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (older, {**older, "time": 1.8e9, "prompt": "a square"})))
    app = QuantbenchApp(model=models["distilled"])
    async with app.run_test(size=WIDE) as pilot:
        history = app.query_one(HistoryTable)
        history.focus()
        await pilot.press("down")  # the older run, "a ring"
        assert history.selected_record()["prompt"] == "a ring"
        await type_prompt(pilot, "a star")
        set_steps(app, 2)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: history.row_count == 3)
        assert history.selected_record()["prompt"] == "a ring"
