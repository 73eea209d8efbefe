"""Mixed-precision plans: the bits each transformer layer gets, chosen under a budget.

A plan is a JSON file:

    {"format": 1, "model": "...", "group_size": 64,
     "layers": {"transformer_blocks.0.ff.linear_in": 6, "transformer_blocks.0.attn.to_q": "3:hqq:32", ...},
     "average_bits": 4.5, "transformer_bytes": 123456789, "made_by": "auto:4.5", ...}

Each layer gets a precision spec (core/quant/spec.py): bare bits are round-to-nearest in groups of
the plan's `group_size` (64 unless it says otherwise), a string names the method and group too.
Layers a plan does not name stay in full precision. Loading a plan checks its format and every
spec; applying it to a model checks that every layer it names exists in that model's transformer
and is one the layer policy quantizes (a one-line error names the first that is not).

Budgets, and how they are counted:

- Average bits (`auto:4.5`): the mean of the nominal bits (2, 3, 4, 5, 6, 8) over the weights of
  the layers the policy quantizes, each layer weighted by its number of weights. The 0.5 bit per
  weight that the bf16 scale and bias of each group of 64 add is the same for every bit width, so it
  is *not* counted: stored bits per weight = average + 0.5, and `auto:4` has exactly the transformer
  bytes of uniform 4-bit. A method (and group size) can follow: `auto:2.5:hqq`, `auto:3:mse:32`
  (with groups of 32 the overhead is 1 bit per weight, and the average still counts nominal bits).
- Memory (`auto:2.5GB`, `--memory-budget 2.5`): the transformer's bytes as the engine holds it once
  loaded with the plan: quantized layers' packed weights, scales and biases, plus what stays in full
  precision as core/quant keeps it (the compute dtype, float32 on MLX's CPU backend and bfloat16
  on a GPU; Linear layers kept in full precision stay in the checkpoint's dtype). It is computed by
  running the engine's own quantize_model and cast_full_precision on a structure of lazy arrays, so
  it is exact without reading or evaluating anything. GB means GiB (2^30 bytes), as everywhere in
  quantbench. A budget below the smallest possible transformer (every quantizable layer at 2 bits)
  is refused.

Plans under a budget are made by core/lab/planner.py: a search from uniform bits that keeps only
the trades of bits between layers that make the probe's pictures closer to full precision.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..atomic import staged_file
from ..errors import InvalidRequest
from ..quant import (DEFAULT_METHOD, GROUP_SIZE, GROUP_SIZES, SPEC_HELP, SUPPORTED_BITS, LayerPolicy, QuantSpec,
                     as_spec, overhead_bits, parse_method_suffix, parse_spec, precision_label, quantized_weight_bytes)

PLAN_FORMAT = 1
LOWEST_BITS = min(SUPPORTED_BITS)
HIGHEST_BITS = max(SUPPORTED_BITS)
GiB = 1 << 30


def _default_policy(transformer: nn.Module) -> LayerPolicy:
    """The layer policy of the family this transformer belongs to."""
    from ..pipelines import transformer_policy_for
    return transformer_policy_for(transformer)


# ---------------------------------------------------------------------------------------------
# Layers and bytes
# ---------------------------------------------------------------------------------------------

def quantizable_layers(transformer: nn.Module, policy: LayerPolicy | None = None) -> dict[str, int]:
    """{layer path: number of weights} for every layer the policy quantizes, in module order."""
    policy = policy or _default_policy(transformer)
    layers = {}
    for path, module in transformer.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and policy.full_precision_reason(path, module) is None:
            layers[path] = int(module.weight.size)
    return dict(reversed(list(layers.items())))  # named_modules() walks backwards


CHECKPOINT_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def as_loaded_bytes(transformer: nn.Module, layers: Mapping[str, QuantSpec | int], dtype: mx.Dtype,
                    source_dtypes: Mapping[str, str] | None = None, policy: LayerPolicy | None = None) -> int:
    """The transformer's bytes once loaded by the engine with `layers` quantized (the others in full
    precision), computed from shapes and dtypes alone: the engine's own quantize_model and
    cast_full_precision run on a fresh structure of lazy arrays, and nothing is ever evaluated.

    `source_dtypes` ({parameter: safetensors dtype}, as LoadReport.source_dtypes) are the checkpoint's
    dtypes, which some full-precision layers keep; without them the transformer's own dtypes are used."""
    from ..quant import cast_full_precision, model_nbytes, quantize_model
    policy = policy or _default_policy(transformer)
    shadow = type(transformer)(transformer.config)
    own = dict(tree_flatten(transformer.parameters()))
    source = {k: CHECKPOINT_DTYPES[v] for k, v in (source_dtypes or {}).items() if v in CHECKPOINT_DTYPES}
    shadow.update(tree_unflatten([(k, v.astype(source.get(k, own[k].dtype if k in own else v.dtype)))
                                  for k, v in tree_flatten(shadow.parameters())]))
    # Bytes depend on bits and group size alone: round-to-nearest stands in for every method here.
    quantize_model(shadow, {p: _rtn(s) for p, s in layers.items()}, policy, "transformer")
    cast_full_precision(shadow, dtype)
    return model_nbytes(shadow)


def _rtn(spec: QuantSpec | int) -> QuantSpec:
    spec = as_spec(spec)
    return QuantSpec(spec.bits, spec.group_size)


def fixed_bytes(transformer: nn.Module, dtype: mx.Dtype, source_dtypes: Mapping[str, str] | None = None,
                policy: LayerPolicy | None = None) -> int:
    """Bytes of everything that stays in full precision in the engine's quantized transformer
    (every quantizable layer quantized): as_loaded_bytes less the quantized layers' own bytes."""
    sizes = quantizable_layers(transformer, policy)
    lowest = QuantSpec(LOWEST_BITS)
    return as_loaded_bytes(transformer, {p: lowest for p in sizes}, dtype, source_dtypes, policy) - sum(
        quantized_weight_bytes(n, lowest) for n in sizes.values())


def average_bits(layers: Mapping[str, QuantSpec | int], sizes: Mapping[str, int]) -> float:
    """Nominal bits per quantized weight, weighted by each layer's weights (scales and biases not counted)."""
    total = sum(sizes[p] for p in layers)
    return sum(as_spec(spec).bits * sizes[p] for p, spec in layers.items()) / total if total else 0.0


def plan_bytes(layers: Mapping[str, QuantSpec | int], sizes: Mapping[str, int], fixed: int) -> int:
    """Transformer bytes of a plan naming every quantizable layer, given `fixed`, the bytes of what never
    quantizes (fixed_bytes). For a plan that leaves layers out, use as_loaded_bytes."""
    return fixed + sum(quantized_weight_bytes(sizes[p], as_spec(s)) for p, s in layers.items())


# ---------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------

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
    size = _SIZE.match(rest)
    if size:
        number = float(size.group(1))
        unit = GiB if size.group(2).lower().startswith("g") else 1 << 20
        return memory_budget(number * unit / GiB)
    try:
        bits = float(rest)
    except ValueError:
        raise InvalidRequest(f"'{value}': give the average bits (auto:4.5, between {LOWEST_BITS} and "
                             f"{HIGHEST_BITS}) or a transformer size (auto:2.5GB), then optionally a method and "
                             f"group (auto:2.5:hqq, auto:3:mse:32)") from None
    if not math.isfinite(bits) or bits < LOWEST_BITS:
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
    sizes = quantizable_layers(transformer, policy)
    lowest = budget.spec(LOWEST_BITS)
    smallest = as_loaded_bytes(transformer, {p: lowest for p in sizes}, dtype or default_compute_dtype(),
                               source_dtypes, policy)
    if budget.value < smallest:
        raise InvalidRequest(_below_smallest(budget.value, smallest))


def _below_smallest(value: float, smallest: int) -> str:
    from ..memory import format_bytes
    return (f"a memory budget of {format_bytes(value)} is below the smallest possible transformer, "
            f"{format_bytes(smallest)} (every quantizable layer at {LOWEST_BITS} bits)")


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------

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
        return write_json_atomic(Path(path), self.to_dict(), overwrite)

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
        if self.search.get("psnr_db") is not None and self.search.get("start_psnr_db") is not None:
            lines.append(f"probe pictures: {self.search['psnr_db']:.2f} dB PSNR against full precision, uniform "
                         f"{self.search['start_bits']}-bit {self.search['start_psnr_db']:.2f} dB "
                         f"({self.search.get('trades', 0)} trades kept, {self.search.get('draws', 0)} pictures drawn)")
        shown = list(self.layers.items()) if top is None else list(self.layers.items())[:top]
        width = max((len(p) for p, _ in shown), default=0)
        lines += [f"  {p:<{width}}  {s}" for p, s in shown]
        if top is not None and len(self.layers) > top:
            lines.append(f"  ... and {len(self.layers) - top} more")
        return lines


def write_json_atomic(path: Path, data: dict, overwrite: bool = True) -> Path:
    with staged_file(path, overwrite, mode="w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path


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
    return QuantPlan(layers=specs, model=str(data.get("model", "")), average_bits=data.get("average_bits"),
                     transformer_bytes=data.get("transformer_bytes"), made_by=str(data.get("made_by", "")),
                     dtype=data.get("dtype"), sensitivity=dict(data.get("sensitivity") or {}),
                     search=dict(data.get("search") or {}))


def load_plan(path: Path | str) -> QuantPlan:
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such plan file")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"{path}: not a quantbench plan (not valid JSON)") from None
    return plan_from_dict(data, str(path))


def check_plan_layers(plan: QuantPlan | Mapping[str, QuantSpec | int], transformer: nn.Module, source: str = "plan",
                      policy: LayerPolicy | None = None) -> None:
    """Every layer the plan names must exist in `transformer` and be one the policy quantizes."""
    policy = policy or _default_policy(transformer)
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


# ---------------------------------------------------------------------------------------------
# --quantize values
# ---------------------------------------------------------------------------------------------

def is_plan_path(value: str) -> bool:
    text = str(value)
    return text.lower().endswith(".json") or (os.sep in text and Path(text).is_file())


def transformer_component(model_folder: Path | str):
    """The folder's transformer checkpoint (headers only), whichever family and layout it is."""
    from ..pipelines import family_for
    folder = Path(model_folder)
    return family_for(folder).open_transformer(folder)


def transformer_structure(model_folder: Path | str) -> nn.Module:
    """The transformer a folder's config describes, with lazy (never evaluated) random weights:
    enough to check a plan's layer paths without reading any weights."""
    from ..pipelines import family_for
    folder = Path(model_folder)
    return family_for(folder).build_transformer(folder)


def loaded_dtypes(pipeline) -> dict[str, str]:
    """{transformer parameter: safetensors dtype} of a loaded pipeline's checkpoint."""
    return next((dict(r.source_dtypes) for r in pipeline.info.weights if r.component == "transformer"), {})


def checkpoint_dtypes(model_folder: Path | str) -> dict[str, str]:
    """{transformer parameter: safetensors dtype} from the folder's headers (the transformer's keys are its
    parameter names)."""
    return {key: info.dtype for key, info in transformer_component(model_folder).tensors.items()}
