"""Option types shared by every command: each value is checked as it is parsed, by the engine's own rules
(core/generation.py), so a bad one is one line and exit 2 before anything loads."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

from quantbench.core import numbers
from quantbench.core.atomic import check_destination
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import check_dimension, check_scale, check_seed, check_steps, check_text
from quantbench.core.lora_request import parse_lora_option
from quantbench.core.quant import dequantized_budget as quant_dense_budget
from quantbench.core.reference_images import checked_reference


MODEL_HELP = "a built-in name (demo), a model as recommend names it (klein-4b), a diffusers-layout folder or a Hugging " \
             "Face repo id"


def _checked(parse: Callable[[str], object], check: Callable[[object], object]) -> Callable[[str], object]:
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError as exc:  # core/numbers.py's one line: "'1_0' is not a whole number"
            raise argparse.ArgumentTypeError(str(exc)) from None
        try:
            return check(value)
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


_whole = numbers.whole  # only what a user writes: no "1_0", " 10", "١٠", nan or inf (core/numbers.py)
_number = numbers.decimal


seed = _checked(_whole, check_seed)
steps = _checked(_whole, check_steps)
guidance = _checked(_number, lambda value: check_scale("guidance", value))
true_cfg = _checked(_number, lambda value: check_scale("true CFG", value))


lora = _checked(str, parse_lora_option)
reference_image = _checked(str, checked_reference)  # --image: the file's header read as the option is


def dimension(name: str) -> Callable[[str], int]:
    return _checked(_whole, lambda value: check_dimension(name, value))


def whole(lowest: int, highest: int, what: str = "value") -> Callable[[str], int]:
    def check(value: int) -> int:
        if not lowest <= value <= highest:
            raise InvalidRequest(f"{what} {value} is not allowed: use {lowest} to {highest}")
        return value
    return _checked(_whole, check)


# The benchmarks' --rounds (alternating rounds of every variant).
rounds = whole(1, 10_000, "--rounds")


def dequantized_budget(text: str) -> float:
    """--keep-dequantized: 'all' (math.inf) or a budget in GB (as quantbench prints them, 1024^3 bytes)."""
    try:
        return quant_dense_budget(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def number(lowest: float, highest: float, what: str = "value", above: bool = False) -> Callable[[str], float]:
    """A finite number in [lowest, highest] (or (lowest, highest] with `above`)."""
    def check(value: float) -> float:
        low_ok = value > lowest if above else value >= lowest
        if not (math.isfinite(value) and low_ok and value <= highest):
            bound = f"above {lowest:g} and at most" if above else f"from {lowest:g} to"
            raise InvalidRequest(f"{what} {value:g} is not allowed: use a number {bound} {highest:g}")
        return value
    return _checked(_number, check)


def text(name: str) -> Callable[[str], str]:
    """A prompt: UTF-8 (the shell passes other bytes through as surrogates) and not empty."""
    def convert(value: str) -> str:
        try:
            check_text(name, value)
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return convert


def report_file(value: str) -> Path:
    """A file a long run writes (or rewrites) at its end, a benchmark's report: checked now, as the option is
    read, so that a destination it could never write fails at once rather than after the run."""
    path = Path(value)
    try:
        check_destination(path, overwrite=True)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path
