"""quantbench bench: memory and speed per precision, in the layout of the on-the-fly quantization seed."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from quantbench.core.bench import bench_prompts, matmul_throughput, run_precision
from quantbench.core.catalog import precision_label
from quantbench.core.cpu_blas import blas_status
from quantbench.core.errors import InvalidRequest
from quantbench.core.fit import RunShape, refuse_if_too_big
from quantbench.core.generation import check_size, default_compute_dtype, dtype_name
from quantbench.core.quant import UNQUANTIZED, QuantSpec, bits_per_weight, parse_spec
from quantbench.core.random_model import architecture_names, write_random_model
from quantbench.core.saved_request import check_saved_request, read_saved_model
from quantbench.core.sources import resolve_model_folder

from . import arguments
from .output import emit, progress

DEFAULT_PRECISIONS = "bf16,8,4"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure memory and speed per precision",
        description="Per precision: transformer bytes after quantization (and the ratio to bf16), peak while "
                    "loading and quantizing, peak while generating (per phase; resident and lean), seconds "
                    "per step, and the ratios to the unquantized run. Also MLX's matmul throughput against NumPy's.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=arguments.MODEL_HELP)
    source.add_argument("--random-weights", choices=architecture_names(),
                        help="a random-weight model of a real architecture's shapes (written to a temp folder)")
    p.add_argument("--width-scale", type=arguments.number(0, 1, "--width-scale", above=True), default=None,
                   help="with --random-weights: narrow the random model (0, 1] (default 1)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated BITS[:METHOD[:GROUP]], or bf16 (unquantized, computed in the compute dtype), "
                        f"e.g. bf16,8,4,3:hqq:32 (default {DEFAULT_PRECISIONS}; for a model quantbench saved "
                        "quantized, its own precision, the only one it loads at)")
    p.add_argument("--size", type=arguments.dimension("size"), default=512,
                   help="square image size in pixels, a multiple of 16 (default 512)")
    p.add_argument("--steps", type=arguments.steps, default=4, help="denoising steps per run, 1 to 100 (default 4)")
    p.add_argument("--memory", choices=("both", "resident", "lean"), default="both",
                   help="runs with everything resident, with the lean measures, or both (default)")
    p.add_argument("--force", action="store_true", help="run even if the memory model predicts the unquantized run will "
                                                        "not fit in this machine's memory")
    p.add_argument("--key-latency", action="store_true",
                   help="also measure the workbench's key-to-paint latency while it generates on the built-in "
                        "model (p95; target 50 ms)")
    p.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    p.set_defaults(run=run)


def _precisions(text: str | None) -> list[QuantSpec | None]:
    values = [parse_spec(v.strip()) for v in (text or DEFAULT_PRECISIONS).split(",") if v.strip()]
    if not values:
        raise InvalidRequest("--precisions: give at least one, e.g. bf16,8,4")
    return values


def _saved_precisions(folder: Path, given: str | None, precisions: list[QuantSpec | None]) -> list[QuantSpec | None]:
    """The precisions to measure a model folder at: a folder quantbench saved quantized loads only at its own,
    which is the default there; any other given is refused in one line before the first run."""
    if given is None:
        saved = read_saved_model(folder)
        if saved.transformer is None:
            return precisions
        if not isinstance(saved.transformer_spec, QuantSpec):
            raise InvalidRequest(f"{saved.transformer.holds(folder, 'transformer')}: bench measures uniform "
                                 "precisions (bench the model it was saved from)")
        return [saved.transformer_spec]
    for spec in precisions:
        check_saved_request(folder, "bf16" if spec is None else spec)
    return precisions


def run(args: argparse.Namespace) -> int:
    if args.width_scale is not None and not args.random_weights:
        raise InvalidRequest(f"--width-scale {args.width_scale:g} narrows a random model: give it with "
                             "--random-weights, not --model")
    scale = 1.0 if args.width_scale is None else args.width_scale
    precisions = _precisions(args.precisions)
    check_size(args.size, args.size)
    if not 1 <= args.steps <= 100:
        raise InvalidRequest(f"--steps {args.steps}: use 1 to 100 for a benchmark")
    modes = {"both": (False, True), "resident": (False,), "lean": (True,)}[args.memory]
    with tempfile.TemporaryDirectory(prefix="quantbench-bench-") as tmp:
        if args.random_weights:
            progress(f"writing a random {args.random_weights} (width x{scale:g}) ...", args.json)
            folder = write_random_model(Path(tmp) / args.random_weights, args.random_weights, scale)
            label = f"random {args.random_weights} x{scale:g}"
        else:
            folder, label = resolve_model_folder(args.model), args.model
            precisions = _saved_precisions(folder, args.precisions, precisions)
        largest = max(precisions, key=lambda spec: 16 if spec is None else bits_per_weight(spec))
        refuse_if_too_big(label if args.model else folder, folder,
                          RunShape(largest, None, args.size, args.size, False, None, dtype_name(default_compute_dtype())
                                   ).encoding(bench_prompts(folder, args.size, args.steps)),
                          force=args.force)
        rows = []
        for bits in precisions:
            for lean in modes:
                progress(f"{UNQUANTIZED if bits is None else precision_label(bits)} {'lean' if lean else 'resident'} ...", args.json)
                rows.append(run_precision(folder, bits, args.size, args.steps, lean))
    throughput = matmul_throughput()
    latency = _key_latency(args.json) if args.key_latency else None
    report = {"model": label, "size": args.size, "steps": args.steps, "dtype": dtype_name(default_compute_dtype()),
              "blas": blas_status().to_dict(),
              "matmul": throughput, "rows": [r.to_dict() for r in rows], "ratios": _ratios(rows),
              "key_latency": latency.to_dict() if latency else None}
    emit(report, args.json, _table(report, rows) + ([latency.line()] if latency else []))
    return 0


def _key_latency(quiet: bool):
    import asyncio

    from quantbench.tui.latency import measure_key_latency

    progress("workbench key latency during a run ...", quiet)
    return asyncio.run(measure_key_latency())


def _ratios(rows) -> dict:
    """Quantized / unquantized for each memory mode, and the generation peak over the largest phase."""
    ratios = {}
    for row in rows:
        base = next((r for r in rows if r.precision == UNQUANTIZED and r.memory == row.memory), None)
        key = f"{row.precision} {row.memory}"
        ratios[key] = {"peak_over_largest_phase": row.generation_peak / _largest_lean_phase(rows, row)}
        ratios[key]["transformer_bytes_over_bf16"] = row.bf16_ratio
        if base is not None and row is not base:
            ratios[key].update(generation_peak=row.generation_peak / base.generation_peak,
                               seconds_per_step=row.seconds_per_step / base.seconds_per_step)
    return ratios


def _largest_lean_phase(rows, row) -> int:
    """The largest single phase of this precision, measured with nothing else resident (the lean run)."""
    lean = next((r for r in rows if r.precision == row.precision and r.memory == "lean"), row)
    return lean.largest_phase


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def _table(report: dict, rows) -> list[str]:
    lines = [f"{report['model']}, {report['size']}x{report['size']}, {report['steps']} steps, "
             f"compute {report['dtype']}, BLAS: {report['blas']['blas']}"]
    header = f"{'':<16}" + "".join(f"{f'{r.precision} {r.memory}':>18}" for r in rows)
    lines += ["", header]

    def line(title, cell):
        lines.append(f"{title:<16}" + "".join(f"{cell(r):>18}" for r in rows))

    base = {r.memory: r for r in rows if r.precision == UNQUANTIZED}
    line("transformer", lambda r: f"{_mb(r.transformer_bytes)} ({r.bf16_ratio:.3f})")
    line("load peak", lambda r: _mb(r.load_peak))
    line("generation peak", lambda r: _mb(r.generation_peak))
    for phase in ("encode", "denoise", "decode"):
        line(f"  {phase}", lambda r, p=phase: _mb(r.phase_peaks.get(p, 0)))
    line("peak/largest ph.", lambda r: f"{report['ratios'][f'{r.precision} {r.memory}']['peak_over_largest_phase']:.2f}")
    line("s/step", lambda r: f"{r.seconds_per_step:.3f}" + (
        f" ({r.seconds_per_step / base[r.memory].seconds_per_step:.2f})" if r.memory in base else ""))
    line("total s", lambda r: f"{r.total_seconds:.1f}")
    m = report["matmul"]
    lines += ["", f"matmul {m['size']}x{m['size']} float32: MLX {m['mlx_gflops']:.0f} GFLOP/s, NumPy "
                  f"{m['numpy_gflops']:.0f} GFLOP/s ({m['ratio']:.2f}x)",
              "transformer (x): bytes held over the same weights in bfloat16; on the CPU backend full-precision "
              "layers are held in float32 (x2)",
              "s/step (x): over unquantized in the same memory mode; 'largest ph.': the largest phase measured alone "
              "(the lean run)"]
    return lines
