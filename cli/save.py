"""quantbench save: write a quantized copy that loads without the full-precision weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core.errors import InvalidRequest
from quantbench.core.flux2.pipeline import Flux2Pipeline
from quantbench.core.memory import format_bytes
from quantbench.core.quantize import parse_bits
from quantbench.core.saved_models import save_quantized

from .output import emit, progress


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "save", help="save a quantized copy of a model",
        description="Quantize a model and save it: the folder loads without the full-precision weights "
                    "(quantized safetensors with the per-layer plan in their metadata; tokenizer, VAE and "
                    "configs copied). Written to a temporary folder and renamed when complete.")
    p.add_argument("--model", required=True, help="a built-in name, a diffusers-layout folder or a repo id")
    p.add_argument("--quantize", "-q", required=True, metavar="BITS", help="transformer bits: 8, 6, 5, 4 or 3")
    p.add_argument("--text-encoder-quantize", default=None, metavar="BITS",
                   help="text encoder bits (default: keep it in full precision)")
    p.add_argument("--out", required=True, type=Path, help="the folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bits, te_bits = parse_bits(args.quantize), parse_bits(args.text_encoder_quantize)
    if bits is None:
        raise InvalidRequest("--quantize bf16 saves nothing new: choose 8, 6, 5, 4 or 3 bits")
    if args.out.exists() and not args.overwrite:
        raise InvalidRequest(f"{args.out} already exists (pass --overwrite to replace it)")
    progress(f"loading {args.model} and quantizing ...", args.json)
    model = Flux2Pipeline.load(args.model, quantize=bits, text_encoder_quantize=te_bits)
    folder = save_quantized(model, args.out, overwrite=args.overwrite)
    sizes = {c: sum(f.stat().st_size for f in (folder / c).glob("*.safetensors")) for c in ("transformer", "text_encoder")}
    reports = {q.component: q for q in model.info.quantization}
    emit({"out": str(folder), "source": str(args.model), "transformer": reports["transformer"].bits_label,
          "text_encoder": reports["text_encoder"].bits_label, "bytes": sizes}, args.json,
         [f"wrote {folder}",
          f"transformer {reports['transformer'].bits_label}: {format_bytes(sizes['transformer'])}; "
          f"text encoder {reports['text_encoder'].bits_label}: {format_bytes(sizes['text_encoder'])}"])
    return 0
