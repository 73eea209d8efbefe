"""Runs of this and earlier sessions: one JSON object per line, next to the images."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import time
from pathlib import Path

from quantbench.core.atomic import replace_file
from quantbench.core.json_text import parse_json, read_regular_file


# What a line must hold to be shown, and the type of every field the workbench reads from it.
REQUIRED = ("time", "model", "prompt")
NUMBER, TEXT, WHOLE = (int, float), (str,), (int,)
FIELD_TYPES = {
    "time": NUMBER, "model": TEXT, "prompt": TEXT, "negative_prompt": TEXT, "image": TEXT, "seed": WHOLE,
    "steps": WHOLE, "width": WHOLE, "height": WHOLE, "guidance": NUMBER, "true_cfg": NUMBER,
    "quantize": (int, str, dict), "text_encoder_quantize": (int, str, dict), "total_seconds": NUMBER,
    "load_seconds": NUMBER, "peak_memory": WHOLE, "peak_rss": WHOLE, "step_seconds": (list,), "dtype": TEXT,
    "calibration_prompts": TEXT,
}


def usable(record) -> bool:
    """Whether a parsed line is a run the workbench can show and rerun (None stands for "not set")."""
    if not isinstance(record, dict) or any(record.get(key) is None for key in REQUIRED):
        return False
    for key, types in FIELD_TYPES.items():
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
    try:
        time.localtime(record["time"])
    except (OverflowError, OSError, ValueError):
        return False
    steps = record.get("step_seconds") or []
    return all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in steps)


class HistoryStore:
    def __init__(self, path: Path):
        self.path = path
        self.set_aside: Path = path.with_name(path.name + ".bad")

    def append(self, record: dict) -> None:
        """One whole line, flushed: a crash loses at most the run it was saving, and a write the disk cuts short
        (full) is taken back, so that no torn line is left for the next run's line to be glued to."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = _open_regular_for_append(self.path)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash (or another program): this
                line = b"\n" + line                           # run's line starts on its own, not glued to it
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, size)  # the disk filled up mid-line: the history as it was
                exc.filename = exc.filename or str(self.path)  # a full disk's ENOSPC names no file
                raise
        finally:
            os.close(fd)

    def load(self) -> list[dict]:
        """Every usable record, oldest first (see read)."""
        return self.read()[0]

    def read(self) -> tuple[list[dict], str | None]:
        """(every usable record, oldest first; what was wrong, or None).

        Lines that are not a run (a torn line from a crash, bytes that are not UTF-8 JSON, fields of the
        wrong type) are moved to history.jsonl.bad once, so the history is clean from then on and
        nothing the user had is deleted."""
        try:
            data = read_regular_file(self.path)
        except FileNotFoundError:
            return [], None
        except OSError as exc:
            return [], f"history: cannot read {self.path} ({exc.strerror or exc}); showing no past runs"
        records, kept, broken = [], [], []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = parse_json(line.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError is a ValueError
                record = None
            if usable(record):
                records.append(record)
                kept.append(line)
            else:
                broken.append(line)
        if not broken:
            return records, None
        return records, self._set_aside(data, kept, broken)

    def _set_aside(self, read: bytes, kept: list[bytes], broken: list[bytes]) -> str:
        count = f"{len(broken)} unreadable line{'s' if len(broken) != 1 else ''}"
        try:
            if read_regular_file(self.path) != read:  # another workbench appended meanwhile: leave it for next time
                return f"history: skipped {count} in {self.path}"
            with open(_open_regular_for_append(self.set_aside), "ab") as f:  # a FIFO there: said, not a hang
                f.write(b"".join(line + b"\n" for line in broken))
            replace_file(self.path, b"".join(line + b"\n" for line in kept))
        except OSError as exc:
            return f"history: skipped {count} in {self.path} (could not set them aside: {exc.strerror or exc})"
        return f"history: {count} moved from {self.path.name} to {self.set_aside}"


def _open_regular_for_append(path: Path) -> int:
    """A descriptor of `path` (made when absent) to append to, at its end. A FIFO in its place: a plain open waited
    forever for a reader (O_NONBLOCK does not wait); it or a device is OSError "not a regular file"."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(errno.EINVAL, "not a regular file", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd
