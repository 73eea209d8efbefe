"""Z-Image-Turbo or Qwen-Image 2.1 at the real width on this machine: one quantized generation, weights drawn in memory.

`quantbench random-model` writes the same models to disk, but in bf16 they are 20 GB (Z-Image, with a
1,024-token vocabulary) and 30 GB of files; this benchmark writes a folder with everything but the weights
(configs, tokenizer, scheduler) and draws the released shapes in memory instead: Z-Image-Turbo's 6.15B
transformer and Qwen3-4B, or Qwen-Image 2.1's 7.1B transformer and Qwen3-VL-8B's language model, both text
encoders with their real 151,936-token embedding, and the VAE decoder. Each weight is drawn, rounded to
bf16 as a checkpoint stores it, then quantized and materialized one layer at a time by the engine's own
loading step. The pipeline's own `generate` then runs: encode, free the encoder, load the transformer,
denoise, decode (tiled, with the transformer freed, under --low-memory). It prints MLX's peak per phase,
the process RSS, the seconds, and the memory model's prediction for the same run (the catalog entry, as
`generate --json` gives it for the released model). The picture is noise.

    flock /tmp/qb-heavy.lock .venv/bin/python benchmarks/full_width_step.py --arch z-image --quantize 4 \
        --text-encoder-quantize 4 --size 256 --steps 1 --low-memory [--json]
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import quantbench.core  # noqa: F401  (the fast BLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from quantbench.core.atomic import staged_folder
from quantbench.core.catalog import get_entry
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_for_folder
from quantbench.core.families.qwen_image21 import random_model as qwen21
from quantbench.core.families.z_image import random_model as z_image
from quantbench.core.fit import prompt_tokens
from quantbench.core.generation import default_compute_dtype, dtype_name
from quantbench.core.memory import format_bytes, memory_snapshot
from quantbench.core.memory_model import Plan, predict
from quantbench.core.pipeline_base import LoadInfo, MemoryOptions
from quantbench.core.quant import parse_spec as parse_bits, quantized_matmul_kind
from quantbench.core.random_weights import narrowed
from quantbench.core.sources import read_model_index
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

REAL_VOCABULARY = 151_936
PROMPT = "a red star on a blue sky"


def z_image_files(folder: Path, width_scale: float) -> None:
    shape = narrowed(replace(z_image.ARCHITECTURES["z-image"], vocab_size=REAL_VOCABULARY), width_scale)
    with staged_folder(folder, overwrite=True) as staging:
        z_image.write_z_image(staging, shape, True, mx.bfloat16, 1 << 30,
                              {"random_weights": "z-image, drawn in memory", "width_scale": width_scale, "seed": 0},
                              weights=False)


def qwen_image21_files(folder: Path, width_scale: float) -> None:
    qwen21.write_random_model(folder, width_scale, overwrite=True, weights=False)


# architecture: (the folder without weights, the catalog entry of the released model the memory model predicts)
ARCHITECTURES = {"z-image": (z_image_files, "z-image-turbo"), "qwen-image-2.1": (qwen_image21_files, "qwen-image-2.1")}


@dataclass
class RandomLoader(ComponentLoader):
    """The family's loader with weights drawn instead of read: the engine's own quantize-and-stream step."""

    def __post_init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def _config(self, name: str) -> dict:
        return json.loads((self.folder / name / "config.json").read_text())

    def _stored(self, name: str, bits) -> nn.Module:
        """Round every weight to bf16 (a checkpoint's dtype), lazily; quantize, cast, materialize per layer."""
        started = time.perf_counter()
        spec = self.family.component(name)
        module = spec.build(self._config(name), None if name == "transformer" else self.text_encoder_layers or None)
        module.update(tree_unflatten([(k, v.astype(mx.bfloat16)) for k, v in tree_flatten(module.parameters())]))
        self._quantize(module, name, None, bits, spec.policy)
        self.seconds[name] = time.perf_counter() - started
        return module

    def transformer(self) -> nn.Module:
        return self._stored("transformer", self.transformer_bits)

    def text_encoder(self, folder: str = "text_encoder") -> nn.Module:
        return self._stored(folder, self.text_encoder_bits)

    def vae(self) -> nn.Module:
        vae = self.family.vae.build(self._config("vae"), None)
        vae.update(tree_unflatten([(k, v.astype(mx.bfloat16).astype(self.dtype))
                                   for k, v in tree_flatten(vae.parameters())]))
        mx.eval(vae.parameters())
        return vae


def build_pipeline(folder: Path, bits, text_bits, memory: MemoryOptions):
    """As the family's `load()` does, with the drawing loader."""
    family = family_for_folder(folder)
    dtype = default_compute_dtype()
    layers = family.pipeline.hidden_states(folder, read_model_index(folder), None)
    loader = RandomLoader(family, folder, dtype, bits, text_bits, quantized_matmul_kind("auto"), layers)
    defaults = family.read_defaults(folder)
    info = LoadInfo(f"random {folder.name}", folder, family.pipeline.__name__, defaults, dtype_name(dtype), None,
                    None, layers, loader.matmul, family.pipeline.max_sequence_length(defaults), loader=loader,
                    text_encoder_reports=tuple(c.folder for c in family.text_encoders))
    if memory.cache_limit is not None:
        mx.set_cache_limit(memory.cache_limit)
    return family.pipeline(info, loader, memory)


def predicted(catalog_id: str, folder: Path, bits, text_bits, size: int, low_memory: bool) -> dict:
    """The memory model's prediction for the released model, with this run's prompt counted as generate counts it."""
    entry = get_entry(catalog_id)
    plan = Plan(transformer_bits=bits, text_encoder_bits=text_bits, width=size, height=size, text_encoder="staged",
                vae_tiling=low_memory, tile_size=512, backend="cpu", dtype=dtype_name(default_compute_dtype()),
                transformer_for_decode=not low_memory, prompt_tokens=prompt_tokens(folder, entry, (PROMPT,)))
    prediction = predict(entry, plan)
    return {"phases": dict(prediction.phases), "generation_peak": prediction.generation_peak,
            "load_peak_streamed": prediction.load_peaks["streamed"],
            "components": {c.role: c.nbytes for c in prediction.components}}


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--quantize", default="4", help="transformer bits (default 4)")
    parser.add_argument("--text-encoder-quantize", default="4", help="text encoder bits (default 4)")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=256, help="square image size (default 256)")
    parser.add_argument("--steps", type=arguments.steps, default=1)
    parser.add_argument("--width-scale", type=arguments.number(0, 1, "--width-scale", above=True), default=1.0,
                        help="narrow the model (default 1: the real width; the prediction is for the real width)")
    parser.add_argument("--low-memory", action="store_true", help="free the transformer before a tiled decode")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bits, text_bits = parse_bits(args.quantize), parse_bits(args.text_encoder_quantize)
    memory = MemoryOptions.lean() if args.low_memory else MemoryOptions(evict_text_encoder=True)
    write_files, catalog_id = ARCHITECTURES[args.arch]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.arch
        write_files(folder, args.width_scale)
        pipeline = build_pipeline(folder, bits, text_bits, memory)
        started = time.perf_counter()
        result = pipeline.generate(PROMPT, steps=args.steps, width=args.size, height=args.size, seed=0,
                                   preview=False)
        prediction = (predicted(catalog_id, folder, bits, text_bits, args.size, args.low_memory)
                      if args.width_scale == 1 else None)
    loader = pipeline.loader
    report = {
        "model": f"random {args.arch} x{args.width_scale:g}", "size": args.size, "steps": args.steps,
        "transformer_bits": bits, "text_encoder_bits": text_bits, "low_memory": args.low_memory,
        "dtype": pipeline.info.dtype, "matmul": loader.matmul,
        "parameters": {name: sum(q.params.values()) for name, q in loader.quantization.items()},
        "bytes": {name: q.nbytes for name, q in loader.quantization.items()},
        "build_seconds": loader.seconds, "step_seconds": result.step_seconds,
        "encode_seconds": result.encode_seconds, "decode_seconds": result.decode_seconds,
        "total_seconds": time.perf_counter() - started, "phase_peaks": result.phase_peaks,
        "peak": result.peak_memory, "rss": memory_snapshot().rss,
        "predicted": prediction,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
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
    p = report["predicted"]
    if p:
        print("  memory model (cpu, same plan): " + ", ".join(f"{k} {format_bytes(v)}" for k, v in p["phases"].items())
              + f"; streamed load {format_bytes(p['load_peak_streamed'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
