"""Writes never lose what is there: staged folders and files, refusals at the rename, stale staging cleaned up."""

import os
import subprocess
import sys

import pytest

from quantbench.core.atomic import OutputError, remove_stale, staged_file, staged_folder


def _write_folder(out, text, overwrite=False):
    with staged_folder(out, overwrite) as staging:
        (staging / "model.txt").write_text(text)


def test_a_folder_that_appears_during_the_run_is_refused_at_the_rename(tmp_path):
    out = tmp_path / "saved"
    with pytest.raises(OutputError, match="appeared while this run worked"):
        with staged_folder(out) as staging:
            (staging / "model.txt").write_text("second save")
            _write_folder(out, "first save")  # another save finished first
    assert (out / "model.txt").read_text() == "first save"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no staging folder left


def test_an_empty_folder_that_appears_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "saved"
    with pytest.raises(OutputError):
        with staged_folder(out) as staging:
            (staging / "model.txt").write_text("new")
            out.mkdir()
    assert out.is_dir() and not any(out.iterdir())


def test_overwrite_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "saved"
    _write_folder(out, "old")
    real_rename = os.rename

    def failing_second_rename(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(OutputError, match="could not be written .No space left on device"):
        _write_folder(out, "new", overwrite=True)
    monkeypatch.undo()
    assert (out / "model.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]
    _write_folder(out, "new", overwrite=True)
    assert (out / "model.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


def test_existing_destination_refused_before_any_work(tmp_path):
    (tmp_path / "saved").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        with staged_folder(tmp_path / "saved"):
            pytest.fail("the body must not run")


def test_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _write_folder(tmp_path / "saved", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "saved").stat().st_mode & 0o777 == 0o755


def test_read_only_destination_is_refused_before_the_work(unwritable_folder):
    with pytest.raises(OutputError, match="cannot write there"):
        with staged_file(unwritable_folder / "x.png"):
            pytest.fail("the body must not run")


def test_a_failed_file_write_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(OutputError, match="could not be written .No space left on device"):
        with staged_file(out, mode="w"):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_not_replaced_when_it_appears_during_the_write(tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(OutputError):
        with staged_file(out, mode="w") as f:
            f.write("new")
            out.write_text("user's")
    assert out.read_text() == "user's" and len(list(tmp_path.iterdir())) == 1


def test_staging_left_by_a_killed_process_is_removed_at_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".saved.qb{pid}.abcd1234.partial").mkdir()
    (tmp_path / f".fox.png.qb{pid}.k2j_x9aa.part").write_bytes(b"half a png")
    (tmp_path / f".fox.png.qb{os.getppid()}.k2j_x9aa.part").write_bytes(b"a live process's")
    (tmp_path / ".bashrc.old").write_text("not ours")
    _write_folder(tmp_path / "saved", "x")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".bashrc.old", f".fox.png.qb{os.getppid()}.k2j_x9aa.part", "saved"])


def test_an_old_folder_moved_aside_by_a_killed_overwrite_is_put_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".saved.qb{int(dead.stdout)}.0a1b2c3d.old"
    aside.mkdir()
    (aside / "model.txt").write_text("the user's model")
    remove_stale(tmp_path)
    assert (tmp_path / "saved" / "model.txt").read_text() == "the user's model"


# ------------------------------------------------------------------ the commands (issue 13, items 3 and 4)

def _refused_before_loading(monkeypatch, capsys, argv, message):
    from quantbench.cli.main import main
    from quantbench.core import pipelines

    def no_loading(*args, **kwargs):
        pytest.fail("loaded a model for a run whose output cannot be written")

    monkeypatch.setattr(pipelines, "load_pipeline", no_loading)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0], err


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a red star", "--out", "{dir}/x.png"],
    ["save", "--model", "demo", "-q", "4", "--out", "{dir}/saved"],
    ["plan", "--model", "demo", "--quantize", "auto:4", "--out", "{dir}/plan.json"],
    ["random-model", "--out", "{dir}/random"],
    ["compare", "--model", "demo", "--prompt", "a red star", "--out", "{dir}/compare"],
])
def test_an_unwritable_destination_is_refused_before_loading(unwritable_folder, monkeypatch, capsys, command):
    argv = [a.replace("{dir}", str(unwritable_folder)) for a in command]
    _refused_before_loading(monkeypatch, capsys, argv, "cannot write there")


def test_generate_onto_an_existing_folder_is_refused_even_with_overwrite(tmp_path, monkeypatch, capsys):
    (tmp_path / "x.png").mkdir()
    _refused_before_loading(monkeypatch, capsys, ["generate", "--prompt", "p", "--out", str(tmp_path / "x.png"),
                                                  "--overwrite"], "is a folder, not a file")


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a red star", "--out", "{dir}/x.png"],
    ["plan", "--model", "demo", "--quantize", "auto:4", "--out", "{dir}/x.png"],
    ["sensitivity", "--model", "demo", "--quantize", "auto:4", "--plan-out", "{dir}/x.png"],
])
def test_an_output_file_that_is_a_fifo_or_device_is_not_replaced(tmp_path, monkeypatch, capsys, command):
    """`plan --out /dev/null --overwrite`, run as root, replaced /dev/null with the plan (the rename into place
    replaces whatever has the name): a FIFO, device or socket is refused before loading, and left as it was."""
    import stat
    os.mkfifo(tmp_path / "x.png")
    argv = [a.replace("{dir}", str(tmp_path)) for a in command] + ["--overwrite"] * (command[0] != "sensitivity")
    _refused_before_loading(monkeypatch, capsys, argv, f"{tmp_path / 'x.png'} is not a regular file (a folder, "
                                                       "device, FIFO or socket) and cannot be replaced")
    assert stat.S_ISFIFO(os.stat(tmp_path / "x.png").st_mode) and os.listdir(tmp_path) == ["x.png"]


def test_compare_into_a_folder_holding_a_fifo_by_a_pictures_name_leaves_it(tmp_path, capsys):
    import stat
    from quantbench.cli.main import main
    os.mkfifo(tmp_path / "q4.png")
    assert main(["compare", "--model", "demo-turbo", "--prompt", "a red star", "--precisions", "bf16,4", "--steps", "1",
                 "--out", str(tmp_path), "--quiet"]) == 2
    assert (f"{tmp_path / 'q4.png'} exists and no earlier compare wrote it (no report.json of one beside it)"
            in capsys.readouterr().err)
    assert stat.S_ISFIFO(os.stat(tmp_path / "q4.png").st_mode) and os.listdir(tmp_path) == ["q4.png"]


@pytest.mark.parametrize("command, out, message", [
    (["save", "-q", "4"], "{model}", "holds the model being read"),
    (["save", "-q", "4"], "{tmp}", "holds the model being read"),
    (["save", "-q", "4"], "{model}/transformer", "is part of the model being read"),
    (["plan", "--quantize", "auto:4"], "{model}/model_index.json", "is part of the model being read"),
    (["generate", "--prompt", "a red star", "--steps", "1"], "{model}/preview.png", "is part of the model being read"),
])
def test_an_output_that_would_replace_the_model_being_read_is_refused(tmp_path, capsys, command, out, message):
    """`save --model M --out M --overwrite` replaced the full-precision model with its quantized copy; an --out that
    holds M removed M and all beside it; one inside M replaced a part of it. Refused before loading, M untouched."""
    import shutil
    from quantbench.cli.main import main
    from quantbench.core.sources import resolve_model_folder

    model = tmp_path / "model"
    shutil.copytree(resolve_model_folder("demo"), model)
    (model / "preview.png").write_bytes(b"a picture the user keeps beside the model")
    before = sorted((p.relative_to(model), p.stat().st_size) for p in model.rglob("*"))
    out = out.format(model=model, tmp=tmp_path)
    assert main([command[0], "--model", str(model), *command[1:], "--out", out, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted((p.relative_to(model), p.stat().st_size) for p in model.rglob("*")) == before


def test_two_saves_to_one_folder_keep_the_first(tmp_path, capsys):
    from quantbench.cli.main import main
    from quantbench.core.quant.saved import read_saved
    from quantbench.core.checkpoint import open_component

    out = tmp_path / "saved"
    assert main(["save", "--model", "demo", "-q", "4", "--out", str(out)]) == 0
    assert main(["save", "--model", "demo", "-q", "8", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert read_saved(open_component(out / "transformer")).label == "4-bit"
    assert main(["save", "--model", "demo", "-q", "8", "--out", str(out), "--overwrite"]) == 0
    assert read_saved(open_component(out / "transformer")).label == "8-bit"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


# ------------------------------------------------------------------ the workbench's own files

def test_the_workbenchs_settings_and_screenshots_follow_the_umask(tmp_path, monkeypatch):
    """Shared like any other file the user makes (a screenshot served from a web folder), not mkstemp's 0600."""
    from quantbench.tui import screenshots
    from quantbench.tui.settings import Settings
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    old = os.umask(0o022)
    try:
        Settings(theme="quantbench-light").save()
        shot = screenshots.save_svg("<svg xmlns='http://www.w3.org/2000/svg'/>")
    finally:
        os.umask(old)
    assert (tmp_path / "config" / "config.json").stat().st_mode & 0o777 == 0o644
    assert shot.parent == tmp_path / "data" / "screenshots" and shot.stat().st_mode & 0o777 == 0o644


KILLED_MID_SAVE = """
import os, signal, sys
from quantbench.tui.settings import Settings
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed with the new file staged, not yet renamed
Settings(theme="quantbench-light").save()
"""


def test_what_a_workbench_killed_mid_save_left_is_removed_by_the_next_save(tmp_path, monkeypatch):
    from quantbench.tui.settings import Settings
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path))
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE], env=os.environ.copy())
    assert killed.returncode == -9 and not (tmp_path / "config.json").exists()
    assert len(list(tmp_path.iterdir())) == 1  # its staged file
    Settings(theme="quantbench-dark").save()
    assert Settings.load()[0].theme == "quantbench-dark"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("out", [".", "..", "./", "/"])
@pytest.mark.parametrize("command", [["save", "--model", "demo", "-q", "4"], ["random-model"]])
def test_a_destination_that_names_no_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys, command, out):
    """`save --out . --overwrite` wrote the whole model, then its rename into place failed: "could not be written
    (Device or resource busy)". '.', '..' and '/' cannot be renamed or replaced: refused at once, with or without
    --overwrite (which the refusal of an existing folder suggests)."""
    monkeypatch.chdir(tmp_path)
    example = f"{out.rstrip('/') or ''}/NAME" if out != "./" else "./NAME"
    for overwrite in ([], ["--overwrite"]):
        _refused_before_loading(monkeypatch, capsys, [*command, "--out", out, *overwrite],
                                f"give the folder to write by its own name, e.g. {example}")
    assert list(tmp_path.iterdir()) == []


def test_a_mount_point_is_refused_as_a_destination_but_written_into_by_compare(tmp_path, monkeypatch, capsys):
    """A mount point cannot be renamed either (EBUSY, after the work); compare writes into its folder, so there
    '.' and a mount point are fine."""
    from quantbench.core.atomic import check_destination
    mounted = tmp_path / "disk"
    mounted.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: str(path) == str(mounted))
    _refused_before_loading(monkeypatch, capsys, ["save", "--model", "demo", "-q", "4", "--out", str(mounted),
                                                  "--overwrite"],
                            f"{mounted} is a mount point, which cannot be replaced; write into it, e.g. {mounted}/NAME")
    check_destination(mounted, overwrite=True, folder=True, into=True)
    monkeypatch.chdir(tmp_path)
    check_destination(tmp_path / ".", overwrite=True, folder=True, into=True)


def test_a_second_ctrl_c_while_the_staging_is_removed_leaves_none_of_it(tmp_path, monkeypatch):
    """Ctrl-C pressed twice during a save: the second interrupted the removal of the staged folder (seconds for a
    large model), and most of it stayed behind under its hidden name. Now the removal finishes first."""
    import shutil
    from quantbench.core import atomic
    real_rmtree, calls = shutil.rmtree, []

    def interrupted_rmtree(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # the second Ctrl-C, after part of the folder went
            next(p for p in sorted(path.iterdir())).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "saved") as staging:
            for i in range(3):
                (staging / f"shard-{i}.safetensors").write_bytes(b"x" * 1000)
            raise KeyboardInterrupt  # the first Ctrl-C, mid-write
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["save", "--model", "demo", "-q", "4"], ["random-model"],
                                     ["generate", "--prompt", "p"]])
def test_a_destination_inside_a_file_is_said_to_be_in_a_file(tmp_path, monkeypatch, capsys, command):
    """`--out FILE/sub` said "FILE: no such folder" of a file that is there."""
    (tmp_path / "notes.txt").write_text("mine")
    name = "x.png" if command[0] == "generate" else "sub"
    _refused_before_loading(monkeypatch, capsys, [*command, "--out", str(tmp_path / "notes.txt" / name)],
                            f"{tmp_path / 'notes.txt'}: a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"
