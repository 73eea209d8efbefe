"""`quantbench`: the workbench with no arguments, or a headless subcommand."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from quantbench.core import __version__
from quantbench.core.distributed import stop_message
from quantbench.core.distributed_phases import started as command_started
from quantbench.core.errors import Cancelled, QuantbenchError

from . import bench, compare, eval, generate, info, plan, random_model, recommend, save, sensitivity, workbench

COMMANDS = [workbench, generate, save, random_model, info, recommend, compare, sensitivity, plan, bench, eval]


class OneLineParser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit code 2, like every other bad input (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"quantbench: error: {_named_once(message)} (see {self.prog} --help)\n")


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
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="quantbench",
        description="Run diffusion image models on MLX and see what quantization does to memory, "
                    "speed and the picture. With no command (or only the workbench's --model), opens the workbench.")
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    command_started()  # QUANTBENCH_PHASES_DIR: the interpreter and imports end here (core/distributed_phases.py)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["workbench", *argv]  # `quantbench --model M` opens the workbench, as `quantbench` alone does
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["workbench"])
    except SystemExit as exc:  # --help, --version, or a bad option (one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except Terminated:
        # Raised in the main thread, so every staged write on the way out was removed (core/atomic.py).
        stopped = stop_message()  # under mlx.launch: another rank ended early
        print(f"quantbench: error: {stopped}" if stopped else "quantbench: terminated (SIGTERM); nothing half-written "
              "was left", file=sys.stderr)
        return 143
    except Cancelled:
        print("quantbench: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("quantbench: interrupted", file=sys.stderr)
        return 130
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`quantbench recommend | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
