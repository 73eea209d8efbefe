"""quantbench sensitivity: quantize one layer (or block) at a time and rank them by the damage done."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.atomic import check_apart, check_destination
from quantbench.core.disk_space import check_free_space
from quantbench.core.distributed import world
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import parse_dtype
from quantbench.core.lab.models import resolve_lab_model
from quantbench.core.saved_request import refuse_saved_transformer
from quantbench.core.lab.budgets import check_budget, memory_budget, parse_budget
from quantbench.core.lab.plans import load_plan, plan_file_bytes
from quantbench.core.lab.structure import checkpoint_dtypes, transformer_structure
from quantbench.core.lab.probe import psnr_of
from quantbench.core.lab.sensitivity import DEFAULT_BITS, GRANULARITIES, measure_sensitivity
from quantbench.core.quant import parse_data_free_spec

from . import arguments
from .output import add_calibration_argument, add_lora_argument, calibration_options, emit, parse_layers, progress


def add_measure_options(p, required: bool = True, granularity: str = "layer",
                        granularities: tuple[str, ...] = GRANULARITIES) -> None:
    """How the probe pictures are drawn and what a unit is (shared with `quantbench plan`)."""
    p.add_argument("--model", required=required,
                   help=arguments.MODEL_HELP)
    units = "one layer at a time, or one transformer block"
    if "auto" in granularities:  # `plan`'s (its module has the planner loaded already)
        from quantbench.core.lab.planner import MAX_LAYER_UNITS
        units += f"; auto: layers for a transformer of up to {MAX_LAYER_UNITS} quantizable layers, else blocks"
    p.add_argument("--granularity", default=granularity, choices=granularities, help=f"{units} (default {granularity})")
    p.add_argument("--prompt", action="append", default=None, dest="prompts", metavar="TEXT",
                   type=arguments.text("prompt"),
                   help="a probe prompt (repeat for several; default: six scenes for the built-in models, else "
                        "three fixed prompts)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="the probe pictures' seed (default 0)")
    p.add_argument("--size", type=arguments.dimension("size"), default=None,
                   help="probe picture size in pixels, a multiple of 16 (default: the built-in model's, else 256)")
    p.add_argument("--steps", type=arguments.steps, default=None,
                   help="sampling steps of each probe picture (default: the model's, at most 20)")
    p.add_argument("--text-encoder-layers", default=None, metavar="I,J,K",
                   help="hidden states of the text encoder to stack (default: the model's)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, float32, bfloat16 or float16")
    add_lora_argument(p)


def add_budget_options(p, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--quantize", "-q", default=None, metavar="auto:BITS",
                       help="a mixed-precision plan with this average of bits per quantized weight (auto:4.5), or "
                            "this transformer size (auto:2.5GB), optionally with a method and group size for "
                            "every layer (auto:2.5:hqq, auto:3:mse:32, auto:2GB:hqq)")
    group.add_argument("--memory-budget", type=arguments.number(0, 1e6, "--memory-budget", above=True), default=None,
                       metavar="GB",
                       help="a mixed-precision plan whose transformer fits in this many GB (GiB), round-to-nearest "
                            "(for another method: --quantize auto:SIZE:METHOD)")


def budget_from_args(args):
    if args.memory_budget is not None:
        return memory_budget(args.memory_budget)
    if args.quantize is None:
        return None
    if not str(args.quantize).lower().startswith("auto:"):
        raise InvalidRequest(f"--quantize '{args.quantize}': a plan is made from a budget: auto:BITS (e.g. auto:4.5) "
                             "or auto:SIZE (e.g. auto:2GB)")
    return parse_budget(args.quantize)


def load_from_args(args, quiet: bool, budget=None, what: str = "sensitivity", plan_out: Path | None = None):
    """Check the probe options (and a budget, against the model's config), and that `plan_out`'s disk has the
    room for the plan, then load in full precision (`what` names the command when the folder holds a
    transformer quantbench saved quantized)."""
    if args.size is not None and (args.size % 16 or not 16 <= args.size <= 4096):
        raise InvalidRequest(f"--size {args.size}: use a multiple of 16 between 16 and 4096")
    if args.steps is not None and args.steps < 1:
        raise InvalidRequest(f"--steps {args.steps}: give at least one step")
    folder = resolve_lab_model(args.model)
    refuse_saved_transformer(folder, what)
    if budget is not None:
        check_budget(budget, transformer_structure(folder), parse_dtype(args.dtype), checkpoint_dtypes(folder))
    if plan_out is not None:
        check_apart(plan_out, folder)
        check_free_space(plan_out, plan_file_bytes(transformer_structure(folder)), "the plan")
    from quantbench.core.pipelines import check_model_loras, load_pipeline
    check_model_loras(folder, args.lora)
    progress(f"loading {args.model} in full precision ...", quiet)
    layers = parse_layers(args.text_encoder_layers)
    return load_pipeline(folder, quantize=None, dtype=parse_dtype(args.dtype), allow_download=False, loras=args.lora,
                         **({"text_encoder_layers": layers} if layers else {}))


def probe_prompt_warnings(args) -> list[str]:
    """The --prompt probe prompts longer than a text encoder reads, said once on stderr (rank 0) before the model
    loads: every probe picture encodes them again."""
    if not args.prompts:
        return []
    from quantbench.core.pipelines import model_defaults, probe_roles, prompt_warnings
    folder = resolve_lab_model(args.model)
    warnings = prompt_warnings(folder, model_defaults(folder), args.prompts, probe_roles(len(args.prompts)))
    for warning in warnings if world().is_leader else ():
        progress(f"quantbench: warning: {warning}", False)
    return warnings


def tell_calibration_cuts_now(args, calibration, budget):
    """Calibration prompts a text encoder reads only in part, said (rank 0) before the model loads, where a plan
    search will calibrate; (the lines, the options that then say nothing of them again)."""
    from quantbench.core.lab.precisions import PrecisionSpec
    from quantbench.core.pipelines import tell_calibration_cuts
    def calibrates() -> bool:
        return budget is not None and PrecisionSpec(budget.label, budget=budget).calibrates

    told, calibration = tell_calibration_cuts(resolve_lab_model(args.model), calibration, calibrates)
    return list(told or ()), calibration


def probe_options(args) -> dict:
    return dict(prompts=args.prompts, seed=args.seed, size=args.size, steps=args.steps, model_name=str(args.model))


def on_progress(quiet: bool):
    return lambda done, total, name: progress(f"[{done}/{total}] {name}", quiet)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sensitivity", help="rank the transformer's layers by how much quantizing each one alone hurts the pictures",
        description="Quantize one layer (or block) of the transformer at a time, draw a few fixed probe pictures "
                    "again (whole sampling runs, fixed prompts and seed), measure their mean squared pixel error "
                    "against full precision, put the layer back; rank. With --quantize auto:BITS or "
                    "--memory-budget GB and --plan-out, also search a mixed-precision plan (as `quantbench plan`). Under "
                    "mlx.launch with N ranks, the layers are split across the ranks and rank 0 prints the same "
                    "ranking (the plan search runs on rank 0 alone).")
    p.add_argument("--bits", default=str(DEFAULT_BITS), metavar="SPEC",
                   help=f"the precision each layer is quantized to in turn, BITS[:METHOD[:GROUP]] with rtn, mse or hqq "
                        f"(e.g. 3, 3:hqq, 2:mse:32; default {DEFAULT_BITS})")
    add_measure_options(p)
    add_budget_options(p, required=False)
    p.add_argument("--plan-out", type=Path, default=None, metavar="FILE",
                   help="write the plan (JSON) here (replacing an earlier plan, never another file)")
    add_calibration_argument(p)
    p.add_argument("--top", type=arguments.whole(1, 1_000_000, "--top"), default=25, help="rows of the table (default 25; --json has them all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def check_plan_replaceable(path: Path) -> None:
    """--plan-out replaces a plan there (a search run again), never another file: `--plan-out config.json` in a
    model folder replaced the transformer's config with the plan, unasked (`plan --out` refuses without
    --overwrite)."""
    if not path.exists():
        return
    try:
        load_plan(path)
    except InvalidRequest:
        raise InvalidRequest(f"{path} exists and is not a quantbench plan: --plan-out replaces only a plan; choose "
                             "another file") from None


def run(args: argparse.Namespace) -> int:
    bits = parse_data_free_spec(args.bits, "--bits", "each layer is quantized alone, uncalibrated: give")
    if bits is None:
        raise InvalidRequest("--bits bf16 measures nothing: choose a precision such as 4, 3 or 3:hqq")
    budget = budget_from_args(args)
    if (budget is None) != (args.plan_out is None):
        raise InvalidRequest("a plan needs both a budget (--quantize auto:BITS or --memory-budget GB) and --plan-out")
    leader = world().is_leader  # under mlx.launch the units and the plan search's draws are split; rank 0 writes
    if args.plan_out is not None and leader:
        check_destination(args.plan_out, overwrite=True)
        check_plan_replaceable(args.plan_out)
    quiet = args.quiet or args.json
    calibration = calibration_options(args, [args.quantize], quiet)  # its prompts read now, before the long work
    warnings = probe_prompt_warnings(args)
    told, calibration = tell_calibration_cuts_now(args, calibration, budget)
    warnings += told
    pipeline = load_from_args(args, quiet, budget, plan_out=args.plan_out if leader else None)
    report = measure_sensitivity(pipeline, bits=bits, granularity=args.granularity, progress=on_progress(quiet),
                                 **probe_options(args))
    plan = None
    if budget is not None:  # every rank searches: the search's independent draws are split across them
        from quantbench.core.lab.planner import make_plan
        plan = make_plan(pipeline, budget, granularity=args.granularity, progress=on_progress(quiet),
                         calibration=calibration, **probe_options(args))
    if not leader:
        return 0
    data = {**report.to_dict(), "warnings": warnings}
    lines = [f"{report.model}: every {report.granularity} quantized alone at {report.spec.label}; "
             f"{len(report.prompts)} probe pictures at {report.width}x{report.height}, {report.steps} steps, "
             f"{report.draws} pictures drawn in {report.seconds:.1f}s", ""]
    lines += report.table_lines(args.top)
    if report.uniform_error is not None:
        lines += ["", f"every {report.granularity} at once: pixel MSE {report.uniform_error:.4f} "
                      f"({psnr_of(report.uniform_error):.1f} dB; the per-{report.granularity} errors add up to "
                      f"{report.summed_error:.4f}: errors do not add up in pixels)"]
    if plan is not None:
        plan.save(args.plan_out)
        data["plan"] = {**plan.to_dict(), "path": str(args.plan_out)}
        lines += ["", f"wrote {args.plan_out}"] + plan.summary_lines(top=0)[:5]
    emit(data, args.json, lines)
    return 0
