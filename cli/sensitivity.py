"""quantbench sensitivity: quantize one layer (or block) at a time and rank them by the damage done."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import parse_dtype
from quantbench.core.lab.models import resolve_lab_model
from quantbench.core.lab.plans import (allocate, check_budget, checkpoint_dtypes, memory_budget, parse_budget,
                                      transformer_structure)
from quantbench.core.lab.sensitivity import DEFAULT_BITS, GRANULARITIES, measure_sensitivity
from quantbench.core.quantize import parse_bits


from .output import emit, parse_layers, progress


def add_measure_options(p, required: bool = True) -> None:
    """The options that say how sensitivity is measured (shared with `quantbench plan`)."""
    p.add_argument("--model", required=required, help="a built-in name, a diffusers-layout folder or a repo id in the cache")
    p.add_argument("--bits", default=str(DEFAULT_BITS), help=f"bits each layer is quantized to in turn "
                                                              f"(default {DEFAULT_BITS})")
    p.add_argument("--granularity", default="layer", choices=GRANULARITIES,
                   help="quantize one layer at a time, or one transformer block (default layer)")
    p.add_argument("--prompt", action="append", default=None, dest="prompts", metavar="TEXT",
                   help="a probe prompt (repeat for several; default: three fixed prompts)")
    p.add_argument("--seed", type=int, default=0, help="the probes' noise seed (default 0)")
    p.add_argument("--size", type=int, default=None, help="probe picture size in pixels (default: the built-in "
                                                          "model's, else 256)")
    p.add_argument("--text-encoder-layers", default=None, metavar="I,J,K",
                   help="hidden states of the text encoder to stack (default: the model's)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, float32, bfloat16 or float16")


def add_budget_options(p, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--quantize", "-q", default=None, metavar="auto:BITS",
                       help="a mixed-precision plan with this average of bits per quantized weight (auto:4.5), or "
                            "this transformer size (auto:2.5GB)")
    group.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                       help="a mixed-precision plan whose transformer fits in this many GB (GiB)")


def budget_from_args(args):
    if args.memory_budget is not None:
        return memory_budget(args.memory_budget)
    if args.quantize is None:
        return None
    if not str(args.quantize).lower().startswith("auto:"):
        raise InvalidRequest(f"--quantize '{args.quantize}': a plan is made from a budget: auto:BITS (e.g. auto:4.5) "
                             "or auto:SIZE (e.g. auto:2GB)")
    return parse_budget(args.quantize)


def measure_from_args(args, quiet: bool, budget=None):
    """Load the model in full precision and measure; a budget is checked against the model first."""
    bits = parse_bits(args.bits)
    if bits is None:
        raise InvalidRequest("--bits bf16 measures nothing: choose 8, 6, 5, 4 or 3")
    if args.size is not None and (args.size % 16 or not 16 <= args.size <= 4096):
        raise InvalidRequest(f"--size {args.size}: use a multiple of 16 between 16 and 4096")
    folder = resolve_lab_model(args.model)
    if budget is not None:
        check_budget(budget, transformer_structure(folder), parse_dtype(args.dtype), checkpoint_dtypes(folder))
    from quantbench.core.flux2.pipeline import Flux2Pipeline
    progress(f"loading {args.model} in full precision ...", quiet)
    pipeline = Flux2Pipeline.load(folder, quantize=None, dtype=parse_dtype(args.dtype),
                                  text_encoder_layers=parse_layers(args.text_encoder_layers), allow_download=False)

    def on_progress(done, total, name):
        progress(f"[{done}/{total}] {name}", quiet)

    return measure_sensitivity(pipeline, bits=bits, granularity=args.granularity, prompts=args.prompts,
                               seed=args.seed, size=args.size, model_name=str(args.model), progress=on_progress)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sensitivity", help="rank the transformer's layers by how much quantizing each one alone hurts",
        description="Quantize one layer (or block) of the transformer at a time, run it on a few fixed inputs "
                    "(points of the model's own sampling trajectories for fixed prompts and seed), measure the "
                    "relative error of its output against full precision, put the layer back; rank. With "
                    "--quantize auto:BITS or --memory-budget GB and --plan-out, also write a mixed-precision plan "
                    "that gives the most sensitive layers more bits.")
    add_measure_options(p)
    add_budget_options(p, required=False)
    p.add_argument("--plan-out", type=Path, default=None, metavar="FILE", help="write the plan (JSON) here")
    p.add_argument("--top", type=int, default=25, help="rows of the table (default 25; --json has them all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    budget = budget_from_args(args)
    if (budget is None) != (args.plan_out is None):
        raise InvalidRequest("a plan needs both a budget (--quantize auto:BITS or --memory-budget GB) and --plan-out")
    if args.plan_out is not None and not args.plan_out.parent.is_dir():
        raise InvalidRequest(f"{args.plan_out.parent}: no such folder")
    quiet = args.quiet or args.json
    report = measure_from_args(args, quiet, budget)
    data = report.to_dict()
    lines = [f"{report.model}: every {report.granularity} quantized alone at {report.bits} bits; "
             f"{len(report.prompts)} prompts x {len(report.sigmas)} noise levels at {report.width}x{report.height}, "
             f"{report.forward_passes} transformer passes, {report.seconds:.1f}s", ""]
    lines += report.table_lines(args.top)
    if report.uniform_error is not None:
        lines += ["", f"every {report.granularity} at once: rel. RMSE {100 * report.uniform_error ** 0.5:.3f}% "
                      f"(the per-{report.granularity} errors add up to {100 * report.summed_error ** 0.5:.3f}%)"]
    if budget is not None:
        plan = allocate(report, budget, model=str(args.model))
        plan.save(args.plan_out)
        data["plan"] = {**plan.to_dict(), "path": str(args.plan_out)}
        lines += ["", f"wrote {args.plan_out}"] + plan.summary_lines(top=0)[:4]
    emit(data, args.json, lines)
    return 0
