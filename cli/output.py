"""Printing results: a short human summary, or one JSON document with --json."""

from __future__ import annotations

import json
import sys

from quantbench.core.errors import InvalidRequest


def emit(data: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(lines))


def progress(message: str, quiet: bool) -> None:
    """Progress goes to stderr so that stdout stays clean for --json."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """--text-encoder-layers '9,18,27' -> (9, 18, 27); None keeps the model's own."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InvalidRequest(f"--text-encoder-layers '{value}': give comma-separated integers, e.g. 9,18,27") from None
