"""Qwen-Image 2.1 at its real width on this machine: one quantized generation, with random weights made in memory.

`quantbench random-model --arch qwen-image-2.1` writes the same model to disk, but in bf16 it is 30 GB of
files; this benchmark builds the released shapes (7.1B transformer, Qwen3-VL-8B language model with its
real 151,936-token embedding, the 16x RGBA VAE decoder) directly in memory instead, each weight drawn,
rounded to bf16 as a checkpoint stores it, then quantized and materialized one layer at a time by the
engine's own loading step. The pipeline's own `generate` then runs: encode, free the encoder, load the
transformer, denoise, decode (tiled with --low-memory). It prints MLX's peak per phase, the process RSS,
the seconds, and the memory model's prediction for the same run. The picture is noise.

    flock /tmp/qb-heavy.lock .venv/bin/python benchmarks/qwen_image21_full_width.py --quantize 4 --text-encoder-quantize 4 \
        --size 256 --steps 1 --low-memory [--width-scale 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import quantbench.core  # noqa: F401  (the fast BLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from quantbench.core.blocks.tokenizer_files import QWEN3_VL_CHAT_TEMPLATE, train_tokenizer, write_tokenizer_folder
from quantbench.core.catalog import get_entry
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_named
from quantbench.core.families.qwen_image21.random_model import Shapes, component_configs, scaled
from quantbench.core.families.qwen_image21.tokenizer import QwenImage21Tokenizer
from quantbench.core.flow_match import FlowMatchSchedule
from quantbench.core.generation import default_compute_dtype, dtype_name
from quantbench.core.memory import format_bytes, memory_snapshot
from quantbench.core.memory_model import Plan, predict
from quantbench.core.pipeline_base import LoadInfo, MemoryOptions, ModelDefaults
from quantbench.core.quant import parse_spec as parse_bits, quantized_matmul_kind


FAMILY = family_named("qwen_image21")


@dataclass
class RandomLoader(ComponentLoader):
    """The family's loader with weights drawn instead of read: the engine's own quantize-and-stream step."""

    shapes: Shapes = field(default_factory=Shapes)
    seconds: dict = field(default_factory=dict)

    def _stored(self, module: nn.Module, name: str, bits) -> nn.Module:
        """Round every weight to bf16 (a checkpoint's dtype), lazily; quantize, cast, materialize per layer."""
        started = time.perf_counter()
        module.update(tree_unflatten([(k, v.astype(mx.bfloat16)) for k, v in tree_flatten(module.parameters())]))
        self._quantize(module, name, None, bits, FAMILY.component(name).policy)
        self.seconds[name] = time.perf_counter() - started
        return module

    def transformer(self) -> nn.Module:
        config = component_configs(self.shapes)["transformer"]
        return self._stored(FAMILY.transformer.build(config, None), "transformer", self.transformer_bits)

    def text_encoder(self, folder: str = "text_encoder") -> nn.Module:
        config = component_configs(self.shapes)["text_encoder"]
        return self._stored(FAMILY.component(folder).build(config, None), folder, self.text_encoder_bits)

    def vae(self) -> nn.Module:
        vae = FAMILY.vae.build(component_configs(self.shapes)["vae"], None)
        vae.update(tree_unflatten([(k, v.astype(mx.bfloat16).astype(self.dtype))
                                   for k, v in tree_flatten(vae.parameters())]))
        mx.eval(vae.parameters())
        return vae


class RandomPipeline(FAMILY.pipeline):
    """The family's pipeline with what a folder would give (tokenizer, schedule) made here."""

    def setup(self) -> None:
        self.tokenizer = QwenImage21Tokenizer(self.info.folder / "processor")
        self.schedule, self.sample_sigmas, self.in_channels = FlowMatchSchedule(use_dynamic_shifting=True), None, 64


def build_pipeline(folder: Path, shapes: Shapes, bits, text_bits, memory: MemoryOptions):
    dtype = default_compute_dtype()
    loader = RandomLoader(FAMILY, folder, dtype, bits, text_bits, quantized_matmul_kind("auto"), shapes=shapes)
    write_tokenizer_folder(train_tokenizer(["a red star on a blue sky over the sea"] * 4, 512), folder / "processor",
                           chat_template=QWEN3_VL_CHAT_TEMPLATE)
    info = LoadInfo("random qwen-image-2.1", folder, "QwenImage21Pipeline", ModelDefaults(False, 40, 1.0),
                    dtype_name(dtype), None, None, (), loader.matmul, 1024, loader=loader)
    if memory.cache_limit is not None:
        mx.set_cache_limit(memory.cache_limit)
    return RandomPipeline(info, loader, memory)


def predicted(bits, text_bits, size: int, low_memory: bool) -> dict:
    plan = Plan(transformer_bits=bits, text_encoder_bits=text_bits, width=size, height=size, text_encoder="staged",
                vae_tiling=low_memory, tile_size=512, backend="cpu", dtype=dtype_name(default_compute_dtype()))
    prediction = predict(get_entry("qwen-image-2.1"), plan)
    return {"phases": dict(prediction.phases), "generation_peak": prediction.generation_peak,
            "load_peak_streamed": prediction.load_peaks["streamed"],
            "components": {c.role: c.nbytes for c in prediction.components}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="4", help="transformer bits (default 4)")
    parser.add_argument("--text-encoder-quantize", default="4", help="text encoder bits (default 4)")
    parser.add_argument("--size", type=int, default=256, help="square image size (default 256)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--width-scale", type=float, default=1.0, help="narrow the model (default 1: real width)")
    parser.add_argument("--low-memory", action="store_true", help="free the transformer before a tiled decode")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bits, text_bits = parse_bits(args.quantize), parse_bits(args.text_encoder_quantize)
    memory = MemoryOptions.lean() if args.low_memory else MemoryOptions(evict_text_encoder=True)
    shapes = scaled(Shapes(), args.width_scale)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build_pipeline(Path(tmp), shapes, bits, text_bits, memory)
        started = time.perf_counter()
        result = pipeline.generate("a red star on a blue sky", steps=args.steps, width=args.size,
                                   height=args.size, seed=0, preview=False)
    loader = pipeline.loader
    report = {
        "model": f"random qwen-image-2.1 x{args.width_scale:g}", "size": args.size, "steps": args.steps,
        "transformer_bits": bits, "text_encoder_bits": text_bits, "low_memory": args.low_memory,
        "dtype": pipeline.info.dtype, "matmul": loader.matmul,
        "parameters": {name: sum(q.params.values()) for name, q in loader.quantization.items()},
        "bytes": {name: q.nbytes for name, q in loader.quantization.items()},
        "build_seconds": loader.seconds, "step_seconds": result.step_seconds,
        "encode_seconds": result.encode_seconds, "decode_seconds": result.decode_seconds,
        "total_seconds": time.perf_counter() - started, "phase_peaks": result.phase_peaks,
        "peak": result.peak_memory, "rss": memory_snapshot().rss,
        "predicted": predicted(bits, text_bits, args.size, args.low_memory) if args.width_scale == 1 else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']}: {args.size}x{args.size}, {args.steps} step(s), transformer "
          f"{'bf16' if bits is None else f'q{bits}'}, text encoder {'bf16' if text_bits is None else f'q{text_bits}'},"
          f" {report['dtype']}")
    for name, size in report["bytes"].items():
        print(f"  {name:<13} {report['parameters'][name] / 1e9:6.2f}B parameters  {format_bytes(size):>10}  "
              f"built in {loader.seconds[name]:.0f} s")
    print("  MLX peak per phase: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in result.phase_peaks.items()))
    print(f"  peak {format_bytes(result.peak_memory)}, process RSS {format_bytes(report['rss'])}; steps "
          + ", ".join(f"{s:.1f} s" for s in result.step_seconds) + f"; decode {result.decode_seconds:.1f} s")
    if report["predicted"]:
        p = report["predicted"]
        print("  memory model (cpu, same plan): " + ", ".join(f"{k} {format_bytes(v)}" for k, v in p["phases"].items())
              + f"; streamed load {format_bytes(p['load_peak_streamed'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
