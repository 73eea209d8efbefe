"""Mixed-precision plans by measured search: start from uniform bits, trade bits where the pictures improve.

Why not rank layers once and allocate greedily: on our built-in models, quantization errors do not add
up in pixels. Every layer quantized alone at 4 bits gives errors that sum to 2.7x what all of them
quantized together give, and moving one layer from 4 to 3 bits inside the 4-bit model costs 2 to 6x what
the same move costs on its own. Plans allocated from isolated measurements, even ones made on the
evaluation's own prompts, lost 0.6 to 1.6 dB against uniform 4-bit. So the plan is searched for where
it will run, and every step is checked by drawing the pictures:

1. Start from the most bits every unit can have under the budget (auto:4 -> uniform 4-bit) and draw
   the probe's pictures (probe.py).
2. Measure each unit in that context: the pictures with it one step up (4 -> 5) and one step down
   (4 -> 3), everything else unchanged. That is the unit's sensitivity where the plan will run.
3. Take the upgrades that helped, best gain per extra byte first. Pay for each with the downgrades that
   hurt least per byte saved (or with the budget's slack), draw the pictures with the trade made, and
   keep it only if the error went down.

So the plan's error on the probe is never above the uniform start's. Cost: 1 + 2 x units + (helpful
upgrades) draws of the probe's pictures. On the built-in models (36 layers, 6 prompts) that is about
90 draws, 516 pictures: 4 minutes for demo (20 steps with CFG) and 41 s for demo-turbo (4 steps) on two
CPU cores. A plan is made once and saved (`quantbench plan`), then reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..distributed import split_runs
from ..errors import Cancelled, InvalidRequest
from ..generation import CancelToken, dtype_name
from ..quant import SUPPORTED_BITS, QuantSpec, quantized_weight_bytes, require_full_precision
from ..quant.calibration import layer_statistics, needs_calibration
from .budgets import Budget, below_smallest
from .layer_bytes import average_bits, check_quantizable, fixed_bytes, plan_bytes, quantizable_layers
from .plans import QuantPlan
from .structure import loaded_dtypes
from .probe import PictureProbe, probe_settings, psnr_of
from .sensitivity import make_units

# Above this many quantizable layers, "auto" granularity searches over blocks (2 draws per unit).
MAX_LAYER_UNITS = 64
GRANULARITY_CHOICES = ("auto", "layer", "block")
LADDER = sorted(SUPPORTED_BITS)


def _step(bits: int, direction: int) -> int | None:
    index = LADDER.index(bits) + direction
    return LADDER[index] if 0 <= index < len(LADDER) else None


@dataclass
class SearchResult:
    bits: dict[str, int]  # unit -> bits
    start_bits: int
    start_error: float
    error: float
    evaluations: int
    moves: list[dict] = field(default_factory=list)  # accepted trades: {"up": unit, "to": bits, "down": [...]}


def search_plan(units: dict[str, int], budget: Budget, evaluate: Callable[[dict[str, int]], float],
                fixed: int = 0, keep: Callable[[dict[str, int]], None] | None = None,
                progress: Callable[[int, int, str], None] | None = None,
                cancel: CancelToken | None = None) -> SearchResult:
    """Search bits per unit ({unit: weights}) under `budget`; `evaluate({unit: bits})` is the error to lower.

    `fixed` is the bytes that never quantize (for memory budgets); `keep(config)` is told each
    configuration the search moves to (the probe keeps its quantized layers). Every unit is quantized
    with the budget's method and group size; only the bits vary."""
    if not units:
        raise InvalidRequest("this model's transformer has no layer that can be quantized")
    total = sum(units.values())

    def cost(name: str, bits: int) -> float:
        if budget.kind == "bits":
            return units[name] * bits
        return quantized_weight_bytes(units[name], budget.spec(bits))

    capacity = budget.value * total if budget.kind == "bits" else budget.value - fixed
    fitting = [b for b in LADDER if sum(cost(n, b) for n in units) <= capacity + 1e-9]
    if not fitting:
        smallest = fixed + sum(quantized_weight_bytes(n, budget.spec(LADDER[0])) for n in units.values())
        raise InvalidRequest(below_smallest(budget.value, smallest))
    start = fitting[-1]
    config = {name: start for name in units}
    used = sum(cost(n, start) for n in units)
    evaluations = 0

    def measure(candidate: dict[str, int]) -> float:
        nonlocal evaluations
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")
        evaluations += 1
        return evaluate(candidate)

    if keep:
        keep(config)
    current = start_error = measure(config)
    up_bits, down_bits = _step(start, +1), _step(start, -1)
    if up_bits is None:
        return SearchResult(config, start, start_error, current, evaluations)  # every unit at the most bits
    names = list(units)
    per_unit = 1 + (down_bits is not None)

    def measure_around(i: int) -> list[float]:
        """Unit i's errors one step up and one step down from the start (its sensitivity there)."""
        name = names[i]
        errors = [measure({**config, name: bits}) for bits in (up_bits, down_bits) if bits is not None]
        if progress:
            progress(per_unit * (i + 1), per_unit * len(names), f"{name} around uniform {start}-bit")
        return errors

    # The units' moves around the start are independent: under mlx.launch they are split across the ranks,
    # and every rank gets every error, so every rank makes the same trades below (which depend on each other).
    around = split_runs(len(names), measure_around, what="plan search", label=lambda i: names[i])
    evaluations = 1 + per_unit * len(names)  # as one process counts them, whichever rank drew them
    gain = {name: current - errors[0] for name, errors in zip(names, around)}
    harm = {name: errors[1] - current for name, errors in zip(names, around) if down_bits is not None}

    def extra(name: str) -> float:
        return cost(name, up_bits) - cost(name, start)

    def saved(name: str) -> float:
        return cost(name, start) - cost(name, down_bits)

    upgrades = sorted((n for n in units if gain[n] > 0), key=lambda n: -gain[n] / extra(n))
    downgrades = sorted(harm, key=lambda n: harm[n] / saved(n))
    moves: list[dict] = []
    for tried, name in enumerate(upgrades, start=1):
        if config[name] != start:
            continue  # spent as an earlier trade's payment
        need = extra(name) - (capacity - used)
        pay: list[str] = []
        for other in downgrades:
            if need <= 1e-9:
                break
            if other != name and config[other] == start:
                pay.append(other)
                need -= saved(other)
        if need > 1e-9:
            continue  # nothing left to pay with
        trial = {**config, name: up_bits, **{other: down_bits for other in pay}}
        error = measure(trial)
        if error < current:
            config, current = trial, error
            used = sum(cost(n, b) for n, b in config.items())
            moves.append({"up": name, "to": up_bits, "down": pay, "error": error})
            if keep:
                keep(config)
        if progress:
            progress(tried, len(upgrades), f"trade: {name} up to {up_bits} bits"
                     + (f", {len(pay)} down to {down_bits}" if pay else "")
                     + (": kept" if error == current else ": no better, undone"))
    return SearchResult(config, start, start_error, current, evaluations, moves)


def resolve_granularity(granularity: str, layers: int) -> str:
    if granularity not in GRANULARITY_CHOICES:
        raise InvalidRequest(f"unknown granularity '{granularity}': choose {', '.join(GRANULARITY_CHOICES)}")
    if granularity == "auto":
        return "layer" if layers <= MAX_LAYER_UNITS else "block"
    return granularity


def make_plan(pipeline, budget: Budget, granularity: str = "auto", prompts: list[str] | None = None,
              seed: int = 0, size: int | None = None, steps: int | None = None, model_name: str = "",
              progress: Callable[[int, int, str], None] | None = None,
              cancel: CancelToken | None = None, calibration=None) -> QuantPlan:
    """A mixed-precision plan for `pipeline`'s full-precision transformer under `budget`, searched on the
    probe's pictures (see the module's docstring). The transformer is left as it was."""
    transformer = pipeline.transformer
    require_full_precision(transformer)
    started = time.perf_counter()
    sizes = quantizable_layers(transformer, group_size=budget.group_size)
    check_quantizable(sizes, budget.group_size)
    granularity = resolve_granularity(granularity, len(sizes))
    units = {u.name: u for u in make_units(sizes, granularity)}
    fixed = fixed_bytes(transformer, pipeline.dtype, loaded_dtypes(pipeline), group_size=budget.group_size)
    source, prompts, size, steps = probe_settings(pipeline, prompts, size, steps, model_name)

    def layers_of(config: dict[str, int]) -> dict[str, QuantSpec]:
        return {path: budget.spec(config[name]) for name, unit in units.items() for path in unit.layers}

    stats = None
    if needs_calibration(budget.spec(LADDER[0])):
        # The trial copies of a calibrating method are quantized from every layer's statistics, gathered
        # once from the full-precision model; the final plan is then calibrated block by block.
        if progress:
            progress(0, 0, "gathering calibration statistics")
        stats = layer_statistics(pipeline, list(sizes), calibration)
    with PictureProbe(pipeline, prompts, seed, size, steps, cancel, stats) as probe:
        result = search_plan({name: u.elements for name, u in units.items()}, budget,
                             lambda config: probe.error(layers_of(config)), fixed,
                             keep=lambda config: probe.retain(layers_of(config)), progress=progress, cancel=cancel)
    ordered = sorted(units.values(), key=lambda u: u.order)
    layers = {path: budget.spec(result.bits[u.name]) for u in ordered for path in u.layers}
    return QuantPlan(
        layers=layers, model=source, average_bits=round(average_bits(layers, sizes), 4),
        transformer_bytes=plan_bytes(layers, sizes, fixed), made_by=budget.label, dtype=dtype_name(pipeline.dtype),
        sensitivity={"method": "search from uniform", "granularity": granularity, "prompts": len(prompts),
                     "seed": seed, "size": size, "steps": steps},
        search={"start_bits": result.start_bits, "start_psnr_db": _rounded(psnr_of(result.start_error)),
                "psnr_db": _rounded(psnr_of(result.error)), "draws": result.evaluations * len(prompts),
                "trades": len(result.moves), "seconds": round(time.perf_counter() - started, 2)})


def _rounded(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)
