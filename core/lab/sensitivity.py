"""Which transformer layers quantization hurts most: quantize one at a time and look at the pictures.

For each layer the family's layer policy quantizes (or each block, with granularity "block": a double or
single transformer block, or one of the shared modulation and embedding layers), the layer is replaced
by its quantized version at `bits` (exactly what loading with --quantize would give it), the probe's
fixed pictures are drawn again (probe.py: whole sampling runs, decoded), compared with full precision,
and the layer is put back. The ranking is by that mean squared pixel error; `psnr_db` is the PSNR of
the pictures with only this unit quantized. With `uniform`, one more draw quantizes every unit at once.

Cost: one draw of the probe's pictures per unit, plus the reference and the uniform draw.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable

from ..distributed import split_runs, world
from ..errors import Cancelled, InvalidRequest
from ..generation import CancelToken, dtype_name
from ..quant import QuantSpec, as_spec, require_full_precision
from .layer_bytes import check_quantizable, fixed_bytes, quantizable_layers
from .structure import loaded_dtypes
from .probe import PictureProbe, probe_settings, psnr_of

GRANULARITIES = ("layer", "block")
DEFAULT_BITS = 4


@dataclass
class UnitSensitivity:
    name: str  # a layer path, or a block name ("transformer_blocks.3", "double_stream_modulation_img")
    layers: tuple[str, ...]
    elements: int
    error: float  # mean squared pixel error (0-255) with this unit alone quantized at the report's bits
    order: int = 0  # position in the model

    @property
    def psnr_db(self) -> float:
        return psnr_of(self.error)

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "params": self.elements, "error": self.error,
                "psnr_db": None if math.isinf(self.psnr_db) else round(self.psnr_db, 3), "order": self.order}

    @classmethod
    def from_dict(cls, data: dict) -> "UnitSensitivity":
        return cls(data["name"], tuple(data["layers"]), int(data["params"]), float(data["error"]),
                   int(data.get("order", 0)))


@dataclass
class SensitivityReport:
    model: str
    bits: int
    granularity: str
    group_size: int
    dtype: str
    width: int
    height: int
    steps: int
    prompts: list[str]
    seed: int
    units: list[UnitSensitivity]  # most sensitive first
    layer_sizes: dict[str, int]  # every quantizable layer: weights
    fixed_bytes: int  # bytes of what never quantizes, in the transformer as the engine loads it quantized
    uniform_error: float | None = None  # every unit quantized at once
    seconds: float = 0.0
    draws: int = 0  # pictures drawn
    method: str = "rtn"

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.method)

    @property
    def summed_error(self) -> float:
        return sum(u.error for u in self.units)

    def to_dict(self) -> dict:
        uniform_psnr = None if self.uniform_error is None else psnr_of(self.uniform_error)
        return {"model": self.model, "bits": self.bits, "method": self.method, "granularity": self.granularity,
                "group_size": self.group_size, "dtype": self.dtype, "width": self.width, "height": self.height,
                "steps": self.steps, "prompts": list(self.prompts), "seed": self.seed,
                "error": "mean squared pixel error on the 0-255 scale",
                "uniform_error": self.uniform_error,
                "uniform_psnr_db": None if uniform_psnr is None or math.isinf(uniform_psnr) else round(uniform_psnr, 3),
                "summed_error": self.summed_error, "fixed_bytes": self.fixed_bytes,
                "seconds": round(self.seconds, 3), "draws": self.draws, "layer_sizes": dict(self.layer_sizes),
                "units": [u.to_dict() for u in self.units]}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityReport":
        return cls(data["model"], int(data["bits"]), data["granularity"], int(data["group_size"]), data["dtype"],
                   int(data["width"]), int(data["height"]), int(data["steps"]), list(data["prompts"]),
                   int(data["seed"]), [UnitSensitivity.from_dict(u) for u in data["units"]],
                   {k: int(v) for k, v in data["layer_sizes"].items()}, int(data["fixed_bytes"]),
                   data.get("uniform_error"), float(data.get("seconds", 0)), int(data.get("draws", 0)),
                   str(data.get("method", "rtn")))

    def table_lines(self, top: int | None = None) -> list[str]:
        units = self.units if top is None else self.units[:top]
        width = max([len(u.name) for u in units] + [len(self.granularity)])
        lines = [f"{'rank':>4}  {self.granularity:<{width}}  {'params':>9}  {'pixel MSE':>10}  {'PSNR dB':>7}"]
        for rank, unit in enumerate(units, start=1):
            psnr = "inf" if math.isinf(unit.psnr_db) else f"{unit.psnr_db:.1f}"
            lines.append(f"{rank:>4}  {unit.name:<{width}}  {_params(unit.elements):>9}  {unit.error:>10.4f}  "
                         f"{psnr:>7}")
        if top is not None and len(self.units) > top:
            lines.append(f"      ... and {len(self.units) - top} more")
        return lines


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------

def block_of(path: str) -> str:
    """'transformer_blocks.3.attn.to_q' -> 'transformer_blocks.3'; 'double_stream_modulation_img.linear'
    -> 'double_stream_modulation_img'."""
    match = re.match(r"^([A-Za-z_]+\.\d+)\.", path)
    return match.group(1) if match else path.split(".")[0]


def make_units(sizes: dict[str, int], granularity: str) -> list[UnitSensitivity]:
    if granularity not in GRANULARITIES:
        raise InvalidRequest(f"unknown granularity '{granularity}': choose {' or '.join(GRANULARITIES)}")
    groups: dict[str, list[str]] = {}
    for path in sizes:
        groups.setdefault(path if granularity == "layer" else block_of(path), []).append(path)
    return [UnitSensitivity(name, tuple(paths), sum(sizes[p] for p in paths), 0.0, order=i)
            for i, (name, paths) in enumerate(groups.items())]


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------

def measure_sensitivity(pipeline, bits: QuantSpec | int = DEFAULT_BITS, granularity: str = "layer",
                        prompts: list[str] | None = None, seed: int = 0, size: int | None = None,
                        steps: int | None = None, model_name: str = "", uniform: bool = True,
                        progress: Callable[[int, int, str], None] | None = None,
                        cancel: CancelToken | None = None) -> SensitivityReport:
    """Quantize each unit of `pipeline`'s (full-precision) transformer alone at `bits` (a spec: bits, method,
    group size); rank by pixel error. The transformer is left exactly as it was (every unit is put back)."""
    spec = as_spec(bits)
    require_full_precision(pipeline.transformer)
    sizes = quantizable_layers(pipeline.transformer, group_size=spec.group_size)
    check_quantizable(sizes, spec.group_size)
    units = make_units(sizes, granularity)
    started = time.perf_counter()
    source, prompts, size, steps = probe_settings(pipeline, prompts, size, steps, model_name)
    total = len(units) + (1 if uniform else 0)
    with PictureProbe(pipeline, prompts, seed, size, steps, cancel) as probe:
        reference_draws, done = probe.draws, []

        def measure(i: int) -> dict:
            """One unit alone (or, last, every unit at once): its error and the pictures it took."""
            if cancel is not None and cancel.cancelled:
                raise Cancelled("cancelled")
            before = probe.draws
            layers = units[i].layers if i < len(units) else tuple(sizes)
            error = probe.error({path: spec for path in layers})
            done.append(i)
            if progress is not None:
                progress(len(done), len(world().mine(total)), units[i].name if i < len(units) else "all layers")
            return {"error": error, "draws": probe.draws - before}

        # Under mlx.launch the units are split across the ranks (each draws the reference pictures itself).
        measured = split_runs(total, measure, what="sensitivity",
                              label=lambda i: units[i].name if i < len(units) else "all layers")
        for unit, result in zip(units, measured):
            unit.error = result["error"]
        uniform_error = measured[-1]["error"] if uniform else None
        draws = reference_draws + sum(result["draws"] for result in measured)
    units.sort(key=lambda u: (-u.error, u.order))
    return SensitivityReport(
        model=source, bits=spec.bits, granularity=granularity, group_size=spec.group_size, method=spec.method,
        dtype=dtype_name(pipeline.dtype), width=size, height=size, steps=steps, prompts=prompts, seed=seed,
        units=units, layer_sizes=sizes,
        fixed_bytes=fixed_bytes(pipeline.transformer, pipeline.dtype, loaded_dtypes(pipeline),
                                group_size=spec.group_size),
        uniform_error=uniform_error, seconds=time.perf_counter() - started, draws=draws)
