"""`quantbench`: the workbench with no arguments, or a headless subcommand."""

from __future__ import annotations

import argparse
import functools
import io
import os
import signal
import sys

from quantbench.cli import end_startup_guard, guard_startup

guard_startup()  # already, where cli/__init__ saw the quantbench command start; else from here (`python -c`)

from quantbench.core import __version__, cpu_blas  # noqa: E402
from quantbench.core.distributed import stop_message  # noqa: E402
from quantbench.core.distributed_phases import started as command_started  # noqa: E402
from quantbench.core.errors import (TERMINATED_LINE, Cancelled, QuantbenchError, kernel_build_error,  # noqa: E402
                                   printable)

from . import (bench, compare, download, eval, generate, info, plan, random_model, recommend, save,  # noqa: E402
               sensitivity, workbench)
from .output import begin_command, emit_error  # noqa: E402

end_startup_guard()

COMMANDS = [workbench, generate, download, save, random_model, info, recommend, compare, sensitivity, plan, bench, eval]


class OneLineParser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit code 2, like every other bad input (no usage dump)."""

    def parse_known_args(self, args=None, namespace=None):
        self._parsing = list(args) if args is not None else sys.argv[1:]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        unknown = self._unknown_options()
        if unknown and "invalid choice" in message:
            # `plan --budget 4`: the unknown option is skipped and its value read as the subcommand ('show')
            message = f"unrecognized arguments: {' '.join(unknown)}"
        line = f"quantbench: error: {one_line(_named_once(message))} (see {self.prog} --help)"
        OneLineParser.refusal = line
        self.exit(2, line + "\n")

    refusal: str | None = None  # the last bad option's line, for --json's error object (output.emit_error)

    def _unknown_options(self) -> list[str]:
        """The --options among the arguments being parsed that this parser does not know (nor abbreviates)."""
        known = [name for name in self._option_string_actions if name.startswith("--")]
        tokens = [t.split("=", 1)[0] for t in getattr(self, "_parsing", []) if t.startswith("--") and t != "--"]
        return [t for t in tokens if not any(name.startswith(t) for name in known)]


def one_line(message: str) -> str:
    """The message as one printable line: a control character or line separator in it (from a value the user
    gave: `--size $'4\\r'`, a folder name with a newline) is written as its escape, not obeyed."""
    return printable(message)


def _named_once(message: str) -> str:
    """argparse's "argument --vae-tile: --vae-tile 0 is not allowed" without the first naming of the option,
    when the checker's own message already names it."""
    option, separator, rest = message.partition(": ")
    names = option.removeprefix("argument ").split("/")
    if separator and option.startswith("argument ") and rest.startswith(tuple(names)):
        return rest
    return message


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, like KeyboardInterrupt (no `except Exception` swallows it)."""


def _terminate(signum, frame):
    _hold_signals()  # a second SIGTERM (a launcher's kill script) must not cut the first one's clean-up short
    # `timeout` and job control follow SIGTERM with SIGCONT: the workbench's handler for it would redraw a screen
    # that is being torn down (Textual: "no running event loop", a traceback); nothing is to resume now
    signal.signal(signal.SIGCONT, _ignore)
    raise Terminated()


def _ignore(signum, frame):
    pass


def _hold_signals() -> None:
    """From here on SIGTERM and Ctrl-C change nothing: the process is already on its way out with its one line (a
    Ctrl-C pressed again as "interrupted" was said added a KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="quantbench",
        description="Run diffusion image models on MLX and see what quantization does to memory, "
                    "speed and the picture. With no command (or only the workbench's --model), opens the workbench.")
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    parser.commands = subparsers.choices
    for command in parser.commands.values():
        refuse_empty_values(command)
    return parser


# Options where an empty value means something: no negative prompt; the prompt says "the prompt is empty" itself.
EMPTY_ALLOWED = {"negative_prompt", "prompt"}


def refuse_empty_values(parser: argparse.ArgumentParser) -> None:
    """`--quantize ''` (or `--dtype=`) is one line, not a quiet default: an empty value is nearly always a shell
    variable that was not set. Every option and argument that takes a value refuses a blank one, but
    EMPTY_ALLOWED."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):  # `plan show FILE`
            for command in action.choices.values():
                refuse_empty_values(command)
        elif (action.nargs != 0 and action.dest not in EMPTY_ALLOWED
                and isinstance(action, (argparse._StoreAction, argparse._AppendAction))):
            name = max(action.option_strings, key=len) if action.option_strings else (action.metavar or action.dest)
            action.type = _non_empty(action.type, name)


def _non_empty(convert, option: str):
    def check(text: str):
        if isinstance(text, str) and not text.strip():
            raise argparse.ArgumentTypeError(f"{option} is empty: give a value")
        return convert(text) if convert is not None else text
    # the option's own converter's name and module (argparse's "invalid int value"; the tests find the checked ones)
    return functools.wraps(convert)(check) if convert is not None else check


def _reopen_closed_streams() -> None:
    """stdin or stderr closed by the caller (`<&-`, `2>&-`): /dev/null in its place. Otherwise a file opened later
    would get that descriptor (a library's warning written into the PNG being saved), and Python's print to a
    missing stderr goes to stdout, into the --json document."""
    for fd, name, mode in ((0, "stdin", "r"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, closefd=False))


def _escape_what_cannot_be_encoded() -> None:
    """stdout and stderr whose encoding lacks a character of the output (PYTHONIOENCODING=ascii, a latin-1 locale,
    and a prompt or path with "…" or "×" in it) write it as its escape, `\\u2026`: stdout raised a UnicodeEncodeError
    traceback, once the PNG was written."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def _closed_stdout(args) -> str | None:
    """`quantbench info >&-`: what the command says would be lost (the workbench says it needs a terminal)."""
    if sys.stdout is None and args.command != "workbench":
        return "standard output is closed: give it somewhere to go (>/dev/null to discard it)"
    return None


def _arguments(argv: list[str]) -> argparse.Namespace | int:
    """The command's parsed arguments, or the exit code when there is nothing to run (--help, --version, a bad
    option or setting: its one line already said)."""
    _reopen_closed_streams()
    _escape_what_cannot_be_encoded()
    command_started()  # QUANTBENCH_PHASES_DIR: the interpreter and imports end here (core/distributed_phases.py)
    parser = build_parser()
    OneLineParser.refusal = None
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["workbench", *argv]  # `quantbench --model M` opens the workbench, as `quantbench` alone does
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the command's own parser: its --help is the one that lists the options
            command = parser.commands.get(args.command, parser) if args.command else parser
            command.error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command is None:
            args = parser.parse_args(["workbench"])
    except SystemExit as exc:  # --help, --version, or a bad option (one line already printed)
        code = exc.code if isinstance(exc.code, int) else 2
        if code == 2 and OneLineParser.refusal:
            emit_error(_asked(argv), OneLineParser.refusal, 2)
        return code
    if problem := cpu_blas.setting_problem() or _closed_stdout(args):
        print(f"quantbench: error: {problem}", file=sys.stderr)
        emit_error(args, f"quantbench: error: {problem}", 2)
        return 2
    return args


def _asked(argv: list[str]) -> argparse.Namespace:
    """Before the options are parsed, what emit_error needs of them: whether --json is among them (before `--`)."""
    return argparse.Namespace(json="--json" in argv[:argv.index("--") if "--" in argv else None])


def main(argv: list[str] | None = None) -> int:
    in_process = argv is not None
    begin_command()  # nothing written to stdout yet (main() runs several commands in one process in the tests)
    given = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM is ours from the start: while the options are read (after the startup guard) it was the signal's
    # default, a silent exit, where everywhere else it is the one line and 143
    previous = (signal.signal(signal.SIGTERM, _terminate), signal.getsignal(signal.SIGCONT),
                signal.getsignal(signal.SIGINT))
    args = None
    try:
        try:
            args = _arguments(given)
        except KeyboardInterrupt:  # Ctrl-C while the options are read or --help is printed, after the startup guard
            if not in_process:
                _hold_signals()
            print("quantbench: interrupted", file=sys.stderr)
            emit_error(_asked(given), "quantbench: interrupted", 130)
            return 130
        if isinstance(args, int):
            return args
        return _run(args)
    except Terminated:
        # Raised in the main thread, so every staged write on the way out was removed (core/atomic.py). Also
        # reached when the SIGTERM came as another error was about to be reported: this line replaces that one.
        stopped = stop_message()  # under mlx.launch: another rank ended early
        line = f"quantbench: error: {stopped}" if stopped else TERMINATED_LINE
        print(line, file=sys.stderr)
        emit_error(args if isinstance(args, argparse.Namespace) else _asked(given), line, 143)
        return 143
    finally:
        # main() called in-process (the tests) leaves the signals as it found them; the program itself keeps
        # ignoring Ctrl-C once its last line is said (a Ctrl-C pressed again in the interpreter's teardown was a
        # KeyboardInterrupt traceback after "quantbench: interrupted")
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGCONT, previous[1])
        if in_process:
            signal.signal(signal.SIGINT, previous[2])


def _failed(args, line: str, code: int) -> int:
    """The failure's one line on stderr (and, with --json, its JSON object on stdout: output.emit_error)."""
    _hold_signals()
    print(line, file=sys.stderr)
    emit_error(args, line, code)
    return code


def _run(args) -> int:
    """The command, with the errors a user can act on as one line; each handler first holds SIGTERM, so that a
    SIGTERM while its line is said (mlx.launch stopping a rank that has just noticed a lost peer itself) adds
    neither a second line nor a traceback."""
    try:
        return args.run(args)
    except Cancelled:
        return _failed(args, "quantbench: cancelled", 130)
    except KeyboardInterrupt:
        return _failed(args, "quantbench: interrupted", 130)
    except QuantbenchError as exc:
        return _failed(args, f"quantbench: error: {one_line(str(exc))}", 2)
    except RuntimeError as exc:  # MLX's CPU kernel build in a full temporary folder: the compiler's screenful
        if (known := kernel_build_error(exc)) is None:
            raise
        return _failed(args, f"quantbench: error: {one_line(str(known))}", 2)
    except BrokenPipeError:
        # The reader went away (`quantbench recommend | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
