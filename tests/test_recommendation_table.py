"""The workbench's recommendations table: at the pane's width, the figures and verdicts are never cut."""

import pytest
from rich.console import Console

from quantbench.core.recommend import budget_from_gb, recommend
from quantbench.tui.widgets.hardware import advice_table


@pytest.mark.parametrize("ram_gb", [8, 24, 64])
@pytest.mark.parametrize("width", [38, 60])
def test_every_peak_and_verdict_is_shown_whole_at_the_panes_width(ram_gb, width):
    recommendation = recommend(budget=budget_from_gb(ram_gb), backend="cpu")
    console = Console(width=width, record=True, color_system=None)
    console.print(advice_table(recommendation))
    lines = console.export_text().splitlines()[1:]  # under the header
    assert len(lines) == len(recommendation.advice)
    for line, advice in zip(lines, recommendation.advice):
        row = " ".join(line.split())
        assert "…" not in row.split(maxsplit=1)[-1], line  # only the model's name may be shortened
        assert row.endswith(advice.status), line
        assert len(line) <= width
