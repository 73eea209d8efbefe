"""What was read from a model folder's files, kept while the files stay as they were.

One plan asks for the same files through several readers (the family decision, the defaults, the transformer's
structure, the saved-model check, the memory model's entry for each of its fit checks, the load), and each read
the transformer's config.json, its safetensors index and every shard's header again. A reader wrapped in
FileMemo reads a file once; asked again, it only stats the file and gives what it read while the file's
signature (modification and change times, size, inode, device) is the same. An edited or replaced file is read
again. A file modified in the last RACY_NS is never kept: a file system's clock ticks in milliseconds or more, so
a second same-size edit within one tick keeps its modification time, and a file being written is read each time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

RACY_NS = 2_000_000_000

T = TypeVar("T")


def signature(path: Path | str) -> tuple | None:
    """What tells an edited or replaced file from the one read before (None: not there, or not stat-able)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino, info.st_dev


def settled(signatures: Iterable[tuple | None]) -> bool:
    """Whether every file (of these signatures, taken before reading) was last modified long enough ago that a
    later edit is sure to change its signature."""
    now = time.time_ns()
    return all(s is None or now - s[0] >= RACY_NS for s in signatures)


class FileMemo(Generic[T]):
    """`read(path)` kept per file while the file stays as it was; `copy` gives each caller a value of its own (a
    caller may change the dict it was given). What `read` raises is raised again on every call: nothing is kept."""

    def __init__(self, read: Callable[[Path], T], copy: Callable[[T], T], limit: int = 512):
        self._read, self._copy, self._limit = read, copy, limit
        self._kept: OrderedDict[str, tuple[tuple, T]] = OrderedDict()
        self._lock = threading.Lock()  # the workbench's threads read too

    def __call__(self, path: Path | str) -> T:
        path = Path(path)
        key = os.path.abspath(path)
        before = signature(path)  # before reading: an edit made while reading is seen next time
        with self._lock:
            known = self._kept.get(key)
        if known is not None and before is not None and known[0] == before:
            return self._copy(known[1])
        value = self._read(path)
        with self._lock:
            self._kept.pop(key, None)
            if before is not None and settled([before]):
                self._kept[key] = before, value
                while len(self._kept) > self._limit:
                    self._kept.popitem(last=False)
        return self._copy(value)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
