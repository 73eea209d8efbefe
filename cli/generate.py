"""quantbench generate: one image from a prompt, written as a PNG with its settings inside."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbench.core import __version__
from quantbench.core.atomic import check_destination
from quantbench.core.errors import InvalidRequest
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.fit import RunShape, refuse_if_too_big
from quantbench.core.generation import dtype_name, parse_dtype
from quantbench.core.images import save_png
from quantbench.core.lab.quantize_option import parse_quantize_spec, spec_label
from quantbench.core.memory import format_bytes
from quantbench.core.quantize import parse_bits
from quantbench.core.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from quantbench.core.pipelines import load_pipeline, model_defaults, supports_true_cfg, validate_request
from quantbench.core.sources import read_model_index, resolve_model_folder

from .output import emit, parse_layers, progress

DEFAULT_SIZE = 1024


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate one image and write it as a PNG",
                              description="Generate one image. The PNG carries the settings, per-step "
                                          "timings and peak memory in its text chunks.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a built-in model ({', '.join(BUILTIN_MODELS)}), a diffusers-layout folder or a Hugging "
                        f"Face repo id (default {DEFAULT_MODEL})")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None, help="true-CFG (base) models only: distilled and "
                                                           "guidance-distilled models have no unconditional pass")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (Klein: 4 distilled, 50 base)")
    p.add_argument("--guidance", type=float, default=None, help="true-CFG scale for base models, or the embedded "
                   "guidance of FLUX.2 [dev] (default: the model's, 4.0 for both)")
    p.add_argument("--true-cfg", type=float, default=1.0, metavar="SCALE",
                   help="FLUX.1 [dev] only: true classifier-free guidance with the negative prompt, a second "
                        "pass per step (default 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="a multiple of 16 (default: the model's native size, "
                                                          "64 for the built-in models, else 1024)")
    p.add_argument("--height", type=int, default=None, help="a multiple of 16 (default: as --width)")
    p.add_argument("--quantize", "-q", default=None, metavar="SPEC",
                   help="transformer precision: 8, 6, 5, 4 or 3 bits; auto:BITS or auto:SIZE for a mixed plan "
                        "searched on probe pictures first (e.g. auto:4.5, auto:2GB; minutes on a large model); or a "
                        "plan file from `quantbench plan` (default: bf16, no quantization)")
    p.add_argument("--text-encoder-quantize", default=None, metavar="BITS",
                   help="text encoder bits: 8, 6, 5, 4 or 3 (default: none)")
    p.add_argument("--text-encoder-layers", default=None, metavar="I,J,K",
                   help="hidden states of the text encoder to stack (default: the model's, 9,18,27 for Klein)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (bfloat16 on Metal/CUDA, float32 on "
                                                   "CPU), float32, bfloat16 or float16")
    memory = p.add_argument_group("memory")
    memory.add_argument("--keep-text-encoder", action="store_true",
                        help="keep the text encoder loaded while denoising (default: free it after encoding, "
                             "and load the transformer only then, so the two never share memory)")
    memory.add_argument("--low-memory", action="store_true",
                        help="also free the transformer before the VAE decode, decode in tiles, and keep no "
                             "MLX buffer cache")
    memory.add_argument("--vae-tile", type=int, default=None, metavar="PX",
                        help="decode the image in tiles of PX pixels with blended seams (default: whole, "
                             "or 512 with --low-memory)")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--offline", action="store_true", help="never download; use local folders and the HF cache")
    p.add_argument("--force", action="store_true", help="run even if the memory model predicts the run will not "
                                                        "fit in this machine's memory")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _check_output(args) -> None:
    if args.out.suffix.lower() != ".png":
        raise InvalidRequest(f"{args.out}: the output must be a .png file")
    check_destination(args.out, args.overwrite)


def _memory_options(args) -> MemoryOptions:
    if args.vae_tile is not None and args.vae_tile < 64:
        raise InvalidRequest(f"--vae-tile {args.vae_tile}: use 64 pixels or more")
    if args.low_memory:
        return MemoryOptions.lean(args.vae_tile or 512)
    return MemoryOptions(evict_text_encoder=not args.keep_text_encoder, vae_tile=args.vae_tile)


def native_size(folder: Path, width: int | None, height: int | None) -> tuple[int, int]:
    """The size asked for, else the model's native size (model_index.json `default_width`/`default_height`,
    which the built-in models carry), else 1024."""
    index = read_model_index(folder)
    width = width or (height or int(index.get("default_width", DEFAULT_SIZE)))
    return width, height or (width if height is None and width else int(index.get("default_height", DEFAULT_SIZE)))


def run(args: argparse.Namespace) -> int:
    # Everything that can be refused is checked before minutes of loading.
    _check_output(args)
    te_bits = parse_bits(args.text_encoder_quantize)
    dtype, layers = parse_dtype(args.dtype), parse_layers(args.text_encoder_layers)
    folder = resolve_model_folder(args.model, allow_download=not args.offline)
    defaults = model_defaults(folder)
    args.width, args.height = native_size(folder, args.width, args.height)
    steps = args.steps or defaults.steps
    validate_request(folder, defaults, args.negative_prompt, args.guidance, args.width, args.height, steps,
                     args.true_cfg)
    extra = {"true_cfg": args.true_cfg} if supports_true_cfg(folder) else {}
    bits = parse_quantize_spec(args.quantize, folder, text_encoder_layers=layers, dtype=dtype,
                               progress=lambda message: progress(message, args.quiet))
    label = spec_label(bits, "" if bits is None or isinstance(bits, int) else str(args.quantize))
    memory = _memory_options(args)
    refuse_if_too_big(args.model, folder, RunShape(bits, te_bits, args.width, args.height, memory.evict_text_encoder,
                                                   memory.vae_tile, dtype_name(dtype)), force=args.force)
    progress(f"loading {args.model} ...", args.quiet)
    model = load_pipeline(folder, quantize=bits, text_encoder_quantize=te_bits, dtype=dtype,
                               text_encoder_layers=layers, memory=memory)

    def on_step(step):
        progress(f"step {step.index + 1}/{step.total}  sigma {step.sigma:.3f}  {step.seconds:.2f}s  "
                 f"mlx {format_bytes(step.memory.mlx_active)}  rss {format_bytes(step.memory.rss)}", args.quiet)

    result = model.generate(args.prompt, args.negative_prompt, steps, args.guidance, args.seed, args.width,
                            args.height, callback=on_step, preview=False, **extra)
    for report in model.info.quantization:
        progress(report.summary(), args.quiet)
    metadata = {
        "quantbench:version": __version__, "model": str(args.model), "prompt": result.prompt,
        "negative_prompt": result.negative_prompt or "", "seed": result.seed, "steps": result.steps,
        "guidance": result.guidance, "width": result.width, "height": result.height,
        "quantize": label if not isinstance(bits, int) else bits, "text_encoder_quantize": te_bits or "bf16", "dtype": model.info.dtype,
        "step_seconds": [round(s, 4) for s in result.step_seconds], "peak_memory": result.peak_memory,
        "phase_peaks": result.phase_peaks, "peak_rss": result.peak_rss, **extra,
    }
    path = save_png(result.image, args.out, metadata, overwrite=args.overwrite)
    summary = {**metadata, "out": str(path), "total_seconds": round(result.total_seconds, 3),
               "load": model.info.to_dict()}
    mean_step = sum(result.step_seconds) / len(result.step_seconds)
    emit(summary, args.json, [
        f"wrote {path}",
        f"{result.width}x{result.height}, {result.steps} steps, seed {result.seed}, guidance {result.guidance:g}, "
        f"transformer {label}, compute {model.info.dtype}",
        f"time: {result.total_seconds:.2f}s total, {mean_step:.3f}s/step, load {model.info.load_seconds:.2f}s",
        f"memory: MLX peak {format_bytes(result.peak_memory)} ("
        + ", ".join(f"{phase} {format_bytes(peak)}" for phase, peak in result.phase_peaks.items())
        + f"), process RSS {format_bytes(result.peak_rss)}",
    ])
    return 0
