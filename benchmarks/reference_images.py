"""What reference images (generate --image) cost a FLUX.2 run, measured against the memory model's prediction.

Two parts, each run in fresh processes so that MLX's peak counter sees one thing only:
- encoder: the VAE's encoder alone reading a random image of each --encode-sizes side, its MLX peak against
  memory_model's encode_image_bytes (the figure the fit check adds for a reference) plus the encoder's weights;
- generate: `quantbench generate` at --size, --quantize and --steps, without and with --references references
  (--reference-size px a side, smooth colour pictures), alternating for --rounds rounds: seconds a step, the encode
  phase's and the denoise phase's MLX peaks, the process's peak RSS, and the predicted peaks of those phases.

Prints a table and, with --json, a JSON document. Full size: `quantbench random-model --arch klein-4b --out DIR`,
then `--model DIR`.

    python benchmarks/reference_images.py --model DIR [--size 512] [--quantize 4] [--references 1]
        [--reference-size 512] [--steps 1] [--rounds 2] [--encode-sizes 256,512] [--json]
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

ENCODE = r"""
import json, sys
import quantbench.core  # first: it puts OpenBLAS under MLX, which must not be imported before it
import mlx.core as mx
from mlx.utils import tree_flatten
from quantbench.core.blocks.vae import decoder_stages
from quantbench.core.families.flux2.vae import load_vae, load_vae_encoder
from quantbench.core.memory_model.activations import backend_profile, encode_image_bytes
folder, size = sys.argv[1], int(sys.argv[2])
encoder = load_vae_encoder(folder + "/vae")
stages = decoder_stages(load_vae(folder + "/vae")[0])
weights = sum(a.nbytes for _, a in tree_flatten(encoder.parameters()))
image = mx.random.uniform(-1, 1, (1, size, size, 3))
mx.eval(image)
mx.reset_peak_memory()
before = mx.get_active_memory()
mx.eval(encoder.encode(image))
print(json.dumps({"size": size, "measured": mx.get_peak_memory() - before + weights, "weights": weights,
                  "predicted": encode_image_bytes(stages, size, size, 4, backend_profile("cpu")) + weights}))
"""


def picture(path: Path, side: int, seed: int) -> Path:
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side] / side
    rng = np.random.default_rng(seed)
    channels = [127 + 120 * np.sin(x * rng.uniform(2, 8) + y * rng.uniform(2, 8) + rng.uniform(0, 6)) for _ in range(3)]
    Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8)).save(path)
    return path


def encode_row(folder: Path, size: int) -> dict:
    result = subprocess.run([sys.executable, "-c", ENCODE, str(folder), str(size)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"reference_images: the encode failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def generate_row(args, references: list[Path], out: Path) -> dict:
    command = [sys.executable, "-m", "quantbench.cli.main", "generate", "--model", str(args.model), "--prompt",
               "a red fox in the snow", "--width", str(args.size), "--height", str(args.size), "--steps",
               str(args.steps), "--quantize", args.quantize, "--out", str(out), "--overwrite", "--json", "--quiet",
               "--force", *[option for path in references for option in ("--image", str(path))]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"reference_images: generate failed: {result.stdout.strip() or result.stderr.strip()}")
    summary = json.loads(result.stdout)
    predicted = (summary.get("predicted") or {}).get("phase_peaks", {})
    return {"references": len(references), "step_seconds": min(summary["step_seconds"]),
            "encode_peak": summary["phase_peaks"].get("encode"), "denoise_peak": summary["phase_peaks"].get("denoise"),
            "peak_rss": summary["peak_rss"], "predicted_encode": predicted.get("encode"),
            "predicted_denoise": predicted.get("denoise")}


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a FLUX.2 model folder (diffusers layout)")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=512)
    parser.add_argument("--quantize", default="4", help="the transformer's precision (default 4)")
    parser.add_argument("--references", type=arguments.whole(1, 10, "--references"), default=1)
    parser.add_argument("--reference-size", type=arguments.whole(64, 1024, "--reference-size"), default=512)
    parser.add_argument("--steps", type=arguments.steps, default=1)
    parser.add_argument("--rounds", type=arguments.rounds, default=2)
    parser.add_argument("--encode-sizes", default="256,512", help="sides of the encoder-alone part (comma-separated)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(part) for part in args.encode_sizes.split(",") if part.strip()]
    encodes = [encode_row(args.model, size) for size in sizes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        references = [picture(Path(tmp) / f"reference{i}.png", args.reference_size, i) for i in range(args.references)]
        for round_ in range(args.rounds):
            for with_references in (False, True) if round_ % 2 == 0 else (True, False):
                row = generate_row(args, references if with_references else [], Path(tmp) / "out.png")
                rows.append({"round": round_ + 1, **row})
    summary = {"model": str(args.model), "size": args.size, "quantize": args.quantize, "steps": args.steps,
               "reference_size": args.reference_size, "encoder": encodes, "generate": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    mb, gb = 2 ** 20, 2 ** 30
    print(f"{args.model}: the VAE encoder alone (MLX peak with its weights)")
    print(f"{'side':>6}{'measured MB':>13}{'predicted MB':>14}{'ratio':>7}")
    for e in encodes:
        print(f"{e['size']:>6}{e['measured'] / mb:>13.0f}{e['predicted'] / mb:>14.0f}{e['predicted'] / e['measured']:>7.2f}")
    print(f"\ngenerate {args.size}x{args.size}, transformer {args.quantize}, {args.steps} step(s); references "
          f"{args.reference_size} px a side")
    print(f"{'round':>5}{'refs':>5}{'s/step':>8}{'encode GB':>11}{'(pred.)':>9}{'denoise GB':>12}{'(pred.)':>9}"
          f"{'RSS peak GB':>13}")
    for r in rows:
        print(f"{r['round']:>5}{r['references']:>5}{r['step_seconds']:>8.1f}{r['encode_peak'] / gb:>11.2f}"
              f"{(r['predicted_encode'] or 0) / gb:>9.2f}{r['denoise_peak'] / gb:>12.2f}"
              f"{(r['predicted_denoise'] or 0) / gb:>9.2f}{r['peak_rss'] / gb:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
