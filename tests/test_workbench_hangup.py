"""A dropped SSH connection during a run: the workbench must exit within 5 seconds, every time (issue 13).

Each try starts the real command on a pseudo-terminal that is its controlling terminal (as sshd and
tmux give it), begins a 1000-step run (ctrl+r: rerun the one in the history), and closes the terminal's master side,
as sshd does when the connection drops: the kernel then sends SIGHUP to the workbench.
"""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

TRIES = 10
AT_ONCE = 5  # two waves: the 2-core test machine starts five workbenches in about the time of two
EXIT_LIMIT = 5.0
LONG_RUN = {"time": 1.7e9, "model": "demo", "prompt": "a ring", "steps": 1000, "seed": 0, "width": 64, "height": 64}
ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>NOM78c])")


class Terminal:
    """The far side of the workbench's terminal: keeps reading what it draws, as a terminal does."""

    def __init__(self, fd: int):
        self.fd, self.output, self.reading = fd, bytearray(), True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self.reading:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    self.output += os.read(self.fd, 65536)
            except (OSError, ValueError):
                return

    def text(self, since: int = 0) -> str:
        return ESCAPES.sub(b"", bytes(self.output[since:])).decode("utf-8", "replace")

    def wait_for(self, text: str, seconds: float, since: int = 0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if text in self.text(since):
                return True
            time.sleep(0.1)
        return False

    def type(self, *keys: bytes) -> None:
        for key in keys:
            os.write(self.fd, key)
            time.sleep(0.2)

    def close(self, process: subprocess.Popen) -> None:
        """The test is over: stop reading, end the workbench if it is still there, and close our side."""
        self.reading = False
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(self.fd)

    def hang_up(self) -> None:
        """Close the master side, as sshd does when the connection drops (the kernel sends SIGHUP)."""
        self.reading = False
        self._reader.join()
        os.close(self.fd)


def start_workbench(model: str, env: dict) -> tuple[subprocess.Popen, Terminal]:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "quantbench.cli.main", "workbench", "--model", model],
        stdin=follower, stdout=follower, stderr=follower, env=env, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # the pty becomes its controlling terminal
    os.close(follower)
    return process, Terminal(leader)


def hang_up_during_a_run(env: dict) -> tuple[float, int]:
    """(seconds from the hang-up to the exit, exit status) for one try."""
    process, terminal = start_workbench("demo", env)
    try:
        assert terminal.wait_for("Generate ^g", 120), terminal.text()[-2000:]
        for _ in range(3):  # ctrl+r: rerun the history's 1000-step run (again if the busy machine lost the key)
            typed = len(terminal.output)
            terminal.type(b"\x12")
            if terminal.wait_for("/1000", 20, since=typed):
                break
        else:
            raise AssertionError(f"the run did not start:\n{terminal.text()[-3000:]}")
        time.sleep(0.5)
        assert process.poll() is None, "the run was meant to still be going"
        terminal.hang_up()
        hung_up = time.monotonic()
        try:
            status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            status = None
        return time.monotonic() - hung_up, status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs a POSIX pty")
def test_closing_the_terminal_during_a_run_exits_within_5_seconds_every_time(tmp_path):
    from quantbench.core.builtin import builtin_model_path

    if not (builtin_model_path("demo") / "model_index.json").is_file():
        pytest.skip("the built-in demo model is not in this installation")
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.jsonl").write_text(json.dumps(LONG_RUN) + "\n")
    env = {**os.environ, "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1",
           "QUANTBENCH_DATA_DIR": str(data), "QUANTBENCH_CONFIG_DIR": str(tmp_path / "config")}
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda _: hang_up_during_a_run(env), range(TRIES)))
    slow = [(round(seconds, 2), status) for seconds, status in results if seconds > EXIT_LIMIT or status != 129]
    assert not slow, f"{len(slow)} of {TRIES} tries did not exit with 129 within {EXIT_LIMIT}s: {slow}"
    assert not list(data.rglob("*.png"))  # the cancelled runs saved nothing
