"""quantbench generate: one image from a prompt, written as a PNG with its settings inside."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from quantbench.core.builtin import DEFAULT_MODEL
from quantbench.core.distributed import say
from quantbench.core.errors import InvalidRequest, printable
from quantbench.core.generate import generate_image
from quantbench.core.generation import GenerationSettings
from quantbench.core.lab.quantize_option import spec_label
from quantbench.core.memory import format_bytes
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.quant import UNQUANTIZED

from . import arguments
from .output import add_calibration_argument, add_lora_argument, add_quantize_argument, add_reference_argument, \
    add_size_arguments, calibration_options, emit, parse_layers, progress, TEXT_ENCODER_SPEC


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate one image and write it as a PNG",
                              description="Generate one image. The PNG carries the settings, per-step "
                                          "timings and peak memory in its text chunks. Under mlx.launch with N "
                                          "ranks, the transformer is split across the ranks (attention heads and "
                                          "MLP units; each rank reads, holds and quantizes about 1/N of it) and rank "
                                          "0 writes the PNG (README: Across several machines).")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{arguments.MODEL_HELP} (default {DEFAULT_MODEL})")
    p.add_argument("--prompt", required=True, type=arguments.text("prompt"))
    p.add_argument("--negative-prompt", default=None, type=arguments.text("negative prompt"), help="true-CFG (base) models only: distilled and "
                                                           "guidance-distilled models have no unconditional pass")
    p.add_argument("--steps", type=arguments.steps, default=None,
                   help="1 to 1000 (default: the model's; Klein: 4 distilled, 50 base; Z-Image-Turbo 9)")
    p.add_argument("--guidance", type=arguments.guidance, default=None, help="true-CFG scale for base models "
                   "(Z-Image's in diffusers' sense: cond + g x (cond - uncond), 0 for none), or the embedded "
                   "guidance of FLUX.2 [dev] and FLUX.1 [dev], 0 to 100 (default: the model's own: 4.0 for Klein base, "
                   "Qwen-Image, Z-Image and FLUX.2 [dev], 3.5 for FLUX.1 [dev], 1.5 for demo, 1 (none) for "
                   "Qwen-Image 2.1)")
    p.add_argument("--true-cfg", type=arguments.true_cfg, default=1.0, metavar="SCALE",
                   help="FLUX.1 [dev] only: true classifier-free guidance with the negative prompt, a second "
                        "pass per step (default 1: off)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="0 to 2**64-1 (default 0)")
    add_size_arguments(p)
    add_quantize_argument(p, default="none, the weights in the compute dtype")
    p.add_argument("--text-encoder-quantize", default=None, metavar="SPEC",
                   help=f"text encoder precision, {TEXT_ENCODER_SPEC} (default: the memory model's "
                        "best: full precision when the run fits comfortably, else 8 bits where that lowers the peak)")
    add_calibration_argument(p)
    add_lora_argument(p)
    add_reference_argument(p)
    p.add_argument("--text-encoder-layers", default=None, metavar="I,J,K",
                   help="hidden states of the text encoder to stack (default: the model's, 9,18,27 for Klein)")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (bfloat16 on Metal/CUDA, float32 on "
                                                   "CPU), float32, bfloat16 or float16")
    memory = p.add_argument_group("memory")
    resident_or_lean = memory.add_mutually_exclusive_group()  # --low-memory frees the text encoder too
    resident_or_lean.add_argument("--keep-text-encoder", action="store_true",
                                  help="keep the text encoder loaded while denoising (default: free it after "
                                       "encoding, and load the transformer only then, so the two never share memory)")
    resident_or_lean.add_argument("--low-memory", action="store_true",
                                  help="also free the transformer before the VAE decode, decode in tiles, and "
                                       "keep no MLX buffer cache")
    memory.add_argument("--vae-tile", type=arguments.whole(64, 4096, "--vae-tile"), default=None, metavar="PX",
                        help="decode the image in tiles of PX pixels with blended seams (default: whole; with "
                             "--low-memory the largest tile whose decode does not set the run's peak)")
    memory.add_argument("--keep-dequantized", type=arguments.dequantized_budget, default=0.0, metavar="GB|all",
                        help="memory for speed, CPU only: keep the transformer's quantized layers also dequantized "
                             "(float32), the largest first, up to GB (or all of them), so their products skip the "
                             "dequantization; the predicted peak and the fit check count them (default: off)")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--offline", action="store_true", help="never download; use local folders and the HF cache")
    p.add_argument("--force", action="store_true", help="run even if the memory model predicts the run will not "
                                                        "fit in this machine's memory")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _memory_options(args) -> MemoryOptions:
    if args.low_memory:
        memory = MemoryOptions.lean(args.vae_tile) if args.vae_tile else MemoryOptions.lean_fitted_tile()
    else:
        memory = MemoryOptions(evict_text_encoder=not args.keep_text_encoder, vae_tile=args.vae_tile)
    return replace(memory, keep_dequantized=args.keep_dequantized)


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".png":
        raise InvalidRequest(f"{args.out}: the output must be a .png file")
    settings = GenerationSettings(
        model=str(args.model), prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
        guidance=args.guidance, true_cfg=args.true_cfg, seed=args.seed, width=args.width, height=args.height,
        quantize=args.quantize, text_encoder_quantize=args.text_encoder_quantize,
        text_encoder_layers=parse_layers(args.text_encoder_layers), dtype=args.dtype, loras=tuple(args.lora),
        reference_images=tuple(args.image))
    if args.quiet:  # huggingface_hub's download bars are progress too
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()

    def on_step(step):
        say(f"step {step.index + 1}/{step.total}  sigma {step.sigma:.3f}  {step.seconds:.2f}s  "
                 f"mlx {format_bytes(step.memory.mlx_active)}  rss {format_bytes(step.memory.rss)}", args.quiet)

    def warn(warning: str) -> None:  # a prompt longer than the text encoder reads: said before the model loads
        progress(f"quantbench: warning: {warning}", False)

    outcome = generate_image(
        settings, out=args.out, overwrite=args.overwrite, memory=_memory_options(args), force=args.force,
        allow_download=not args.offline, on_step=on_step, preview=False,
        on_loading=lambda: say(f"loading {args.model} ...", args.quiet),
        progress=lambda message: say(message, args.quiet), calibration=calibration_options(args, [args.quantize]),
        warn=warn)
    if outcome.path is None:  # another rank of a tensor-parallel run: rank 0 reports and writes
        return 0
    model, result, record = outcome.pipeline, outcome.result, outcome.record
    for report in model.info.quantization:
        progress(report.summary(), args.quiet)
    for lora, strength in model.info.loader.loras:
        progress(lora.summary(strength), args.quiet)
    for warning in outcome.untold_warnings:
        progress(f"quantbench: warning: {warning}", False)
    # Without quantization the weights compute in the compute dtype (float32 on the CPU): not "bf16".
    label = _precision_label(record["quantize"])
    summary = {**record, "quantize": record["quantize"] or UNQUANTIZED,
               "text_encoder_quantize": record["text_encoder_quantize"] or UNQUANTIZED,
               "out": str(outcome.path), "load": model.info.to_dict(),
               "predicted": outcome.predicted.to_dict() if outcome.predicted else None,
               "warnings": outcome.warnings}
    mean_step = sum(result.step_seconds) / len(result.step_seconds)
    emit(summary, args.json, [
        f"wrote {outcome.path}",
        f"{result.width}x{result.height}, {result.steps} steps, seed {result.seed}, guidance {result.guidance:g}, "
        f"transformer {label}, compute {model.info.dtype}"
        + "".join(f", LoRA {lora.path.name} x{strength:g}" for lora, strength in model.info.loader.loras)
        + "".join(f", LoRA {printable(lora['file'])} x{lora['strength']:g} (fused when saved)"
                  for lora in model.info.notes.get("fused_loras", []))
        + "".join(f", reference {printable(Path(image).name)}" for image in record.get("reference_images") or ()),
        f"time: {record['total_seconds']:.2f}s total: load "
        f"{outcome.load_seconds:.2f}s, encode {result.encode_seconds:.2f}s, {result.steps} steps "
        f"{sum(result.step_seconds):.2f}s ({mean_step:.3f}s/step), decode {result.decode_seconds:.2f}s",
        f"memory: MLX peak {format_bytes(result.peak_memory)} ("
        + ", ".join(f"{phase} {format_bytes(peak)}" for phase, peak in result.phase_peaks.items())
        + f"), process RSS peak {format_bytes(result.peak_rss)}"
        + (f"; {format_bytes(model.info.kept_dequantized_bytes)} of dequantized weights kept"
           if model.info.kept_dequantized_bytes else "")
        + (f"; predicted peak {format_bytes(outcome.predicted.peak)} ({outcome.predicted.phase})"
           if outcome.predicted else ""),
        *(f"rank {r['rank']} ({r['host']}): MLX peak {format_bytes(r['peak_memory'])}, process RSS "
          f"{format_bytes(r['peak_rss'])} (loading {format_bytes(r['load_peak_rss'])}), "
          f"{sum(r['step_seconds']) / len(r['step_seconds']):.3f}s/step, read "
          f"{format_bytes(r['transformer_read_bytes'] or 0)} of the transformer checkpoint"
          for r in record.get("ranks", [])),
    ])
    return 0


def _precision_label(quantize) -> str:
    if quantize is None:
        return UNQUANTIZED
    return quantize if isinstance(quantize, str) else spec_label(quantize)
