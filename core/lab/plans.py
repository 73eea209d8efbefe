"""Mixed-precision plans: the bits each transformer layer gets, chosen under a budget.

A plan is a JSON file:

    {"format": 1, "model": "...", "group_size": 64, "layers": {"transformer_blocks.0.ff.linear_in": 6, ...},
     "average_bits": 4.5, "transformer_bytes": 123456789, "made_by": "auto:4.5", ...}

Layers a plan does not name stay in full precision. Loading a plan checks its format, group size
and bits; applying it to a model checks that every layer it names exists in that model's
transformer and is one the layer policy quantizes (a one-line error names the first that is not).

Budgets, and how they are counted:

- Average bits (`auto:4.5`): the mean of the nominal bits (3, 4, 5, 6, 8) over the weights of the
  layers the policy quantizes, each layer weighted by its number of weights. The 0.5 bit per weight
  that the bf16 scale and bias of each group of 64 add is the same for every bit width, so it is
  *not* counted: stored bits per weight = average + 0.5, and `auto:4` has exactly the transformer
  bytes of uniform 4-bit.
- Memory (`auto:2.5GB`, `--memory-budget 2.5`): the transformer's bytes as the engine holds it once
  loaded with the plan: quantized layers' packed weights, scales and biases, plus what stays in full
  precision as core/quantize.py keeps it (the compute dtype, float32 on MLX's CPU backend and bfloat16
  on a GPU; Linear layers kept in full precision stay in the checkpoint's dtype). It is computed by
  running the engine's own quantize_model and cast_full_precision on a structure of lazy arrays, so
  it is exact without reading or evaluating anything. GB means GiB (2^30 bytes), as everywhere in
  quantbench. A budget below the smallest possible transformer (every quantizable layer at 3 bits)
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
from ..quantize import GROUP_SIZE, SUPPORTED_BITS, LayerPolicy

PLAN_FORMAT = 1
SUPPORTED_GROUP_SIZES = (GROUP_SIZE,)
LOWEST_BITS = min(SUPPORTED_BITS)
HIGHEST_BITS = max(SUPPORTED_BITS)
GiB = 1 << 30
# Bytes of the bf16 scale and bias of one group, per weight: 4 bytes per 64 weights.
GROUP_OVERHEAD_BITS = 32 / GROUP_SIZE


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


def quantized_weight_bytes(elements: int, bits: int, group_size: int = GROUP_SIZE) -> int:
    """Packed weights plus one bf16 scale and one bf16 bias per group, as MLX stores them."""
    return elements * bits // 8 + (elements // group_size) * 4


CHECKPOINT_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def as_loaded_bytes(transformer: nn.Module, layers: Mapping[str, int], dtype: mx.Dtype,
                    source_dtypes: Mapping[str, str] | None = None, policy: LayerPolicy | None = None) -> int:
    """The transformer's bytes once loaded by the engine with `layers` quantized (the others in full
    precision), computed from shapes and dtypes alone: the engine's own quantize_model and
    cast_full_precision run on a fresh structure of lazy arrays, and nothing is ever evaluated.

    `source_dtypes` ({parameter: safetensors dtype}, as LoadReport.source_dtypes) are the checkpoint's
    dtypes, which some full-precision layers keep; without them the transformer's own dtypes are used."""
    from ..quantize import cast_full_precision, model_nbytes, quantize_model
    policy = policy or _default_policy(transformer)
    shadow = type(transformer)(transformer.config)
    own = dict(tree_flatten(transformer.parameters()))
    source = {k: CHECKPOINT_DTYPES[v] for k, v in (source_dtypes or {}).items() if v in CHECKPOINT_DTYPES}
    shadow.update(tree_unflatten([(k, v.astype(source.get(k, own[k].dtype if k in own else v.dtype)))
                                  for k, v in tree_flatten(shadow.parameters())]))
    quantize_model(shadow, dict(layers), policy, "transformer")
    cast_full_precision(shadow, dtype)
    return model_nbytes(shadow)


def fixed_bytes(transformer: nn.Module, dtype: mx.Dtype, source_dtypes: Mapping[str, str] | None = None,
                policy: LayerPolicy | None = None) -> int:
    """Bytes of everything that stays in full precision in the engine's quantized transformer
    (every quantizable layer quantized): as_loaded_bytes less the quantized layers' own bytes."""
    sizes = quantizable_layers(transformer, policy)
    lowest = {p: LOWEST_BITS for p in sizes}
    return as_loaded_bytes(transformer, lowest, dtype, source_dtypes, policy) - sum(
        quantized_weight_bytes(n, LOWEST_BITS) for n in sizes.values())


def average_bits(layers: Mapping[str, int], sizes: Mapping[str, int]) -> float:
    total = sum(sizes[p] for p in layers)
    return sum(bits * sizes[p] for p, bits in layers.items()) / total if total else 0.0


def plan_bytes(layers: Mapping[str, int], sizes: Mapping[str, int], fixed: int,
               group_size: int = GROUP_SIZE) -> int:
    """Transformer bytes of a plan naming every quantizable layer, given `fixed`, the bytes of what never
    quantizes (fixed_bytes). For a plan that leaves layers out, use as_loaded_bytes."""
    return fixed + sum(quantized_weight_bytes(sizes[p], b, group_size) for p, b in layers.items())


# ---------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    kind: str  # "bits" (average bits) or "bytes" (transformer bytes)
    value: float

    @property
    def label(self) -> str:
        if self.kind == "bits":
            return f"auto:{self.value:g}"
        return f"auto:{self.value / GiB:.3g}GB"


_SIZE = re.compile(r"^([0-9]*\.?[0-9]+)\s*(gb|gib|mb|mib)$", re.IGNORECASE)


def parse_budget(text: str) -> Budget:
    """'auto:4.5' (average bits) or 'auto:2.5GB' / 'auto:800MB' (transformer bytes)."""
    value = str(text).strip()
    rest = value[5:] if value.lower().startswith("auto:") else value
    size = _SIZE.match(rest.strip())
    if size:
        number = float(size.group(1))
        unit = GiB if size.group(2).lower().startswith("g") else 1 << 20
        return memory_budget(number * unit / GiB)
    try:
        bits = float(rest)
    except ValueError:
        raise InvalidRequest(f"'{value}': give the average bits (auto:4.5, between {LOWEST_BITS} and "
                             f"{HIGHEST_BITS}) or a transformer size (auto:2.5GB)") from None
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
    smallest = as_loaded_bytes(transformer, {p: LOWEST_BITS for p in sizes}, dtype or default_compute_dtype(),
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
    layers: dict[str, int]
    model: str = ""
    group_size: int = GROUP_SIZE
    average_bits: float | None = None
    transformer_bytes: int | None = None
    made_by: str = ""
    dtype: str | None = None  # compute dtype the byte count assumes
    sensitivity: dict = field(default_factory=dict)  # how it was measured (method, granularity, probe...)
    search: dict = field(default_factory=dict)  # the search's outcome on the probe (see planner.py)

    @property
    def label(self) -> str:
        values = sorted(set(self.layers.values()))
        bits = f"{values[0]}-bit" if len(values) == 1 else f"mixed {values[0]}-{values[-1]} bit"
        return f"{bits} ({self.made_by})" if self.made_by else bits

    def histogram(self) -> dict[int, int]:
        """bits -> number of layers."""
        counts: dict[int, int] = {}
        for bits in self.layers.values():
            counts[bits] = counts.get(bits, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        data = {"format": PLAN_FORMAT, "model": self.model, "group_size": self.group_size,
                "layers": dict(self.layers), "average_bits": self.average_bits,
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
        hist = ", ".join(f"{b}-bit x{n}" for b, n in self.histogram().items())
        lines = [f"plan for {self.model or 'unknown model'}: {self.label}",
                 f"{len(self.layers)} layers ({hist}), group size {self.group_size}"]
        if self.average_bits is not None:
            lines.append(f"average {self.average_bits:.3f} bits per quantized weight "
                         f"(+{GROUP_OVERHEAD_BITS:g} for scales and biases)")
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
        lines += [f"  {p:<{width}}  {b}" for p, b in shown]
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
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise InvalidRequest(f"{source}: group size {group_size!r} is not supported (quantbench quantizes in "
                             f"groups of {', '.join(map(str, SUPPORTED_GROUP_SIZES))})")
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise InvalidRequest(f"{source}: the plan names no layers (expected \"layers\": {{path: bits}})")
    for path, bits in layers.items():
        if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
            raise InvalidRequest(f"{source}: layer {path}: unsupported bits {bits!r} (choose "
                                 f"{', '.join(map(str, sorted(SUPPORTED_BITS, reverse=True)))})")
    return QuantPlan(layers={str(k): int(v) for k, v in layers.items()}, model=str(data.get("model", "")),
                     group_size=int(group_size), average_bits=data.get("average_bits"),
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


def check_plan_layers(plan: QuantPlan | Mapping[str, int], transformer: nn.Module, source: str = "plan",
                      policy: LayerPolicy | None = None) -> None:
    """Every layer the plan names must exist in `transformer` and be one the policy quantizes."""
    policy = policy or _default_policy(transformer)
    layers = plan.layers if isinstance(plan, QuantPlan) else plan
    candidates = {path: m for path, m in transformer.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    for path in layers:
        module = candidates.get(path)
        if module is None:
            raise InvalidRequest(f"{source}: layer '{path}' is not a layer of this model's transformer")
        reason = policy.full_precision_reason(path, module)
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
    return QuantPlan(dict(plan.layers), plan.model, plan.group_size, round(average_bits(plan.layers, sizes), 4),
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
