"""quantbench save: write a quantized copy that loads without the full-precision weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.atomic import check_apart, check_destination
from quantbench.core.disk_space import check_free_space
from quantbench.core.distributed import world
from quantbench.core.errors import InvalidRequest
from quantbench.core.memory import format_bytes
from quantbench.core.lab.precisions import spec_calibrates
from quantbench.core.lab.quantize_option import parse_quantize_spec
from quantbench.core.quant import SUPPORTED_BITS, is_full_precision, parse_text_encoder_spec
from quantbench.core.pipelines import check_model_loras, load_pipeline, tell_calibration_cuts
from quantbench.core.saved_models import save_quantized, saved_model_bytes
from quantbench.core.saved_request import check_saved_request
from quantbench.core.sources import resolve_model_folder

from . import arguments
from .output import add_calibration_argument, add_lora_argument, add_quantize_argument, calibration_options, emit, \
    progress, TEXT_ENCODER_SPEC


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "save", help="save a quantized copy of a model",
        description="Quantize a model and save it: the folder loads without the full-precision weights "
                    "(quantized safetensors with the per-layer plan in their metadata; tokenizer, VAE and "
                    "configs copied). Written to a temporary folder and renamed when complete; refused before loading when "
                    "its disk lacks the room the saved model needs. Under mlx.launch "
                    "a calibration (gptq, awq) is split across the ranks, with the same result, and rank 0 writes.")
    p.add_argument("--model", required=True, help=arguments.MODEL_HELP)
    add_quantize_argument(p, required=True)
    p.add_argument("--text-encoder-quantize", default=None, metavar="SPEC",
                   help=f"text encoder precision, {TEXT_ENCODER_SPEC} (default: keep it in full precision)")
    add_calibration_argument(p)
    add_lora_argument(p)
    p.add_argument("--out", required=True, type=Path, help="the folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    te_bits = parse_text_encoder_spec(args.text_encoder_quantize)
    if is_full_precision(args.quantize):
        raise InvalidRequest("--quantize bf16 saves nothing new: choose a precision (e.g. 4, 3:hqq), auto:BITS or a "
                             "plan")
    leader = world().is_leader  # under mlx.launch the calibration is split across the ranks; rank 0 writes
    if leader:
        check_destination(args.out, args.overwrite, folder=True)
    folder = resolve_model_folder(args.model, allow_download=True)
    if leader:
        check_apart(args.out, folder)
    args.quiet = args.json
    calibration = calibration_options(args, [args.quantize])
    check_saved_request(folder, args.quantize, args.text_encoder_quantize, calibration_prompts=calibration.prompts,
                        prompts_file=calibration.prompts_file)
    # said before any loading: calibrating said it after the text encoder and VAE had loaded
    _, calibration = tell_calibration_cuts(folder, calibration, lambda: spec_calibrates(args.quantize))
    check_model_loras(folder, args.lora, True, lambda message: progress(message, args.json))  # before any search
    searched = str(args.quantize).strip().lower().startswith("auto:")
    if leader and searched:  # before the search: its plan gives no layer fewer bits than this
        check_free_space(args.out, saved_model_bytes(args.model, folder, min(SUPPORTED_BITS), te_bits), "the saved model")
    spec = parse_quantize_spec(args.quantize, folder, progress=lambda message: progress(message, args.json),
                               calibration=calibration, loras=args.lora)
    if leader:
        check_free_space(args.out, saved_model_bytes(args.model, folder, spec, te_bits), "the saved model")
    progress(f"loading {args.model} and quantizing ...", args.json)
    model = load_pipeline(folder, quantize=spec, text_encoder_quantize=te_bits, calibration=calibration,
                          loras=args.lora)
    if not leader:
        return 0
    folder = save_quantized(model, args.out, overwrite=args.overwrite)
    reports = {q.component: q for q in model.info.quantization}
    sizes = {c: sum(f.stat().st_size for f in (folder / c).glob("*.safetensors")) for c in reports}
    loras = model.info.loader.loras
    emit({"out": str(folder), "source": str(args.model), **{c: r.bits_label for c, r in reports.items()},
          "bytes": sizes, "loras": [lora.to_dict(strength) for lora, strength in loras]}, args.json,
         [f"wrote {folder}" + "".join(f", {lora.path.name} x{strength:g} fused" for lora, strength in loras),
          "; ".join(f"{c.replace('_', ' ')} {r.bits_label}: {format_bytes(sizes[c])}" for c, r in reports.items())])
    return 0
