"""quantbench compare: the same generation at several precisions, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.atomic import check_destination
from quantbench.core.distributed import rank_lines, say, world
from quantbench.core.errors import printable
from quantbench.core.generation import GenerationSettings
from quantbench.core.lab.compare import compare_request, run_compare
from quantbench.core.lab.compare_outputs import check_report_replaceable, write_outputs, written_names
from quantbench.core.lab.compare_report import GENERATE_PEAK_NOTE, LOAD_PEAK_NOTE
from quantbench.core.lab.precisions import DEFAULT_PRECISIONS, parse_precisions

from . import arguments
from .output import add_calibration_argument, add_lora_argument, add_reference_argument, add_size_arguments, \
    calibration_prompts, emit, parse_layers, progress, TEXT_ENCODER_SPEC


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="the same generation at several precisions: memory, time, PSNR/SSIM, contact sheet",
        description="Generate the same picture (prompt, seed, size) at each precision. The model is read from "
                    "disk once in full precision; each precision is quantized from it in memory. Prints a table "
                    "per precision: transformer bytes, peak memory while loading and while generating, mean "
                    "step time, total time, PSNR and SSIM against the unquantized picture (and prompt-attribute "
                    "accuracy for the built-in models). Under mlx.launch with N ranks, the precisions are split "
                    "across the ranks and rank 0 prints and writes the same results (README: Across several "
                    "machines).")
    p.add_argument("--model", required=True, help=arguments.MODEL_HELP)
    p.add_argument("--prompt", required=True, type=arguments.text("prompt"))
    p.add_argument("--seed", type=arguments.seed, default=0, help="0 to 2**64-1 (default 0)")
    p.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS), metavar="LIST",
                   help="comma-separated: unquantized (or bf16), BITS[:METHOD[:GROUP]] (e.g. 4, 4:mse, 3:hqq:32, "
                        "2:mse:32), auto:BITS[:METHOD[:GROUP]] (mixed, e.g. auto:4.5, auto:2.5:hqq), auto:SIZE (e.g. "
                        "auto:2GB) or a plan file (default: unquantized,8,6,5,4,3; the unquantized model, computed in "
                        "the compute dtype, is always included as the reference)")
    p.add_argument("--negative-prompt", default=None, type=arguments.text("negative prompt"),
                   help="base models only")
    p.add_argument("--steps", type=arguments.steps, default=None, help="1 to 1000 (default: the model's)")
    p.add_argument("--guidance", type=arguments.guidance, default=None, help="true-CFG scale for base models")
    add_size_arguments(p)
    p.add_argument("--text-encoder-quantize", default=None, metavar="SPEC",
                   help=f"text encoder precision, {TEXT_ENCODER_SPEC}, the same for every precision "
                        "(default: none)")
    p.add_argument("--text-encoder-layers", default=None, metavar="I,J,K",
                   help="hidden states of the text encoder to stack (default: the model's)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, float32, bfloat16 or float16")
    add_calibration_argument(p)
    add_lora_argument(p)
    add_reference_argument(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the contact sheet, each picture and report.json here (replacing those of an "
                        "earlier compare; another program's report.json, or files by those names in a folder "
                        "without compare's report, are refused)")
    p.add_argument("--force", action="store_true", help="run even if the memory model predicts the full-precision "
                                                        "model will not fit in this machine's memory")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    precisions = parse_precisions(args.precisions)  # refuse bad precisions before any loading
    leader = world().is_leader  # under mlx.launch, rank 0 alone prints and writes
    if args.out is not None and leader:
        check_destination(args.out, overwrite=True, folder=True, into=True)  # written into: '.' will do
        if args.out.is_dir():
            check_destination(args.out / "report.json", overwrite=True)
            check_report_replaceable(args.out, written_names(spec.label for spec in precisions))
    settings = GenerationSettings(
        model=args.model, prompt=args.prompt, seed=args.seed, negative_prompt=args.negative_prompt, steps=args.steps,
        guidance=args.guidance, width=args.width, height=args.height,
        text_encoder_quantize=args.text_encoder_quantize, text_encoder_layers=parse_layers(args.text_encoder_layers),
        dtype=args.dtype, loras=tuple(args.lora), reference_images=tuple(args.image))
    request = compare_request(settings, args.precisions, force=args.force,
                              calibration_prompts=calibration_prompts(args, precisions), out=args.out,
                              calibration_prompts_file=args.calibration_prompts)
    quiet = args.quiet or args.json

    def on_row(row):
        say(f"{row.label}: {row.mean_step_seconds:.3f}s/step, PSNR {row.to_dict()['psnr']}", quiet)

    report = run_compare(request, on_row=on_row, on_status=lambda message: say(message, quiet),
                         on_warning=lambda warning: leader and progress(f"quantbench: warning: {warning}", False))
    if not leader:
        return 0
    data = report.to_dict()
    drawn = report.settings
    lines = [f"{drawn.model}: \"{drawn.prompt}\", seed {drawn.seed}, {drawn.width}x{drawn.height}, "
             f"{drawn.steps} steps, compute {drawn.dtype}, text encoder {report.text_encoder}"
             + "".join(f", LoRA {path}:{strength:g}" for path, strength in data["loras"])
             + "".join(f", reference {printable(path)}" for path in data["reference_images"]), ""]
    lines += report.table_lines()
    lines += ["", f"load peak: {LOAD_PEAK_NOTE}.", f"gen peak: {GENERATE_PEAK_NOTE}."]
    lines += rank_lines(report.ranks)
    if args.out is not None:
        written = write_outputs(report, args.out)
        data["outputs"] = written
        lines.append(f"wrote {written['contact_sheet']}, {len(written['images'])} pictures and {written['report']}")
    emit(data, args.json, lines)
    return 0
