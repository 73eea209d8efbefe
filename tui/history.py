"""Runs of this and earlier sessions: one JSON object per line, next to the images."""

from __future__ import annotations

import json
import os
from pathlib import Path


class HistoryStore:
    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict) -> None:
        """One write of one whole line, flushed: a crash loses at most the run it was saving."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> list[dict]:
        """Every readable record, oldest first; a torn last line (from a crash) is skipped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
