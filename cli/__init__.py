"""The headless command line.

The `quantbench` command's own code starts here, in the first module its script imports: from here until cli/main.py
has imported the commands (a second or more on a loaded machine), Ctrl-C or SIGTERM is one line and the exit code
(nothing has been read or written yet), where it was an import's KeyboardInterrupt traceback or, for SIGTERM, a
silent exit. Before this module only the interpreter's start-up runs. Nothing but built-in modules is imported here.
"""

# signal.py's C core, loaded with the interpreter: importing signal.py builds its enums first (about a millisecond),
# and a Ctrl-C in that time was a traceback through this file (seen in a CI run).
import _signal
import os as _os
import sys as _sys

_kept_handlers: dict = {}  # the handlers the startup guard replaced, put back by end_startup_guard
_guarded = False


def _ended_while_starting(signum, frame) -> None:
    interrupted = signum == _signal.SIGINT
    if interrupted:
        line = "quantbench: interrupted"
    else:
        try:
            from quantbench.core.errors import TERMINATED_LINE as line  # its one home (the engine's, for the workbench)
        except Exception:  # the signal came in the middle of importing it: end as SIGTERM does by default
            _signal.signal(signum, _signal.SIG_DFL)
            _os.kill(_os.getpid(), signum)
            return
    _os.write(2, line.encode() + b"\n")
    _os._exit(130 if interrupted else 143)


def guard_startup() -> None:
    """The startup handlers for SIGINT and SIGTERM (once; in the main thread only, and not over a signal the caller
    ignores, as a background job's SIGINT is)."""
    global _guarded
    if _guarded:
        return
    _guarded = True
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        previous = _signal.getsignal(signum)
        if previous is None or previous == _signal.SIG_IGN:
            continue
        try:
            _kept_handlers[signum] = _signal.signal(signum, _ended_while_starting)
        except ValueError:  # not the main thread: its signals are not this import's to handle
            _guarded = False
            return


def end_startup_guard() -> None:
    """Put back the handlers guard_startup replaced (cli/main.py, once its imports are done: main() installs its own)."""
    global _guarded
    while _kept_handlers:
        signum, handler = _kept_handlers.popitem()
        _signal.signal(signum, handler)
    _guarded = False


# The quantbench command (its script, or `python -m quantbench.cli.main`, which imports this package while argv[0]
# is still "-m"); any other program importing a module of cli/ keeps its own handlers (cli/main.py guards its own
# imports in any case).
_argv0 = (getattr(_sys, "argv", None) or [""])[0]
if _os.path.basename(_argv0) == "quantbench" or _argv0 == "-m":
    guard_startup()
