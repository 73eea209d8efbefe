"""What `compare --precisions` accepts: uniform precisions ('bf16' or 'unquantized' for none, '4', '3:hqq:32'), budgets
('auto:4.5', 'auto:2.5:hqq', 'auto:2GB') and plan files, the unquantized reference always first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequest
from ..quant import UNQUANTIZED, QuantSpec, all_methods, get_method, parse_spec
from .budgets import Budget, parse_budget
from .plans import QuantPlan, is_plan_path, load_plan

DEFAULT_PRECISIONS = (UNQUANTIZED, "8", "6", "5", "4", "3")


@dataclass
class PrecisionSpec:
    """One entry of --precisions: 'unquantized' (or 'bf16'), '4', '3:hqq:32', 'auto:4.5', 'auto:2.5:hqq', 'auto:2GB' or a plan file."""

    text: str
    bits: QuantSpec | None = None  # a uniform precision
    budget: Budget | None = None
    plan: QuantPlan | None = None

    @property
    def is_reference(self) -> bool:
        return self.bits is None and self.budget is None and self.plan is None

    @property
    def calibrates(self) -> bool:
        """Whether making this precision runs a calibration first (its method, or one of its plan's, needs one)."""
        methods = ([self.bits.method] if self.bits is not None else [self.budget.method] if self.budget is not None
                   else [spec.method for spec in self.plan.layers.values()] if self.plan is not None else [])
        return any(get_method(method).needs_calibration for method in methods)

    @property
    def label(self) -> str:
        if self.is_reference:
            return UNQUANTIZED  # computed in the compute dtype (float32 on the CPU), whatever word asked for it
        if self.bits is not None:
            return f"q{self.bits}"
        if self.budget is not None:
            return self.budget.label
        return Path(self.text).name


def parse_precisions(value: str | list[str] | tuple[str, ...]) -> list[PrecisionSpec]:
    """Comma-separated precisions; the full-precision reference always comes first (added if absent)."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not items:
        raise InvalidRequest("no precisions given: e.g. --precisions unquantized,8,6,5,4,3")
    specs: list[PrecisionSpec] = []
    for item in items:
        item = str(item)
        if item.lower().startswith("auto:"):
            spec = PrecisionSpec(item, budget=parse_budget(item))
        elif is_plan_path(item):
            spec = PrecisionSpec(item, plan=load_plan(item))
        else:
            try:
                spec = PrecisionSpec(item, bits=parse_spec(item))
            except InvalidRequest as error:
                raise InvalidRequest(f"{error}; or auto:BITS (e.g. auto:4.5), auto:SIZE (e.g. auto:2GB) or a plan "
                                     "file (.json)") from None
        if any(s.label == spec.label for s in specs):
            continue
        specs.append(spec)
    reference = [s for s in specs if s.is_reference]
    return (reference or [PrecisionSpec(UNQUANTIZED)]) + [s for s in specs if not s.is_reference]


def spec_calibrates(quantize) -> bool:
    """Whether a --quantize value (a precision, auto:BITS[:METHOD] or a plan file) calibrates; False for one that does
    not parse (whoever parses it for the run says why)."""
    if quantize is None:
        return False
    try:
        return parse_precisions([str(quantize)])[-1].calibrates
    except InvalidRequest:
        return False


def refuse_unused_calibration_prompts(prompts_file, precisions: list[PrecisionSpec]) -> None:
    """Calibration prompts where no precision given calibrates would be silently ignored: one line instead."""
    if prompts_file is not None and not any(p.calibrates for p in precisions):
        given = ", ".join(p.text for p in precisions if not p.is_reference) or "no quantization"
        methods = " and ".join(name for name, method in all_methods().items() if method.needs_calibration)
        raise InvalidRequest(f"--calibration-prompts {prompts_file}: nothing here calibrates ({given}); only "
                             f"{methods} do, e.g. 4:gptq or auto:3:gptq")
