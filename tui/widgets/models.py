"""The catalog: every model with its size, distilled or base, and whether its weights are here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from quantbench.core.catalog import CatalogEntry, all_entries, precision_label
from quantbench.core.errors import printable


@dataclass(frozen=True)
class ModelRow:
    key: str  # what the engine loads: a built-in name, a repo id or a folder
    title: str
    entry: CatalogEntry | None
    weights: str  # where the weights are, or "not downloaded"


def weights_location(entry: CatalogEntry) -> str:
    if entry.family == "builtin":
        return "built in" if entry.shipped else "not shipped yet"
    if entry.repo is None:
        return "unknown"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.repo, "model_index.json")
    return "in the HF cache" if isinstance(cached, str) else "not downloaded"


def model_rows(extra: list[str] | None = None) -> list[ModelRow]:
    """The catalog's models, after the local folders in `extra`. A folder named as a row already is (`--model demo`
    or `--model black-forest-labs/FLUX.2-klein-4B` in a folder holding one of that name) is that row, once: two
    options of one key stopped the workbench from starting (Textual's DuplicateID)."""
    rows = [ModelRow(e.id if e.family == "builtin" else (e.repo or e.id), e.name, e, weights_location(e))
            for e in all_entries()]
    keys = {row.key for row in rows}
    for folder in extra or []:
        if folder not in keys:
            rows.insert(0, ModelRow(folder, f"local: {Path(folder).name}", None, "local folder"))
            keys.add(folder)
    return rows


def _label(row: ModelRow) -> Text:
    entry = row.entry
    kind = "" if entry is None else ("distilled" if entry.distilled else "base")
    size = "" if entry is None or entry.download_gb is None else _download_size(entry.download_gb)
    style = "bold" if row.weights in ("built in", "in the HF cache", "local folder") else ""
    details = " · ".join(part for part in (kind, size, row.weights) if part)
    text = Text(printable(row.title), style=style)  # a folder named with an ESC in it is shown, not obeyed
    text.append(f"\n  {details}", style="dim")
    if entry is not None and not entry.runnable:
        text.append(" · engine to come", style="dim italic")
    return text


def describe(row: ModelRow) -> str:
    entry = row.entry
    if entry is None:
        return f"{row.key}\nweights: {row.weights}"
    guidance = {"none": "guidance distilled into the weights, no negative prompt",
                "embedded": "embedded guidance (one pass)", "true-cfg": "true CFG with a negative prompt"}
    lines = [entry.name, f"repo: {entry.repo or 'ships with quantbench'}",
             f"{'distilled' if entry.distilled else 'base'}: {guidance.get(entry.guidance, entry.guidance)}",
             f"default: {entry.default_steps} steps, guidance {entry.default_guidance:g}, "
             f"{entry.default_size[0]}x{entry.default_size[1]}",
             f"precisions: {', '.join(precision_label(p) for p in entry.precisions)}",
             f"licence: {entry.licence}{' (gated)' if entry.gated else ''}",
             f"weights: {row.weights}"]
    if row.weights == "not downloaded" and entry.runnable:  # the workbench never downloads: say what does
        lines[-1] += f" (fetch it: quantbench download --model {entry.id})"
    if not entry.runnable:
        lines.append("quantbench cannot run this family yet")
    return "\n".join(lines)


class ModelsPane(Vertical):
    BORDER_TITLE = "Models"

    def __init__(self, rows: list[ModelRow], **kwargs):
        super().__init__(**kwargs)
        self.rows = rows

    def compose(self) -> ComposeResult:
        yield OptionList(*[Option(_label(r), id=r.key) for r in self.rows], id="model-list")
        yield Static(id="model-details", markup=False)  # names and paths as written: "[/]" is no markup

    def row(self, key: str) -> ModelRow | None:
        return next((r for r in self.rows if r.key == key), None)

    def highlight(self, key: str) -> None:
        option_list = self.query_one(OptionList)
        for index, row in enumerate(self.rows):
            if row.key == key:
                option_list.highlighted = index
        self.show_details(key)

    def show_details(self, key: str) -> None:
        row = self.row(key)
        if row is not None:
            self.query_one("#model-details", Static).update(describe(row))


def _download_size(gb: float) -> str:
    """Published (decimal) sizes as the model pages show them: 34 GB, 7.3 MB."""
    return f"{gb:g} GB" if gb >= 1 else f"{gb * 1000:.1f} MB"
