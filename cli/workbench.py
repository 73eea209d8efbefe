"""quantbench workbench (also `quantbench` with no command): the Textual app."""

from __future__ import annotations

import argparse
import codecs
import io
import os
import sys

from . import arguments


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("workbench", help="open the workbench (the default with no command)",
                              description="Open the terminal workbench. Works over SSH: no graphics protocol "
                                          "needed, previews are drawn with half blocks; if the connection drops "
                                          "(SIGHUP) it exits within seconds with status 129, on SIGTERM with 143. Images, history "
                                          "and screenshots go to the user data directory (QUANTBENCH_DATA_DIR "
                                          "overrides it), settings to the user config directory "
                                          "(QUANTBENCH_CONFIG_DIR).")
    p.add_argument("--model", default=None,
                   help=f"model to start on: {arguments.MODEL_HELP} (default: the last one used, or demo)")
    p.set_defaults(run=run)


def terminal_problem() -> str | None:
    """The workbench draws on stdout and reads keys from stdin: with either not a terminal (`quantbench < /dev/null`
    waited forever; `quantbench | less` got screens of escape codes) it says so at once instead."""
    for stream, name in ((sys.stdin, "input"), (sys.stdout, "output")):
        if stream is None or not stream.isatty():
            return (f"the workbench needs a terminal, and standard {name} is not one; in scripts use the commands "
                    "(quantbench --help), e.g. quantbench generate --prompt TEXT --out FILE.png")
    if os.environ.get("TERM") == "dumb":  # an editor's shell (Emacs M-x shell): escape codes shown as text, keys unread
        return ("the workbench draws a full screen, and TERM=dumb says this terminal cannot; open it in a terminal "
                "emulator (or set TERM, e.g. TERM=xterm-256color), or use the commands (quantbench --help)")
    return None


def draw_in_utf8() -> None:
    """Textual draws on the process's stderr, in box and block characters only UTF-8 encodes: in the encoding that
    PYTHONIOENCODING or a latin-1 locale named (`LANG=en_US.ISO-8859-1` forwarded by ssh), each was written as its
    escape, `\\u256d`, and every line of the screen ran over its width. Terminals that can draw the workbench read
    UTF-8 whatever those say."""
    stream = sys.__stderr__
    if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
        stream.reconfigure(encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if problem := terminal_problem():
        print(f"quantbench: error: {problem}", file=sys.stderr)
        return 2
    draw_in_utf8()
    from quantbench.tui import hangup
    from quantbench.tui.app import QuantbenchApp  # Textual is imported only when the workbench opens

    app = QuantbenchApp(model=getattr(args, "model", None))
    app.run()
    if app.return_code == hangup.EXIT_CODE:
        hangup.leave_now()  # the terminal is gone: status 129 now, not after the interpreter's teardown
    if app.return_code == hangup.TERMINATED_EXIT_CODE:  # SIGTERM, left tidily: the CLI's line, then at once
        print(hangup.TERMINATED_LINE, file=sys.stderr, flush=True)
        hangup.leave_now(hangup.TERMINATED_EXIT_CODE)
    hangup.leave_if_threads_linger(app.return_code or 0)
    return app.return_code or 0
