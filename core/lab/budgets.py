"""Budgets a mixed-precision plan is made under, and how they are counted.

- Average bits (`auto:4.5`): the mean of the nominal bits (2, 3, 4, 5, 6, 8) over the weights of
  the layers the policy quantizes, each layer weighted by its number of weights. The 0.5 bit per
  weight that the bf16 scale and bias of each group of 64 add is the same for every bit width, so it
  is *not* counted: stored bits per weight = average + 0.5, and `auto:4` has exactly the transformer
  bytes of uniform 4-bit. A method (and group size) can follow: `auto:2.5:hqq`, `auto:3:mse:32`
  (with groups of 32 the overhead is 1 bit per weight, and the average still counts nominal bits).
- Memory (`auto:2.5GB`, `--memory-budget 2.5`): the transformer's bytes as the engine holds it once
  loaded with the plan (core/lab/layer_bytes.py): quantized layers' packed weights, scales and biases,
  plus what stays in full precision as core/quant keeps it (the compute dtype, float32 on MLX's CPU
  backend and bfloat16 on a GPU; Linear layers kept in full precision stay in the checkpoint's
  dtype). GB means GiB (2^30 bytes), as everywhere in quantbench. A budget below the smallest
  possible transformer (every quantizable layer at 2 bits) is refused.

Plans under a budget are made by core/lab/planner.py: a search from uniform bits that keeps only
the trades of bits between layers that make the probe's pictures closer to full precision.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn

from .. import numbers
from ..errors import InvalidRequest
from ..quant import DEFAULT_METHOD, GROUP_SIZE, SUPPORTED_BITS, LayerPolicy, QuantSpec, parse_method_suffix
from .layer_bytes import LOWEST_BITS, as_loaded_bytes, quantizable_layers

HIGHEST_BITS = max(SUPPORTED_BITS)
GiB = 1 << 30


@dataclass(frozen=True)
class Budget:
    kind: str  # "bits" (average bits) or "bytes" (transformer bytes)
    value: float
    method: str = DEFAULT_METHOD  # how every layer of the plan is quantized
    group_size: int = GROUP_SIZE

    @property
    def label(self) -> str:
        amount = f"{self.value:g}" if self.kind == "bits" else f"{self.value / GiB:.3g}GB"
        return f"auto:{amount}{self.suffix}"

    @property
    def suffix(self) -> str:
        """':hqq', ':mse:32', or '' for round-to-nearest in groups of 64."""
        if self.group_size != GROUP_SIZE:
            return f":{self.method}:{self.group_size}"
        return f":{self.method}" if self.method != DEFAULT_METHOD else ""

    def spec(self, bits: int) -> QuantSpec:
        return QuantSpec(bits, self.group_size, self.method)


_SIZE = re.compile(r"^([0-9]*\.?[0-9]+)\s*(gb|gib|mb|mib)$", re.IGNORECASE)


def parse_budget(text: str) -> Budget:
    """'auto:4.5' (average bits) or 'auto:2.5GB' / 'auto:800MB' (transformer bytes), optionally followed by
    ':METHOD[:GROUP]' ('auto:2.5:hqq', 'auto:3:mse:32')."""
    value = str(text).strip()
    rest = value[5:] if value.lower().startswith("auto:") else value
    amount, colon, suffix = rest.partition(":")
    method, group = parse_method_suffix(suffix if colon else None, value)
    budget = _parse_amount(amount.strip(), value)
    return Budget(budget.kind, budget.value, method, group or GROUP_SIZE)


def _parse_amount(rest: str, value: str) -> Budget:
    value = numbers.shown(value)  # as the messages quote it: a paste of thousands of characters cut short
    size = _SIZE.match(rest)
    if size:
        number = float(size.group(1))
        unit = GiB if size.group(2).lower().startswith("g") else 1 << 20
        return memory_budget(number * unit / GiB)
    try:
        bits = numbers.decimal(rest)  # finite, ASCII: not 'nan', 'inf' or '4_5'
    except ValueError:
        raise InvalidRequest(f"'{value}': give the average bits (auto:4.5, between {LOWEST_BITS} and "
                             f"{HIGHEST_BITS}) or a transformer size (auto:2.5GB), then optionally a method and "
                             f"group (auto:2.5:hqq, auto:3:mse:32)") from None
    if bits < LOWEST_BITS:
        raise InvalidRequest(f"'{value}': an average of {bits:g} bits is below the smallest possible model "
                             f"(every quantizable layer at {LOWEST_BITS} bits)")
    if bits > HIGHEST_BITS:
        raise InvalidRequest(f"'{value}': an average of {bits:g} bits is above the most a plan gives "
                             f"({HIGHEST_BITS} bits; use bf16 for no quantization)")
    return Budget("bits", bits)


def memory_budget(gb: float) -> Budget:
    if not math.isfinite(gb) or gb <= 0:
        raise InvalidRequest(f"memory budget {gb:g} GB: give a positive size in GB")
    return Budget("bytes", gb * GiB)


def check_budget(budget: Budget, transformer: nn.Module, dtype: mx.Dtype | None = None,
                 source_dtypes: Mapping[str, str] | None = None, policy: LayerPolicy | None = None) -> None:
    """Refuse a memory budget below the smallest possible transformer, before anything is measured.

    `transformer` may be a structure from transformer_structure() (nothing is read)."""
    if budget.kind != "bytes":
        return
    from ..generation import default_compute_dtype
    sizes = quantizable_layers(transformer, policy, budget.group_size)
    lowest = budget.spec(LOWEST_BITS)
    smallest = as_loaded_bytes(transformer, {p: lowest for p in sizes}, dtype or default_compute_dtype(),
                               source_dtypes, policy)
    if budget.value < smallest:
        raise InvalidRequest(below_smallest(budget.value, smallest))


def below_smallest(value: float, smallest: int) -> str:
    """The refusal of a memory budget of `value` bytes below the smallest possible transformer."""
    from ..memory import format_bytes
    return (f"a memory budget of {format_bytes(value)} is below the smallest possible transformer, "
            f"{format_bytes(smallest)} (every quantizable layer at {LOWEST_BITS} bits)")
