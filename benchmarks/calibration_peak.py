"""Calibration's memory peak against issue 16's target: a table and JSON.

For each model and precision the transformer is calibrated once with its recorded calls and cached block
outputs on disk (the default) and, with --in-memory, once more with them in memory (as before they moved
to disk), alternating, in this one process. Columns: the calibration's time, MLX's peak while it ran above
what was resident when it started (VAE, prompt features; MLX's counters see only MLX's buffers), the
process's resident set at its peak above what it was then (the kernel's high-water mark, reset as the
calibration starts on Linux: it also counts MLX's buffer cache, NumPy arrays and Python's own objects; the
prompts are encoded before, so the text encoder's load is in neither), the final quantized transformer, the largest
block's calibration statistics (the X^T X of its input sites, summed), the target (final + 1.3 x those
statistics), both peaks / target, the temporary disk it used at most, and for catalog models the memory model's
prediction of the same peak (its calibration phase less what stays resident).

Models: `demo-turbo` (its own 16 calibration prompts at 64x64, float32 on the CPU as the engine runs it
there) and a Klein-4B-shaped random model (`random-model --arch klein-4b --width-scale W`, random bf16
weights), calibrated on 4 general prompts at 64x64 as benchmarks/quantizers.py does.

    python benchmarks/calibration_peak.py [--models demo-turbo,klein-4b:0.125,klein-4b:0.25]
        [--precisions 3:gptq] [--in-memory] [--phases] [--random-folder DIR] [--json OUT]

--phases also gives MLX's peak in each phase (sampling, a block's pass to a site, summing a batch into X^T X,
X^T X from the int64 sum, GPTQ's factoring and solve, caching a block's outputs), each above the same start.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
from contextlib import contextmanager, nullcontext
import json
import sys
import tempfile
import time
from pathlib import Path

import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
import mlx.core as mx
import psutil

from quantbench.cli.arguments import report_file
from quantbench.core.atomic import write_json
from quantbench.core.memory import RssPeak
from quantbench.core.pipelines import load_pipeline
from quantbench.core.quant import parse_spec
from quantbench.core.quant.calibration import GENERAL_PROMPTS, CalibrationOptions, calibrate, settings_for
from quantbench.core.quant.calibration.calibrator import Calibrator
from quantbench.core.quant.calibration.exact_sum import ExactSum
from quantbench.core.quant.methods import gptq

RANDOM_PROMPTS = GENERAL_PROMPTS[4:8]  # as benchmarks/quantizers.py calibrates its random model
RANDOM_SIZE = 64


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_model(name: str, random_root: Path):
    """(pipeline, calibration options, catalog entry or None) for 'demo-turbo' or 'klein-4b:WIDTH'."""
    if ":" not in name:
        from quantbench.core.catalog import find_entry, shipped_builtin
        return load_pipeline(name, dtype=mx.float32, allow_download=False), CalibrationOptions(), \
            shipped_builtin(find_entry(name))
    from quantbench.core.random_model import write_random_model
    arch, width = name.split(":")
    folder = random_root / f"{arch}-w{width}"
    if not (folder / "model_index.json").is_file():
        log(f"writing the random {arch} model (width {width}) to {folder}")
        write_random_model(folder, arch, width_scale=float(width))
    return load_pipeline(folder, allow_download=False), \
        CalibrationOptions(prompts=RANDOM_PROMPTS, size=RANDOM_SIZE), None


def predicted_peak(entry, spec) -> int | None:
    """The memory model's calibration phase for this run, less what stays resident besides."""
    if entry is None:
        return None
    from quantbench.core.memory_model import Plan, predict
    plan = Plan(transformer_bits=spec, width=64, height=64, dtype="float32", backend="cpu", text_encoder="resident")
    prediction = predict(entry, plan)
    resident = prediction.component_bytes("text_encoder") + prediction.component_bytes("vae") \
        + prediction.prompt_features
    return prediction.phases["calibration"] - resident


PHASES = [(Calibrator, "sample", "sampling the prompts"),
          (Calibrator, "_gather", "a block's pass to a site (forward and summing)"),
          (ExactSum, "add_rows", "summing one batch into X^T X"),
          (ExactSum, "total", "X^T X from the int64 sum"),
          (gptq, "inverse_hessian_factor", "GPTQ factoring X^T X"),
          (gptq, "gptq_quantize", "GPTQ's column-by-column solve"),
          (Calibrator, "_cache_outputs", "caching a block's outputs")]


class PhaseMeter:
    """MLX's peak in each phase of a calibration (--phases): the functions in PHASES are wrapped, and as one
    starts or ends the peak so far is credited to every phase still open and MLX's counter is reset."""

    def __init__(self) -> None:
        self.open: list[str] = []
        self.peaks: dict[str, int] = {}

    def _fold(self) -> None:
        peak = mx.get_peak_memory()
        for name in self.open:
            self.peaks[name] = max(self.peaks[name], peak)
        mx.reset_peak_memory()

    @contextmanager
    def phase(self, name: str):
        self._fold()
        self.open.append(name)
        self.peaks.setdefault(name, 0)
        try:
            yield
        finally:
            self._fold()
            self.open.pop()

    @contextmanager
    def installed(self):
        originals = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in PHASES]
        for (owner, attribute, function), (_, _, name) in zip(originals, PHASES):
            setattr(owner, attribute, self._measured(function, name))
        try:
            yield self
        finally:
            for owner, attribute, function in originals:
                setattr(owner, attribute, function)

    def _measured(self, function, name: str):
        def measured(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)
        return measured


def measure(pipeline, options, spec, on_disk: bool, phases: bool = False) -> dict:
    settings = dataclasses.replace(settings_for(pipeline, options), on_disk=on_disk)
    pipeline.encode_prompts(list(dict.fromkeys([*settings.prompts, ""])))  # the text encoder's load: not counted
    gc.collect()
    mx.clear_cache()
    resident, baseline = psutil.Process().memory_info().rss, mx.get_active_memory()
    started = time.perf_counter()
    with RssPeak() as rss, PhaseMeter().installed() if phases else nullcontext() as meter:
        with meter.phase("calibration") if phases else nullcontext():
            result = calibrate(pipeline, spec, options, settings)
    peak = meter.peaks.pop("calibration") - baseline if phases else result.peak  # the meter resets MLX's counter
    record = result.report.calibration
    final = result.report.nbytes
    target = final + 1.3 * record["block_statistics_bytes"]
    row = {"seconds": round(time.perf_counter() - started, 2), "peak": peak,
           "rss_peak": rss.peak - resident, "final": final,
           "block_statistics": record["block_statistics_bytes"], "block_weights": record["block_bytes"],
           "target": int(target), "peak_over_target": round(peak / target, 3),
           "rss_over_target": round((rss.peak - resident) / target, 3), "disk": record["disk_bytes"],
           "calls": record["calls"]}
    if phases:
        row["phases"] = {name: value - baseline for name, value in meter.peaks.items()}
    pipeline.release_transformer()
    mx.clear_cache()
    return row


def phase_table(rows: list[dict]) -> list[str]:
    lines = ["| model | precision | inputs | phase | MLX peak above start MB |", "|---|---|---|---|---|"]
    for r in rows:
        for name, value in r.get("phases", {}).items():
            lines.append(f"| {r['model']} | {r['precision']} | {r['kept']} | {name} | {value / 1e6:.2f} |")
    return lines


def table(rows: list[dict]) -> list[str]:
    mb = lambda v: "-" if v is None else f"{v / 1e6:.2f}"  # noqa: E731
    lines = ["| model | precision | inputs | calibration s | peak MB | RSS peak MB | final MB | block statistics MB | "
             "target MB | peak / target | RSS / target | disk MB | predicted MB |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['kept']} | {r['seconds']:.1f} | {mb(r['peak'])} | "
                     f"{mb(r['rss_peak'])} | {mb(r['final'])} | {mb(r['block_statistics'])} | {mb(r['target'])} | "
                     f"{r['peak_over_target']:.2f} | {r['rss_over_target']:.2f} | {mb(r['disk'])} | "
                     f"{mb(r['predicted'])} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo-turbo,klein-4b:0.125")
    parser.add_argument("--precisions", default="3:gptq")
    parser.add_argument("--in-memory", action="store_true", help="also calibrate with the inputs in memory")
    parser.add_argument("--random-folder", type=Path, default=None, help="where the random models are (written "
                        "there if missing; default: a temporary folder)")
    parser.add_argument("--phases", action="store_true", help="also MLX's peak in each phase of the calibration "
                        "(sampling, a pass to a site, summing, factoring, solving, caching outputs)")
    parser.add_argument("--json", type=report_file, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    random_root = args.random_folder or Path(tempfile.mkdtemp(prefix="qb-calibration-peak-"))
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        pipeline, options, entry = open_model(model, random_root)
        for text in [p for p in args.precisions.split(",") if p]:
            spec = parse_spec(text)
            for on_disk in ([True, False] if args.in_memory else [True]):
                log(f"{model} {text} inputs {'on disk' if on_disk else 'in memory'}: calibrating")
                row = {"model": model, "precision": text, "kept": "disk" if on_disk else "memory",
                       **measure(pipeline, options, spec, on_disk, args.phases), "predicted": predicted_peak(entry, spec)}
                log(f"  {row}")
                rows.append(row)
        del pipeline
    print("\n".join(table(rows)))
    if args.phases:
        print("\n".join(["", *phase_table(rows)]))
    document = {"rows": rows, "notes": {
        "peak": "MLX peak while calibrating, above what was resident when it started, bytes",
        "rss_peak": "the process's resident-set high-water mark while calibrating (kernel's, reset at the start), "
                    "above its RSS then: also counts MLX's buffer cache, NumPy and Python, bytes",
        "target": "final quantized transformer + 1.3 x the largest block's X^T X (its input sites summed)",
        "disk": "the most the temporary folder held, bytes", "seconds": "shared 2-core CPU: compare within one run"}}
    if args.json:
        write_json(args.json, document)
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
