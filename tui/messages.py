"""Every message the engine worker sends to the UI, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from quantbench.core.generation import StepInfo

from .session import RunOutcome


@dataclass
class RunStarted(Message):
    steps: int


@dataclass
class ModelLoading(Message):
    model: str


@dataclass
class StepReported(Message):
    """Posted after every step; the app keeps the latest and redraws on its own clock (coalescing)."""

    step: StepInfo


@dataclass
class RunFinished(Message):
    outcome: RunOutcome


@dataclass
class RunFailed(Message):
    reason: str


@dataclass
class RunCancelled(Message):
    pass


# ---------------------------------------------------------------- Compare precisions (tui/widgets/compare.py)


@dataclass
class CompareStatus(Message):
    """What the comparison is doing now (loading, quantizing q4, generating ...)."""

    text: str


@dataclass
class CompareRowDone(Message):
    """One precision finished: its picture and its row of the table (core.lab.compare.PrecisionRow)."""

    row: object


@dataclass
class CompareFinished(Message):
    report: object  # core.lab.compare.CompareReport


@dataclass
class CompareFailed(Message):
    reason: str
    cancelled: bool = False
