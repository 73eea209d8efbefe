"""This machine, and what it can run: the engine's memory model turned into advice."""

from __future__ import annotations

from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from quantbench.core.cpu_blas import blas_status
from quantbench.core.memory import format_bytes
from quantbench.core.memory_model import default_dtype
from quantbench.core.recommend import COMFORTABLE_FRACTION


def hardware_summary(hw) -> str:
    def known(value, fmt=format_bytes):
        return "unknown" if value is None else fmt(value)

    pressure = hw.memory_pressure or "unknown"
    lines = [f"{hw.chip or 'unknown chip'} · MLX {hw.mlx_version or '?'} on {hw.backend}"
             + (f" ({blas_status().blas} BLAS)" if hw.backend == "cpu" else ""),
             f"RAM {known(hw.total_ram)} · available {known(hw.available_ram)} · swap used {known(hw.swap_used)}",
             f"memory pressure: {pressure}"]
    if hw.recommended_working_set:
        lines.append(f"Metal working set: {format_bytes(hw.recommended_working_set)}")
    return "\n".join(lines)


STATUS_STYLE = {"fits": "green", "tight": "yellow", "too big": "dim red", "not shipped": "dim"}


class ModelName:
    """A model id that wraps after a hyphen when its column is narrow ("klein-4b-" / "base"): cut with an
    ellipsis, klein-4b-base and klein-9b-base (or qwen-image-2.1 and its Turbo) read the same."""

    def __init__(self, name: str):
        self.name = name

    def __rich_measure__(self, console, options) -> Measurement:
        return Measurement(min(len(self.name), max(map(len, _pieces(self.name)))), len(self.name))

    def __rich_console__(self, console, options):
        yield Text("\n".join(wrap_at_hyphens(self.name, options.max_width)), no_wrap=True)


def _pieces(name: str) -> list[str]:
    return [piece + "-" for piece in name.split("-")[:-1]] + [name.split("-")[-1]]


def wrap_at_hyphens(name: str, width: int) -> list[str]:
    """`name` in lines of at most `width`, broken after hyphens (a longer piece is broken where it must)."""
    lines = [""]
    for piece in _pieces(name):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
        while len(lines[-1]) > width > 0:
            lines[-1:] = [lines[-1][:width], lines[-1][width:]]
    return lines


def advice_table(recommendation) -> Table:
    table = Table(box=None, expand=True, pad_edge=False, header_style="bold")
    # The model's name gives way when the pane is narrow; the figures and the verdict never do.
    table.add_column("model", no_wrap=True, min_width=10, ratio=1)
    table.add_column("best", no_wrap=True, min_width=4)
    table.add_column("peak", no_wrap=True, justify="right", min_width=len("888.88 MB"))
    table.add_column("fit", no_wrap=True, min_width=len("too big"))
    for advice in recommendation.advice:
        peak = format_bytes(advice.prediction.generation_peak) if advice.prediction else "-"
        table.add_row(ModelName(advice.entry.id), advice.precision if advice.plan else "-", peak,
                      Text(advice.status, style=STATUS_STYLE.get(advice.status, "")))
    return table


def assumptions(recommendation) -> Text:
    """What the figures assume: the compute dtype and backend the engine uses on this machine."""
    dtypes = sorted({a.plan.dtype for a in recommendation.advice if a.plan}) or [default_dtype(recommendation.backend)]
    return Text(f"Peaks: {' or '.join(dtypes)} compute on {recommendation.backend} at each model's default size.",
                style="dim")


def fit_legend(budget) -> Text:
    """What "fits" and "tight" mean on this machine."""
    share = (f"{COMFORTABLE_FRACTION:.0%} of RAM" if budget.comfortable == int(COMFORTABLE_FRACTION * budget.ram)
             else budget.tight_rule)
    text = Text()
    text.append("fits", style=STATUS_STYLE["fits"])
    text.append(f" ≤ {format_bytes(budget.comfortable)} ({share}). ")
    text.append("tight", style=STATUS_STYLE["tight"])
    text.append(f" ≤ {format_bytes(budget.tight)} ({budget.tight_rule}): close other apps, or it swaps.")
    return text


def advice_notes(advice) -> Text:
    """Why, for one model: the quality note and every warning."""
    text = Text(f"{advice.entry.id}: ", style="bold")
    if advice.quality:
        text.append(f"{advice.quality.label}. {advice.quality.note}")
    for warning in advice.warnings:
        text.append(f"\n- {warning}", style="yellow")
    return text


class HardwarePane(VerticalScroll):
    """Scrolls: the table, what "fits" means and the chosen model's notes outgrow the pane at 160x48 and 80x24."""

    BORDER_TITLE = "Hardware & recommendations"

    def compose(self):
        yield Static(id="hardware-text")

    def update(self, renderable) -> None:
        # No text to update once the workbench is closing: the hardware worker may finish just then.
        for text in self.query("#hardware-text").results(Static):
            text.update(renderable)

    def show(self, hw, recommendation, model_id: str | None = None) -> None:
        self.hardware, self.recommendation = hw, recommendation
        self.show_model(model_id)

    def show_model(self, model_id: str | None) -> None:
        if getattr(self, "recommendation", None) is None:
            return
        advice = next((a for a in self.recommendation.advice if a.entry.id == model_id), None)
        recommendation = self.recommendation
        parts = [Text(hardware_summary(self.hardware)), assumptions(recommendation), advice_table(recommendation),
                 fit_legend(recommendation.budget)]
        if advice is not None:
            parts.append(advice_notes(advice))
        self.update(Group(*parts))
