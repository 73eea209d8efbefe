"""Printing results: a short human summary, or one JSON document with --json."""

from __future__ import annotations

import json
import sys


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
