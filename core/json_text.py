"""JSON read from files that users and other programs write."""

from __future__ import annotations

import json


def parse_json(text: str | bytes, **options):
    """json.loads, except that nesting too deep for Python's parser ('[[[[...' thousands deep) is a ValueError
    like any other malformed JSON, which every reader turns into one line; json.loads raises RecursionError."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
