"""Will the result fit on its disk? Asked before the long work, from the bytes the result must hold.

A write that runs out of space midway leaves nothing behind (core/atomic.py), but only after the loading,
quantizing or drawing it waited for. These checks refuse it first, in one line, when the destination's
file system clearly lacks the room: each estimate counts what the result cannot do without (a saved
model's weights at their precision and the folders copied with them, saved_models.saved_model_bytes; a
random model's tensors; the pictures' pixels), so a run that would fit is never refused. An existing destination that --overwrite
replaces still takes its room until the new one is in place, so it is not counted as free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .atomic import OutputError
from .memory import format_bytes

# Pictures compress: a random model's noise not at all (3 bytes a pixel), a photo-like picture to about 1.5,
# a flat one to almost nothing. One byte a pixel refuses only a disk short of a few megabytes for a handful of
# pictures at 1024x1024: one that is, in practice, full.
PNG_BYTES_PER_PIXEL = 1


def free_bytes(out: Path) -> int | None:
    """Free bytes on the file system that `out` (a file or folder to create) will be written to; None when
    that cannot be told (no existing folder above it, or the system will not say)."""
    folder = Path(out).absolute().parent
    while not folder.is_dir():
        if folder.parent == folder:
            return None
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class NoRoom(OutputError):
    """The destination's disk lacks the room for the result; `saying(advice)` gives the one line with another
    way out than choosing another destination (the workbench has none to choose, only its data folder)."""

    def __init__(self, out: Path, what: str, needed: int, free: int):
        self.out, self.what, self.needed, self.free = out, what, needed, free
        super().__init__(self.saying("choose another destination"))

    def saying(self, advice: str) -> str:
        return (f"{self.out}: {self.what} needs about {format_bytes(self.needed)} and its disk has "
                f"{format_bytes(self.free)} free: free some space there or {advice}")


def check_free_space(out: Path, needed: int, what: str) -> None:
    """Refuse (NoRoom, one line) when `out`'s file system has less free space than `needed` bytes."""
    free = free_bytes(out)
    if free is not None and needed > free:
        raise NoRoom(out, what, needed, free)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is not there)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=True).st_size
            except OSError:
                continue
    return total


def picture_bytes(width: int, height: int, count: int = 1) -> int:
    """The room `count` PNG pictures of width x height are expected to take at the least (PNG_BYTES_PER_PIXEL)."""
    return width * height * PNG_BYTES_PER_PIXEL * count
