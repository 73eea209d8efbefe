"""What `--quantize` accepts, turned into what a pipeline's `load(quantize=...)` takes: a spec, a plan file
checked against the model, or an `auto:` budget whose plan is searched on the probe (core/lab/planner.py).

It sits above plans.py and planner.py, so that those two never import each other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from ..errors import InvalidRequest
from ..quant import SUPPORTED_BITS, UNQUANTIZED, QuantSpec, as_spec, parse_spec
from .planner import make_plan
from .budgets import check_budget, parse_budget
from .plan_cache import kept_or_searched, plan_key
from .plans import QuantPlan, check_plan_layers, is_plan_path, load_plan
from .structure import checkpoint_dtypes, transformer_structure


def _refuse_saved(model_folder: Path, value: str) -> None:
    """A search, or a plan other than the saved one, on a folder quantbench saved quantized: one line."""
    from ..saved_request import check_saved_request
    check_saved_request(model_folder, value)


def parse_quantize_spec(value: str | int | QuantSpec | None, model_folder: Path | str, *,
                        text_encoder_layers: tuple[int, ...] | None = None, dtype=None,
                        progress: Callable[[str], None] | None = None,
                        calibration=None, loras=()) -> QuantSpec | dict[str, QuantSpec] | None:
    """What a pipeline's `load(quantize=...)` takes, from a --quantize value.

    None/'bf16' -> None; '4', '3:hqq:32' -> a QuantSpec; 'plan.json' -> {layer: spec}, checked against
    the model's transformer; 'auto:4.5[:METHOD[:GROUP]]' or 'auto:2.5GB' -> {layer: spec}: loads the
    model in full precision and searches a plan on the probe's pictures (planner.py; minutes), or reads the plan
    an earlier search of the same request kept (plan_cache.py). `loras`: the run's LoRAs, fused in for the search.
    """
    if value is None or isinstance(value, (int, QuantSpec)):
        return None if value is None else as_spec(value)
    text = str(value).strip()
    folder = Path(model_folder)
    if text.lower().startswith("auto:"):
        budget = parse_budget(text)
        _refuse_saved(folder, text)
        check_budget(budget, transformer_structure(folder), dtype, checkpoint_dtypes(folder))
        return dict(_searched_plan(text, budget, folder, text_encoder_layers, dtype, progress, calibration,
                                   loras).layers)
    if is_plan_path(text):
        plan = load_plan(text)
        _refuse_saved(folder, text)
        check_plan_layers(plan, transformer_structure(folder), source=text)
        return dict(plan.layers)
    try:
        return parse_spec(text)
    except InvalidRequest as error:
        raise InvalidRequest(f"{error}; or auto:BITS (e.g. auto:4.5), auto:SIZE (e.g. auto:2GB) or a plan file "
                             "(.json)") from None


def _searched_plan(text: str, budget, folder: Path, text_encoder_layers, dtype, progress, calibration,
                   loras) -> QuantPlan:
    """The plan an `auto:` budget finds on this model: the one kept from an earlier search of the same request
    (plan_cache.py), or a new search, then kept."""
    say = progress or (lambda message: None)

    def search() -> QuantPlan:
        from ..pipelines import load_pipeline
        say(f"{text}: loading {folder.name} in full precision to search a plan ...")
        options = {"text_encoder_layers": text_encoder_layers} if text_encoder_layers else {}
        pipeline = load_pipeline(folder, quantize=None, dtype=dtype, allow_download=False, loras=loras, **options)
        steps = (lambda done, total, what: say(f"{text}: [{done}/{total}] {what}")) if progress else None
        plan = make_plan(pipeline, budget, model_name=str(folder), progress=steps, calibration=calibration)
        say(f"{text}: {plan.label}, average {plan.average_bits:.2f} bits")
        return plan

    key = plan_key(folder, budget, dtype=dtype, text_encoder_layers=text_encoder_layers, calibration=calibration,
                   loras=loras)
    return kept_or_searched(folder, key, search, say, text)


def check_split_quantize(model_folder: Path | str, value, ranks: int, bits=None) -> None:
    """With the transformer split across `ranks` (tensor-parallel generate), refuse in one line a --quantize value
    whose quantization groups the split would cut: `bits` as parse_quantize_spec gave it or, before an auto:
    search, every layer in the budget's method and group (only the group counts)."""
    from ..pipelines import family_for
    from ..tensor_parallel import check_split
    folder = Path(model_folder)
    family = family_for(folder)
    if ranks < 2 or family.tensor_parallel is None:
        return
    written = None
    if bits is None and str(value or "").strip().lower().startswith("auto:"):
        budget = parse_budget(str(value))
        bits = QuantSpec(min(SUPPORTED_BITS), budget.group_size, budget.method)

        def written(size: int) -> str:
            return replace(budget, group_size=size).label
    if bits is not None:
        check_split(family.build_transformer(folder), family.tensor_parallel, family.transformer.policy, ranks,
                    family.transformer.folder, bits, written)


def spec_label(spec: QuantSpec | int | Mapping[str, QuantSpec] | None, made_by: str = "") -> str:
    """'unquantized', 'q4', 'q3:hqq:32', or 'mixed 3-8 (auto:4.5)'."""
    if spec is None:
        return UNQUANTIZED
    if not isinstance(spec, Mapping):
        return f"q{as_spec(spec)}"
    specs = sorted({as_spec(s) for s in spec.values()})
    bits = sorted({s.bits for s in specs})
    text = f"q{specs[0]}" if len(specs) == 1 else (f"q{bits[0]}" if len(bits) == 1 else f"mixed {bits[0]}-{bits[-1]}")
    return f"{text} ({made_by})" if made_by else text

