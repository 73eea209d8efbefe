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
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

EXIT_CODE = 128 + signal.SIGHUP  # what a shell reports for a process ended by SIGHUP
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
GRACE_SECONDS = 2.0  # a run stops at its next step; a PNG being written is finished
ALARM_SECONDS = 4  # SIGALRM's default action ends the process even if no Python code can run


def install(on_hang_up: Callable[[], None], signum: int = signal.SIGHUP, exit_code: int = EXIT_CODE) -> None:
    """Call `on_hang_up` (from the main thread) on `signum`, then make sure the process ends soon after (with
    `exit_code` if the tidy exit stalls)."""
    hung_up = threading.Event()

    def handler(signum, frame) -> None:
        if hung_up.is_set():
            return
        hung_up.set()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(ALARM_SECONDS)
        threading.Thread(target=_exit_after, args=(GRACE_SECONDS, exit_code), name="hang-up-watchdog",
                         daemon=True).start()
        on_hang_up()

    signal.signal(signum, handler)


def leave_now(exit_code: int = EXIT_CODE) -> None:
    """End the process at once, without the interpreter's teardown. After a hang-up that teardown has
    nothing to do for the user, and it can wait on the run's thread mid-step (the watchdog, a daemon
    thread, is frozen by then) or abort in MLX's static destructors. History lines and PNGs are
    written whole or not at all, so nothing is lost."""
    os._exit(exit_code)


def _exit_after(seconds: float, exit_code: int) -> None:
    time.sleep(seconds)
    leave_now(exit_code)
