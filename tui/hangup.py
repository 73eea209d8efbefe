"""Leaving when the terminal goes away (SSH dropped, terminal window closed): exit within seconds, every time.

On SIGHUP the workbench cancels the run and asks Textual for a normal exit. That exit restores the
terminal through Textual's writer thread, and with the terminal gone that thread can die with its
queue full, leaving the main thread blocked forever on `queue.put` while the model stays in memory.
So the hang-up also starts a watchdog that ends the process if the tidy exit has not finished in
GRACE_SECONDS, and arms the kernel's alarm as a last resort should Python itself be unable to run;
once the app has exited, `quantbench workbench` leaves with leave_now() rather than through the
interpreter's teardown.

The handler is a plain `signal.signal` handler, not the event loop's: a loop that is blocked never
runs its own signal callbacks, while a Python handler runs even inside a blocked `queue.put`.

SIGTERM (`kill`, `timeout`, a service manager) leaves the same way, with status 143 and the CLI's one
line: a tidy exit, so the terminal is given back as it was, where an exception raised inside the event
loop tore the screen down mid-frame (a SIGCONT right after, as `timeout` sends, then redrew it: a traceback).
The terminal is still there then, so the tidy exit gets longer (a loaded machine can take seconds); should
the watchdog end it anyway, it gives the terminal back (main screen, cursor, no mouse reports, cooked mode)
and says the same line.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import threading
import time
from functools import partial
from typing import Callable

from quantbench.core.errors import TERMINATED_LINE  # the CLI's line, said by the workbench too

EXIT_CODE = 128 + signal.SIGHUP  # what a shell reports for a process ended by SIGHUP
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
GRACE_SECONDS = 2.0  # a run stops at its next step; a PNG being written is finished
QUIT_GRACE_SECONDS = 5.0  # after a quit, for threads still ending (they take well under a second)
TERMINATED_GRACE_SECONDS = 10.0  # the terminal is there: the tidy exit (about 1 s) only waits for the CPU
ALARM_AFTER_GRACE_SECONDS = 2  # SIGALRM's default action ends the process even if no Python code can run
# what Textual's driver undoes on a tidy exit: mouse and focus reports, bracketed paste, alternate screen, cursor
RESET_TERMINAL = (b"\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?1004l\x1b[?2004l"
                  b"\x1b[?1049l\x1b[?25h")


def install(on_hang_up: Callable[[], None], signum: int = signal.SIGHUP, exit_code: int = EXIT_CODE,
            grace: float = GRACE_SECONDS, last_words: Callable[[], None] | None = None) -> None:
    """Call `on_hang_up` (from the main thread) on `signum`, then make sure the process ends soon after: if
    the tidy exit has not ended it within `grace` seconds, call `last_words` and end it with `exit_code`."""
    hung_up = threading.Event()

    def handler(signum, frame) -> None:
        if hung_up.is_set():
            return
        hung_up.set()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(grace) + ALARM_AFTER_GRACE_SECONDS)
        threading.Thread(target=_exit_after, args=(grace, exit_code, last_words), name="hang-up-watchdog",
                         daemon=True).start()
        on_hang_up()

    signal.signal(signum, handler)


def install_terminated(on_terminate: Callable[[], None], terminal_modes: list | None) -> None:
    """SIGTERM: leave tidily with TERMINATED_EXIT_CODE; a watchdog gives the terminal back in the modes it had
    before the workbench (`termios.tcgetattr` of standard input, or None) and says TERMINATED_LINE."""
    install(on_terminate, signal.SIGTERM, TERMINATED_EXIT_CODE, TERMINATED_GRACE_SECONDS,
            partial(_give_terminal_back_and_say, terminal_modes, TERMINATED_LINE))


def terminal_modes() -> list | None:
    """Standard input's terminal modes now (before Textual makes it raw), for install_terminated."""
    try:
        return termios.tcgetattr(0) if os.isatty(0) else None
    except termios.error:
        return None


def _give_terminal_back_and_say(terminal_modes: list | None, line: str) -> None:
    """Best effort, from the watchdog: whatever fails here must not stop the exit."""
    try:
        if os.isatty(1):
            os.write(1, RESET_TERMINAL)
        if terminal_modes is not None and os.isatty(0):
            termios.tcsetattr(0, termios.TCSADRAIN, terminal_modes)
    except (OSError, termios.error):
        pass
    try:
        os.write(2, f"{line}\n".encode())
    except OSError:
        pass


def leave_now(exit_code: int = EXIT_CODE) -> None:
    """End the process at once, without the interpreter's teardown. After a hang-up that teardown has
    nothing to do for the user, and it can wait on the run's thread mid-step (the watchdog, a daemon
    thread, is frozen by then) or abort in MLX's static destructors. History lines and PNGs are
    written whole or not at all, so nothing is lost."""
    os._exit(exit_code)


def leave_if_threads_linger(exit_code: int, grace: float = QUIT_GRACE_SECONDS) -> None:
    """After the app has exited: wait up to `grace` seconds for the threads that would keep the interpreter
    alive, and leave at once if any is still running then. The screen is given back by that point, so a
    thread that never ends (Textual's input thread was once seen blocked reading the terminal after a quit,
    with its output thread waiting beside it) would leave a blank prompt-less terminal and a process to kill."""
    deadline = time.monotonic() + grace
    here = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not here and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t is not here and not t.daemon and t.is_alive() for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # a closed or missing stream: nothing to keep
                pass
        leave_now(exit_code)


def _exit_after(seconds: float, exit_code: int, last_words: Callable[[], None] | None) -> None:
    time.sleep(seconds)
    if last_words is not None:
        last_words()
    leave_now(exit_code)
