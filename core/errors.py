"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""

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
