"""quantbench against its peers on one random-weight FLUX.2 Klein folder: s/step, peak RSS, load time, PSNR.

Every tool draws the same prompt, seed, size and steps from the same initial noise (diffusers'
latent layout, (1, 128, H/16, W/16), which quantbench's `generate(latents=...)` takes as is):

  quantbench   unquantized (float32 compute on the CPU), 8-bit and 4-bit transformer;
  diffusers    Flux2KleinPipeline on torch's CPU, float32 and bfloat16;
  mflux        with --mflux-python (a venv with mflux; its Linux wheel wants MLX's CUDA build, so
               install mflux there and then mlx-cpu of the same MLX version): its Flux2Klein class with
               the transformer, text encoder and VAE built at the folder's own sizes (its command line
               takes Klein's sizes from its own table) and the folder's text-encoder layers, in
               bfloat16 as it ships; narrowed models only, its CPU path is slow. Its first step
               includes mx.compile's tracing; s/step is the fastest step.

Each run is a fresh process (its peak RSS is its own getrusage maximum, loading included), and the
runs alternate (every tool once, then every tool again) so that a shared machine's drift hits all
alike. s/step is the fastest denoising step of a run (one transformer pass: Klein is distilled),
then the median over rounds; CPU s/step the same for the process's CPU seconds in a step (every thread:
what a shared machine's load disturbs less than wall time; quantbench's from its second step on, between
its per-step callbacks; none for mflux); load is from the folder to a ready pipeline. PSNR is between the final
images in [0, 1]. Tools that cannot run here are listed with the reason.

    python benchmarks/peers.py --model DIR [--size 256] [--steps 2] [--rounds 2] [--json]
        [--mflux-python VENV/bin/python]
        [--readme README.md]   (rewrites the table between the peers markers)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpus import usable_cpus

PROMPT = "a red fox sitting in the snow, photo"
TOOLS = ("quantbench unquantized", "quantbench 8-bit", "quantbench 4-bit", "diffusers float32",
         "diffusers bfloat16", "mflux")
README_BEGIN, README_END = "<!-- peers:begin -->", "<!-- peers:end -->"


# ---------------------------------------------------------------------------------------------- workers

def _noise(seed: int, size: int):
    import numpy as np
    return np.random.default_rng(seed).standard_normal((1, 128, size // 16, size // 16)).astype(np.float32)


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_quantbench(folder: Path, bits: int | None, size: int, steps: int, seed: int):
    import numpy as np
    from quantbench.core.pipelines import load_pipeline

    started = time.perf_counter()
    model = load_pipeline(folder, quantize=bits)
    load_seconds = time.perf_counter() - started
    step_ends: list[float] = []  # CPU seconds at the end of each step
    result = model.generate(PROMPT, steps=steps, width=size, height=size, latents=_noise(seed, size), preview=False,
                            callback=lambda info: step_ends.append(_cpu_seconds()))
    image = np.clip((np.asarray(result.pixels, np.float32) + 1) / 2, 0, 1)
    step_cpu = [end - start for start, end in zip(step_ends, step_ends[1:])]
    return load_seconds, list(result.step_seconds), step_cpu, image, model.info.dtype


def run_diffusers(folder: Path, dtype_name: str, size: int, steps: int, seed: int):
    import torch
    from diffusers import Flux2KleinPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()  # random-model folders carry no VAE encoder: diffusers says so at length
    torch.set_num_threads(usable_cpus())
    dtype = getattr(torch, dtype_name)
    started = time.perf_counter()
    # low_cpu_mem_usage=False: a folder without the VAE encoder (random-model before it wrote one) leaves
    # those weights on the meta device otherwise, and the pipeline refuses to run.
    pipe = Flux2KleinPipeline.from_pretrained(folder, torch_dtype=dtype, low_cpu_mem_usage=not _lacks_vae_encoder(folder))
    load_seconds = time.perf_counter() - started
    step_seconds: list[float] = []
    step_cpu: list[float] = []
    forward = pipe.transformer.forward

    def timed(*args, **kwargs):
        begun, cpu = time.perf_counter(), _cpu_seconds()
        out = forward(*args, **kwargs)
        step_seconds.append(time.perf_counter() - begun)
        step_cpu.append(_cpu_seconds() - cpu)
        return out

    pipe.transformer.forward = timed
    layers = tuple(json.loads((folder / "model_index.json").read_text()).get("text_encoder_out_layers", (9, 18, 27)))
    with torch.no_grad():
        out = pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=steps,
                   latents=torch.from_numpy(_noise(seed, size)), output_type="np", text_encoder_out_layers=layers)
    return load_seconds, step_seconds, step_cpu, out.images[0].astype("float32"), dtype_name


def _lacks_vae_encoder(folder: Path) -> bool:
    from safetensors import safe_open

    files = sorted((folder / "vae").glob("*.safetensors"))
    return not any(key.startswith("encoder.") for f in files for key in safe_open(f, "np").keys())


def run_mflux(folder: Path, size: int, steps: int, seed: int):
    """mflux's Flux2Klein, its modules built with the folder's own sizes, fed our noise; bfloat16 as it ships."""
    try:
        import mlx.core as mx
        from mflux.models.common.config.model_config import ModelConfig
        from mflux.models.common.vae.block_decoder import VAEBlockDecoder
        from mflux.models.flux2.flux2_initializer import Flux2Initializer
        from mflux.models.flux2.latent_creator.flux2_latent_creator import Flux2LatentCreator
        from mflux.models.flux2.model.flux2_text_encoder.prompt_encoder import Flux2PromptEncoder
        from mflux.models.flux2.model.flux2_text_encoder.qwen3_text_encoder import Qwen3TextEncoder
        from mflux.models.flux2.model.flux2_transformer.transformer import Flux2Transformer
        from mflux.models.flux2.model.flux2_vae.decoder.decoder import Flux2Decoder
        from mflux.models.flux2.model.flux2_vae.encoder.encoder import Flux2Encoder
        from mflux.models.flux2.model.flux2_vae.vae import Flux2VAE
        from mflux.models.flux2.variants.txt2img.flux2_klein import Flux2Klein
    except ImportError:
        raise SkipTool("mflux is not installed for this interpreter (install it in its own venv and pass "
                       "--mflux-python)") from None
    import copy
    import inspect

    import numpy as np

    def sizes(component: str, accepted) -> dict:
        config = json.loads((folder / component / "config.json").read_text())
        names = set(inspect.signature(accepted).parameters) - {"self"}
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in names}

    vae_sizes = sizes("vae", Flux2Decoder.__init__)
    model_config = copy.copy(ModelConfig.flux2_klein_4b())
    model_config.transformer_overrides = sizes("transformer", Flux2Transformer.__init__)
    model_config.text_encoder_overrides = sizes("text_encoder", Qwen3TextEncoder.__init__)
    build_models = Flux2Initializer._init_models

    def init_models(model):  # mflux's own modules, at the folder's VAE widths (its table has only the real ones)
        build_models(model)
        model.vae = Flux2VAE()
        widths = {k: v for k, v in vae_sizes.items() if k not in ("in_channels", "out_channels")}  # image side
        model.vae.encoder, model.vae.decoder = Flux2Encoder(**widths), Flux2Decoder(**widths)
        model.vae.decode_mode = VAEBlockDecoder.LOW_MEMORY

    Flux2Initializer._init_models = staticmethod(init_models)
    started = time.perf_counter()
    model = Flux2Klein(model_path=str(folder), model_config=model_config)
    load_seconds = time.perf_counter() - started
    marks: list[float] = []  # each step's latents are evaluated after its in_loop call; the last before after_loop
    start = model.callbacks.start

    def timed_start(*args, **kwargs):
        context = start(*args, **kwargs)
        for name in ("in_loop", "after_loop"):
            hook = getattr(context, name)
            setattr(context, name, lambda *a, _hook=hook, **k: (marks.append(time.perf_counter()), _hook(*a, **k))[1])
        return context

    model.callbacks.start = timed_start
    prepare = model._prepare_generation_latents

    def our_noise(**kwargs):
        latents, ids, height, width = prepare(**kwargs)
        ours = Flux2LatentCreator.pack_latents(mx.array(_noise(seed, size)))
        assert ours.shape == latents.shape, (ours.shape, latents.shape)
        return ours.astype(latents.dtype), ids, height, width

    model._prepare_generation_latents = our_noise
    layers = tuple(json.loads((folder / "model_index.json").read_text()).get("text_encoder_out_layers", (9, 18, 27)))

    def encode(prompt: str, **_):  # mflux reads layers 9, 18 and 27, which a shallower folder lacks
        embeds, ids = Flux2PromptEncoder.encode_prompt(
            prompt=prompt, tokenizer=model.tokenizers["qwen3"], text_encoder=model.text_encoder,
            num_images_per_prompt=1, max_sequence_length=512, text_encoder_out_layers=layers)
        return embeds, ids, None, None  # distilled Klein: one pass, no negative prompt

    model._encode_prompt_pair = encode
    decoded = []
    decode = model.vae.decode_packed_latents
    model.vae.decode_packed_latents = lambda *a, **k: decoded.append(decode(*a, **k)) or decoded[-1]
    model.generate_image(seed=seed, prompt=PROMPT, num_inference_steps=steps, height=size, width=size)
    pixels = np.asarray(decoded[-1].astype(mx.float32))[0].transpose(1, 2, 0)
    step_seconds = [later - earlier for earlier, later in zip(marks, marks[1:])]
    return load_seconds, step_seconds, np.clip((pixels + 1) / 2, 0, 1), "bfloat16"


class SkipTool(Exception):
    """This tool cannot run here; the message says why."""


def worker(tool: str, folder: Path, size: int, steps: int, seed: int, image_out: Path) -> dict:
    import numpy as np

    try:
        if tool.startswith("quantbench"):
            bits = None if tool.endswith("unquantized") else int(tool.split()[1].split("-")[0])
            load, steps_s, cpu_s, image, dtype = run_quantbench(folder, bits, size, steps, seed)
        elif tool.startswith("diffusers"):
            try:
                load, steps_s, cpu_s, image, dtype = run_diffusers(folder, tool.split()[1], size, steps, seed)
            except ImportError as exc:
                raise SkipTool(f"diffusers or torch is not installed ({exc.name})") from None
        else:
            load, steps_s, image, dtype = run_mflux(folder, size, steps, seed)
            cpu_s = []
    except SkipTool as exc:
        return {"tool": tool, "skipped": str(exc)}
    np.save(image_out, image)
    return {"tool": tool, "dtype": dtype, "load_seconds": load, "step_seconds": steps_s, "step_cpu_seconds": cpu_s,
            "peak_rss": _peak_rss(), "image": str(image_out)}


# ---------------------------------------------------------------------------------------------- driver

def psnr(a, b) -> float:
    import numpy as np
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def run_all(folder: Path, size: int, steps: int, rounds: int, seed: int, tools: tuple[str, ...], scratch: Path,
            log=lambda message: None, mflux_python: str | None = None) -> dict:
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    for round_index in range(rounds):
        for tool in tools:
            if runs[tool] and "skipped" in runs[tool][0]:
                continue
            log(f"round {round_index + 1}: {tool} ...")
            image = scratch / f"{tool.replace(' ', '_')}-{round_index}.npy"
            python = mflux_python if tool == "mflux" and mflux_python else sys.executable
            command = [python, __file__, "--worker", tool, "--model", str(folder), "--size", str(size),
                       "--steps", str(steps), "--seed", str(seed), "--image", str(image)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                runs[tool].append({"tool": tool, "skipped": f"failed: {tail}"})
                continue
            runs[tool].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return summarize(runs)


def summarize(runs: dict[str, list[dict]]) -> dict:
    import numpy as np

    rows = []
    images = {}
    for tool, attempts in runs.items():
        done = [r for r in attempts if "skipped" not in r]
        if not done:
            rows.append({"tool": tool, "skipped": attempts[0]["skipped"] if attempts else "not run"})
            continue
        images[tool] = np.load(done[-1]["image"])
        rows.append({"tool": tool, "dtype": done[0]["dtype"], "rounds": len(done),
                     "seconds_per_step": statistics.median(min(r["step_seconds"]) for r in done),
                     "step_seconds": [r["step_seconds"] for r in done],
                     "cpu_seconds_per_step": statistics.median(min(r["step_cpu_seconds"]) for r in done)
                     if all(r["step_cpu_seconds"] for r in done) else None,
                     "peak_rss": max(r["peak_rss"] for r in done),
                     "load_seconds": statistics.median(r["load_seconds"] for r in done)})
    references = [t for t in ("quantbench unquantized", "diffusers float32") if t in images]
    for row in rows:
        if row["tool"] in images:
            row["psnr_db"] = {f"vs {ref}": psnr(images[row["tool"]], images[ref])
                              for ref in references if ref != row["tool"]}
    return {"rows": rows}


def table(report: dict) -> list[str]:
    head = ("| tool | compute | s/step | CPU s/step | peak RSS | load s | PSNR vs quantbench unquantized "
            "| PSNR vs diffusers float32 |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    skipped = []
    for row in report["rows"]:
        if "skipped" in row:
            skipped.append(f"- {row['tool']}: skipped, {row['skipped']}")
            continue
        cpu = row["cpu_seconds_per_step"]
        cells = [row["tool"], row["dtype"], f"{row['seconds_per_step']:.2f}", "-" if cpu is None else f"{cpu:.2f}",
                 f"{row['peak_rss'] / 2**30:.2f} GB", f"{row['load_seconds']:.1f}"]
        for ref in ("quantbench unquantized", "diffusers float32"):
            value = row.get("psnr_db", {}).get(f"vs {ref}")
            cells.append("reference" if row["tool"] == ref else "-" if value is None else
                         "identical" if math.isinf(value) else f"{value:.1f} dB")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ([""] + skipped if skipped else [])


def write_readme(readme: Path, report: dict, command: str) -> None:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_BEGIN} ... {README_END} markers to write the table between")
    before, rest = text.split(README_BEGIN, 1)
    _, after = rest.split(README_END, 1)
    block = "\n".join([README_BEGIN, f"`{command}`", "", *table(report), README_END])
    from quantbench.core.atomic import replace_file
    replace_file(readme, (before + block + after).encode())


def main() -> int:
    if "--worker" in sys.argv[1:]:  # the driver's own values, in a peer's venv: the workers never import quantbench
        parser, size, steps, rounds, seed = argparse.ArgumentParser(), int, int, int, int
    else:  # numbers as the quantbench commands read them (core/numbers.py): a bad one is one line and exit 2
        from quantbench.cli import arguments
        from quantbench.cli.main import OneLineParser
        parser = OneLineParser(description=__doc__.splitlines()[0])
        size, steps, rounds, seed = (arguments.dimension("--size"), arguments.steps,
                                     arguments.rounds, arguments.seed)
    parser.add_argument("--model", type=Path, required=True, help="a random-weight FLUX.2 Klein folder")
    parser.add_argument("--size", type=size, default=256)
    parser.add_argument("--steps", type=steps, default=2)
    parser.add_argument("--rounds", type=rounds, default=2)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of: {', '.join(TOOLS)}")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--readme", type=Path, help="rewrite the table between the peers markers of this file")
    parser.add_argument("--mflux-python", default=os.environ.get("QUANTBENCH_MFLUX_PYTHON"),
                        help="the interpreter of a venv with mflux (its Linux wheel wants MLX's CUDA build: install "
                             "mflux there, then mlx-cpu of the same MLX version); default $QUANTBENCH_MFLUX_PYTHON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.size, args.steps, args.seed, args.image)))
        return 0
    tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"--tools: unknown {', '.join(unknown)}: choose from {', '.join(TOOLS)}")
    if args.readme:  # before the rounds, not after them (the workers never import quantbench: their own venvs)
        from quantbench.cli.arguments import report_file
        try:
            report_file(str(args.readme))
        except argparse.ArgumentTypeError as err:
            parser.error(f"--readme: {err}")
    with tempfile.TemporaryDirectory(prefix="quantbench-peers-") as scratch:
        report = run_all(args.model, args.size, args.steps, args.rounds, args.seed, tools, Path(scratch),
                         log=lambda message: print(message, file=sys.stderr, flush=True),
                         mflux_python=args.mflux_python)
    report.update(model=str(args.model), size=args.size, steps=args.steps, rounds=args.rounds, prompt=PROMPT,
                  seed=args.seed, cpus=usable_cpus())
    command = (f"python benchmarks/peers.py --model {args.model.name} --size {args.size} --steps {args.steps} "
               f"--rounds {args.rounds}" + (f' --tools "{",".join(tools)}"' if set(tools) != set(TOOLS) else ""))
    if args.readme:
        write_readme(args.readme, report, command)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.model}, {args.size}x{args.size}, {args.steps} steps, {args.rounds} alternating rounds, "
              f"{usable_cpus()} CPUs")
        print("\n".join(table(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
