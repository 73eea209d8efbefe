"""One generation, the same for the CLI and the workbench: check, load (or reuse), generate, write the PNG
with its settings, record history.

Everything that can be refused is refused before anything loads: the settings (GenerationSettings), what
the model can do, the destination, and whether the run fits in memory. The PNG's text chunks and the
history line are the same record, so `quantbench generate` and the workbench write the same keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from . import __version__
from .atomic import check_apart, check_destination, check_folder_writable
from .disk_space import check_free_space, picture_bytes
from .errors import InvalidRequest
from .distributed import World, all_gather_bytes, decode, encode, world
from .fit import RunShape, WillNotFit, default_text_encoder_bits, lean_vae_tile, refuse_if_too_big
from .generation import CancelToken, GenerationResult, GenerationSettings, StepCallback, dtype_name, parse_dtype
from .images import save_png
from .lora_request import lora_requests
from .memory import RssPeak
from .pipeline_base import MemoryOptions, free_buffers, freed_when_cancelled
from .pipelines import (check_model_loras, check_model_references, encoded_prompts, load_pipeline, model_defaults,
                        native_size, prompt_warnings, supports_true_cfg, tell_calibration_cuts, validate_request)
from .quant import QuantSpec, parse_spec, parse_text_encoder_spec
from .reference_images import reference_size
from .saved_request import check_saved_request
from .sources import resolve_model_folder


class History(Protocol):
    def append(self, record: dict) -> None: ...


@dataclass
class ModelSlot:
    """One loaded model, reused while the model, its precisions and the memory options stay the same."""

    pipeline: object | None = None
    key: tuple | None = None

    def release(self) -> None:
        self.pipeline, self.key = None, None
        free_buffers()


@dataclass(frozen=True)
class Plan:
    """A checked run: the settings with every default filled in, and what loading needs."""

    settings: GenerationSettings  # steps, width and height resolved; guidance as asked (None: the model's)
    folder: Path
    transformer_bits: QuantSpec | dict | None
    text_encoder_bits: QuantSpec | None
    dtype: object  # mx.Dtype
    quantize_label: int | str | None  # what the record says: bits, a spec ('3:hqq:32'), or the plan as named
    saved_text_encoder: bool = False  # the folder's text encoder was saved by quantbench: it loads as saved
    prompts: tuple[str, ...] = ()  # what the run encodes: the prompt, and a negative one when true CFG runs
    prompt_warnings: tuple[str, ...] = ()  # a prompt longer than a text encoder reads: what it leaves out
    # calibration prompts a text encoder reads only in part: said through the calibration's `warn` as the plan
    # was made, before any search or load (which then say nothing of them)
    calibration_warnings: tuple[str, ...] | None = None
    # the user's calibration prompts (and their file), where the transformer calibrates on them; None: the model's own
    calibration_prompts: tuple[str, ...] | None = None
    calibration_file: Path | None = None

    def key(self, memory: MemoryOptions) -> tuple:
        s = self.settings
        bits = self.transformer_bits if not isinstance(self.transformer_bits, dict) \
            else tuple(sorted(self.transformer_bits.items()))
        # other calibration prompts calibrate other weights: a loaded model calibrated on the last ones is not this one
        return (s.model, bits, self.text_encoder_bits, s.text_encoder_layers, dtype_name(self.dtype), memory,
                self.calibration_prompts, tuple(lora.identity() for lora in lora_requests(s.loras)))


@dataclass
class Outcome:
    result: GenerationResult
    path: Path
    record: dict  # the PNG's text chunks and the history line
    load_seconds: float = 0.0  # loading the model, before the run and during it (record["load_seconds"])
    pipeline: object = field(default=None, repr=False)
    # what the user should know: a prompt longer than a text encoder reads, tensors the model did not use
    warnings: list[str] = field(default_factory=list)
    predicted: object = None  # the memory model's FitCheck for this run, when it knows the model
    told: int = 0  # the first `told` warnings were handed to generate_image's `warn` as the run began

    @property
    def untold_warnings(self) -> list[str]:
        """The warnings not said yet: what a caller that passed `warn` still has to say."""
        return self.warnings[self.told:]


def plan_generation(settings: GenerationSettings, *, allow_download: bool = False,
                    progress: Callable[[str], None] | None = None, calibration=None) -> Plan:
    """Check `settings` against the model (without loading weights) and fill in its defaults.

    A quantize spec of auto:BITS or auto:SIZE searches a plan first (minutes on a large model);
    `calibration` (quant.calibration.CalibrationOptions) serves a search whose method calibrates."""
    from .lab.structure import transformer_structure
    from .lab.precisions import spec_calibrates
    from .lab.quantize_option import check_split_quantize, parse_quantize_spec, spec_label
    settings.validate()
    settings = replace(settings, loras=lora_requests(settings.loras))
    text_encoder_bits = parse_text_encoder_spec(settings.text_encoder_quantize)
    dtype = parse_dtype(settings.dtype)
    folder = resolve_model_folder(settings.model, allow_download=allow_download)
    check_model_loras(folder, settings.loras, allow_download, progress)
    images = check_model_references(folder, settings.reference_images)
    defaults = model_defaults(folder)
    width, height = native_size(folder, settings.width, settings.height, images)
    settings = replace(settings, width=width, height=height, steps=settings.steps or defaults.steps,
                       reference_images=images)
    guidance = validate_request(folder, defaults, settings.negative_prompt, settings.guidance, width, height,
                                settings.steps, settings.true_cfg)
    prompts = encoded_prompts(folder, defaults, settings.prompt, settings.negative_prompt, guidance, settings.true_cfg)
    cut = tuple(prompt_warnings(folder, defaults, prompts))
    transformer_structure(folder)  # the transformer's config, checked by the family before the memory model reads it
    calibration = calibration.with_prompts_read() if calibration is not None else None
    saved = check_saved_request(folder, settings.quantize, settings.text_encoder_quantize,
                                calibration_prompts=calibration.prompts if calibration else None,
                                prompts_file=calibration.prompts_file if calibration else None)
    if settings.text_encoder_quantize is None and isinstance(saved.text_encoder_spec, QuantSpec):
        text_encoder_bits = saved.text_encoder_spec  # the folder's own (none asked): what loads, said as such
    if settings.quantize is None and saved.transformer_spec is not None:  # the folder's own: say what it is
        bits = saved.transformer_spec
        label = bits.to_json() if isinstance(bits, QuantSpec) else spec_label(bits, "saved")
        return Plan(settings, folder, bits, text_encoder_bits, dtype, label, saved_text_encoder=bool(saved.text_encoders),
                    prompts=prompts, prompt_warnings=cut)
    told, calibration = tell_calibration_cuts(folder, calibration, lambda: spec_calibrates(settings.quantize))
    ranks = world().size  # under mlx.launch, the transformer is split across them
    check_split_quantize(folder, settings.quantize, ranks)  # before an auto: search of minutes
    bits = parse_quantize_spec(settings.quantize, folder, text_encoder_layers=settings.text_encoder_layers,
                               dtype=dtype, progress=progress, calibration=calibration, loras=settings.loras)
    check_split_quantize(folder, settings.quantize, ranks, bits)  # before the text encoder loads
    label = (None if bits is None else bits.to_json() if isinstance(bits, QuantSpec)
             else spec_label(bits, str(settings.quantize)))
    own = calibration is not None and calibration.prompts is not None and spec_calibrates(settings.quantize)
    return Plan(settings, folder, bits, text_encoder_bits, dtype, label, saved_text_encoder=bool(saved.text_encoders),
                prompts=prompts, prompt_warnings=cut, calibration_warnings=told,
                calibration_prompts=tuple(calibration.prompts) if own else None,
                calibration_file=_absolute(calibration.prompts_file) if own else None)


def run_shape(plan: Plan, memory: MemoryOptions, ranks: int = 1) -> RunShape:
    """What the memory model needs to know of this run (`ranks`: the transformer split across that many)."""
    s = plan.settings
    return RunShape(plan.transformer_bits, plan.text_encoder_bits, s.width, s.height, memory.evict_text_encoder,
                    memory.vae_tile, dtype_name(plan.dtype), s.text_encoder_layers,
                    release_transformer_for_decode=memory.release_transformer_for_decode, ranks=ranks,
                    keep_dequantized=memory.keep_dequantized,
                    reference_sizes=tuple(reference_size(path) for path in s.reference_images)).encoding(plan.prompts)


def with_fitted_vae_tile(plan: Plan, memory: MemoryOptions) -> MemoryOptions:
    """`memory` with the VAE tile the memory model fits to this run, when it asks for one."""
    if not memory.fit_vae_tile:
        return memory
    tile = lean_vae_tile(plan.settings.model, plan.folder, replace(run_shape(plan, memory), vae_tile=None))
    return replace(memory, vae_tile=tile, fit_vae_tile=False)


def with_default_text_encoder(plan: Plan, memory: MemoryOptions) -> Plan:
    """The plan with the text encoder's precision the memory model finds best when the user named none."""
    if plan.settings.text_encoder_quantize is not None or plan.saved_text_encoder:
        return plan  # the user's choice, or a saved text encoder, which loads as it was saved
    bits = default_text_encoder_bits(plan.settings.model, plan.folder, run_shape(plan, memory))
    return replace(plan, text_encoder_bits=parse_spec(bits))


def check_fit(plan: Plan, memory: MemoryOptions, force: bool = False, ranks: World | None = None):
    """The memory model's FitCheck for the run (None for a model it does not know); raises WillNotFit. Split
    across ranks, each rank checks its own share against its own machine (and says which rank and host it is)."""
    ranks = ranks or World()
    try:
        return refuse_if_too_big(plan.settings.model, plan.folder, run_shape(plan, memory, ranks.size), force=force)
    except WillNotFit as exc:
        if ranks.size == 1:
            raise
        raise WillNotFit(f"rank {ranks.rank} on {ranks.host}, holding 1/{ranks.size} of the transformer: {exc}") from None


@dataclass(frozen=True)
class PreparedRun:
    """A run as it will happen: the plan and memory options it really uses, and the memory model's FitCheck
    for them (None for a model the memory model cannot read)."""

    plan: Plan
    memory: MemoryOptions
    fit: object = None


def prepare_run(plan: Plan, memory: MemoryOptions, slot: ModelSlot, force: bool = False,
                ranks: World | None = None) -> PreparedRun:
    """The run with the fitted VAE tile and the default text encoder precision filled in, and its fit;
    raises WillNotFit unless it fits, `force` is set or the model is already loaded in `slot` (then it
    evidently fits)."""
    memory = with_fitted_vae_tile(plan, memory)
    plan = with_default_text_encoder(plan, memory)
    loaded = plan.key(memory) == slot.key
    return PreparedRun(plan, memory, check_fit(plan, memory, force or loaded, ranks))


def rank_figures(ranks: World, result: GenerationResult, pipeline, load_peak_rss: int) -> list[dict]:
    """Every rank's peak memory and step times, gathered from the ranks (each generated the same picture), with
    what loading its share of the transformer read from the checkpoint and its peak while loading."""
    loaded = pipeline.info.loader.reports.get("transformer") if pipeline.info.loader else None
    mine = {"rank": ranks.rank, "host": ranks.host, "peak_memory": result.peak_memory, "peak_rss": result.peak_rss,
            "load_peak_rss": load_peak_rss, "transformer_read_bytes": loaded.bytes_read if loaded else None,
            "step_seconds": [round(t, 4) for t in result.step_seconds]}
    return [decode(b) for b in all_gather_bytes(ranks, encode(mine), what="generate",
                                                 own_seconds=result.total_seconds)]


def generate_image(settings: GenerationSettings | Plan | PreparedRun, *, out: Path | None = None, images_dir: Path | None = None,
                   overwrite: bool = False, slot: ModelSlot | None = None, memory: MemoryOptions | None = None,
                   history: History | None = None, force: bool = False, allow_download: bool = False,
                   on_step: StepCallback | None = None, on_loading: Callable[[], None] | None = None,
                   progress: Callable[[str], None] | None = None, cancel: CancelToken | None = None,
                   preview: bool = True, calibration=None, warn: Callable[[str], None] | None = None,
                   on_component_loading: Callable[[str, bool], None] | None = None) -> Outcome:
    """Check, load (or reuse `slot`'s model), generate, write the PNG to `out` (or a new name in
    `images_dir`), append the record to `history`. Raises QuantbenchError (one line) for what the user
    can fix, Cancelled when `cancel` is set (checked while the model loads, between its layers, and between
    steps): nothing is written then, and a model cancelled while loading is not kept in `slot`.

    `settings` may be a Plan that `plan_generation` already made (an auto: plan is not searched twice), or
    a PreparedRun that `prepare_run` made (its memory options are the run's; `memory` must not be given).
    `calibration` (quant.calibration.CalibrationOptions: prompts, progress) serves a quantization method
    that calibrates (gptq, awq); `cancel` stops a calibration too. `warn` hears each warning known before loading
    (a prompt longer than a text encoder reads) as soon as it is; the Outcome's warnings list them all.
    `on_loading` hears the model's load begin; `on_component_loading(component, done)` each component loaded during
    the run itself, as it begins and ends ("text encoder", "transformer": memory options that free them load them
    again there)."""
    if (out is None) == (images_dir is None):
        raise ValueError("give exactly one of out and images_dir")
    ranks = world()  # under mlx.launch, the transformer is split across the ranks and rank 0 writes
    if out is not None and ranks.is_leader:
        check_destination(out, overwrite)
    calibration = _with_cancel(calibration, cancel)
    slot = slot if slot is not None else ModelSlot()
    prepared = _prepared(settings, memory, slot, force, ranks, allow_download, progress, calibration)
    plan, memory, predicted = prepared.plan, prepared.memory, prepared.fit
    if warn is not None and ranks.is_leader:
        for warning in plan.prompt_warnings:
            warn(warning)
    if out is not None and ranks.is_leader:
        check_apart(out, plan.folder)
    if images_dir is not None and ranks.is_leader:
        check_folder_writable(images_dir)
    if ranks.is_leader:
        s = plan.settings
        # the images folder by its own name: a made-up "picture.png" in it sent the user looking for that file
        check_free_space(out or images_dir, picture_bytes(s.width, s.height), "the picture")
    with RssPeak() as loading:
        load_seconds = load_into(slot, plan, memory, allow_download, on_loading,
                                 calibration if plan.calibration_warnings is None else replace(calibration, warn=None),
                                 cancel)
    s = plan.settings
    extra = {"true_cfg": s.true_cfg} if supports_true_cfg(plan.folder) else {}
    extra.update({"images": s.reference_images} if s.reference_images else {})
    with slot.pipeline.loads_told_to(on_component_loading):
        result = slot.pipeline.generate(s.prompt, s.negative_prompt, s.steps, s.guidance, s.seed, s.width,
                                        s.height, callback=on_step, cancel=cancel, preview=preview, **extra)
    if result.pixels is not None and not np.isfinite(result.pixels).all():
        raise InvalidRequest(f"the picture came out as NaN or infinity (a numerical overflow in "
                             f"{slot.pipeline.info.dtype}?): nothing was written")
    # The run's real peak includes loading (quantizing a transformer can peak above generating).
    result.peak_rss = max(result.peak_rss, loading.peak)
    # The run's loads: the model before it, and a transformer loaded once the prompt was encoded (its quantization).
    total_seconds = load_seconds + result.total_seconds
    load_seconds += result.load_seconds
    record = _record(plan, result, slot.pipeline, load_seconds, total_seconds)
    if ranks.size > 1:
        record["ranks"] = rank_figures(ranks, result, slot.pipeline, loading.peak)
        if not ranks.is_leader:
            return Outcome(result, None, record, load_seconds, slot.pipeline, _warnings(plan, slot.pipeline))
    path = out if out is not None else _new_image_path(images_dir, result.seed, plan)
    record["image"] = str(path)
    save_png(result.image, path, {k: v for k, v in record.items() if v is not None}, overwrite=overwrite)
    warnings = _warnings(plan, slot.pipeline)
    if history is not None:
        try:
            history.append(record)
        except OSError as exc:  # the picture is written: a history that cannot take the line must not lose it
            warnings.append(f"{path} is saved, but the history{f' {exc.filename}' if exc.filename else ''} could "
                            f"not record it ({exc.strerror or exc})")
    told = len(plan.calibration_warnings or ()) + (len(plan.prompt_warnings) if warn is not None else 0)
    return Outcome(result, path, record, load_seconds, slot.pipeline, warnings, predicted, told=told)


def _warnings(plan: Plan, pipeline) -> list[str]:
    """The run's warnings, those already told first: the calibration prompts' (told as the plan was made), the
    prompts' (told through generate_image's `warn` before loading), then the load's."""
    return [*(plan.calibration_warnings or ()), *plan.prompt_warnings, *load_warnings(pipeline)]


def _prepared(settings: GenerationSettings | Plan | PreparedRun, memory: MemoryOptions | None, slot: ModelSlot,
              force: bool, ranks: World, allow_download: bool, progress, calibration) -> PreparedRun:
    """The run generate_image was given, planned and prepared where it was not already."""
    if isinstance(settings, PreparedRun):
        if memory is not None:
            raise ValueError("a PreparedRun carries its own memory options")
        return settings
    plan = settings if isinstance(settings, Plan) else plan_generation(settings, allow_download=allow_download,
                                                                       progress=progress, calibration=calibration)
    return prepare_run(plan, memory or MemoryOptions(), slot, force, ranks)


def load_into(slot: ModelSlot, plan: Plan, memory: MemoryOptions, allow_download: bool = False,
              on_loading: Callable[[], None] | None = None, calibration=None,
              cancel: CancelToken | None = None) -> float:
    """Load the plan's model into `slot` unless it is there already; the seconds it took (a calibration
    included). Once `cancel` is set the load stops with Cancelled within a layer, `slot` left empty and what
    the load had read let go: the next load starts afresh."""
    key = plan.key(memory)
    if key == slot.key and slot.pipeline is not None:
        return 0.0
    if on_loading is not None:
        on_loading()
    slot.release()  # let the previous model go before loading the next
    started = time.perf_counter()
    with freed_when_cancelled():
        pipeline = load_pipeline(plan.folder, quantize=plan.transformer_bits,
                                 text_encoder_quantize=plan.text_encoder_bits, dtype=plan.dtype,
                                 text_encoder_layers=plan.settings.text_encoder_layers, memory=memory,
                                 allow_download=allow_download, calibration=calibration,
                                 ranks=world().group, cancel=cancel, loras=plan.settings.loras)
    slot.pipeline, slot.key = pipeline, key
    return time.perf_counter() - started


def _with_cancel(calibration, cancel: CancelToken | None):
    """The calibration options, stopped by the run's cancel token too."""
    if cancel is None:
        return calibration
    from .quant.calibration import CalibrationOptions
    return replace(calibration or CalibrationOptions(), cancel=calibration.cancel if calibration and
                   calibration.cancel else cancel)


def load_warnings(pipeline) -> list[str]:
    """Checkpoint tensors the model built from config.json had no place for (the load reports list them), and a
    keep-dequantized budget that kept nothing."""
    return _kept_nothing(pipeline) + [f"{report.component}: {len(report.unexpected)} checkpoint tensors are not used by the model its "
            f"config.json describes: {', '.join(report.unexpected[:3])}"
            + (f" (and {len(report.unexpected) - 3} more)" if len(report.unexpected) > 3 else "")
            for report in pipeline.info.weights if report.unexpected]


def _kept_nothing(pipeline) -> list[str]:
    if not pipeline.memory.keep_dequantized or pipeline.info.kept_dequantized_bytes:
        return []
    why = ("the transformer has no quantized layer (give --quantize)" if pipeline.loader.transformer_bits is None
           else "quantized layers run MLX's own quantized kernels here (it is for the CPU backend)")
    return [f"keep dense (--keep-dequantized) kept nothing: {why}"]


def _record(plan: Plan, result: GenerationResult, pipeline, load_seconds: float, total_seconds: float) -> dict:
    """The run as the PNG and the history keep it (the history's keys since its first version)."""
    settings = replace(result.settings(plan.settings), quantize=plan.quantize_label,
                       text_encoder_quantize=None if plan.text_encoder_bits is None
                       else plan.text_encoder_bits.to_json())
    return {
        "time": time.time(), **settings.to_record(), "dtype": pipeline.info.dtype,
        "step_seconds": [round(s, 4) for s in result.step_seconds], "total_seconds": round(total_seconds, 3),
        "load_seconds": round(load_seconds, 3), "encode_seconds": round(result.encode_seconds, 3),
        "decode_seconds": round(result.decode_seconds, 3), "peak_memory": result.peak_memory, "phase_peaks": result.phase_peaks,
        "peak_rss": result.peak_rss, "quantbench_version": __version__,
        **({"calibration_prompts": str(plan.calibration_file)} if plan.calibration_file is not None else {}),
    }


def _absolute(path) -> Path | None:
    """The calibration prompts' file as the record names it: absolute, so that a rerun from elsewhere finds it."""
    return None if path is None else Path(path).absolute()


def _new_image_path(folder: Path, seed: int, plan: Plan) -> Path:
    bits = plan.transformer_bits
    precision = ("unquantized" if bits is None else f"q{bits}".replace(":", "-") if isinstance(bits, QuantSpec)
                 else "mixed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, counter = folder / f"{stamp}-seed{seed}-{precision}.png", 1
    while path.exists():
        path = folder / f"{stamp}-seed{seed}-{precision}-{counter}.png"
        counter += 1
    return path
