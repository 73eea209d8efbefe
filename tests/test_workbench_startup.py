"""Broken saved state never stops the workbench from starting (issue 13 item 2).

Each reproduction from the issue starts the workbench: what is broken is skipped or reset, it is said
once in a notification, and the next start is clean.
"""

import json
import os
import shutil

import pytest
from PIL import Image

from quantbench.core.builtin import builtin_model_path
from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.generate import GeneratePane
from quantbench.tui.widgets.history import HistoryTable
from test_workbench import record_notifications, wait_for

GOOD_RUN = {"time": 1.7e9, "model": "demo-turbo", "prompt": "a ring", "seed": 3, "steps": 2, "width": 64,
            "height": 64, "quantize": None, "step_seconds": [0.1, 0.1], "total_seconds": 0.5,
            "peak_memory": 2**20}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    for name in ("data", "config"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


async def start(app=None):
    """Start the workbench; (its model, the history rows shown, the notifications it gave). Each notification as it
    is given: the startup's warning is up for 15 s, and a loaded machine took longer than that to start the
    workbench, so the app's list of notifications shown had lost it by the time the test read it."""
    app = app or QuantbenchApp()
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        # on_mount's last act focuses the prompt (through the app's queue): once it has, the startup notification
        # posted before it is in. One pause alone (at most 1 s) missed it on a loaded machine: flaky "notes == []".
        await wait_for(pilot, lambda: not app.is_running or getattr(app.focused, "id", None) == "prompt", 60)
        assert app.is_running and app.query_one("#generate").display
        return app.model, app.query_one(HistoryTable).row_count, said


def history_lines(dirs):
    return (dirs / "data" / "history.jsonl").read_text().splitlines()


async def test_a_history_line_with_a_wrong_type_is_set_aside(dirs):
    lines = [json.dumps(GOOD_RUN), '{"time":"yesterday"}', json.dumps({**GOOD_RUN, "seed": 4})]
    (dirs / "data" / "history.jsonl").write_text("\n".join(lines) + "\n")
    model, rows, notes = await start()
    assert model == "demo" and rows == 2
    assert len(notes) == 1 and "1 unreadable line moved" in notes[0] and "history.jsonl.bad" in notes[0]
    assert (dirs / "data" / "history.jsonl.bad").read_text() == '{"time":"yesterday"}\n'
    assert [json.loads(line)["seed"] for line in history_lines(dirs)] == [3, 4]
    assert await start() == ("demo", 2, [])  # said once: the next start is clean


async def test_random_bytes_as_the_history_are_set_aside(dirs):
    noise = os.urandom(3000)
    (dirs / "data" / "history.jsonl").write_bytes(noise)
    model, rows, notes = await start()
    assert model == "demo" and rows == 0
    assert len(notes) == 1 and "unreadable line" in notes[0]
    assert (dirs / "data" / "history.jsonl.bad").read_bytes().replace(b"\n", b"") == noise.replace(b"\n", b"")
    assert history_lines(dirs) == []
    assert await start() == ("demo", 0, [])


async def test_a_history_line_nested_too_deep_for_the_json_parser_is_set_aside(dirs):
    """json.loads raises RecursionError, not ValueError, for '[[[[...': the workbench did not start."""
    deep = "[" * 100_000 + "]" * 100_000
    (dirs / "data" / "history.jsonl").write_text(json.dumps(GOOD_RUN) + "\n" + deep + "\n")
    model, rows, notes = await start()
    assert model == "demo" and rows == 1
    assert len(notes) == 1 and "1 unreadable line moved" in notes[0]
    assert (dirs / "data" / "history.jsonl.bad").read_text() == deep + "\n"


@pytest.mark.parametrize("text", ["[1,2]", "{not json", '"demo"', "\xff\xfe", "[" * 100_000 + "]" * 100_000])
async def test_a_config_that_is_not_a_settings_object_is_reset(dirs, text):
    config = dirs / "config" / "config.json"
    config.write_bytes(text.encode("latin-1"))
    model, _, notes = await start()
    assert model == "demo"
    assert len(notes) == 1 and "reset to the defaults" in notes[0] and "config.json.bad" in notes[0]
    assert (dirs / "config" / "config.json.bad").read_bytes() == text.encode("latin-1")
    assert not config.exists()  # the defaults, until a setting changes
    assert (await start())[2] == []


async def test_a_setting_of_the_wrong_type_is_dropped(dirs):
    (dirs / "config" / "config.json").write_text(json.dumps({"theme": 5, "model": "demo-turbo"}))
    model, _, notes = await start()
    assert model == "demo-turbo"
    assert len(notes) == 1 and "ignored theme" in notes[0]


async def test_a_remembered_model_folder_with_a_malformed_model_index_falls_back_to_demo(dirs):
    folder = dirs / "broken"
    shutil.copytree(builtin_model_path("demo-turbo"), folder)
    (folder / "model_index.json").write_text('{"_class_name": ')
    (dirs / "config" / "config.json").write_text(json.dumps({"model": str(folder)}))
    model, _, notes = await start()
    assert model == "demo"
    assert len(notes) == 1 and str(folder) in notes[0] and "showing demo instead" in notes[0]
    assert json.loads((dirs / "config" / "config.json").read_text())["model"] == "demo"
    assert (await start())[2] == []


async def test_every_problem_at_once_is_one_notification(dirs):
    (dirs / "config" / "config.json").write_text("[1,2]")
    (dirs / "data" / "history.jsonl").write_text('{"time":"yesterday"}\n')
    model, _, notes = await start(QuantbenchApp(model="acme/not-downloaded"))
    assert model == "demo" and len(notes) == 1
    assert all(part in notes[0] for part in ("config.json.bad", "history.jsonl.bad", "acme/not-downloaded"))



class Unblock:
    """Should a read or write of `fifo` block (the bug), open its other end after `seconds`, so that the test fails
    on its assertions instead of hanging the suite."""

    def __init__(self, fifo, seconds=20.0):
        import threading
        self.fifo, self.done = fifo, threading.Event()
        self.thread = threading.Thread(target=self._unblock, args=(seconds,), daemon=True)

    def _unblock(self, seconds):
        if self.done.wait(seconds):
            return
        while not self.done.wait(0.2):  # until the test is over: each blocked open or read in turn
            for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
                try:
                    os.close(os.open(self.fifo, flags))
                except OSError:  # no reader waiting
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()


async def test_a_fifo_as_the_history_or_the_config_does_not_hang_the_workbench(dirs):
    """`mkfifo history.jsonl` (or config.json): reading it waited forever for a writer, so the workbench never
    started, and a run's history line waited forever for a reader. Each is now said once, and the FIFO is left."""
    from quantbench.tui.history import HistoryStore
    history, config = dirs / "data" / "history.jsonl", dirs / "config" / "config.json"
    os.mkfifo(history)
    os.mkfifo(config)
    with Unblock(history), Unblock(config):
        model, rows, notes = await start()
    assert model == "demo" and rows == 0 and len(notes) == 1, notes
    assert f"cannot read {history} (not a regular file)" in notes[0], notes
    assert f"cannot read {config} (not a regular file)" in notes[0], notes
    with Unblock(history), pytest.raises(OSError, match="not a regular file"):
        HistoryStore(history).append(GOOD_RUN)
    assert history.is_fifo() and config.is_fifo()


async def test_a_fifo_where_unreadable_lines_are_set_aside_does_not_hang_the_workbench(dirs):
    """history.jsonl.bad a FIFO (or a device) and a broken line in the history: setting the line aside opened the
    FIFO for writing, which waits forever for a reader, so the workbench never started. Now the line is skipped
    and said once, the history is left as it was and the FIFO too."""
    history = dirs / "data" / "history.jsonl"
    before = (json.dumps(GOOD_RUN) + "\nbroken\n").encode()
    history.write_bytes(before)
    os.mkfifo(dirs / "data" / "history.jsonl.bad")
    with Unblock(dirs / "data" / "history.jsonl.bad", seconds=5):  # without the fix: opened after 5 s, "moved"
        model, rows, notes = await start()
    assert model == "demo" and rows == 1 and len(notes) == 1, notes
    assert f"skipped 1 unreadable line in {history} (could not set them aside: not a regular file" in notes[0], notes
    assert history.read_bytes() == before and (dirs / "data" / "history.jsonl.bad").is_fifo()


async def test_opening_a_past_run_that_names_no_picture_says_so(dirs):
    """A history line without "image" (written by another tool, or edited): opening it said '. is not a picture
    file', the current folder, not the run's missing picture."""
    (dirs / "data" / "history.jsonl").write_text(json.dumps(GOOD_RUN) + "\n")
    app = QuantbenchApp()
    said = record_notifications(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: getattr(app.focused, "id", None) == "prompt", 60)
        app.action_open_selected()
        await pilot.pause()
    assert said[-1] == "this run names no picture file to open", said


async def test_a_history_line_the_disk_cut_short_is_taken_back(dirs, monkeypatch):
    """A full disk cut a run's history line short and left the torn half; once there was room again, the next run's
    line was glued to it, and at the next start both runs were set aside as one unreadable line. The torn write is
    now taken back (the history as it was), and the next line is whole."""
    import errno

    from quantbench.tui import history as history_module
    from quantbench.tui.history import HistoryStore
    path = dirs / "data" / "history.jsonl"
    store = HistoryStore(path)
    store.append(GOOD_RUN)
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_module.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.append({**GOOD_RUN, "seed": 4})
    assert path.read_bytes() == before
    monkeypatch.setattr(history_module.os, "write", real_write)
    store.append({**GOOD_RUN, "seed": 5})
    assert await start() == ("demo", 2, [])
    assert [json.loads(line)["seed"] for line in history_lines(dirs)] == [3, 5]


async def test_a_line_torn_by_another_program_does_not_take_the_next_run_with_it(dirs):
    """history.jsonl ending in half a line (a workbench killed mid-write, a sync tool): the next run's line was
    appended to the fragment, and the run was set aside with it at the next start."""
    from quantbench.tui.history import HistoryStore
    path = dirs / "data" / "history.jsonl"
    path.write_text(json.dumps(GOOD_RUN) + "\n" + json.dumps({**GOOD_RUN, "seed": 4})[:30])
    HistoryStore(path).append({**GOOD_RUN, "seed": 5})
    model, rows, notes = await start()
    assert rows == 2 and len(notes) == 1 and "1 unreadable line moved" in notes[0], notes
    assert [json.loads(line)["seed"] for line in history_lines(dirs)] == [3, 5]


MARKUP_LIKE = ["x [/] y", "[b]red[/b]", "flux [v2]", "[link=x]"]


async def test_prompts_that_look_like_markup_are_shown_as_written(dirs):
    """A DataTable reads a plain string cell as markup: '[/]' raised and the workbench did not start, and
    '[b]red[/b]' showed as 'red' in bold."""
    lines = [json.dumps({**GOOD_RUN, "prompt": prompt, "time": 1.7e9 + i}) for i, prompt in enumerate(MARKUP_LIKE)]
    (dirs / "data" / "history.jsonl").write_text("\n".join(lines) + "\n")
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = app.query_one(HistoryTable)
        shown = [str(table.get_row_at(row)[2]).strip() for row in range(table.row_count)]
    assert app.return_code is None and app._exception is None
    assert shown == MARKUP_LIKE[::-1]  # newest first


async def test_terminal_codes_in_a_prompt_are_shown_not_obeyed(dirs, monkeypatch):
    """A prompt holding an ESC sequence (typed, pasted, or in a history line from elsewhere) reached the terminal
    raw from the History table, the preview's caption and the Compare title: "\\x1b[31m" turned the screen red and
    "\\x1b[2J" would clear it; U+202E turned the rest of the row around. Each is written as its escape."""
    from quantbench.tui.widgets.compare import CompareScreen
    prompt = "a \x1b[31mred\x1b[0m \u202estar\x07"
    shown = "a \\x1b[31mred\\x1b[0m \\u202estar\\x07"
    (dirs / "data" / "history.jsonl").write_text(json.dumps({**GOOD_RUN, "prompt": prompt}) + "\n")
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        cell = str(app.query_one(HistoryTable).get_row_at(0)[2])
        assert "\x1b" not in cell and "\u202e" not in cell and cell.startswith(shown[:20]), cell
        app.preview.show(Image.new("RGB", (8, 8)), prompt, path=dirs / "a\x1bb.png")
        await pilot.pause()
        caption = str(app.preview.caption.render())
        assert "\x1b" not in caption and shown in caption and "a\\x1bb.png" in caption, caption
        app.query_one("#prompt").value = prompt
        monkeypatch.setattr(app, "start_comparison", lambda request, screen: False)  # its title is what is looked at
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        title = str(app.screen.query_one("#compare-title").render())
        assert "\x1b" not in title and shown in title, title
        await pilot.press("escape")


@pytest.mark.parametrize("name", ["model [/] x", "flux [v2]"])
async def test_a_model_folder_whose_name_looks_like_markup_opens(dirs, name):
    """Its name and path went to the details pane as markup: '[/]' raised as the workbench opened."""
    folder = dirs / name
    shutil.copytree(builtin_model_path("demo-turbo"), folder)
    model, _, notes = await start(QuantbenchApp(model=str(folder)))
    assert model == str(folder) and notes == []


async def test_a_folder_that_is_no_model_named_like_markup_is_said_as_written(dirs):
    """`quantbench --model 'm[/x]'`, a folder that is no model: its warning went to a toast that read it as markup,
    and the parser's MarkupError took the workbench down as it opened, with a traceback."""
    folder = dirs / "m[" / "x]"
    folder.mkdir(parents=True)
    model, _, notes = await start(QuantbenchApp(model=str(folder)))
    assert model == "demo"
    assert notes == [f"{folder}: not a diffusers model folder (no model_index.json); showing demo instead"], notes


@pytest.mark.parametrize("content", [b"not a png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
async def test_opening_a_past_run_whose_picture_is_broken_says_so(dirs, content):
    """'o' on a history row whose PNG was edited or cut short raised out of Image.open: the workbench closed."""
    picture = dirs / "data" / "broken.png"
    picture.write_bytes(content)
    (dirs / "data" / "history.jsonl").write_text(json.dumps({**GOOD_RUN, "image": str(picture)}) + "\n")
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        notes = record_notifications(app)  # as given: a toast is up for 5 s, which a loaded machine can take
        app.query_one(HistoryTable).focus()
        await pilot.press("o")
        await pilot.pause()
        assert app.is_running and app._exception is None
    assert any(str(picture) in note and "cannot be shown" in note for note in notes), notes


async def test_a_history_line_whose_dtype_is_not_text_is_set_aside(dirs):
    """Found by the property test below: a list as "dtype" passed as a run, and drawing its row raised."""
    lines = [json.dumps(GOOD_RUN), json.dumps({**GOOD_RUN, "dtype": []})]
    (dirs / "data" / "history.jsonl").write_text("\n".join(lines) + "\n")
    model, rows, notes = await start()
    assert rows == 1 and len(notes) == 1 and "1 unreadable line moved" in notes[0]


def test_every_history_line_the_workbench_keeps_can_be_drawn():
    """Any JSON object a history line can hold is either set aside or drawn as a row without an error."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from quantbench.tui.history import usable
    from quantbench.tui.widgets.history import COLUMNS

    numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True))
    values = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), st.lists(numbers, max_size=4),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    optional = ["negative_prompt", "image", "seed", "steps", "width", "height", "guidance", "true_cfg", "quantize",
                "text_encoder_quantize", "total_seconds", "load_seconds", "peak_memory", "peak_rss", "step_seconds",
                "dtype"]
    records = st.fixed_dictionaries({"time": numbers, "model": st.text(max_size=30), "prompt": st.text(max_size=30)},
                                    optional={key: values for key in optional})

    @hypothesis.settings(max_examples=1000, deadline=None, derandomize=True)
    @hypothesis.given(records)
    def drawn(record):
        record = json.loads(json.dumps(record))  # as read back from the file
        if usable(record):
            assert all(isinstance(column.cell(record), str) for column in COLUMNS)

    drawn()


def past_run(dirs, picture):
    """A red picture at `picture` and the history line of the run that drew it."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    (dirs / "data" / "history.jsonl").write_text(json.dumps({**GOOD_RUN, "image": str(picture)}) + "\n")


async def open_past_run(pilot):
    """F7, then Enter on the History row: its picture in the Preview pane (at 80x24 its tab comes forward)."""
    await pilot.pause()
    await pilot.press("f7")
    await pilot.pause()
    assert pilot.app.query_one(HistoryTable).has_focus
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_opening_a_past_run_shows_its_picture_at_every_size(dirs, size):
    """At 80x24 Enter on a History row put the picture in the Preview pane, which was on another tab: nothing
    seemed to happen. The Preview tab now comes forward; at 160x48 every pane is on screen already."""
    from quantbench.tui.widgets.preview import PreviewPane

    past_run(dirs, dirs / "data" / "ring.png")
    app = QuantbenchApp()
    async with app.run_test(size=size) as pilot:
        await open_past_run(pilot)
        preview = app.query_one(PreviewPane)
        assert preview.region.height > 0
        assert str(preview.query_one("#caption").render()).endswith("/ring.png")  # the path, cut where it is long


async def test_a_rerun_keeps_a_guidance_of_1(dirs):
    """ctrl+r left the guidance field blank for a recorded 1.0, so the built-in base model reran at its default
    1.5: another picture than the run it was asked to repeat."""
    rerun, _ = await rerun_past_run(dirs, {**GOOD_RUN, "model": "demo", "guidance": 1.0, "steps": 2})
    assert (rerun["model"], rerun["guidance"], rerun["seed"]) == ("demo", 1.0, 3)


async def test_a_rerun_at_a_size_the_menus_do_not_offer_runs_at_that_size(dirs):
    """A run made at 96 x 48 (by `quantbench generate`) reran at the form's 64 x 64, unsaid: the size menus offer
    only their own sizes. The run's size is added to them, in order, and selected."""
    from textual.widgets import Select

    async def then(app, pilot):  # another run's sizes, one of them offered already
        for width, height in ((1536, 128), (96, 48)):
            app.query_one(GeneratePane).load_request({**GOOD_RUN, "width": width, "height": height})
            await pilot.pause()
            assert (app.query_one("#width", Select).value, app.query_one("#height", Select).value) == (width, height)
        assert [value for _, value in app.query_one("#height", Select)._options] == [48, 64, 128, 256, 512, 768, 1024,
                                                                                    1536]

    rerun, _ = await rerun_past_run(dirs, {**GOOD_RUN, "width": 96, "height": 48}, then)
    assert (rerun["model"], rerun["width"], rerun["height"], rerun["seed"]) == ("demo-turbo", 96, 48, 3)


async def test_a_rerun_at_a_size_no_run_can_have_says_so_and_leaves_the_form_alone(dirs):
    """A hand-edited history line's width 100: refused in one line, as `generate` refuses it, and nothing runs."""
    from textual.widgets import Select

    (dirs / "data" / "history.jsonl").write_text(json.dumps({**GOOD_RUN, "width": 100, "prompt": "old"}) + "\n")
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        said = record_notifications(app)
        app.query_one(HistoryTable).focus()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: said)
        assert said == ["the run's width 100 is not allowed: use a multiple of 16 between 16 and 4096"]
        assert not app.running and app.query_one("#prompt").value != "old"
        assert app.query_one("#width", Select).value == 64


async def rerun_past_run(dirs, run: dict, then=None) -> tuple[dict, str]:
    """Start on a history of `run`, press ctrl+r in History: (the rerun's history line, the steps field as filled);
    `then(app, pilot)`, when given, is awaited once the rerun is done."""
    from textual.widgets import Input

    from test_workbench import wait_for

    (dirs / "data" / "history.jsonl").write_text(json.dumps(run) + "\n")
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = app.query_one(HistoryTable)
        table.focus()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: table.row_count == 2 and not app.running)
        steps = app.query_one("#steps", Input).value
        if then is not None:
            await then(app, pilot)
    return json.loads((dirs / "data" / "history.jsonl").read_text().splitlines()[-1]), steps


async def test_the_negative_prompt_says_base_models_only_only_where_it_is_closed(dirs):
    """It said "base models only" on the built-in base model too, where the field is open and used."""
    from textual.widgets import Input

    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        negative = app.query_one("#negative", Input)
        assert not negative.disabled and negative.placeholder == "none (optional)"
        app.select_model("demo-turbo")
        await pilot.pause()
        assert negative.disabled and negative.placeholder == "base models only"


async def test_choosing_a_model_that_is_not_downloaded_says_how_to_get_it(dirs):
    """The list's first entries are the released models; choosing one that is not in the Hugging Face cache said
    only "not in the Hugging Face cache; missing: ..." (the workbench never downloads), not what to do."""
    repo = "acme/never-downloaded"
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        notes = record_notifications(app)  # as given: a toast is up for 5 s, which a loaded machine can take
        app.select_model(repo)
        await wait_for(pilot, lambda: notes, 30)  # a posted message: one pause missed it under load
        assert app.model == "demo"  # nothing changed
    assert any(note.startswith(f"{repo}: not in the Hugging Face cache; missing: ") and note.endswith(
        f"; the workbench does not download: fetch it once with `quantbench download --model {repo}`")
        for note in notes), notes


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
async def test_a_long_picture_path_reads_whole_in_the_preview_caption(dirs, size):
    """At 160x48 the Preview caption wrapped a saved picture's long path in the middle of its file name. The file
    name now stays whole on its line, the folders before it are cut in the middle ("…"), and what follows the path
    (size and seed) goes below it: no caption line wraps, at either size."""
    from PIL import Image

    from quantbench.tui.widgets.preview import PreviewPane

    folder = dirs / "data" / "a folder with a rather long name for its pictures" / "and another one inside it"
    folder.mkdir(parents=True)
    name = "20261201-031500-seed1234567-q4-hqq-32.png"
    picture = folder / name
    past_run(dirs, picture)
    app = QuantbenchApp()
    async with app.run_test(size=size) as pilot:
        await open_past_run(pilot)
        preview = app.query_one(PreviewPane)
        caption = preview.query_one("#caption")

        def lines():
            return str(caption.render()).split("\n")

        assert len(str(picture)) > caption.content_size.width > 0  # the path does not fit as it is
        assert lines()[0].endswith("/" + name) and "…" in lines()[0] and lines()[0].startswith(str(dirs)[:4])
        assert all(len(line) <= caption.content_size.width for line in lines())
        assert caption.region.height == len(lines())  # nothing wrapped

        # A finished run's caption: the path, then its size and seed on the next line.
        app.preview.show(Image.new("RGB", (64, 64)), "(64x64, seed 1234567)", path=picture)
        await pilot.pause()
        assert lines()[0].endswith("/" + name) and lines()[1] == "(64x64, seed 1234567)"
        assert caption.region.height == 2


def test_a_path_with_wide_characters_is_cut_to_the_cells_it_takes():
    """A folder name in Japanese takes two cells a character: cut by characters, its caption line still wrapped."""
    from rich.cells import cell_len

    from quantbench.tui.widgets.preview import elide_path

    path = "/home/ユーザー/写真フォルダ/とても長い名前のフォルダ/20261201-seed7.png"
    for width in (30, 40, 60):
        line = elide_path(path, width)
        assert cell_len(line) <= width and line.endswith("/20261201-seed7.png") and "…" in line, line
    assert elide_path(path, 200) == path


async def test_hardware_arriving_as_the_workbench_closes_is_not_an_error(dirs):
    """The hardware worker may finish as the workbench closes, its pane's text already gone: nothing to show
    then, and no error (it was a WorkerFailed traceback at exit)."""
    app = QuantbenchApp()
    async with app.run_test(size=(160, 48)) as pilot:
        for _ in range(200):
            if getattr(app.hardware, "recommendation", None) is not None:
                break
            await pilot.pause(0.05)
        pane = app.hardware
        assert pane.recommendation is not None
        await pane.query_one("#hardware-text").remove()
        pane.show(pane.hardware, pane.recommendation, "demo")  # what the worker calls from its thread
        await pilot.pause()
        assert app.is_running and not pane.query("#hardware-text")


async def test_a_model_named_like_a_folder_in_the_current_one_opens_once(dirs, monkeypatch):
    """`quantbench --model demo` run in a folder that holds a `demo` folder (or `--model owner/name` beside a download
    of that name): the model was listed twice under one key, and the workbench stopped with Textual's DuplicateID
    traceback. It opens on the model, listed once."""
    monkeypatch.chdir(dirs)
    (dirs / "demo").mkdir()
    app = QuantbenchApp(model="demo", extra_models=["demo"])
    assert await start(app) == ("demo", 0, [])
    keys = [row.key for row in app.rows]
    assert keys.count("demo") == 1 and len(keys) == len(set(keys))


def test_a_second_broken_config_keeps_the_first_one_set_aside(dirs):
    """config.json broken once (set aside as config.json.bad), reset, then broken again: the second set-aside replaced
    config.json.bad, and the first file the user had was gone. Each is kept, the second as config.json.bad.2."""
    from quantbench.tui.settings import Settings
    config = dirs / "config" / "config.json"
    notes = []
    for text in ('{"theme": "mine", ', "[1, 2]"):
        config.write_text(text)
        settings, note = Settings.load()
        assert settings == Settings() and not config.exists()
        notes.append(note)
    assert (dirs / "config" / "config.json.bad").read_text() == '{"theme": "mine", '
    assert (dirs / "config" / "config.json.bad.2").read_text() == "[1, 2]"
    assert "config.json.bad.2" in notes[1]


async def test_a_rerun_of_a_run_recorded_without_steps_runs_at_the_default(dirs):
    """A history line with "steps": null (kept as "not set") put the text "None" in the steps field, and ctrl+r was
    refused with "steps: 'None' is not a whole number"; it reruns at the model's default steps."""
    rerun, steps = await rerun_past_run(dirs, {**GOOD_RUN, "model": "demo-turbo", "steps": None, "seed": None})
    assert steps == "" and (rerun["model"], rerun["steps"], rerun["seed"]) == ("demo-turbo", 4, 0)



async def test_a_published_model_opens_at_its_own_size_not_the_built_in_models(dirs, tmp_path, monkeypatch):
    """Choosing Klein-4B after the built-in model kept the form at 64x64, a size Klein draws nothing at. Between
    the two kinds the model's own size is taken; a size chosen for a published model stays while it is open."""
    from huggingface_hub import constants
    from textual.widgets import Select

    from fake_hub import cached_klein

    cached_klein(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()

        def size():
            return app.query_one("#width", Select).value, app.query_one("#height", Select).value

        assert size() == (64, 64)
        app.select_model("black-forest-labs/FLUX.2-klein-4B")
        await pilot.pause()
        assert app.model == "black-forest-labs/FLUX.2-klein-4B" and size() == (1024, 1024)
        app.query_one("#width").value = app.query_one("#height").value = 512
        app.select_model("black-forest-labs/FLUX.2-klein-4B")  # chosen again: the size chosen for it stays
        await pilot.pause()
        assert size() == (512, 512)
        app.select_model("demo")
        await pilot.pause()
        assert size() == (64, 64)
    app = QuantbenchApp(model="klein-4b")  # as recommend names it: the same model, its row, its size
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert app.model == "black-forest-labs/FLUX.2-klein-4B" and size() == (1024, 1024)
        assert app.query_one("#model-list").highlighted_option.id == "black-forest-labs/FLUX.2-klein-4B"


async def test_a_model_not_downloaded_says_the_command_that_fetches_it(dirs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from quantbench.core.sources import catalog_repo_id
    from quantbench.tui.widgets.models import ModelsPane

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    app = QuantbenchApp(model="demo")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        pane = app.query_one(ModelsPane)
        pane.highlight("Tongyi-MAI/Z-Image-Turbo")
        await pilot.pause()
        details = " ".join(str(pane.query_one("#model-details").render()).split())
        assert "weights: not downloaded (fetch it: quantbench download --model z-image-turbo)" in details
        assert catalog_repo_id("z-image-turbo") == "Tongyi-MAI/Z-Image-Turbo"
        pane.highlight("demo")
        await pilot.pause()
        assert "fetch it" not in str(pane.query_one("#model-details").render())  # built in
