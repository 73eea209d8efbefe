"""A precision as three menus side by side: bits, method and group size, read as one spec BITS[:METHOD[:GROUP]].

The methods and sizes come from core/quant (a new method file shows up here by itself). The text encoder's
picker leaves out the methods that calibrate: calibration samples the transformer's inputs.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Select

from quantbench.core.errors import InvalidRequest
from quantbench.core.quant import QuantSpec, choices, parse_spec
from quantbench.core.quant.calibration import read_prompt_file
from quantbench.core.sources import user_path

FULL = "bf16"  # the spec word for no quantization; the menu says "full" (the compute dtype: float32 on the CPU)
CALIBRATION_PROMPTS_TIP = (f"The prompts a calibrating method "
                           f"({', '.join(m.name for m in choices().methods if m.calibrates)}) draws to calibrate the "
                           "transformer (--calibration-prompts): a UTF-8 text file, one prompt a line ('#' starts a "
                           "comment), at most 1 MB. Blank: the model's own prompts. Prompts like yours calibrate the "
                           "weights that draw them.")
CALIBRATION_PLACEHOLDER = "its own prompts, or a file"


def calibration_prompts(text: str) -> tuple[tuple[str, ...] | None, Path | None]:
    """A 'calibrate on' field as (its prompts, the file they were read from: absolute, so the history's rerun finds
    it from anywhere), read now, so that a bad file is one line before anything loads (InvalidRequest); (None, None)
    for a blank field: the model's own prompts."""
    if not text.strip():
        return None, None
    path = user_path(text.strip()).absolute()
    return tuple(read_prompt_file(path)), path


def method_options(calibrated: bool) -> list[tuple[str, str]]:
    """(label, name), round-to-nearest first; with `calibrated`, the methods that calibrate too."""
    return [(m.name, m.name) for m in choices().methods if calibrated or not m.calibrates]


def methods_tooltip(calibrated: bool) -> str:
    return "\n".join(f"{m.name}: {m.summary}" for m in choices().methods if calibrated or not m.calibrates)


class PrecisionPicker(Horizontal):
    """Bits, method, group. `spec` is what settings and history keep: None, bits, or '3:gptq:32'."""

    def __init__(self, *, calibrated: bool, id: str):
        super().__init__(id=id, classes="precision")
        self.calibrated = calibrated

    def compose(self) -> ComposeResult:
        offered = choices()
        bits = [("full", FULL)] + [(f"{b}-bit", str(b)) for b in offered.bits]
        yield Select(bits, value=FULL, allow_blank=False, compact=True, classes="bits")
        methods = Select(method_options(self.calibrated), value=offered.default.method, allow_blank=False,
                         compact=True, classes="method", disabled=True)
        methods.tooltip = methods_tooltip(self.calibrated)
        yield methods
        yield Select([(f"g{g}", g) for g in offered.group_sizes], value=offered.default.group_size,
                     allow_blank=False, compact=True, classes="group", disabled=True)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.has_class("bits"):
            quantized = event.value != FULL
            self.query_one(".method", Select).disabled = not quantized
            self.query_one(".group", Select).disabled = not quantized

    @property
    def method(self) -> str:
        return self.query_one(".method", Select).value

    @property
    def calibrates(self) -> bool:
        """Whether the chosen precision runs a calibration before the model loads."""
        return self.query_one(".bits", Select).value != FULL and any(
            m.calibrates for m in choices().methods if m.name == self.method)

    @property
    def spec(self) -> int | str | None:
        bits = self.query_one(".bits", Select).value
        if bits == FULL:
            return None
        spec = QuantSpec(int(bits), self.query_one(".group", Select).value, self.query_one(".method", Select).value)
        return parse_spec(spec).to_json()  # checked: what quantbench can make

    def showable(self, value) -> QuantSpec | None:
        """`value` (a history record's precision) as the menus would show it; raises InvalidRequest for one they
        cannot show (a plan), before anything on the form changes."""
        try:
            spec = parse_spec(value)
        except InvalidRequest:
            raise InvalidRequest(f"the menus cannot show the precision {value!r}: pick one") from None
        if spec is not None and spec.method not in dict(method_options(self.calibrated)).values():
            raise InvalidRequest(f"{spec.method} cannot quantize this component: pick another method")
        return spec

    @spec.setter
    def spec(self, value) -> None:
        """Show a spec (from a history record); raises InvalidRequest for one the menus cannot show (a plan)."""
        spec = self.showable(value)
        self.query_one(".bits", Select).value = FULL if spec is None else str(spec.bits)
        if spec is not None:
            self.query_one(".method", Select).value = spec.method
            self.query_one(".group", Select).value = spec.group_size
