"""The same generation at several precisions: memory, time and how far each picture moves.

The model is loaded once, in full precision (its weights are read from disk once per compare), and
the prompt is encoded once (the text encoder does not change between precisions). Every other
precision is quantized in memory from the loaded full-precision transformer (the same arithmetic
as quantizing while loading: weights rounded to bf16, then quantized with bf16 scales, so the
picture is bit for bit the one `generate --quantize` draws), swapped into the pipeline, run, and
dropped.

The figures of each row are described in core/lab/compare_report.py; the pictures and files it
writes in core/lab/compare_outputs.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mlx.core as mx

from ..catalog import precision_label
from ..disk_space import check_free_space, picture_bytes
from ..distributed import split_runs, world
from ..errors import Cancelled
from ..generation import CancelToken, GenerationResult, GenerationSettings, StepCallback, dtype_name, parse_dtype
from ..memory import reset_peak
from ..pipeline_base import freed_when_cancelled
from ..quant import GROUP_SIZES, QuantSpec, model_nbytes, parse_spec, parse_text_encoder_spec
from ..saved_request import refuse_saved_transformer
from .compare_report import CompareReport, PrecisionRow, score
from .layer_bytes import quantizable_layers
from .models import is_builtin, resolve_lab_model
from .plan_cache import kept_or_searched, plan_key
from .plans import QuantPlan, check_plan_layers
from .precisions import DEFAULT_PRECISIONS, PrecisionSpec, parse_precisions
from .requantize import Requantizer
from .structure import transformer_structure


@dataclass
class CompareRequest:
    """One picture's settings (model, prompt, seed, size, steps, guidance, text encoder, compute dtype: what a
    generation takes; their `quantize` is unused, each precision is one) drawn at each of `precisions`."""

    settings: GenerationSettings
    precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS
    allow_download: bool = False
    force: bool = False  # run even when the memory model says the full-precision load will not fit
    calibration_prompts: tuple[str, ...] | None = None  # for methods that calibrate; None: the model's own
    calibration_prompts_file: Path | None = None  # the file they were read from (warnings name their lines)
    out: Path | None = None  # where the pictures and contact sheet go: its disk's room is checked before loading


def compare_request(settings: GenerationSettings, precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS,
                    force: bool = False, calibration_prompts: tuple[str, ...] | None = None,
                    out: Path | None = None, calibration_prompts_file: Path | None = None) -> CompareRequest:
    """A CompareRequest from the settings a generation takes (the CLI's options, the workbench's form), checked
    by the same rules."""
    return CompareRequest(settings.validate(), precisions, force=force, calibration_prompts=calibration_prompts,
                          calibration_prompts_file=calibration_prompts_file, out=out)


def world_scene(prompt: str):
    """The world scene a built-in model's prompt describes, or None."""
    from ..builtin.captions import parse_caption
    try:
        return parse_caption(prompt)
    except ValueError:
        return None


def _predicted_load_peak(folder: Path, bits: QuantSpec | None, request: CompareRequest, width: int, height: int,
                         dtype: str) -> int | None:
    from ..catalog import entry_from_folder
    from ..errors import QuantbenchError
    from ..memory_model import Plan, predict
    try:
        backend = "cpu" if mx.default_device() == mx.cpu else ("metal" if mx.metal.is_available() else "cuda")
        entry = entry_from_folder(folder, request.settings.text_encoder_layers)
        plan = Plan(transformer_bits=bits, text_encoder_bits=parse_spec(request.settings.text_encoder_quantize), width=width,
                    height=height, load="streamed", dtype=dtype, backend=backend)
        return predict(entry, plan).load_peak
    except (QuantbenchError, KeyError, ValueError):
        return None


def run_compare(request: CompareRequest, on_row: Callable[[PrecisionRow], None] | None = None,
                on_status: Callable[[str], None] | None = None, on_step: StepCallback | None = None,
                cancel: CancelToken | None = None, on_warning: Callable[[str], None] | None = None) -> CompareReport:
    """Generate the same picture at each precision of `request`; call on_row as each one finishes, and on_warning
    with each line of the report's warnings (a prompt or calibration prompts longer than a text encoder reads) before
    anything loads."""
    from ..pipelines import (calibration_prompt_warnings, check_model_loras, check_model_references, encoded_prompts,
                             load_pipeline, model_defaults, prompt_warnings, supports_true_cfg, validate_request)
    from ..reference_images import reference_size
    from ..pipelines import native_size
    from .planner import make_plan

    started = time.perf_counter()
    status = on_status or (lambda message: None)
    asked = request.settings
    specs = parse_precisions(request.precisions)
    text_encoder_bits = parse_text_encoder_spec(asked.text_encoder_quantize)
    compute_dtype = parse_dtype(asked.dtype)
    folder = resolve_lab_model(asked.model, allow_download=request.allow_download)
    refuse_saved_transformer(folder, "compare")  # its reference is the full-precision picture
    check_model_loras(folder, asked.loras, request.allow_download, status)
    images = check_model_references(folder, asked.reference_images)
    defaults = model_defaults(folder)
    width, height = native_size(folder, asked.width, asked.height, images)  # as generate draws it
    steps = asked.steps or defaults.steps
    guidance = validate_request(folder, defaults, asked.negative_prompt, asked.guidance, width, height, steps,
                                asked.true_cfg)
    prompts = encoded_prompts(folder, defaults, asked.prompt, asked.negative_prompt, guidance, asked.true_cfg)
    warnings = prompt_warnings(folder, defaults, prompts)  # said once for the run: every precision encodes the same
    if request.calibration_prompts is not None and any(spec.calibrates for spec in specs):
        warnings += calibration_prompt_warnings(folder, request.calibration_prompts, request.calibration_prompts_file)
    extra = {"true_cfg": asked.true_cfg} if supports_true_cfg(folder) else {}  # every precision runs as generate does
    extra.update({"images": images} if images else {})
    if request.out is not None and world().is_leader:  # the size is known now, the model's own included
        check_free_space(request.out, picture_bytes(width, height, 2 * len(specs)), "the contact sheet with its pictures")
    builtin = is_builtin(asked.model, folder)
    scene = world_scene(asked.prompt) if builtin else None
    if any(spec.plan is not None for spec in specs):
        structure = transformer_structure(folder)  # config only: a bad plan is refused before any loading
        for spec in specs:
            if spec.plan is not None:
                check_plan_layers(spec.plan, structure, source=spec.text)

    from ..fit import RunShape, refuse_if_too_big
    refuse_if_too_big(asked.model, folder, RunShape(None, text_encoder_bits, width, height, False, None,
                                                      dtype_name(compute_dtype), asked.text_encoder_layers,
                                                      reference_sizes=tuple(reference_size(path) for path in images)
                                                      ).encoding(prompts), force=request.force)
    for warning in warnings if on_warning is not None else ():
        on_warning(warning)
    status(f"loading {asked.model} in full precision (once) ...")
    reset_peak()
    with freed_when_cancelled():  # a cancel stops the load within a layer and lets go of what it read
        pipeline = load_pipeline(folder, quantize=None, text_encoder_quantize=text_encoder_bits,
                                 dtype=compute_dtype, text_encoder_layers=asked.text_encoder_layers,
                                 allow_download=request.allow_download, cancel=cancel, loras=asked.loras)
    load_peak = mx.get_peak_memory()
    dtype = pipeline.info.dtype
    requantizer = Requantizer(pipeline)
    sizes = quantizable_layers(pipeline.transformer, group_size=min(GROUP_SIZES))  # every group size's layers
    drawn = replace(asked, steps=steps, guidance=guidance, width=width, height=height, dtype=dtype, quantize=None,
                    reference_images=images)
    report = CompareReport(drawn, folder, precision_label(text_encoder_bits, dtype), attributes_checked=scene is not None,
                           warnings=warnings)
    searched: dict[str, dict[str, QuantSpec]] = {}
    reference_image = None

    def generate() -> GenerationResult:
        return pipeline.generate(asked.prompt, asked.negative_prompt, steps, asked.guidance, asked.seed,
                                 width, height, callback=on_step, cancel=cancel, preview=on_step is not None, **extra)

    def run_one(index: int) -> PrecisionRow:
        nonlocal reference_image
        spec = specs[index]
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")
        if spec.is_reference:
            status(f"{spec.label}: generating ...")
            result = generate()
            reference_image = result.image
            row = _row(spec.label, pipeline.transformer, None, None, result, scene,
                       load_peak=load_peak, load_measured=load_peak,
                       load_predicted=_predicted_load_peak(folder, None, request, width, height, dtype),
                       load_seconds=pipeline.info.load_seconds, extra=0)
        else:
            row = quantized_row(spec)
        if world().size == 1:  # the reference was run first: score and report the row as it finishes
            score(row, reference_image)
            if on_row is not None:
                on_row(row)
        else:
            status(f"{row.label}: done, {row.mean_step_seconds:.3f}s/step")
        return row

    def searched_plan(spec: PrecisionSpec) -> QuantPlan:
        """Probed at this compare's size and steps, with its text encoder; kept between runs (plan_cache.py)."""
        calibration = _calibration(request, spec.text, status, cancel)

        def search() -> QuantPlan:
            status(f"{spec.text}: searching a mixed-precision plan on the probe pictures ...")
            return make_plan(pipeline, spec.budget, size=min(width, height), steps=steps, model_name=str(asked.model),
                             cancel=cancel, calibration=calibration,
                             progress=lambda done, total, what: status(f"{spec.text}: [{done}/{total}] {what}"))

        key = plan_key(folder, spec.budget, dtype=compute_dtype, text_encoder_layers=asked.text_encoder_layers,
                       calibration=calibration, probe={"size": min(width, height), "steps": steps,
                                                       "text_encoder": str(text_encoder_bits)},
                       loras=asked.loras)
        return kept_or_searched(folder, key, search, status, spec.text)

    def quantized_row(spec: PrecisionSpec) -> PrecisionRow:
        layers: QuantSpec | dict[str, QuantSpec]
        label = spec.label
        if spec.bits is not None:
            layers = spec.bits
        elif spec.plan is not None:
            layers = dict(spec.plan.layers)
        else:
            if spec.text not in searched:
                searched[spec.text] = dict(searched_plan(spec).layers)
            layers = searched[spec.text]
        status(f"{label}: quantizing in memory ...")
        mx.clear_cache()
        reset_peak()
        quantize_started = time.perf_counter()
        transformer, quantization = requantizer.build(layers, _calibration(request, label, status, cancel))
        load_measured = mx.get_peak_memory()
        load_seconds = time.perf_counter() - quantize_started
        extra = requantizer.extra
        status(f"{label}: generating ...")
        with requantizer.using(transformer):
            result = generate()
        predicted = (_predicted_load_peak(folder, spec.bits, request, width, height, dtype)
                     if spec.bits is not None else None)
        plan = {path: str(s) for path, s in layers.items()} if isinstance(layers, dict) else None
        row = _row(label, transformer, quantization, plan, result, scene, load_peak=load_measured - extra,
                   load_measured=load_measured, load_predicted=predicted, load_seconds=load_seconds, extra=extra, sizes=sizes)
        del transformer
        mx.clear_cache()
        return row

    report.rows = split_runs(len(specs), run_one, what="compare", to_payload=PrecisionRow.to_payload,
                             from_payload=PrecisionRow.from_payload, label=lambda i: specs[i].label,
                             summaries=report.ranks)
    if world().size > 1:  # the rows of several ranks are scored once gathered: the reference was drawn on rank 0
        for row in report.rows:
            score(row, report.rows[0].image)
            if on_row is not None and world().is_leader:
                on_row(row)
    report.seconds = time.perf_counter() - started
    return report


def _calibration(request: CompareRequest, label: str, status, cancel):
    from ..quant.calibration import CalibrationOptions, throttled
    return CalibrationOptions(prompts=request.calibration_prompts, cancel=cancel,
                              progress=throttled(lambda state: status(f"{label}: {state.line()}")))


def _row(label, transformer, quantization, plan, result: GenerationResult, scene, *,
         load_peak, load_measured, load_predicted, load_seconds, extra, sizes=None) -> PrecisionRow:
    """A precision's row, not yet scored against the reference picture (see score)."""
    from .layer_bytes import average_bits
    average = None
    if quantization is not None and quantization.layers:
        average = average_bits(quantization.layers, sizes)
    attributes = None
    if scene is not None:
        from ..builtin.analyser import analyse
        attributes = analyse(result.image, scene)
    return PrecisionRow(
        label=label, transformer_bytes=model_nbytes(transformer), average_bits=average, load_peak=load_peak,
        load_peak_measured=load_measured, load_peak_predicted=load_predicted, load_seconds=load_seconds,
        generate_peak=result.peak_memory - extra, generate_peak_measured=result.peak_memory,
        step_seconds=list(result.step_seconds), total_seconds=result.total_seconds,
        psnr=math.nan, ssim=None, image=result.image, attributes=attributes,
        quantization=quantization.summary() if quantization is not None else "transformer: full precision",
        plan=plan)
