"""quantbench random-model: write a random-weight model folder of a real architecture (no download)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from quantbench.core.atomic import check_destination
from quantbench.core.distributed_host import place_on_host
from quantbench.core.pipelines import model_defaults
from quantbench.core.random_model import architecture_names, parameter_count, write_random_model

from . import arguments
from .output import emit, progress


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "random-model", help="write a random-weight model in the diffusers layout",
        description="Write a random-weight model of a real architecture (diffusers layout: configs, sharded "
                    "safetensors, tokenizer): FLUX.2 Klein (tiny, klein-4b, klein-9b), FLUX.1 (flux1: [schnell], or "
                    "[dev] with --base), Z-Image (z-image: "
                    "Turbo, or base with --base), Qwen-Image (qwen-image: a base model only) or Qwen-Image 2.1 "
                    "(qwen-image-2.1: Turbo's sampling grid, or base with --base), to measure loading, memory and speed "
                    "without downloads. Its pictures are noise. Refused before anything is written when the disk lacks the room for "
                    "the whole model's tensors, and each component again before it is written.")
    p.add_argument("--arch", default="tiny", choices=architecture_names(), help="architecture (default tiny)")
    p.add_argument("--width-scale", type=arguments.number(0, 1, "--width-scale", above=True), default=1.0,
                   help="narrow every width by this factor (0, 1] (default 1: the real widths)")
    p.add_argument("--base", action="store_true", help="the base model instead of the distilled one (FLUX.1: [dev], with its guidance "
                                                         "embedder, instead of [schnell])")
    p.add_argument("--seed", type=arguments.seed, default=0, help="the random weights' seed (default 0)")
    p.add_argument("--shard-mb", type=arguments.whole(1, 1 << 20, "--shard-mb"), default=2048, help="largest safetensors shard in MB (default 2048)")
    p.add_argument("--out", required=True, type=Path, help="the folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    placed = place_on_host()
    if placed is not None and placed[0] > 0:
        # Under mlx.launch every rank runs this: the first rank on each host writes the folder there (each host
        # needs the model at the same path), the others wrote it too and failed "already exists" after its success.
        progress(f"[rank {os.environ.get('MLX_RANK', '?')}] {args.out} is written by the first rank on this host",
                 args.json)  # (not world(): this rank joins no ring, which the writing rank never starts)
        return 0
    check_destination(args.out, args.overwrite, folder=True)
    progress(f"writing a random {args.arch} (width x{args.width_scale:g}) to {args.out} ...", args.json)
    folder = write_random_model(args.out, args.arch, args.width_scale, args.seed, distilled=not args.base,
                                max_shard_bytes=args.shard_mb << 20, overwrite=args.overwrite)
    params = parameter_count(folder)
    distilled = model_defaults(folder).distilled  # what was written: qwen-image is a base model whatever --base says
    emit({"out": str(folder), "arch": args.arch, "width_scale": args.width_scale, "parameters": params,
          "distilled": distilled}, args.json,
         [f"wrote {folder}: {params / 1e6:.1f}M parameters ({args.arch}, width x{args.width_scale:g}, "
          f"{'distilled' if distilled else 'base'})"])
    return 0
