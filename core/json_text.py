"""JSON read from files that users and other programs write."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path


def parse_json(text: str | bytes, **options):
    """json.loads, except that nesting too deep for Python's parser ('[[[[...' thousands deep) is a ValueError
    like any other malformed JSON, which every reader turns into one line; json.loads raises RecursionError."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_regular_file(path: Path) -> bytes:
    """The bytes of `path`, read only if it is a regular file. A FIFO put in its place would block the reader
    forever (the open itself waits for a writer), and a device such as /dev/zero never ends: either is an OSError
    whose strerror is "not a regular file", as a missing file is FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # on a FIFO, returns at once instead of waiting for a writer
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return f.read()
