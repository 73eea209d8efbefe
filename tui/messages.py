"""Every message the engine's workers send to the UI, in one place.

A run's end is not a message: the app hears it as its worker's Worker.StateChanged (SUCCESS with the
result, ERROR with the exception, CANCELLED), and tells a Compare view with CompareFinished or
CompareFailed.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from quantbench.core.generation import StepInfo


@dataclass
class ModelLoading(Message):
    model: str
    component: str = ""  # one component loaded during the run ("text encoder", "transformer"); "": the model
    done: bool = False  # that component is loaded


@dataclass
class RunWarning(Message):
    """What the user should know before the run's end: a prompt longer than the text encoder reads."""

    warning: str


@dataclass
class Calibrating(Message):
    """A method that calibrates (gptq, awq) is sampling the prompts or quantizing block i of N."""

    progress: object  # core.quant.calibration.CalibrationProgress


@dataclass
class StepReported(Message):
    """Posted after every step; the app keeps the latest and redraws on its own clock (coalescing)."""

    step: StepInfo


# ---------------------------------------------------------------- Compare precisions (tui/widgets/compare.py)


@dataclass
class CompareStatus(Message):
    """What the comparison is doing now (loading, quantizing q4, generating ...)."""

    text: str


@dataclass
class CompareRowDone(Message):
    """One precision finished: its picture and its row of the table (core.lab.compare_report.PrecisionRow)."""

    row: object


@dataclass
class CompareFinished(Message):
    report: object  # core.lab.compare_report.CompareReport


@dataclass
class CompareFailed(Message):
    reason: str
    cancelled: bool = False
