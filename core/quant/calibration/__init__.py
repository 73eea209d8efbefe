"""Calibration: the inputs each transformer layer sees while the model draws, gathered by quantbench itself.

The model samples a fixed set of prompts (its own schedule; base models run both CFG passes, batched as
in `generate`), and each quantized layer's input statistics X^T X are accumulated, for the methods that
need them (gptq, awq). Nothing is downloaded: the built-in models draw captions of their own world that
are not among `eval`'s, other models a short varied list that ships here, or the user gives a file.

    settings.py    prompts, sizes, steps; the options a caller passes (prompts file, progress, cancel)
    replay.py      hooks, weights read again from the checkpoint, recorded calls and their batching
    spill.py       the private temporary folder where recorded calls and cached block outputs wait on disk
    calibrator.py  sampling, then block after block (see there for the order and the memory it keeps)
    exact_sum.py   X^T X summed exactly, so that a calibration split across ranks gives the same bits
    progress.py    what it reports while it runs

`calibrate(pipeline, precision)` quantizes the pipeline's transformer this way and makes it the
pipeline's; `layer_statistics(pipeline)` only gathers every layer's statistics in one pass (the plan
search quantizes its trial copies from them). Of the weights, only the final model plus one block is held;
core/memory_model/calibration.py lists what else a calibration holds (and what it writes to disk).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn

from ...blocks.prompt_cut import calibration_cut_lines
from ...errors import CheckpointError, InvalidRequest
from ..dense import use_dense_matmul
from ..methods import LayerStats, get_method
from ..model import Precision, QuantizationReport, cast_full_precision, count_parameters, evaluate_in_units, \
    layer_specs, model_nbytes
from ..spec import QuantSpec, as_spec
from .calibrator import Calibrator, blocks_of
from .progress import CalibrationProgress, throttled
from .replay import LazyWeights, hooks
from .settings import (GENERAL_PROMPTS, CalibrationOptions, CalibrationSettings, active_options, builtin_prompts,
                       calibration_options, prompt_numbers, prompts_digest, read_prompt_file,
                       settings_for)

__all__ = ["CalibrationOptions", "CalibrationProgress", "CalibrationResult", "CalibrationSettings",
           "GENERAL_PROMPTS", "active_options", "blocks_of", "builtin_prompts", "calibrate", "calibration_options",
           "cut_prompt_warnings", "hooks", "layer_statistics", "load_transformer", "needs_calibration",
           "prompts_digest", "read_prompt_file", "settings_for", "throttled"]


def needs_calibration(precision: Precision) -> bool:
    """Whether quantizing to `precision` (a spec, bits or {path: spec}) needs calibration statistics."""
    if precision is None:
        return False
    specs = precision.values() if isinstance(precision, Mapping) else [precision]
    return any(get_method(as_spec(s).method).needs_calibration for s in specs if s is not None)


@dataclass
class CalibrationResult:
    transformer: nn.Module
    report: QuantizationReport  # its `calibration` says how (prompts' hash, size, steps, calls, seconds, peak)
    settings: CalibrationSettings
    seconds: float
    peak: int  # MLX's peak while calibrating, less the memory held when it started (VAE, prompt features)
    block_bytes: int  # the largest block's full-precision weights as calibration holds them


def load_transformer(pipeline) -> None:
    """Load the pipeline's transformer at its precision: calibrated first when the method needs it (its own
    prompts unless `pipeline.calibration` or the active options say otherwise); a model saved quantized by
    quantbench loads as saved."""
    from ..saved import read_saved
    precision = pipeline.loader.transformer_bits
    if needs_calibration(precision) and read_saved(pipeline.family.open_transformer(pipeline.info.folder)) is None:
        calibrate(pipeline, precision, pipeline.calibration or active_options())
    else:
        pipeline.transformer = pipeline.loader.transformer()


def lazy_transformer(pipeline) -> tuple[nn.Module, LazyWeights]:
    """The pipeline's transformer built from its config with every weight unread, and their source."""
    loader = pipeline.loader
    loader.lazy_transformer = True
    try:
        transformer = loader.transformer()
    finally:
        loader.lazy_transformer = False
    return transformer, LazyWeights(*loader.transformer_source)


def calibrate(pipeline, precision: Precision, options: CalibrationOptions | None = None,
              settings: CalibrationSettings | None = None, keep_transformer: bool = False) -> CalibrationResult:
    """Quantize the pipeline's transformer to `precision` from calibration statistics.

    The result's transformer becomes the pipeline's (and its report the loader's), unless
    `keep_transformer`: then the pipeline's current transformer is put back (the lab compares several).
    Cancelling (options.cancel) raises Cancelled between calls and leaves nothing behind."""
    from ...memory import reset_peak
    options = options or CalibrationOptions()
    settings = settings or settings_for(pipeline, options)
    started = time.perf_counter()
    previous = pipeline.transformer
    if not keep_transformer:
        pipeline.release_transformer()
    transformer, weights = lazy_transformer(pipeline)
    layers, kept = layer_specs(transformer, precision, pipeline.transformer_policy)
    if not layers:
        raise InvalidRequest("calibration: no layer of this transformer is quantized at that precision")
    _encode_prompts(pipeline, settings, options)
    mx.clear_cache()
    baseline = mx.get_active_memory()
    reset_peak()
    pipeline.transformer = transformer
    calibrator = Calibrator(pipeline, transformer, weights, layers, settings, options.progress, options.cancel)
    try:
        calibrator.run()
        cast_full_precision(transformer, pipeline.dtype)
        if pipeline.info.quantized_matmul == "dense":
            use_dense_matmul(transformer)
        evaluate_in_units(transformer, options.cancel)
    finally:
        pipeline.transformer = previous if keep_transformer else None
        _forget_prompts(pipeline, settings)
    seconds = time.perf_counter() - started
    report = count_parameters(transformer, layers, kept, "transformer")
    report.nbytes = model_nbytes(transformer)
    peak = mx.get_peak_memory() - baseline
    report.calibration = {**settings.record(calibrator.recorded, seconds), "peak_bytes": peak,
                          "block_bytes": calibrator.block_bytes,
                          "block_statistics_bytes": calibrator.block_statistics, "disk_bytes": calibrator.disk_bytes}
    if not keep_transformer:
        pipeline.transformer = transformer
        pipeline.loader.quantization["transformer"] = report
        pipeline._update_bits()
    return CalibrationResult(transformer, report, settings, seconds, peak, calibrator.block_bytes)


def layer_statistics(pipeline, paths, options: CalibrationOptions | None = None,
                     settings: CalibrationSettings | None = None) -> dict[str, LayerStats]:
    """X^T X of the named layers' inputs over the calibration prompts, from the full-precision model in one
    pass (every layer's statistics at once). The pipeline's transformer is left as it was."""
    from .calibrator import Calibrator as _Calibrator
    options = options or CalibrationOptions()
    settings = settings or settings_for(pipeline, options)
    settings = CalibrationSettings(settings.prompts, settings.size, settings.steps, settings.guidance,
                                   sequential=False, recorded_steps=settings.recorded_steps)
    previous = pipeline.transformer
    transformer, weights = lazy_transformer(pipeline)
    _encode_prompts(pipeline, settings, options)
    pipeline.transformer = transformer
    specs = {path: QuantSpec(8, 64, "gptq") for path in paths}  # only "needs calibration" matters here
    calibrator = _Calibrator(pipeline, transformer, weights, specs, settings, options.progress, options.cancel)
    try:
        stats = calibrator.sample()
    finally:
        pipeline.transformer = previous
        _forget_prompts(pipeline, settings)
    return {path: s.layer_stats() for path, s in stats.items() if s.xtx is not None}


def _encode_prompts(pipeline, settings: CalibrationSettings, options: CalibrationOptions) -> None:
    """The calibration prompts' features, in one text-encoder load; first options.warn hears which of them a text
    encoder reads only in part, and a prompt the family refuses is refused with its line, before the encoder runs."""
    cut = cut_prompt_warnings(type(pipeline), pipeline.info.folder, pipeline.info.max_sequence_length, settings.prompts,
                              options.prompts_file)
    for line in cut if options.warn is not None else ():
        options.warn(line)
    pipeline.encode_prompts(list(dict.fromkeys([*settings.prompts, ""])))


def cut_prompt_warnings(pipeline_class, folder, max_length: int, prompts: tuple[str, ...],
                        prompts_file=None) -> list[str]:
    """One line for each text encoder of the model in `folder` that reads only part of some calibration prompts
    (read from its tokenizers, nothing loaded); nothing for a tokenizer that cannot be read (loading says why). A
    prompt the family refuses (Qwen-Image 2.1's over-long ones) raises InvalidRequest naming its line."""
    where = f" in {prompts_file}" if prompts_file is not None else ""
    unit, numbers = prompt_numbers(prompts, prompts_file)
    try:
        cuts = pipeline_class.prompt_cuts(Path(folder), list(prompts), max_length)
    except (CheckpointError, OSError):
        return []
    except InvalidRequest as refused:
        for number, prompt in zip(numbers, prompts):  # which one: only now, one at a time
            try:
                pipeline_class.prompt_cuts(Path(folder), [prompt], max_length)
            except InvalidRequest as exc:
                raise InvalidRequest(f"calibration prompts{where}, {unit} {number}: {exc}") from None
        raise InvalidRequest(f"calibration prompts{where}: {refused}") from None
    return calibration_cut_lines(cuts, numbers, unit, where)


def _forget_prompts(pipeline, settings: CalibrationSettings) -> None:
    """The calibration prompts' text features leave the pipeline's cache: they are not the user's."""
    cache = getattr(pipeline, "_prompt_cache", None)
    if isinstance(cache, dict):
        for prompt in settings.prompts:
            cache.pop(prompt, None)
