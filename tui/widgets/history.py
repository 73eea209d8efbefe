"""Past runs: settings, timings and peak memory; select one to reopen its image or rerun it."""

from __future__ import annotations

import time

from textual.widgets import DataTable

from quantbench.core.memory import format_bytes

COLUMNS = ("when", "model", "prompt", "seed", "steps", "precision", "s/step", "total", "peak MLX")


class HistoryTable(DataTable):
    BORDER_TITLE = "History"

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns(*COLUMNS)
        self.records: list[dict] = []  # newest first, as shown

    def add_record(self, record: dict) -> None:
        self.set_records([record, *self.records])

    def set_records(self, records: list[dict]) -> None:
        self.records = list(records)
        self.clear()
        for index, record in enumerate(self.records):
            steps = record.get("step_seconds") or [0]
            self.add_row(
                time.strftime("%m-%d %H:%M", time.localtime(record.get("time", 0))), str(record.get("model", "")),
                _short(record.get("prompt", ""), 28), str(record.get("seed", "")), str(record.get("steps", "")),
                "bf16" if record.get("quantize") is None else f"q{record['quantize']}",
                f"{sum(steps) / len(steps):.2f}", f"{record.get('total_seconds', 0):.1f}s",
                format_bytes(record.get("peak_memory", 0)), key=str(index))

    def selected_record(self) -> dict | None:
        if not self.records or not 0 <= self.cursor_row < len(self.records):
            return None
        return self.records[self.cursor_row]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
