"""quantbench plan: make a mixed-precision plan under a budget, or show one."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.atomic import check_destination
from quantbench.core.errors import InvalidRequest
from quantbench.core.lab.models import resolve_lab_model
from quantbench.core.distributed import world
from quantbench.core.lab.planner import GRANULARITY_CHOICES, make_plan
from quantbench.core.lab.plans import describe_for_model, load_plan
from quantbench.core.lab.structure import checkpoint_dtypes, transformer_structure

from .output import add_calibration_argument, calibration_options, emit
from .sensitivity import (add_budget_options, add_measure_options, budget_from_args, load_from_args, on_progress,
                          probe_options, probe_prompt_warnings, tell_calibration_cuts_now)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="make a mixed-precision plan under a budget (or: plan show FILE)",
        usage="quantbench plan --model M (--quantize auto:BITS | --memory-budget GB) --out FILE [options]\n"
              "       quantbench plan show FILE [--model M] [--all] [--json]",
        description="Search bits per layer under a budget on a few fixed probe pictures: start from the most "
                    "uniform bits the budget allows, measure every layer one step up and one step down in that "
                    "model, then trade bits from the layers that hurt least to those that help most, keeping a "
                    "trade only if the pictures get closer to full precision. --quantize auto:4.5 is an "
                    "average of 4.5 bits per quantized weight (not counting the 0.5 bit of scales and biases "
                    "every bit width pays in groups of 64); auto:2.5:hqq or auto:3:mse:32 quantize every layer with "
                    "that method and group size; --memory-budget GB bounds the transformer's bytes. The plan is a "
                    "JSON file that --quantize accepts. `quantbench plan show FILE` prints one. Under mlx.launch "
                    "with N ranks, the draws around the start are split across the ranks and rank 0 writes the "
                    "plan (README: Across several machines).")
    add_measure_options(p, required=False, granularity="auto", granularities=GRANULARITY_CHOICES)
    add_budget_options(p, required=False)
    add_calibration_argument(p)
    p.add_argument("--out", type=Path, default=None, help="the plan file (JSON) to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)
    actions = p.add_subparsers(dest="plan_action", metavar="show", required=False)
    show = actions.add_parser("show", help="print a plan file", description="Print a plan file.",
                              prog="quantbench plan show", usage="quantbench plan show FILE [--model M] [--all] [--json]")
    show.add_argument("file", type=Path, metavar="FILE", help="the plan file (JSON) to print")
    show.add_argument("--model", dest="show_model", default=None, metavar="M",
                      help="check the plan against this model and recompute its bits and bytes for it")
    show.add_argument("--all", action="store_true", help="list every layer (default: the first 40)")
    show.add_argument("--json", dest="show_json", action="store_true", help="print the plan as JSON")
    show.set_defaults(run=run_show)


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        raise InvalidRequest("plan needs --model (or: quantbench plan show FILE)")
    if args.out is None:
        raise InvalidRequest("plan needs --out FILE, the plan to write")
    budget = budget_from_args(args)
    if budget is None:
        raise InvalidRequest("plan needs a budget: --quantize auto:BITS (e.g. auto:4.5) or --memory-budget GB")
    leader = world().is_leader  # under mlx.launch the search's draws are split; rank 0 alone writes and prints
    if leader:
        check_destination(args.out, args.overwrite)
    quiet = args.quiet or args.json
    calibration = calibration_options(args, [args.quantize], quiet)  # its prompts read now, before the long work
    probe_prompt_warnings(args)  # on stderr: the JSON is the plan as written
    _, calibration = tell_calibration_cuts_now(args, calibration, budget)
    pipeline = load_from_args(args, quiet, budget, what="a plan search", plan_out=args.out if leader else None)
    plan = make_plan(pipeline, budget, granularity=args.granularity, progress=on_progress(quiet),
                     calibration=calibration, **probe_options(args))
    if not leader:
        return 0
    plan.save(args.out, overwrite=args.overwrite)
    emit({**plan.to_dict(), "path": str(args.out)}, args.json, [f"wrote {args.out}"] + plan.summary_lines(top=20))
    return 0


def run_show(args: argparse.Namespace) -> int:
    plan = load_plan(args.file)
    model = args.show_model or args.model
    if model is not None:
        folder = resolve_lab_model(model)
        plan = describe_for_model(plan, transformer_structure(folder), source_dtypes=checkpoint_dtypes(folder))
    as_json = args.show_json or args.json
    emit({**plan.to_dict(), "path": str(args.file)}, as_json, plan.summary_lines(top=None if args.all else 40))
    return 0
