"""What fusing a LoRA costs a transformer's streamed load: seconds, MLX's peak and the process's peak RSS, with and
without a LoRA on every Linear layer of its blocks, at 4 bits (or --precision), and the final size (the same: the
LoRA is fused before quantizing).

Writes a random LoRA in diffusers' layout (rank --rank, bf16) for the model's transformer, then loads the
transformer in a fresh process per run, alternating without and with the LoRA for --rounds rounds, so that MLX's
peak counter sees one load only and a shared machine's drift hits both alike. Prints a table and, with --json, a
JSON document. Full size: `quantbench random-model --arch klein-4b --out DIR`, then `--model DIR`.

    python benchmarks/lora_cost.py --model DIR [--precision 4] [--rank 32] [--rounds 2] [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

MEASURE = r"""
import json, resource, sys, time
import quantbench.core
import mlx.core as mx
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_for_folder
from quantbench.core.generation import default_compute_dtype
from quantbench.core.lora import read_loras
from quantbench.core.quant import parse_spec, quantized_matmul_kind
folder, precision, lora = sys.argv[1], sys.argv[2], sys.argv[3]
from pathlib import Path
loader = ComponentLoader(family_for_folder(Path(folder)), Path(folder), default_compute_dtype(),
                         None if precision == "none" else parse_spec(precision), None, quantized_matmul_kind("auto"),
                         loras=read_loras([lora] if lora else []))
mx.reset_peak_memory()
started = time.perf_counter()
loader.transformer()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "mlx_peak": mx.get_peak_memory(), "final": loader.quantization["transformer"].nbytes,
                  "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_random_lora(folder: Path, out: Path, rank: int, seed: int = 0) -> tuple[Path, int]:
    """A rank-`rank` LoRA (bf16, diffusers' layout) on every Linear layer inside the transformer's blocks."""
    import mlx.core as mx
    from quantbench.core.checkpoint import open_component

    rng = np.random.default_rng(seed)
    tensors = {}
    for key, info in sorted(open_component(folder / "transformer").tensors.items()):
        if key.endswith(".weight") and len(info.shape) == 2 and "blocks." in key:
            module = key.removesuffix(".weight")
            out_features, in_features = info.shape
            for name, shape in (("lora_A", (rank, in_features)), ("lora_B", (out_features, rank))):
                values = rng.standard_normal(shape, np.float32) * 0.01
                tensors[f"transformer.{module}.{name}.weight"] = mx.array(values).astype(mx.bfloat16)
    mx.save_safetensors(str(out), tensors, metadata={"format": "pt"})
    return out, len(tensors) // 2


def measure(folder: Path, precision: str, lora: Path | None) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, str(folder), precision, str(lora or "")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lora_cost: the load failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (diffusers layout)")
    parser.add_argument("--precision", default="4", help="the transformer's precision (default 4; none: unquantized)")
    parser.add_argument("--rank", type=arguments.whole(1, 1024, "--rank"), default=32)
    parser.add_argument("--rounds", type=arguments.rounds, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lora, layers = write_random_lora(args.model, Path(tmp) / "lora.safetensors", args.rank)
        lora_bytes = lora.stat().st_size
        for round_ in range(args.rounds):
            for with_lora in (False, True) if round_ % 2 == 0 else (True, False):
                rows.append({"round": round_ + 1, "lora": with_lora,
                             **measure(args.model, args.precision, lora if with_lora else None)})
    summary = {"model": str(args.model), "precision": args.precision, "rank": args.rank, "lora_layers": layers,
               "lora_bytes": lora_bytes, "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    gb = 2 ** 30
    print(f"{args.model}: transformer at {args.precision}, LoRA rank {args.rank} on {layers} layers "
          f"({lora_bytes / 2**20:,.0f} MB)")
    print(f"{'round':>5}  {'LoRA':<5}{'load s':>8}{'MLX peak GB':>13}{'RSS peak GB':>13}{'final GB':>10}")
    for r in rows:
        print(f"{r['round']:>5}  {'yes' if r['lora'] else 'no':<5}{r['seconds']:>8.1f}{r['mlx_peak'] / gb:>13.3f}"
              f"{r['rss_peak'] / gb:>13.3f}{r['final'] / gb:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
