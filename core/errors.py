"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""


class QuantbenchError(Exception):
    """Base class: bad input or a bad checkpoint, described in one line."""


class CheckpointError(QuantbenchError):
    """A checkpoint is missing, truncated, or does not match its config."""


class InvalidRequest(QuantbenchError):
    """A generation or quantization request that cannot be honoured (sizes, bits, guidance...)."""


class Cancelled(QuantbenchError):
    """A run was cancelled between steps."""
