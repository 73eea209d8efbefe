"""The workbench's recommendations table: at the pane's width, the figures and verdicts are never cut, and a
model's name is never cut either: one too long for its column goes on after a hyphen on the next line."""

import pytest
from rich.console import Console

from quantbench.core.recommend import budget_from_gb, recommend
from quantbench.tui.widgets.hardware import advice_table


def table_rows(lines: list[str]) -> list[list[str]]:
    """The table's rows as their cells; a line holding only the rest of a name continues the row above."""
    rows = []
    for line in lines:
        cells = line.split()
        if rows and len(cells) == 1 and rows[-1][0].endswith("-"):
            rows[-1][0] += cells[0]
        elif cells:
            rows.append(cells)
    return rows


@pytest.mark.parametrize("ram_gb", [8, 24, 64])
@pytest.mark.parametrize("width", [36, 38, 60])  # the pane's text at 160x48 (38), a little less, and wider
def test_every_name_peak_and_verdict_is_shown_whole_at_the_panes_width(ram_gb, width):
    """At 160x48 the names were cut at the end: qwen-image-2.1 and its Turbo both read "qwen-image-…", as did
    klein-4b-base and klein-9b-base ("klein-4b-ba…")."""
    recommendation = recommend(budget=budget_from_gb(ram_gb), backend="cpu")
    console = Console(width=width, record=True, color_system=None)
    console.print(advice_table(recommendation))
    lines = console.export_text().splitlines()[1:]  # under the header
    rows = table_rows(lines)
    assert [row[0] for row in rows] == [advice.entry.id for advice in recommendation.advice]
    for row, advice in zip(rows, recommendation.advice):
        assert "…" not in " ".join(row), row
        assert " ".join(row).endswith(advice.status), row
    assert all(len(line) <= width for line in lines)
