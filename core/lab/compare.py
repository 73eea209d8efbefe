"""The same generation at several precisions: memory, time and how far each picture moves.

The model is loaded once, in full precision (its weights are read from disk once per compare), and
the prompt is encoded once (the text encoder does not change between precisions). Every other
precision is quantized in memory from the loaded full-precision transformer (the same arithmetic
as quantizing while loading: weights rounded to bf16, then quantized with bf16 scales, so the
picture is bit for bit the one `generate --quantize` draws), swapped into the pipeline, run, and
dropped.

Memory figures per precision (MLX allocations, bytes):
- `transformer_bytes`: the transformer's parameters at that precision, exactly as a load from disk
  at that precision gives them.
- `load_peak`: for the full-precision row, the peak while loading from disk. For the others, the peak
  while quantizing in memory, *less* the full-precision weights the quantized transformer does not
  share, which stay resident for the next precision but which a load from disk would not hold
  (measured: the reference's bytes less what the new transformer did not newly allocate);
  `load_peak_measured` is the raw figure. `load_peak_predicted` is core.memory_model's prediction
  for a streamed load from disk at that precision (uniform precisions only).
- `generate_peak`: the peak while generating, less the same resident full-precision weights
  (`generate_peak_measured` is the raw figure).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from PIL import Image, ImageDraw, ImageFont

from ..distributed import RankSummary, distributed_section, split_runs, world
from ..errors import Cancelled, InvalidRequest
from ..generation import CancelToken, GenerationResult, GenerationSettings, StepCallback, dtype_name, parse_dtype
from ..memory import format_bytes, reset_peak
from ..metrics import psnr, ssim
from ..quant import (QuantSpec, cast_full_precision, evaluate_in_units, model_nbytes, parse_spec, quantize_model,
                     use_dense_matmul)
from .models import is_builtin, resolve_lab_model
from .plans import (QuantPlan, check_plan_layers, is_plan_path, load_plan, parse_budget,
                    quantizable_layers, transformer_structure)

DEFAULT_PRECISIONS = ("bf16", "8", "6", "5", "4", "3")
COLUMNS = ("precision", "transformer", "load peak", "gen peak", "s/step", "total s", "PSNR dB", "SSIM")
ATTRIBUTE_COLUMN = "attributes"


# ---------------------------------------------------------------------------------------------
# Precisions
# ---------------------------------------------------------------------------------------------

@dataclass
class PrecisionSpec:
    """One entry of --precisions: 'bf16', '4', '3:hqq:32', 'auto:4.5', 'auto:2.5:hqq', 'auto:2GB' or a plan file."""

    text: str
    bits: QuantSpec | None = None  # a uniform precision
    budget: object | None = None  # plans.Budget
    plan: QuantPlan | None = None

    @property
    def is_reference(self) -> bool:
        return self.bits is None and self.budget is None and self.plan is None

    @property
    def label(self) -> str:
        if self.is_reference:
            return "bf16"
        if self.bits is not None:
            return f"q{self.bits}"
        if self.budget is not None:
            return self.budget.label
        return Path(self.text).name


def parse_precisions(value: str | list[str] | tuple[str, ...]) -> list[PrecisionSpec]:
    """Comma-separated precisions; the full-precision reference always comes first (added if absent)."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not items:
        raise InvalidRequest("no precisions given: e.g. --precisions bf16,8,6,5,4,3")
    specs: list[PrecisionSpec] = []
    for item in items:
        item = str(item)
        if item.lower().startswith("auto:"):
            spec = PrecisionSpec(item, budget=parse_budget(item))
        elif is_plan_path(item):
            spec = PrecisionSpec(item, plan=load_plan(item))
        else:
            try:
                spec = PrecisionSpec(item, bits=parse_spec(item))
            except InvalidRequest as error:
                raise InvalidRequest(f"{error}; or auto:BITS (e.g. auto:4.5), auto:SIZE (e.g. auto:2GB) or a plan "
                                     "file (.json)") from None
        if any(s.label == spec.label for s in specs):
            continue
        specs.append(spec)
    reference = [s for s in specs if s.is_reference]
    return (reference or [PrecisionSpec("bf16")]) + [s for s in specs if not s.is_reference]


# ---------------------------------------------------------------------------------------------
# Requests and results
# ---------------------------------------------------------------------------------------------

@dataclass
class CompareRequest:
    model: str
    prompt: str
    seed: int = 0
    precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None  # default: the built-in model's size, else 1024
    height: int | None = None
    text_encoder_quantize: QuantSpec | int | str | None = None
    text_encoder_layers: tuple[int, ...] | None = None
    dtype: str | None = None
    allow_download: bool = False
    force: bool = False  # run even when the memory model says the full-precision load will not fit
    calibration_prompts: tuple[str, ...] | None = None  # for methods that calibrate; None: the model's own


def compare_request(settings: GenerationSettings, precisions: tuple[str, ...] | str = DEFAULT_PRECISIONS,
                    force: bool = False) -> CompareRequest:
    """A CompareRequest from the settings a generation takes (the CLI's options, the workbench's form): the
    same model, prompt, seed, size; checked by the same rules."""
    settings.validate()
    return CompareRequest(model=settings.model, prompt=settings.prompt, seed=settings.seed, precisions=precisions,
                          negative_prompt=settings.negative_prompt, steps=settings.steps, guidance=settings.guidance,
                          width=settings.width, height=settings.height,
                          text_encoder_quantize=settings.text_encoder_quantize,
                          text_encoder_layers=settings.text_encoder_layers, dtype=settings.dtype, force=force)


@dataclass
class PrecisionRow:
    label: str
    transformer_bytes: int
    average_bits: float | None  # over quantized weights (None: full precision)
    load_peak: int
    load_peak_measured: int
    load_peak_predicted: int | None
    load_seconds: float
    generate_peak: int
    generate_peak_measured: int
    step_seconds: list[float]
    total_seconds: float
    psnr: float
    ssim: float | None
    image: Image.Image = field(repr=False)
    attributes: dict[str, bool] | None = None
    quantization: str = ""  # the report's summary
    plan: dict[str, str] | None = None  # for mixed precisions: layer -> spec

    def to_payload(self) -> dict:
        """Every field, exactly, with the picture as an array (core.distributed carries it between ranks)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image"}
        return {**data, "image": np.asarray(self.image), "image_mode": self.image.mode}

    @classmethod
    def from_payload(cls, data: dict) -> "PrecisionRow":
        data = dict(data)
        image, mode = Image.fromarray(data.pop("image")), data.pop("image_mode")
        return cls(**data, image=image if image.mode == mode else image.convert(mode))

    @property
    def mean_step_seconds(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 0.0

    @property
    def attribute_accuracy(self) -> float | None:
        return None if self.attributes is None else sum(self.attributes.values()) / len(self.attributes)

    def cells(self, with_attributes: bool = False) -> list[str]:
        bits = "" if self.average_bits is None or self.label.startswith("q") else f" ({self.average_bits:.2f} b)"
        cells = [self.label + bits, format_bytes(self.transformer_bytes), format_bytes(self.load_peak),
                 format_bytes(self.generate_peak), f"{self.mean_step_seconds:.3f}", f"{self.total_seconds:.2f}",
                 format_psnr(self.psnr), "-" if self.ssim is None else f"{self.ssim:.4f}"]
        if with_attributes:
            cells.append("-" if self.attributes is None
                         else f"{sum(self.attributes.values())}/{len(self.attributes)}")
        return cells

    def to_dict(self) -> dict:
        return {"precision": self.label, "transformer_bytes": self.transformer_bytes,
                "average_bits": self.average_bits, "load_peak": self.load_peak,
                "load_peak_measured": self.load_peak_measured, "load_peak_predicted": self.load_peak_predicted,
                "load_seconds": round(self.load_seconds, 4), "generate_peak": self.generate_peak,
                "generate_peak_measured": self.generate_peak_measured,
                "step_seconds": [round(s, 4) for s in self.step_seconds],
                "mean_step_seconds": round(self.mean_step_seconds, 4), "total_seconds": round(self.total_seconds, 4),
                "psnr": "inf" if math.isinf(self.psnr) else round(self.psnr, 4),
                "ssim": None if self.ssim is None else round(self.ssim, 6), "attributes": self.attributes,
                "attribute_accuracy": self.attribute_accuracy, "quantization": self.quantization,
                "plan": self.plan}


def format_psnr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


@dataclass
class CompareReport:
    model: str
    folder: Path
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    dtype: str
    text_encoder: str
    rows: list[PrecisionRow] = field(default_factory=list)
    attributes_checked: bool = False
    seconds: float = 0.0
    ranks: list[RankSummary] = field(default_factory=list)  # what each rank of the job drew

    def table_lines(self) -> list[str]:
        header = list(COLUMNS) + ([ATTRIBUTE_COLUMN] if self.attributes_checked else [])
        body = [r.cells(self.attributes_checked) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        return [line(header)] + [line(b) for b in body]

    def to_dict(self) -> dict:
        return {"model": self.model, "folder": str(self.folder), "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "seed": self.seed, "steps": self.steps,
                "guidance": self.guidance, "width": self.width, "height": self.height, "dtype": self.dtype,
                "text_encoder": self.text_encoder, "seconds": round(self.seconds, 3),
                "rows": [r.to_dict() for r in self.rows],
                "notes": {"load_peak": LOAD_PEAK_NOTE, "generate_peak": GENERATE_PEAK_NOTE,
                          "average_bits": "nominal bits per quantized weight; scales and biases add 32/group "
                                          "(0.5 for groups of 64)"},
                **distributed_section(self.ranks)}


LOAD_PEAK_NOTE = ("bf16: peak while loading from disk. Others: peak while quantizing in memory from the loaded "
                  "full-precision weights, less those weights (a load from disk would not hold them); "
                  "load_peak_predicted: the memory model's streamed load from disk")
GENERATE_PEAK_NOTE = ("peak while generating; for the quantized precisions, less the full-precision weights held "
                      "only for the next precision")


# ---------------------------------------------------------------------------------------------
# In-memory requantization
# ---------------------------------------------------------------------------------------------

class Requantizer:
    """Quantized transformers made in memory from one loaded full-precision transformer.

    build() repeats what loading from disk does after reading: parameters in the checkpoint's dtype,
    quantize_model, cast_full_precision, the dense matmul on the CPU, one layer at a time; only the
    source is the loaded full-precision copy instead of the files (exact when the compute dtype holds
    the checkpoint's values, as float32 on the CPU or bf16 compute of a bf16 checkpoint do)."""

    def __init__(self, pipeline):
        from .plans import CHECKPOINT_DTYPES, loaded_dtypes
        self.pipeline = pipeline
        self.reference = pipeline.transformer
        self.params = tree_flatten(self.reference.parameters())
        self.reference_bytes = sum(a.nbytes for _, a in self.params)
        self.source = {k: CHECKPOINT_DTYPES[v] for k, v in loaded_dtypes(pipeline).items() if v in CHECKPOINT_DTYPES}
        self.extra = 0

    def build(self, spec: QuantSpec | Mapping[str, QuantSpec], calibration=None):
        """(transformer, QuantizationReport) for `spec` (one spec, or {layer: spec}); sets `extra`. A method
        that calibrates (gptq, awq) reads the weights again from the checkpoint, block by block."""
        from ..quant.calibration import calibrate, needs_calibration
        if needs_calibration(spec):
            result = calibrate(self.pipeline, spec, calibration, keep_transformer=True)
            self.extra = self.reference_bytes  # none of the reference is shared
            return result.transformer, result.report
        active_before = mx.get_active_memory()
        model = type(self.reference)(self.reference.config)  # lazy random init, replaced before anything runs
        model.update(tree_unflatten([(k, v.astype(self.source.get(k, v.dtype))) for k, v in self.params]))
        report = quantize_model(model, spec, self.pipeline.transformer_policy, "transformer")
        cast_full_precision(model, self.pipeline.dtype)
        if self.pipeline.info.quantized_matmul == "dense":
            use_dense_matmul(model)
        evaluate_in_units(model)
        report.nbytes = model_nbytes(model)
        # What the new model shares with the reference = its bytes - the memory it newly took; the rest of
        # the reference is held only for the next precision (a load from disk would not hold it).
        shared = max(0, report.nbytes - (mx.get_active_memory() - active_before))
        self.extra = max(0, self.reference_bytes - shared)
        return model, report

    @contextmanager
    def using(self, transformer):
        self.pipeline.transformer = transformer
        try:
            yield
        finally:
            self.pipeline.transformer = self.reference


# ---------------------------------------------------------------------------------------------
# The compare
# ---------------------------------------------------------------------------------------------

def default_size(source: str, folder: Path) -> int:
    if is_builtin(source, folder):
        from ..catalog import find_entry
        entry = find_entry(str(source)) or find_entry("demo")
        if entry is not None and entry.default_size:
            return entry.default_size[0]
    return 1024


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
        entry = entry_from_folder(folder, request.text_encoder_layers)
        plan = Plan(transformer_bits=bits, text_encoder_bits=parse_spec(request.text_encoder_quantize), width=width,
                    height=height, load="streamed", dtype=dtype, backend=backend)
        return predict(entry, plan).load_peak
    except (QuantbenchError, KeyError, ValueError):
        return None


def _check_not_saved(folder: Path) -> None:
    from ..checkpoint import open_component
    from ..quant.saved import read_saved
    if read_saved(open_component(folder / "transformer")) is not None:
        raise InvalidRequest(f"{folder} holds a transformer quantized by quantbench: compare needs the "
                             "full-precision model (give the original)")


def run_compare(request: CompareRequest, on_row: Callable[[PrecisionRow], None] | None = None,
                on_status: Callable[[str], None] | None = None, on_step: StepCallback | None = None,
                cancel: CancelToken | None = None) -> CompareReport:
    """Generate the same picture at each precision of `request`; call on_row as each one finishes."""
    from ..pipelines import load_pipeline, model_defaults, validate_request
    from .planner import make_plan

    started = time.perf_counter()
    status = on_status or (lambda message: None)
    specs = parse_precisions(request.precisions)
    text_encoder_bits = parse_spec(request.text_encoder_quantize)
    compute_dtype = parse_dtype(request.dtype)
    folder = resolve_lab_model(request.model, allow_download=request.allow_download)
    _check_not_saved(folder)
    defaults = model_defaults(folder)
    width = request.width or default_size(request.model, folder)
    height = request.height or default_size(request.model, folder)
    steps = request.steps or defaults.steps
    guidance = validate_request(folder, defaults, request.negative_prompt, request.guidance, width, height, steps)
    builtin = is_builtin(request.model, folder)
    scene = world_scene(request.prompt) if builtin else None
    if any(spec.plan is not None for spec in specs):
        structure = transformer_structure(folder)  # config only: a bad plan is refused before any loading
        for spec in specs:
            if spec.plan is not None:
                check_plan_layers(spec.plan, structure, source=spec.text)

    from ..fit import RunShape, refuse_if_too_big
    refuse_if_too_big(request.model, folder, RunShape(None, text_encoder_bits, width, height, False, None,
                                                      dtype_name(compute_dtype), request.text_encoder_layers),
                      force=request.force)
    status(f"loading {request.model} in full precision (once) ...")
    reset_peak()
    pipeline = load_pipeline(folder, quantize=None, text_encoder_quantize=text_encoder_bits,
                                  dtype=compute_dtype, text_encoder_layers=request.text_encoder_layers,
                                  allow_download=request.allow_download)
    load_peak = mx.get_peak_memory()
    dtype = pipeline.info.dtype
    requantizer = Requantizer(pipeline)
    sizes = quantizable_layers(pipeline.transformer)
    report = CompareReport(request.model, folder, request.prompt, request.negative_prompt, request.seed, steps,
                           guidance, width, height, dtype,
                           "bf16" if text_encoder_bits is None else f"q{text_encoder_bits}",
                           attributes_checked=scene is not None)
    searched: dict[str, dict[str, QuantSpec]] = {}
    reference_image = None

    def generate() -> GenerationResult:
        return pipeline.generate(request.prompt, request.negative_prompt, steps, request.guidance, request.seed,
                                 width, height, callback=on_step, cancel=cancel, preview=on_step is not None)

    def run_one(index: int) -> PrecisionRow:
        nonlocal reference_image
        spec = specs[index]
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")
        if spec.is_reference:
            status("bf16: generating ...")
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

    def quantized_row(spec: PrecisionSpec) -> PrecisionRow:
        layers: QuantSpec | dict[str, QuantSpec]
        label = spec.label
        if spec.bits is not None:
            layers = spec.bits
        elif spec.plan is not None:
            layers = dict(spec.plan.layers)
        else:
            if spec.text not in searched:
                status(f"{spec.text}: searching a mixed-precision plan on the probe pictures ...")
                searched[spec.text] = dict(make_plan(  # probed at this compare's size and steps
                    pipeline, spec.budget, size=min(width, height), steps=steps, model_name=str(request.model),
                    cancel=cancel, calibration=_calibration(request, spec.text, status, cancel),
                    progress=lambda done, total, what: status(f"{spec.text}: [{done}/{total}] {what}")).layers)
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
    from .plans import average_bits
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


def score(row: PrecisionRow, reference: Image.Image) -> None:
    """PSNR and SSIM of the row's picture against the full-precision one."""
    row.psnr = psnr(row.image, reference)
    row.ssim = ssim(row.image, reference) if min(row.image.size) >= 11 else None


# ---------------------------------------------------------------------------------------------
# Contact sheet and outputs
# ---------------------------------------------------------------------------------------------

SHEET_PAD = 8
SHEET_LABEL_HEIGHT = 36
SHEET_MIN_CELL = 192
SHEET_MAX_CELL = 384
SHEET_COLUMNS = 6
SHEET_BACKGROUND = (24, 24, 28)
SHEET_TEXT = (235, 235, 235)
SHEET_MUTED = (160, 160, 170)


def cell_size(width: int, height: int) -> tuple[int, int]:
    """Each picture's size on the sheet: small pictures scaled up by a whole factor, large ones down."""
    if width < SHEET_MIN_CELL:
        factor = math.ceil(SHEET_MIN_CELL / width)
        return width * factor, height * factor
    if width > SHEET_MAX_CELL:
        return SHEET_MAX_CELL, max(1, round(height * SHEET_MAX_CELL / width))
    return width, height


def sheet_size(count: int, width: int, height: int) -> tuple[int, int]:
    cell_w, cell_h = cell_size(width, height)
    columns = min(count, SHEET_COLUMNS)
    rows = math.ceil(count / SHEET_COLUMNS)
    return (columns * cell_w + (columns + 1) * SHEET_PAD,
            rows * (cell_h + SHEET_LABEL_HEIGHT) + (rows + 1) * SHEET_PAD)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def row_caption(row: PrecisionRow) -> tuple[str, str]:
    """('q4', '376 KB, PSNR 58.48 dB'); mixed plans also show their average bits."""
    name = row.label if row.average_bits is None or row.label.startswith("q") \
        else f"{row.label} ({row.average_bits:.2f} b)"
    return name, f"{format_bytes(row.transformer_bytes)}, PSNR {format_psnr(row.psnr)} dB"


def contact_sheet(rows: list[PrecisionRow]) -> Image.Image:
    """The pictures side by side (6 to a row), each labelled with precision, bytes and PSNR."""
    if not rows:
        raise InvalidRequest("no pictures for a contact sheet")
    width, height = rows[0].image.size
    cell_w, cell_h = cell_size(width, height)
    sheet = Image.new("RGB", sheet_size(len(rows), width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title, detail = _font(14), _font(12)
    for i, row in enumerate(rows):
        column, line = i % SHEET_COLUMNS, i // SHEET_COLUMNS
        x = SHEET_PAD + column * (cell_w + SHEET_PAD)
        y = SHEET_PAD + line * (cell_h + SHEET_LABEL_HEIGHT + SHEET_PAD)
        resample = Image.Resampling.NEAREST if cell_w >= width else Image.Resampling.LANCZOS
        sheet.paste(row.image.convert("RGB").resize((cell_w, cell_h), resample), (x, y))
        name, info = row_caption(row)
        draw.text((x + 2, y + cell_h + 3), name, fill=SHEET_TEXT, font=title)
        draw.text((x + 2, y + cell_h + 20), info, fill=SHEET_MUTED, font=detail)
    return sheet


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in label).strip("_")


def write_outputs(report: CompareReport, out: Path | str) -> dict[str, str]:
    """--out DIR: the contact sheet, each picture and report.json; every file written atomically."""
    from ..images import save_png
    from .plans import write_json_atomic
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{out} exists and is not a folder")
    if not out.parent.is_dir():
        raise InvalidRequest(f"{out.parent}: no such folder")
    out.mkdir(exist_ok=True)
    settings = {"model": report.model, "prompt": report.prompt, "seed": report.seed, "steps": report.steps,
                "width": report.width, "height": report.height}
    images = {}
    for row in report.rows:
        path = save_png(row.image, out / f"{_file_label(row.label)}.png",
                        {**settings, "quantize": row.label, "psnr": format_psnr(row.psnr)}, overwrite=True)
        images[row.label] = str(path)
    sheet = save_png(contact_sheet(report.rows), out / "contact_sheet.png",
                     {**settings, "precisions": [r.label for r in report.rows]}, overwrite=True)
    data = report.to_dict()
    for row in data["rows"]:
        row["image"] = images[row["precision"]]
    data["contact_sheet"] = str(sheet)
    json_path = write_json_atomic(out / "report.json", data)
    return {"contact_sheet": str(sheet), "report": str(json_path), "images": images}

