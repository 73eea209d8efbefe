"""SIGTERM and SIGKILL during a run (issue 13, item 10): SIGTERM is one line and exit 143 with nothing
half-written left; what a SIGKILL leaves (a hidden staging name) is removed by the next write there."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from quantbench.core.errors import TERMINATED_LINE

sys.path.insert(0, os.path.dirname(__file__))  # the workbench-on-a-terminal helpers of test_workbench_hangup


def _start(args, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "quantbench.cli.main", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)


def _wait_for_line(process, text, timeout=120):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if text in line:
            return lines
        if not line and process.poll() is not None:
            break
    pytest.fail(f"never saw {text!r}: {lines}")


def test_sigterm_during_a_run_is_one_line_exit_143_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    process = _start(["generate", "--model", "demo", "--prompt", "a red star", "--steps", "1000",
                      "--out", str(out / "x.png")], tmp_path)
    _wait_for_line(process, "step 2/1000")
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read().strip().splitlines()
    assert process.wait(timeout=30) == 143
    assert rest[-1] == TERMINATED_LINE == "quantbench: terminated (SIGTERM); nothing half-written was left"
    assert list(out.iterdir()) == []


def test_what_sigkill_leaves_behind_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    process = _start(["random-model", "--arch", "klein-4b", "--width-scale", "0.1", "--out", str(out / "a")],
                     tmp_path)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in out.iterdir()):
        assert time.monotonic() < deadline and process.poll() is None, "the write finished before it was killed"
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert [p.name for p in out.iterdir()][0].endswith(".partial")  # a hidden staging folder, never "a"
    from quantbench.core.random_model import write_random_model
    write_random_model(out / "b", "tiny")
    assert [p.name for p in out.iterdir()] == ["b"]


def test_a_sigterm_while_an_error_is_said_adds_no_second_line_nor_traceback(tmp_path, monkeypatch):
    """mlx.launch stops (SIGTERM) a rank that may be saying, that very moment, that it lost its peer: the
    rank still ends with that one line and its exit code, and SIGTERM is as it was after main() returns."""
    from quantbench.cli.main import main

    class SigtermOnWrite(io.StringIO):
        def write(self, text):
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, text  # (it would end pytest)
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread before write returns
            return super().write(text)

    monkeypatch.setenv("HOME", str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    stderr = SigtermOnWrite()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a red star", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert stderr.getvalue().count("quantbench:") == 1 and "missing" in stderr.getvalue()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_then_sigcont_to_the_workbench_is_one_line_not_a_traceback(tmp_path):
    """`timeout` (and a shell resuming a stopped job it killed) sends SIGCONT right after SIGTERM: the workbench's
    SIGCONT handler redrew a screen being torn down ("RuntimeError: no running event loop", a traceback)."""
    from test_workbench_hangup import start_workbench
    env = {**os.environ, "HOME": str(tmp_path), "QUANTBENCH_CONFIG_DIR": str(tmp_path / "config"),
           "QUANTBENCH_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm-256color"}
    process, terminal = start_workbench("demo", env)
    try:
        assert terminal.wait_for("Generate", 120), terminal.text()
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=60) == 143
        assert terminal.wait_for("quantbench: terminated (SIGTERM)", 10), terminal.text()[-2000:]
        assert "Traceback" not in terminal.text(), terminal.text()[-3000:]
    finally:
        process.kill()
        terminal.hang_up()


STALLED_WORKBENCH = """
import sys, time, tty
from quantbench.tui import hangup
hangup.TERMINATED_GRACE_SECONDS = 0.5
modes = hangup.terminal_modes()
tty.setraw(0)
sys.stdout.write("\\x1b[?1049h\\x1b[?1000h\\x1b[?25l ready\\n"); sys.stdout.flush()
hangup.install_terminated(lambda: None, modes)  # a tidy exit that never comes
while True:
    time.sleep(1)
"""


def test_a_workbench_whose_tidy_exit_stalls_after_sigterm_still_gives_the_terminal_back_and_says_so(tmp_path):
    """On a loaded machine the tidy exit can take longer than any grace: the watchdog that then ends the process
    leaves the alternate screen, turns mouse reports off, shows the cursor, restores the user's terminal modes
    and says the one line (the CI once saw status 143 and a terminal left on the workbench's last frame)."""
    import pty
    import termios
    from test_workbench_hangup import Terminal

    leader, follower = pty.openpty()
    cooked = termios.tcgetattr(follower)
    process = subprocess.Popen([sys.executable, "-c", STALLED_WORKBENCH], stdin=follower, stdout=follower,
                               stderr=follower, start_new_session=True)
    os.close(follower)
    terminal = Terminal(leader)
    try:
        assert terminal.wait_for("ready", 60), terminal.text()
        assert termios.tcgetattr(leader)[3] != cooked[3]  # raw: no echo, no line editing
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
        assert terminal.wait_for(TERMINATED_LINE, 10)
        said = bytes(terminal.output)
        assert said.index(b"\x1b[?1049l") > said.index(b"ready")
        assert b"\x1b[?1000l" in said and b"\x1b[?25h" in said
        assert termios.tcgetattr(leader)[3] == cooked[3]
    finally:
        process.kill()
        terminal.hang_up()


SIGNAL_WHILE_IMPORTING = """
import os, signal, sys
class SignalOnImport:  # the signal arrives while the commands are being imported, as a quick Ctrl-C's does
    def find_spec(self, name, path=None, target=None):
        if name == "quantbench.cli.bench":
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return None
sys.meta_path.insert(0, SignalOnImport())
from quantbench.cli.main import main
sys.exit(main(["info"]))
"""


@pytest.mark.parametrize("name, code, line", [("SIGINT", 130, "quantbench: interrupted"),
                                              ("SIGTERM", 143, TERMINATED_LINE)])
def test_a_signal_while_the_commands_are_imported_is_one_line(tmp_path, name, code, line):
    """Ctrl-C in the first second or so (the commands' imports: MLX, the families, jinja2) was a KeyboardInterrupt
    traceback through twenty import frames, and SIGTERM there a silent exit: now the line and the exit code."""
    env = {**os.environ, "HOME": str(tmp_path)}
    # Python started in the background ignores SIGINT when its parent did: default handling, as in a terminal
    done = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_IMPORTING, name], capture_output=True, text=True,
                          timeout=120, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stderr, done.stdout) == (code, line + "\n", "")


CTRL_C_DURING_HELP = """
import argparse, os, signal, sys
from quantbench.cli.main import main
printing = argparse.ArgumentParser.print_help
def interrupted_midway(self, file=None):
    os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C pressed while the help is being formatted
    printing(self, file)
argparse.ArgumentParser.print_help = interrupted_midway
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"]])
def test_ctrl_c_while_the_options_are_read_or_the_help_printed_is_one_line(tmp_path, argv):
    """After the startup guard, main() reads the options: a Ctrl-C there (a CI run caught one while --help was
    formatted) was a KeyboardInterrupt traceback through cli/main.py."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_HELP, *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(tmp_path)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stderr) == (130, "quantbench: interrupted\n")


SIGNAL_DURING_OPTIONS = """
import argparse, os, signal, sys
from quantbench.cli.main import main
parsing = argparse.ArgumentParser.parse_known_args
def signalled_midway(self, args=None, namespace=None):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # as a signal sent while the options are being read
    return parsing(self, args, namespace)
argparse.ArgumentParser.parse_known_args = signalled_midway
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("argv", [["--help"], ["info"]])
def test_sigterm_while_the_options_are_read_is_one_line_and_143(tmp_path, argv):
    """Between the startup guard's end and main()'s handler, SIGTERM ended the process by the signal's default:
    no line, exit -15. Now it is what SIGTERM is everywhere else in the CLI."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING_OPTIONS, "SIGTERM", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert (done.returncode, done.stderr, done.stdout) == (143, TERMINATED_LINE + "\n", "")


@pytest.mark.parametrize("name, code, line", [("SIGINT", 130, "quantbench: interrupted"),
                                              ("SIGTERM", 143, TERMINATED_LINE)])
def test_a_signal_while_the_options_are_read_keeps_the_json_promise(tmp_path, name, code, line):
    """With --json, a command that ends early leaves one JSON object on stdout (README), also when the signal
    came before the options were parsed: stdout was empty."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING_OPTIONS, name, "info", "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stderr) == (code, line + "\n")
    assert json.loads(done.stdout) == {"error": line, "exit_code": code}


def test_ctrl_c_in_the_commands_first_moments_is_one_line_from_its_first_module(tmp_path):
    """Ctrl-C in the first ~0.1 s of `quantbench ...` (argparse, threading and the engine's BLAS imported before
    cli/main.py guarded its imports) was a KeyboardInterrupt traceback through quantbench's code. The command's first
    module, cli/__init__, guards it now. Only the interpreter's own start-up runs before it: a signal there ends the
    process as SIGINT does before Python handles it, or is a traceback of site's imports (an editable install's
    finder) that passes through no quantbench file, or a bare "KeyboardInterrupt" (no frame at all: the signal came
    while the interpreter read and compiled the console script, seen once in a CI run). Every run that reached
    quantbench's code is the line and 130."""
    import quantbench.cli
    import quantbench.core
    script = os.path.join(os.path.dirname(sys.executable), "quantbench")  # the console script, as a user runs it
    ours = [os.path.dirname(package.__file__) for package in (quantbench.cli, quantbench.core)]
    env = {**os.environ, "HOME": str(tmp_path)}
    outcomes = []
    for delay in [step * 0.02 for step in range(16)]:  # 0 to 0.3 s
        process = subprocess.Popen([script, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        err = process.stderr.read()
        code = process.wait(timeout=60)
        outcomes.append((delay, code, err))
        assert not any(f'File "{folder}' in err for folder in ours), (delay, err)
        before_any_frame = (code, err) == (1, "KeyboardInterrupt\n")
        if "Traceback" not in err and not before_any_frame and code not in (0, -signal.SIGINT):  # 0: --help done
            assert (code, err) == (130, "quantbench: interrupted\n"), (delay, code, err)
    assert any(outcome[1:] == (130, "quantbench: interrupted\n") for outcome in outcomes), outcomes
