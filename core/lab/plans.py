"""Mixed-precision plans: the bits each transformer layer gets, as a JSON file.

A plan is a JSON file:

    {"format": 1, "model": "...", "group_size": 64,
     "layers": {"transformer_blocks.0.ff.linear_in": 6, "transformer_blocks.0.attn.to_q": "3:hqq:32", ...},
     "average_bits": 4.5, "transformer_bytes": 123456789, "made_by": "auto:4.5", ...}

Each layer gets a precision spec (core/quant/spec.py): bare bits are round-to-nearest in groups of
the plan's `group_size` (64 unless it says otherwise), a string names the method and group too.
Layers a plan does not name stay in full precision. Loading a plan checks its format and every
spec; applying it to a model checks that every layer it names exists in that model's transformer
and is one the layer policy quantizes (a one-line error names the first that is not).

Budgets a plan is made under are in core/lab/budgets.py, its byte counts in core/lab/layer_bytes.py,
the search that makes one in core/lab/planner.py.
"""

from __future__ import annotations

import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn

from ..atomic import write_json
from ..errors import InvalidRequest
from ..json_text import parse_json
from ..quant import (GROUP_SIZE, GROUP_SIZES, SPEC_HELP, SUPPORTED_BITS, LayerPolicy, QuantSpec, as_spec,
                     overhead_bits, parse_spec, precision_label)
from .layer_bytes import as_loaded_bytes, average_bits, default_policy, quantizable_layers

PLAN_FORMAT = 1
PLAN_LINE_BYTES = 11  # '    "' + '": ' + one digit + ',\n' around each layer path of an indented plan
# The largest plan file read. A plan names each layer of one transformer once: the largest models' plans are about
# 100 KB. A larger file is the wrong one (or a generated monster, read twice, took half a minute to refuse).
MAX_PLAN_BYTES = 16 << 20


@dataclass
class QuantPlan:
    layers: dict[str, QuantSpec]  # ints are accepted and read as round-to-nearest in groups of 64
    model: str = ""
    average_bits: float | None = None
    transformer_bytes: int | None = None
    made_by: str = ""
    dtype: str | None = None  # compute dtype the byte count assumes
    sensitivity: dict = field(default_factory=dict)  # how it was measured (method, granularity, probe...)
    search: dict = field(default_factory=dict)  # the search's outcome on the probe (see planner.py)

    def __post_init__(self):
        self.layers = {path: as_spec(spec) for path, spec in self.layers.items()}

    @property
    def label(self) -> str:
        precision = precision_label(self.layers)
        return f"{precision} ({self.made_by})" if self.made_by else precision

    def histogram(self) -> dict[str, int]:
        """spec ('4', '3:hqq:32') -> number of layers, fewest bits first."""
        counts: dict[QuantSpec, int] = {}
        for spec in self.layers.values():
            counts[spec] = counts.get(spec, 0) + 1
        return {str(spec): n for spec, n in sorted(counts.items())}

    def to_dict(self) -> dict:
        data = {"format": PLAN_FORMAT, "model": self.model, "group_size": GROUP_SIZE,
                "layers": {path: spec.to_json() for path, spec in self.layers.items()},
                "average_bits": self.average_bits,
                "transformer_bytes": self.transformer_bytes, "made_by": self.made_by}
        if self.dtype:
            data["dtype"] = self.dtype
        if self.sensitivity:
            data["sensitivity"] = dict(self.sensitivity)
        if self.search:
            data["search"] = dict(self.search)
        return data

    def save(self, path: Path | str, overwrite: bool = True) -> Path:
        """Write the plan as JSON, atomically (temporary file beside it, then rename)."""
        return write_json(Path(path), self.to_dict(), overwrite)

    def summary_lines(self, top: int | None = None) -> list[str]:
        hist = ", ".join(f"{parse_spec(s).label} x{n}" for s, n in self.histogram().items())
        lines = [f"plan for {self.model or 'unknown model'}: {self.label}", f"{len(self.layers)} layers ({hist})"]
        if self.average_bits is not None:
            groups = sorted({s.group_size for s in self.layers.values()})
            overhead = "/".join(f"{overhead_bits(g):g}" for g in groups)
            lines.append(f"average {self.average_bits:.3f} bits per quantized weight "
                         f"(+{overhead} for scales and biases)")
        if self.transformer_bytes is not None:
            from ..memory import format_bytes
            lines.append(f"transformer {format_bytes(self.transformer_bytes)}"
                         + (f" at {self.dtype}" if self.dtype else ""))
        if all(self.search.get(key) is not None for key in ("psnr_db", "start_psnr_db", "start_bits")):
            lines.append(f"probe pictures: {self.search['psnr_db']:.2f} dB PSNR against full precision, uniform "
                         f"{self.search['start_bits']}-bit {self.search['start_psnr_db']:.2f} dB "
                         f"({self.search.get('trades', 0)} trades kept, {self.search.get('draws', 0)} pictures drawn)")
        shown = list(self.layers.items()) if top is None else list(self.layers.items())[:top]
        width = max((len(p) for p, _ in shown), default=0)
        lines += [f"  {p:<{width}}  {s}" for p, s in shown]
        if top is not None and len(self.layers) > top:
            lines.append(f"  ... and {len(self.layers) - top} more")
        return lines


def plan_from_dict(data: object, source: str = "plan") -> QuantPlan:
    """Validate a plan document; every problem is a one-line InvalidRequest."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{source}: not a quantbench plan (expected a JSON object)")
    if data.get("format") != PLAN_FORMAT:
        raise InvalidRequest(f"{source}: unknown plan format {data.get('format')!r} (this quantbench reads "
                             f"format {PLAN_FORMAT})")
    group_size = data.get("group_size", GROUP_SIZE)
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise InvalidRequest(f"{source}: group size {group_size!r} is not supported (quantbench quantizes in "
                             f"groups of {', '.join(map(str, GROUP_SIZES))})")
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise InvalidRequest(f"{source}: the plan names no layers (expected \"layers\": {{path: bits or spec}})")
    specs = {}
    for path, value in layers.items():
        if isinstance(value, int) and not isinstance(value, bool) and value in SUPPORTED_BITS:
            specs[str(path)] = QuantSpec(value, int(group_size))
        elif isinstance(value, str):
            try:
                specs[str(path)] = parse_spec(value)
            except InvalidRequest as error:
                raise InvalidRequest(f"{source}: layer {path}: {error}") from None
            if specs[str(path)] is None:
                raise InvalidRequest(f"{source}: layer {path}: bf16 is not a quantization (leave the layer out)")
        else:
            raise InvalidRequest(f"{source}: layer {path}: unsupported bits {value!r} ({SPEC_HELP})")
    search = _described(data, "search", dict, source) or {}
    for key, whole in (("psnr_db", False), ("start_psnr_db", False), ("start_bits", False), ("trades", True),
                       ("draws", True)):  # what `plan show` prints of the search
        _described(search, key, int if whole else float, f"{source}: search")
    return QuantPlan(layers=specs, model=str(data.get("model", "")),
                     average_bits=_described(data, "average_bits", float, source),
                     transformer_bytes=_described(data, "transformer_bytes", int, source),
                     made_by=str(data.get("made_by", "")), dtype=_described(data, "dtype", str, source),
                     sensitivity=dict(_described(data, "sensitivity", dict, source) or {}), search=dict(search))


def _described(data: dict, key: str, kind: type, source: str):
    """A field that describes the plan (not one the quantization reads), checked for `plan show` to print: None
    when absent; a wrong type is one line (it raised from the printing: "bad operand type for abs(): 'str'")."""
    value = data.get(key)
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {float: number and math.isfinite(value) and value >= 0,
            int: number and isinstance(value, int) and value >= 0}.get(kind, isinstance(value, kind))
    if not fits:
        expected = {float: "a number", int: "a whole number", str: "text", dict: "an object"}[kind]
        raise InvalidRequest(f"{source}: {key} is {reprlib.repr(value)}, expected {expected} (or leave it out)")
    return value


def load_plan(path: Path | str) -> QuantPlan:
    path = Path(path)
    if not path.is_file():  # a folder or a FIFO named as a plan once said "no such plan file"
        raise InvalidRequest(f"{path}: " + ("no such plan file" if not path.exists() else
                                            "a folder, not a plan file" if path.is_dir() else
                                            "not a regular file: give a plan file (.json)"))
    try:
        if (size := path.stat().st_size) > MAX_PLAN_BYTES:
            raise InvalidRequest(f"{path}: {size:,} bytes is too large for a quantbench plan (at most "
                                 f"{MAX_PLAN_BYTES:,}: a plan names each transformer layer once): is it the right file?")
        data = parse_json(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"{path}: not a quantbench plan (not valid JSON)") from None
    except OSError as exc:
        raise InvalidRequest(f"{path}: the plan cannot be read ({exc.strerror or exc})") from None
    return plan_from_dict(data, str(path))


def check_plan_layers(plan: QuantPlan | Mapping[str, QuantSpec | int], transformer: nn.Module, source: str = "plan",
                      policy: LayerPolicy | None = None) -> None:
    """Every layer the plan names must exist in `transformer` and be one the policy quantizes."""
    policy = policy or default_policy(transformer)
    layers = plan.layers if isinstance(plan, QuantPlan) else plan
    candidates = {path: m for path, m in transformer.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    for path, spec in layers.items():
        module = candidates.get(path)
        if module is None:
            raise InvalidRequest(f"{source}: layer '{path}' is not a layer of this model's transformer")
        reason = policy.full_precision_reason(path, module, as_spec(spec).group_size)
        if reason is not None:
            raise InvalidRequest(f"{source}: layer '{path}' stays in full precision ({reason}); remove it from "
                                 "the plan")


def describe_for_model(plan: QuantPlan, transformer: nn.Module, dtype: mx.Dtype | None = None,
                       source_dtypes: Mapping[str, str] | None = None,
                       policy: LayerPolicy | None = None) -> QuantPlan:
    """The plan checked against `transformer` (unquantized, or a structure from transformer_structure), with
    its average bits and bytes recomputed for it at `dtype` (default: the engine's compute dtype here)."""
    from ..generation import default_compute_dtype, dtype_name
    check_plan_layers(plan, transformer, policy=policy)
    dtype = dtype or default_compute_dtype()
    sizes = quantizable_layers(transformer, policy)
    nbytes = as_loaded_bytes(transformer, plan.layers, dtype, source_dtypes, policy)
    return QuantPlan(dict(plan.layers), plan.model, round(average_bits(plan.layers, sizes), 4),
                     nbytes, plan.made_by, dtype_name(dtype), plan.sensitivity, plan.search)


def plan_file_bytes(transformer: nn.Module) -> int:
    """The least a plan file for `transformer` takes (QuantPlan.save): one indented '"path": BITS,' line for each
    layer the policy quantizes (a plan names them all). Checked against its disk before a search."""
    return sum(len(path) + PLAN_LINE_BYTES for path in quantizable_layers(transformer))


def is_plan_path(value: str) -> bool:
    """Whether a --quantize or --precisions value names a plan file rather than a precision."""
    text = str(value)
    return text.lower().endswith(".json") or (os.sep in text and Path(text).is_file())
