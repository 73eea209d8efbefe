"""Past runs: settings, timings and peak memory; select one to reopen its image or rerun it.

The columns fit the pane: short cells (a time today, a date before; the catalog's short model name;
numbers right-aligned), and the prompt takes what is left, truncated first. When even a short prompt
does not fit, the table scrolls sideways and its border says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual.widgets import DataTable

from quantbench.core.catalog import find_entry
from quantbench.core.errors import printable

MAX_ROWS = 1000  # the newest; the file keeps every run
MIN_PROMPT = 12
MODEL_WIDTH = 10
COMPUTE_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SPEC = re.compile(r"\d+(:[a-z]+(:\d+)?)?")  # BITS[:METHOD[:GROUP]], as a run's record names its precision


@dataclass(frozen=True)
class Column:
    label: str
    cell: Callable[[dict], str]
    numeric: bool = False  # right-aligned


def when(record: dict) -> str:
    moment = time.localtime(record["time"])
    return time.strftime("%H:%M" if moment[:3] == time.localtime()[:3] else "%m-%d", moment)


def model_name(record: dict) -> str:
    """The catalog's short id for a repo (klein-4b), else the folder's or repo's last part."""
    model = str(record["model"])
    entry = find_entry(model)
    return _truncate(entry.id if entry is not None else Path(model).name or model, MODEL_WIDTH)


def precision(record: dict) -> str:
    """q4 or q3:hqq:32 for a quantized transformer, plan for a mixed one; unquantized, the compute dtype
    the weights ran in (f32 on the CPU), as the record says."""
    bits = record.get("quantize")
    if bits is None:
        return COMPUTE_DTYPES.get(record.get("dtype"), "full")
    return f"q{bits}" if isinstance(bits, int) or SPEC.fullmatch(str(bits)) else "plan"


def seconds_per_step(record: dict) -> str:
    steps = record.get("step_seconds") or []
    return _seconds(sum(steps) / len(steps), unit="") if steps else "-"


def total(record: dict) -> str:
    value = record.get("total_seconds")
    return "-" if value is None else _seconds(value)


def peak(record: dict) -> str:
    """MLX's peak, in the binary units used everywhere in the workbench (1 GB = 2^30 bytes)."""
    value = record.get("peak_memory")
    if value is None:
        return "-"
    return f"{value / 2**30:.1f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


COLUMNS = (
    Column("when", when),
    Column("model", model_name),
    # an edit (reference images) says so before its prompt
    Column("prompt", lambda r: ("[ref] " if r.get("reference_images") else "") + " ".join(str(r["prompt"]).split())),
    Column("seed", lambda r: str(r.get("seed", "")), numeric=True),
    Column("steps", lambda r: str(r.get("steps", "")), numeric=True),
    Column("bits", lambda r: precision(r) + ("+LoRA" if r.get("loras") else "")),
    Column("s/step", seconds_per_step, numeric=True),
    Column("total", total, numeric=True),
    Column("peak", peak, numeric=True),
)
PROMPT = 2  # the column that gives way


class HistoryTable(DataTable):
    BORDER_TITLE = "History"

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.cell_padding = 0  # one space between columns, added below: the pane is narrow
        self.records: list[dict] = []  # newest first, as shown
        self._cells: list[list[str]] = []
        self._laid_out_for = -1

    def add_record(self, record: dict) -> None:
        """The new run on top. A run the user selected further down stays selected (ctrl+r reran the one above it);
        on the top row, the cursor stays on the newest run."""
        below = self.cursor_row + 1 if self.records and self.cursor_row > 0 else 0
        self.set_records([record, *self.records])
        self.move_cursor(row=min(below, len(self.records) - 1))

    def set_records(self, records: list[dict]) -> None:
        self.records = list(records)[:MAX_ROWS]
        # printable: an ESC in a prompt or model name (typed, or in a history line from elsewhere) reached the terminal
        self._cells = [[printable(column.cell(record)) for column in COLUMNS] for record in self.records]
        self._lay_out()

    def selected_record(self) -> dict | None:
        if not self.records or not 0 <= self.cursor_row < len(self.records):
            return None
        return self.records[self.cursor_row]

    def on_resize(self) -> None:
        if self._available_width() != self._laid_out_for:
            self._lay_out()

    def _available_width(self) -> int:
        # Less the vertical scrollbar, always: its arrival with the rows must not push a column off.
        return self.size.width - self.styles.scrollbar_size_vertical

    def _lay_out(self) -> None:
        available = self._available_width()
        widths = [max([len(column.label)] + [cell_len(row[i]) for row in self._cells])
                  for i, column in enumerate(COLUMNS)]
        others = sum(widths) - widths[PROMPT] + len(COLUMNS) - 1
        widths[PROMPT] = max(MIN_PROMPT, min(widths[PROMPT], available - others))
        overflow = others + widths[PROMPT] > available
        self.border_subtitle = "more columns: scroll right (shift+wheel or ←→)" if overflow else ""
        cursor = self.cursor_row
        self.clear(columns=True)
        last = len(COLUMNS) - 1
        for i, column in enumerate(COLUMNS):
            self.add_column(_pad(column.label, widths[i], column.numeric, i < last), key=column.label)
        for index, row in enumerate(self._cells):  # Text: a prompt's "[/]" or "[red]" is shown, not read as markup
            self.add_row(*[Text(_pad(_truncate(cell, widths[i]), widths[i], COLUMNS[i].numeric, i < last))
                           for i, cell in enumerate(row)], key=str(index))
        if self._cells:
            self.move_cursor(row=min(cursor, len(self._cells) - 1))
        self._laid_out_for = available


def _pad(text: str, width: int, numeric: bool, separated: bool) -> str:
    """`text` filled out to `width` cells (a Chinese character takes two: padded by characters, a Chinese prompt's
    cell came out twice its column's width and pushed the columns after it off the pane)."""
    fill = " " * (width - cell_len(text))
    cell = fill + text if numeric else text + fill
    return cell + " " if separated else cell


def _truncate(text: str, width: int) -> str:
    """`text` in at most `width` cells, "…" in the last where it is cut."""
    return text if cell_len(text) <= width else set_cell_size(text, width - 1).rstrip() + "…"


def _seconds(value: float, unit: str = "s") -> str:
    if value >= 60 and unit:
        return f"{int(value // 60)}m{int(value % 60):02d}"
    return f"{value:.2f}{unit}" if value < 10 else f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
