"""Every quantization method on the built-in models and on a Klein-4B-shaped random model: a table and JSON.

Built-in models (`demo`, `demo-turbo`): for each bits x group x method, the transformer is loaded from
disk at that precision (the methods that calibrate, gptq and awq, sample their own calibration captions
first: `quantbench eval`'s prompts are never among them), then `quantbench eval`'s prompts are drawn
(64x64, the model's steps and guidance, seed = index) and compared with the bf16 pictures of the same
seeds: PSNR of the pooled squared error, mean SSIM, and the analyser's attribute accuracy (mean of the
five attributes, and the share of pictures with every attribute right). The mixed plans `auto:2.5` and
`auto:3` are searched with the given method on the planner's probe pictures, then drawn the same way.
"quantize s" is the time to load the transformer at that precision (calibration and plan search
included), "quantize peak" MLX's peak meanwhile (the plan search included), "peak" MLX's peak while
drawing the row's pictures (the highest of every picture's phases: a generation resets MLX's peak
counter as each phase starts). Figures cached before they were measured so print in parentheses.

Random model (`random-model --arch klein-4b --width-scale 0.25`, random bf16 weights): each method at
each bits on 4 general prompts at 256x256 (--random-size lowers it), 4 steps: PSNR of the output pictures against bf16 (noise
pictures: this measures how faithfully each method reproduces the full-precision computation), the
time to quantize and the peaks (MLX's, and the process's peak RSS while quantizing: "quantize RSS").
Calibration there uses 4 other prompts at 64x64 (a CPU cannot afford the default 16 at 512x512 for it
in a benchmark).

After the table, every calibrated row's calibration time and MLX peak (above what was resident when it
started) against issue 16's target: the final transformer plus 1.3 times one block's calibration
statistics (the X^T X of the largest block's input sites, summed; benchmarks/calibration_peak.py measures
only this).

Results are cached per configuration in --cache (a JSON file), so an interrupted run resumes where it
stopped; --fresh ignores the cache.

    python benchmarks/quantizers.py [--models demo,demo-turbo] [--bits 4,3,2] [--groups 64,32]
        [--methods rtn,mse,hqq,gptq,awq] [--plans auto:2.5,auto:3] [--plan-method gptq] [--prompts 125]
        [--random] [--random-bits 4,3] [--random-size 256] [--cache FILE] [--json OUT] [--fresh]
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
import mlx.core as mx
import numpy as np
import psutil

from quantbench.cli.arguments import report_file
from quantbench.cli.eval import EvalSet
from quantbench.core.atomic import write_json
from quantbench.core.memory import RssPeak, reset_peak
from quantbench.core.metrics import psnr
from quantbench.core.pipelines import load_pipeline
from quantbench.core.quant import model_nbytes, parse_spec
from quantbench.core.quant.calibration import GENERAL_PROMPTS, CalibrationOptions
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

RANDOM_PROMPTS = GENERAL_PROMPTS[:4]
RANDOM_SIZE = 256
MAX_RANDOM_SIZE = 2048  # a random-model picture larger than this takes hours here and proves nothing more
RANDOM_STEPS = 4
CALIBRATION_PROMPTS = GENERAL_PROMPTS[4:8]  # the random model calibrates on 4 other prompts, at 64x64
CALIBRATION_SIZE = 64


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Cache:
    """Results by configuration, written to the first file after each one; the other files (other runs of
    this script, e.g. one per model run side by side) are only read."""

    def __init__(self, paths: list[Path], fresh: bool):
        self.path = paths[0]
        self.data = {}
        for path in reversed(paths):
            if path.is_file() and not (fresh and path == self.path):
                self.data.update(json.loads(path.read_text()))

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1))
        temporary.replace(self.path)


def measured_load(folder, precision, label: str, **options):
    """(pipeline, quantize seconds, quantize peak, transformer bytes): the transformer loaded at `precision`."""
    progress = CalibrationOptions(progress=_throttled_log(label))
    mx.clear_cache()
    reset_peak()
    started = time.perf_counter()
    pipeline = load_pipeline(folder, quantize=precision, allow_download=False, calibration=progress, **options)
    pipeline.ensure_transformer()
    seconds = time.perf_counter() - started
    return pipeline, seconds, mx.get_peak_memory(), model_nbytes(pipeline.transformer)


def _throttled_log(label: str):
    from quantbench.core.quant.calibration import throttled
    return throttled(lambda state: log(f"  {label}: {state.line()}"), every=30.0)


# ---------------------------------------------------------------------------------------------
# Built-in models
# ---------------------------------------------------------------------------------------------

def builtin_rows(model: str, specs: list[str], plans: list[str], plan_method: str, prompts: int,
                 cache: Cache) -> list[dict]:
    eval_set = EvalSet(model, prompts)
    reference_key = f"{model}|bf16|{prompts}"
    reference_file = Path(cache.path).with_name(f"quantizers-reference-{model}-{prompts}.npz")
    reference = None
    if cache.get(reference_key) is None or not reference_file.is_file():
        log(f"{model} bf16: drawing {prompts} reference pictures")
        row, reference = _measure_reference(model, eval_set)
        np.savez_compressed(reference_file, images=np.stack(reference))
        cache.put(reference_key, row)
    rows = [cache.get(reference_key)]
    for text in specs + [f"{p}:{plan_method}" for p in plans]:
        key = f"{model}|{text}|{prompts}"
        if cache.get(key) is None:
            if reference is None:
                reference = list(np.load(reference_file)["images"])
            log(f"{model} {text}: quantizing")
            cache.put(key, _measure_builtin(model, eval_set, text, reference))
        rows.append(cache.get(key))
        log(f"{model} {text}: {_summary(rows[-1])}")
    return rows


def _measure_reference(model: str, eval_set: EvalSet) -> tuple[dict, list[np.ndarray]]:
    """The bf16 row and its pictures. Its own function, so that the bf16 model is freed before the next row
    loads: kept, it would count in every later row's peaks."""
    pipeline, seconds, load_peak, nbytes = measured_load(eval_set.folder, None, f"{model} bf16")
    drawing = eval_set.draw(pipeline, log, "bf16")
    row = {"model": model, "precision": "bf16", "transformer_bytes": nbytes, "quantize_seconds": round(seconds, 2),
           "quantize_peak": load_peak, "peak": drawing.peak_memory, "peak_every_picture": True,
           **eval_set.score(drawing.images, None)}
    return row, drawing.images


def _measure_builtin(model: str, eval_set: EvalSet, text: str, reference) -> dict:
    from quantbench.core.lab.quantize_option import parse_quantize_spec
    started = time.perf_counter()
    reset_peak()
    precision = parse_quantize_spec(text, eval_set.folder, progress=log,
                                    calibration=CalibrationOptions(progress=_throttled_log(text)))
    search_seconds, search_peak = time.perf_counter() - started, mx.get_peak_memory()
    pipeline, seconds, load_peak, nbytes = measured_load(eval_set.folder, precision, f"{model} {text}")
    drawing = eval_set.draw(pipeline, log, text)
    row = {"model": model, "precision": text, "transformer_bytes": nbytes,
           "quantize_seconds": round(search_seconds + seconds, 2), "quantize_peak": max(search_peak, load_peak),
           "quantize_peak_with_search": True,
           "peak": drawing.peak_memory, "peak_every_picture": True, **eval_set.score(drawing.images, reference)}
    calibration = pipeline.info.quantization[0].calibration if pipeline.info.quantization else None
    if calibration:
        row["calibration"] = calibration
    if isinstance(precision, dict):
        row["average_bits"] = round(_average_bits(pipeline.transformer, precision), 3)
    return row


def _average_bits(transformer, plan: dict) -> float:
    """Bits per quantized weight of a plan, from the quantized layers themselves."""
    from quantbench.core.quant import module_at
    total = weighted = 0
    for path, spec in plan.items():
        layer = module_at(transformer, path)
        elements = layer.weight.shape[0] * layer.weight.shape[1] * 32 // layer.bits
        total += elements
        weighted += elements * spec.bits
    return weighted / max(total, 1)


# ---------------------------------------------------------------------------------------------
# The Klein-4B-shaped random model
# ---------------------------------------------------------------------------------------------

def random_rows(specs: list[str], cache: Cache, folder: Path | None, size: int = RANDOM_SIZE) -> list[dict]:
    from quantbench.core.random_model import write_random_model
    folder = folder or Path(tempfile.mkdtemp(prefix="qb-random-")) / "klein-4b-0.25"
    if not (folder / "model_index.json").is_file():
        log(f"writing the random Klein-4B-shaped model (width 0.25) to {folder}")
        write_random_model(folder, "klein-4b", width_scale=0.25)
    rows, reference = [], None
    reference_file = Path(cache.path).with_name(f"quantizers-reference-random-klein-4b-0.25-{size}.npz")
    if reference_file.is_file():
        reference = list(np.load(reference_file)["images"])
    for text in ["bf16"] + specs:
        key = f"random-klein-4b-0.25|{text}" + (f"|{size}" if size != RANDOM_SIZE else "")
        if cache.get(key) is None or (reference is None and text == "bf16"):
            log(f"random {text}: quantizing")
            spec = parse_spec(text)
            mx.clear_cache()
            reset_peak()
            started = time.perf_counter()
            options = CalibrationOptions(prompts=CALIBRATION_PROMPTS, size=CALIBRATION_SIZE,
                                         progress=_throttled_log(f"random {text}"))
            rss_before = psutil.Process().memory_info().rss
            with RssPeak() as rss:
                pipeline = load_pipeline(folder, quantize=spec, allow_download=False, calibration=options)
                pipeline.ensure_transformer()
            seconds, load_peak = time.perf_counter() - started, mx.get_peak_memory()
            results = [pipeline.generate(p, seed=i, steps=RANDOM_STEPS, width=size, height=size, preview=False)
                       for i, p in enumerate(RANDOM_PROMPTS)]
            images = [r.image for r in results]
            if text == "bf16":
                reference = images
                np.savez_compressed(reference_file, images=np.stack([np.asarray(i) for i in images]))
            row = {"model": "random-klein-4b-0.25", "precision": text, "size": size,
                   "transformer_bytes": model_nbytes(pipeline.transformer), "quantize_seconds": round(seconds, 2),
                   "quantize_peak": load_peak, "peak": max(r.peak_memory for r in results), "peak_every_picture": True,
                   "quantize_rss_peak": rss.peak, "rss_before": rss_before,
                   "psnr": None if text == "bf16" else round(float(np.mean([psnr(a, b) for a, b in
                                                                           zip(images, reference)])), 3)}
            calibration = pipeline.info.quantization[0].calibration if pipeline.info.quantization else None
            if calibration:
                row["calibration"] = calibration
            del pipeline
            cache.put(key, row)
        rows.append(cache.get(key))
        log(f"random {text}: {_summary(rows[-1])}")
    return rows


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _summary(row: dict) -> str:
    parts = [f"PSNR {row['psnr']:.2f} dB" if row.get("psnr") is not None else "reference"]
    if "accuracy" in row:
        parts.append(f"accuracy {row['accuracy']['mean']:.1%} (all right {row['accuracy']['all']:.1%})")
    parts.append(f"{row['quantize_seconds']:.1f} s")
    return ", ".join(parts)


def _mb(value: int) -> str:
    return f"{value / 1e6:.2f}"


def _peak(row: dict) -> str:
    """A row's "peak"; in parentheses when it was cached before the figure covered every picture (then it is
    only the last picture's decode)."""
    return _mb(row["peak"]) if row.get("peak_every_picture") else f"({_mb(row['peak'])})"


def _quantize_peak(row: dict) -> str:
    """A row's "quantize peak"; in parentheses for an auto: row cached before the figure counted the plan search
    (then it is only loading the searched plan)."""
    old = "average_bits" in row and not row.get("quantize_peak_with_search")
    return f"({_mb(row['quantize_peak'])})" if old else _mb(row["quantize_peak"])


def table(rows: list[dict]) -> list[str]:
    header = ("model", "precision", "bytes MB", "PSNR dB", "SSIM", "accuracy", "all right", "quantize s",
              "quantize peak MB", "peak MB", "quantize RSS MB")
    body = []
    for r in rows:
        accuracy = r.get("accuracy")
        body.append((r["model"], r["precision"] + (f" ({r['average_bits']:.2f} b)" if "average_bits" in r else ""),
                     _mb(r["transformer_bytes"]),
                     "ref" if r.get("psnr") is None else ("inf" if r["psnr"] == math.inf else f"{r['psnr']:.2f}"),
                     "-" if r.get("ssim") is None else f"{r['ssim']:.4f}",
                     "-" if accuracy is None else f"{accuracy['mean']:.1%}",
                     "-" if accuracy is None else f"{accuracy['all']:.1%}",
                     f"{r['quantize_seconds']:.1f}", _quantize_peak(r), _peak(r),
                     _mb(r["quantize_rss_peak"]) if "quantize_rss_peak" in r else "-"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body]
    if any("(" in cell for b in body for cell in b[-3:-1]):
        lines.append("(in parentheses: figures cached before they were measured as now: peak MB, the last picture's "
                     "decode only; an auto: row's quantize peak MB, loading the searched plan only, not the search)")
    return lines


def calibration_table(rows: list[dict]) -> list[str]:
    """For every calibrated row: calibration's time and MLX peak (above what was resident when it started:
    the VAE, the prompt features) against issue 16's target, the final transformer plus 1.3 times one
    block's statistics (rows measured before the calibration recorded those are left out)."""
    lines = ["| model | precision | calibration s | calibration peak MB | block statistics MB | final MB | "
             "target MB | peak / target | disk MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.get("calibration")
        if not c or "block_statistics_bytes" not in c:
            continue
        target = r["transformer_bytes"] + 1.3 * c["block_statistics_bytes"]
        lines.append(f"| {r['model']} | {r['precision']} | {c['seconds']:.1f} | {_mb(c['peak_bytes'])} | "
                     f"{_mb(c['block_statistics_bytes'])} | {_mb(r['transformer_bytes'])} | {_mb(target)} | "
                     f"{c['peak_bytes'] / target:.2f} | {_mb(c['disk_bytes'])} |")
    return lines if len(lines) > 2 else []


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,demo-turbo")
    parser.add_argument("--bits", default="4,3,2")
    parser.add_argument("--groups", default="64,32")
    parser.add_argument("--methods", default="rtn,mse,hqq,gptq,awq")
    parser.add_argument("--plans", default="auto:2.5,auto:3", help="mixed plans, searched with --plan-method")
    parser.add_argument("--plan-method", default="gptq")
    parser.add_argument("--prompts", type=arguments.whole(1, 125, "--prompts"), default=125, help="eval prompts per picture set (125: all)")
    parser.add_argument("--random", action="store_true", help="also the Klein-4B-shaped random model")
    parser.add_argument("--random-only", action="store_true")
    parser.add_argument("--random-bits", default="4,3")
    parser.add_argument("--random-size", type=arguments.whole(16, MAX_RANDOM_SIZE, "--random-size"), default=RANDOM_SIZE,
                        help="the random model's picture size (a multiple of 16; smaller is faster)")
    parser.add_argument("--random-folder", type=Path, default=None, help="reuse a random model written before")
    parser.add_argument("--cache", type=Path, action="append", default=None,
                        help="results file (repeat to also read others; the first is written; default: "
                             "quantbench-quantizers.json in the temporary folder)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--json", type=report_file, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.random_size % 16:  # before any long run
        parser.error(f"--random-size {args.random_size}: give a multiple of 16 from 16 to {MAX_RANDOM_SIZE}")
    cache = Cache(args.cache or [Path(tempfile.gettempdir()) / "quantbench-quantizers.json"], args.fresh)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    if not args.random_only:
        specs = [f"{b}:{m}:{g}" if g != "64" else f"{b}:{m}" for b in args.bits.split(",")
                 for g in args.groups.split(",") for m in methods]
        plans = [p for p in args.plans.split(",") if p]
        for model in [m for m in args.models.split(",") if m]:
            rows += builtin_rows(model, specs, plans, args.plan_method, args.prompts, cache)
    if args.random or args.random_only:
        specs = [f"{b}:{m}" for b in args.random_bits.split(",") for m in methods]
        rows += random_rows(specs, cache, args.random_folder, args.random_size)
    print("\n".join(table(rows)))
    print("\n".join(["", *calibration_table(rows)]))
    document = {"rows": rows, "prompts": args.prompts,
                "notes": {"quantize_seconds": "loading the transformer at that precision: calibration and plan "
                                              "search included (shared 2-core CPU: compare within one run)",
                          "peaks": "MLX peak memory, bytes (peak: over every picture of the row)",
                          "psnr": "against bf16 pictures of the same seeds"}}
    if args.json:
        write_json(args.json, document)
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
