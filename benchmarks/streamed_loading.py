"""Peak memory while loading and quantizing, relative to the final transformer, at 4 and 8 bits.

Writes a random-weight Klein-4B-shaped checkpoint (narrowed to fit, at least 1 GB of bf16 transformer
weights) unless --model is given, then loads it in a fresh process per precision, so that MLX's peak
counter sees one load only. Prints a table and, with --json, a JSON document.

    python benchmarks/streamed_loading.py [--model DIR] [--width-scale 0.4] [--json]

Reference (../shared/seeds, Swift MLX port, FLUX.2 Dev): int4 1.41x, qint8 2.10x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

MEASURE = r"""
import json, sys, time
import quantbench.core
import mlx.core as mx
from quantbench.core.checkpoint import open_component, load_weights
from quantbench.core.families.flux2.components import TRANSFORMER_POLICY
from quantbench.core.families.flux2.transformer import TRANSFORMER_RULES, Flux2Transformer
from quantbench.core.quant import cast_full_precision, evaluate_in_units, model_nbytes, quantize_model
folder, bits, streamed = sys.argv[1], (None if sys.argv[2] == "bf16" else int(sys.argv[2])), sys.argv[3] == "1"
component = open_component(folder)
mx.reset_peak_memory()
started = time.perf_counter()
model = Flux2Transformer.from_config(component.config)
load_weights(model, component, TRANSFORMER_RULES, "transformer", None if streamed else mx.bfloat16)
quantize_model(model, bits, TRANSFORMER_POLICY, "transformer")
cast_full_precision(model, mx.bfloat16)
evaluate_in_units(model) if streamed else mx.eval(model.parameters())
print(json.dumps({"final_bytes": model_nbytes(model), "load_peak_bytes": mx.get_peak_memory(),
                  "checkpoint_bytes": component.nbytes, "seconds": time.perf_counter() - started}))
"""


def measure(folder: Path, precision: str, streamed: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), precision, "1" if streamed else "0"],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["ratio"] = result["load_peak_bytes"] / result["final_bytes"]
    return {"precision": precision, "streamed": streamed, **result}


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a FLUX.2 model folder (default: write a random one)")
    parser.add_argument("--width-scale", type=arguments.number(0, 1, "--width-scale", above=True), default=0.4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            from quantbench.core.random_model import write_random_model
            folder = write_random_model(Path(tmp) / "random-klein-4b", "klein-4b", args.width_scale,
                                        max_shard_bytes=512 << 20)
        rows = [measure(folder / "transformer", p, streamed) for p in ("4", "8") for streamed in (False, True)]
    if args.json:
        print(json.dumps({"model": str(args.model or f"random klein-4b x{args.width_scale}"), "rows": rows}, indent=2))
        return 0
    print(f"checkpoint transformer: {rows[0]['checkpoint_bytes'] / 2**20:,.0f} MB (bf16)")
    print(f"{'precision':<10}{'loading':<14}{'final MB':>10}{'peak MB':>10}{'peak/final':>12}")
    for r in rows:
        print(f"{r['precision'] + '-bit':<10}{'streamed' if r['streamed'] else 'all at once':<14}"
              f"{r['final_bytes'] / 2**20:>10,.0f}{r['load_peak_bytes'] / 2**20:>10,.0f}{r['ratio']:>11.2f}x")
    print("Swift MLX port (published, FLUX.2 Dev): int4 1.41x, qint8 2.10x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
