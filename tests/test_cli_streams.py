"""The CLI as a script runs it: stdout full or closed, stderr closed, stdin and stdout not a terminal. Each is one
line and exit 2 (or, for a closed stderr, a clean --json), never a traceback or a hang."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file descriptors")


def _run(tmp_path, *args, shell_redirect="", stdin=subprocess.DEVNULL, timeout=120):
    """`quantbench ARGS` under bash with a redirection applied to it (`>&-`, `2>&-`, `> /dev/full`)."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    command = f'exec "$@" {shell_redirect}'
    return subprocess.run(["bash", "-c", command, "_", sys.executable, "-m", "quantbench.cli.main", *args],
                          capture_output=True, text=True, env=env, stdin=stdin, timeout=timeout)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["info", "--json"], ["recommend", "--ram", "16"]])
def test_a_full_stdout_is_one_line_exit_2(tmp_path, args):
    result = _run(tmp_path, *args, shell_redirect="> /dev/full")
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("quantbench: error: cannot write the output to standard output: "
                             "No space left on device\n")


def test_a_closed_stdout_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x.png"
    result = _run(tmp_path, "generate", "--prompt", "a red star", "--out", str(out), "--json",
                  shell_redirect=">&-")
    assert result.returncode == 2
    assert result.stderr == ("quantbench: error: standard output is closed: give it somewhere to go "
                             "(>/dev/null to discard it)\n")
    assert not out.exists()  # refused before the run, not after it (the JSON was lost, the picture made)


def test_a_closed_stderr_leaves_the_json_on_stdout_whole(tmp_path):
    """Progress lines went to stdout when stderr was closed (print to a missing sys.stderr), before the JSON."""
    out = tmp_path / "x.png"
    result = _run(tmp_path, "generate", "--prompt", "a red star", "--out", str(out), "--json", "--steps", "2",
                  shell_redirect="2>&-")
    assert result.returncode == 0
    assert json.loads(result.stdout)["out"] == str(out) and out.is_file()


def test_a_closed_stdin_is_harmless(tmp_path):
    result = _run(tmp_path, "info", "--json", shell_redirect="<&-", stdin=None)
    assert result.returncode == 0 and json.loads(result.stdout)["os"]


@pytest.mark.parametrize("redirect, stream", [("< /dev/null", "input"), ("| cat", "output"), (">&-", "output")])
def test_the_workbench_without_a_terminal_says_so_at_once(tmp_path, redirect, stream):
    """`quantbench < /dev/null` waited forever; `quantbench | cat` wrote screens of escape codes into the pipe."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    import pty
    leader, follower = pty.openpty()  # a terminal on the other side, so only the redirected stream is not one
    try:
        result = subprocess.run(["bash", "-c", f'"$@" {redirect}', "_", sys.executable, "-m",
                                 "quantbench.cli.main"], stdin=follower, stdout=follower, stderr=subprocess.PIPE,
                                text=True, env=env, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2 or redirect == "| cat"  # bash reports cat's status for a pipeline
    assert result.stderr == (f"quantbench: error: the workbench needs a terminal, and standard {stream} is not "
                             "one; in scripts use the commands (quantbench --help), e.g. quantbench generate "
                             "--prompt TEXT --out FILE.png\n")


def test_the_workbench_in_a_dumb_terminal_says_so_at_once(tmp_path):
    """TERM=dumb (Emacs' M-x shell, some web consoles) cannot draw a screen: Textual ignores TERM, so the workbench
    wrote its escape codes there as text and waited for keys; now one line and exit 2, before anything is imported."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TERM": "dumb"}
    import pty
    leader, follower = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "quantbench.cli.main"], stdin=follower, stdout=follower,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2
    assert result.stderr == ("quantbench: error: the workbench draws a full screen, and TERM=dumb says this terminal "
                             "cannot; open it in a terminal emulator (or set TERM, e.g. TERM=xterm-256color), or use "
                             "the commands (quantbench --help)\n")
    assert not (tmp_path / "home").exists()  # nothing written: no settings, no history


def test_ctrl_c_pressed_again_as_interrupted_is_said_changes_nothing(monkeypatch):
    """A second Ctrl-C while "quantbench: interrupted" was said, or in the interpreter's teardown after it, was a
    KeyboardInterrupt traceback: from that line on Ctrl-C is ignored. main() called in-process puts it back."""
    import io
    import signal
    import sys

    from quantbench.cli import info
    from quantbench.cli.main import main

    def interrupted(args):
        raise KeyboardInterrupt

    class Stderr(io.StringIO):
        handlers = []

        def write(self, text):
            self.handlers.append(signal.getsignal(signal.SIGINT))
            return super().write(text)

    monkeypatch.setattr(info, "run", interrupted)
    monkeypatch.setattr(sys, "stderr", Stderr())
    before = signal.getsignal(signal.SIGINT)
    assert main(["info"]) == 130
    assert sys.stderr.getvalue() == "quantbench: interrupted\n"
    assert set(Stderr.handlers) == {signal.SIG_IGN}
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("args", [
    ["save", "--model", "demo", "-q", "{tmp}/plan.json", "--out", "{tmp}/saved", "--json"],  # refused by the command
    ["save", "--model", "demo", "-q", "4", "--out", "{tmp}/saved", "--json", "--bogus"],  # refused by the parser
])
def test_a_failure_with_json_is_one_json_error_object_on_stdout(tmp_path, args):
    """A script reading `--json` got an empty stdout when the command failed: now one JSON object, the stderr line
    and the exit code, and nothing else on stdout; stderr keeps its one line."""
    (tmp_path / "plan.json").write_text('{"format": 1, "layers": {"transformer_blocks.0.attn.to_q": 7}}')
    result = _run(tmp_path, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("quantbench: error: ")
    assert json.loads(result.stdout) == {"error": result.stderr.strip(), "exit_code": 2}
    assert not (tmp_path / "saved").exists()


def test_plan_shows_json_failure_is_one_object_and_without_json_stdout_stays_empty(tmp_path, capsys):
    from quantbench.cli.main import main
    (tmp_path / "plan.json").write_text("[]")
    assert main(["plan", "show", str(tmp_path / "plan.json"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": err.strip(), "exit_code": 2} and "expected a JSON object" in err
    assert main(["plan", "show", str(tmp_path / "plan.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "expected a JSON object" in err
