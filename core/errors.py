"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""

import re

# What a command or the workbench says when SIGTERM ends it (exit 143). One home for the CLI (cli/main.py) and the
# workbench's own exit (tui/hangup.py): here, because the CLI must start without importing tui/ and its Textual.
TERMINATED_LINE = "quantbench: terminated (SIGTERM); nothing half-written was left"


def printable(text: str) -> str:
    """`text` as one printable line: a control character, line separator or bidi override in it (from a value the
    user gave, a folder name, a history line) is written as its escape, not obeyed by the terminal that shows it
    (an ESC in a prompt recoloured the workbench's screen; "\\u202e" turns the rest of a line around)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class QuantbenchError(Exception):
    """Base class: bad input or a bad checkpoint, described in one line."""


class CheckpointError(QuantbenchError):
    """A checkpoint is missing, truncated, or does not match its config."""


class InvalidRequest(QuantbenchError):
    """A generation or quantization request that cannot be honoured (sizes, bits, guidance...)."""


class Cancelled(QuantbenchError):
    """A run was cancelled between steps."""


class KernelBuildError(QuantbenchError):
    """MLX's CPU backend could not build a kernel for an mx.compile'd function (its temporary folder is full)."""


_MLX_BUILD = re.compile(r"^\[Compile::eval_cpu\] Failed to compile function \S+: Failed to execute command with "
                        r"return code (\d+)")
_OS_REASONS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
               "File too large")


def kernel_build_error(error: BaseException) -> KernelBuildError | None:
    """MLX's CPU backend builds each compiled function with the C++ compiler in the temporary folder ($TMPDIR/mlx)
    and says a failure as a RuntimeError with the compiler's whole output (a screenful): as one line, or None when
    `error` is not that."""
    text = str(error)
    found = _MLX_BUILD.match(text) if isinstance(error, RuntimeError) else None
    if found is None:
        return None
    where = re.search(r'"([^"]+)/tmp_[0-9a-f]+\.cpp"', text)
    folder = where.group(1) if where else "the temporary folder"
    reason = next((r for r in _OS_REASONS if r in text), None)
    if reason:
        return KernelBuildError(f"MLX could not build a CPU kernel in {folder} ({reason}): free some space there, "
                                "or point TMPDIR at a folder with room")
    return KernelBuildError(f"MLX could not build a CPU kernel in {folder}: its C++ compiler failed (status "
                            f"{found.group(1)}); check that the compiler works (g++ --version)")
