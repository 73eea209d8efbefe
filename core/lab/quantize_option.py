"""What `--quantize` accepts, turned into what a pipeline's `load(quantize=...)` takes: bits, a plan file
checked against the model, or an `auto:` budget whose plan is searched on the probe (core/lab/planner.py).

It sits above plans.py and planner.py, so that those two never import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from ..errors import InvalidRequest
from ..quantize import parse_bits
from .planner import make_plan
from .plans import (check_budget, check_plan_layers, checkpoint_dtypes, is_plan_path, load_plan, parse_budget,
                    transformer_component, transformer_structure)


def _refuse_saved(model_folder: Path, value: str) -> None:
    from ..saved_models import saved_quantization
    if saved_quantization(transformer_component(model_folder)) is not None:
        raise InvalidRequest(f"{model_folder} holds a transformer quantized by quantbench: '{value}' needs the "
                             "full-precision model (load the original, or drop --quantize)")


def parse_quantize_spec(value: str | int | None, model_folder: Path | str, *,
                        text_encoder_layers: tuple[int, ...] | None = None, dtype=None,
                        progress: Callable[[str], None] | None = None) -> int | dict | None:
    """What a pipeline's `load(quantize=...)` takes, from a --quantize value.

    None/'bf16' -> None; '8', '6', '5', '4', '3' -> bits; 'plan.json' -> {layer: bits}, checked against
    the model's transformer; 'auto:4.5' or 'auto:2.5GB' -> {layer: bits}: loads the model in full
    precision and searches a plan on the probe's pictures (planner.py; minutes on a large model: save
    the plan once with `quantbench plan` and pass the file instead).
    """
    if value is None or isinstance(value, int):
        return parse_bits(value)
    text = str(value).strip()
    folder = Path(model_folder)
    if text.lower().startswith("auto:"):
        budget = parse_budget(text)
        _refuse_saved(folder, text)
        check_budget(budget, transformer_structure(folder), dtype, checkpoint_dtypes(folder))
        from ..pipelines import load_pipeline
        if progress:
            progress(f"{text}: loading {folder.name} in full precision to search a plan ...")
        options = {"text_encoder_layers": text_encoder_layers} if text_encoder_layers else {}
        pipeline = load_pipeline(folder, quantize=None, dtype=dtype, allow_download=False, **options)
        steps = (lambda done, total, what: progress(f"{text}: [{done}/{total}] {what}")) if progress else None
        plan = make_plan(pipeline, budget, model_name=str(folder), progress=steps)
        if progress:
            progress(f"{text}: {plan.label}, average {plan.average_bits:.2f} bits")
        return dict(plan.layers)
    if is_plan_path(text):
        plan = load_plan(text)
        _refuse_saved(folder, text)
        check_plan_layers(plan, transformer_structure(folder), source=text)
        return dict(plan.layers)
    try:
        return parse_bits(text)
    except InvalidRequest:
        raise InvalidRequest(f"unsupported quantization '{text}': choose 8, 6, 5, 4 or 3 bits, bf16, "
                             "auto:BITS (e.g. auto:4.5), auto:SIZE (e.g. auto:2GB) or a plan file (.json)") from None


def spec_label(spec: int | Mapping[str, int] | None, made_by: str = "") -> str:
    """'bf16', 'q4', or 'mixed 3-8 bit (auto:4.5)'."""
    if spec is None:
        return "bf16"
    if isinstance(spec, int):
        return f"q{spec}"
    values = sorted(set(spec.values()))
    bits = f"q{values[0]}" if len(values) == 1 else f"mixed {values[0]}-{values[-1]}"
    return f"{bits} ({made_by})" if made_by else bits

