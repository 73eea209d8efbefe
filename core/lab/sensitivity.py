"""Which transformer layers quantization hurts most: quantize one at a time and measure.

For each layer the layer policy quantizes (or each block, with granularity "block": a double or
single transformer block, or one of the shared modulation layers), the layer is replaced by its
quantized version at `bits` (exactly what loading with --quantize would give it), the transformer
runs once on a fixed batch of inputs, the output is compared with full precision, and the layer
is put back. The inputs ("probes") are real points of the model's own sampling trajectories: for
each of a few fixed prompts and a fixed seed, the full-precision model samples `probe_steps` Euler
steps and the latents at a few points of the trajectory (sigma_fractions) are kept. For base models
the probe is the guided velocity (conditional and unconditional rows in the same pass).

The error of a unit is the relative mean squared error of the velocity over every probe:
    error = sum ||v_quantized - v_full||^2 / sum ||v_full||^2
(the image is the integral of these velocities, so this is what moves the picture). The ranking is
by this error; `snr_db` = -10 log10(error). Cost: one forward pass of the batch per unit (the batch
is split in chunks of at most `max_batch` rows), plus the trajectories and one pass with every
layer quantized (`uniform_error`, to check how additive the per-layer errors are).

Each unit also gets its weights' own quantization error at every supported bit width (sum of
squared errors after a quantize/dequantize round trip, no forward pass): plans.allocate uses it to
predict the unit's output error at other bit widths.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import Cancelled, InvalidRequest
from ..flow_match import euler_step
from ..generation import CancelToken, dtype_name, initial_noise
from ..quantize import GROUP_SIZE, SCALE_DTYPE, SUPPORTED_BITS, DenseQuantizedLinear
from .models import is_builtin
from .plans import fixed_bytes, loaded_dtypes, quantizable_layers

GRANULARITIES = ("layer", "block")
DEFAULT_BITS = 4
# Prompts for models trained on natural images; the built-in models get captions of their world.
GENERAL_PROMPTS = (
    "a photo of a cat sitting on a window sill in the afternoon sun",
    "a city street at night with neon signs reflected in the rain",
    "a bowl of fruit on a wooden table, studio lighting",
)
BUILTIN_PROMPT_SCENES = (0, 41, 83)  # indices into world.eval_prompts(): different shapes and backgrounds
DEFAULT_SIGMA_FRACTIONS = (0.25, 0.75)
MAX_PROBE_STEPS = 8


@dataclass
class UnitSensitivity:
    name: str  # a layer path, or a block name ("transformer_blocks.3", "double_stream_modulation_img")
    layers: tuple[str, ...]
    elements: int
    error: float  # relative MSE of the output with this unit quantized at the report's bits
    weight_sse: dict[int, float] = field(default_factory=dict)  # bits -> sum of squared weight errors
    order: int = 0  # position in the model

    @property
    def snr_db(self) -> float:
        return math.inf if self.error <= 0 else -10 * math.log10(self.error)

    def error_at(self, bits: int, measured_bits: int) -> float:
        """The output error predicted at `bits`, from the one measured at `measured_bits`."""
        if bits == measured_bits or not self.weight_sse:
            return self.error
        base = self.weight_sse.get(measured_bits, 0.0)
        return self.error * self.weight_sse[bits] / base if base > 0 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "params": self.elements, "error": self.error,
                "snr_db": None if math.isinf(self.snr_db) else round(self.snr_db, 3),
                "weight_sse": {str(b): v for b, v in self.weight_sse.items()}, "order": self.order}

    @classmethod
    def from_dict(cls, data: dict) -> "UnitSensitivity":
        return cls(data["name"], tuple(data["layers"]), int(data["params"]), float(data["error"]),
                   {int(b): float(v) for b, v in data.get("weight_sse", {}).items()}, int(data.get("order", 0)))


@dataclass
class SensitivityReport:
    model: str
    bits: int
    granularity: str
    group_size: int
    dtype: str
    width: int
    height: int
    prompts: list[str]
    seed: int
    sigmas: list[float]  # the probes' noise levels (each prompt at each of them)
    units: list[UnitSensitivity]  # most sensitive first
    layer_sizes: dict[str, int]  # every quantizable layer: weights
    fixed_bytes: int  # bytes of what never quantizes, in the transformer as the engine loads it quantized
    uniform_error: float | None = None  # every unit quantized at once
    seconds: float = 0.0
    forward_passes: int = 0

    @property
    def summed_error(self) -> float:
        return sum(u.error for u in self.units)

    def to_dict(self) -> dict:
        return {"model": self.model, "bits": self.bits, "granularity": self.granularity,
                "group_size": self.group_size, "dtype": self.dtype, "width": self.width, "height": self.height,
                "prompts": list(self.prompts), "seed": self.seed, "sigmas": [round(s, 5) for s in self.sigmas],
                "uniform_error": self.uniform_error, "summed_error": self.summed_error,
                "fixed_bytes": self.fixed_bytes, "seconds": round(self.seconds, 3),
                "forward_passes": self.forward_passes, "layer_sizes": dict(self.layer_sizes),
                "units": [u.to_dict() for u in self.units]}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityReport":
        return cls(data["model"], int(data["bits"]), data["granularity"], int(data["group_size"]), data["dtype"],
                   int(data["width"]), int(data["height"]), list(data["prompts"]), int(data["seed"]),
                   list(data["sigmas"]), [UnitSensitivity.from_dict(u) for u in data["units"]],
                   {k: int(v) for k, v in data["layer_sizes"].items()}, int(data["fixed_bytes"]),
                   data.get("uniform_error"), float(data.get("seconds", 0)), int(data.get("forward_passes", 0)))

    def table_lines(self, top: int | None = None) -> list[str]:
        units = self.units if top is None else self.units[:top]
        width = max([len(u.name) for u in units] + [len(self.granularity)])
        lines = [f"{'rank':>4}  {self.granularity:<{width}}  {'params':>9}  {'rel. RMSE':>9}  {'SNR dB':>7}"]
        for rank, unit in enumerate(units, start=1):
            snr = "inf" if math.isinf(unit.snr_db) else f"{unit.snr_db:.1f}"
            lines.append(f"{rank:>4}  {unit.name:<{width}}  {_params(unit.elements):>9}  "
                         f"{100 * math.sqrt(unit.error):>8.3f}%  {snr:>7}")
        if top is not None and len(self.units) > top:
            lines.append(f"      ... and {len(self.units) - top} more")
        return lines


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------

def block_of(path: str) -> str:
    """'transformer_blocks.3.attn.to_q' -> 'transformer_blocks.3'; 'double_stream_modulation_img.linear'
    -> 'double_stream_modulation_img'."""
    match = re.match(r"^([A-Za-z_]+\.\d+)\.", path)
    return match.group(1) if match else path.split(".")[0]


def make_units(sizes: dict[str, int], granularity: str) -> list[UnitSensitivity]:
    if granularity not in GRANULARITIES:
        raise InvalidRequest(f"unknown granularity '{granularity}': choose {' or '.join(GRANULARITIES)}")
    groups: dict[str, list[str]] = {}
    for path in sizes:
        groups.setdefault(path if granularity == "layer" else block_of(path), []).append(path)
    return [UnitSensitivity(name, tuple(paths), sum(sizes[p] for p in paths), 0.0, order=i)
            for i, (name, paths) in enumerate(groups.items())]


def _module_and_parent(model: nn.Module, path: str):
    parts = path.split(".")
    parent = model
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    key = parts[-1]
    module = parent[int(key)] if isinstance(parent, list) else parent[key]
    return parent, key, module


def _set_module(parent, key: str, module: nn.Module) -> None:
    if isinstance(parent, list):
        parent[int(key)] = module
    else:
        setattr(parent, key, module)


def quantized_copy(module: nn.Module, bits: int, group_size: int = GROUP_SIZE, dense: bool = False) -> nn.Module:
    """The module as quantize_model would leave it: weight rounded to bf16, then quantized (bf16 scales)."""
    if isinstance(module, nn.Linear):
        copy = nn.Linear(1, 1, bias=False)
        copy.weight = module.weight.astype(SCALE_DTYPE)
        if "bias" in module:
            copy.bias = module.bias
        quantized = nn.QuantizedLinear.from_linear(copy, group_size, bits)
        if dense:
            quantized.__class__ = DenseQuantizedLinear
    elif isinstance(module, nn.Embedding):
        copy = nn.Embedding(1, 1)
        copy.weight = module.weight.astype(SCALE_DTYPE)
        quantized = nn.QuantizedEmbedding.from_embedding(copy, group_size, bits)
    else:
        raise InvalidRequest(f"cannot quantize a {type(module).__name__}")
    mx.eval(quantized.parameters())
    return quantized


def weight_sse(weight: mx.array, bits: int, group_size: int = GROUP_SIZE) -> float:
    w = weight.astype(SCALE_DTYPE)
    q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    # float32 scales: with bfloat16 ones MLX rounds the result to bfloat16, which would swamp 8-bit errors
    restored = mx.dequantize(q, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group_size,
                             bits=bits)
    return float(mx.sum(mx.square(restored - w.astype(mx.float32))).item())


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------

@dataclass
class Probes:
    x: mx.array  # (P, N, C) latents
    sigma: np.ndarray  # (P,)
    prompt_index: np.ndarray  # (P,)
    txt: mx.array  # (prompts, L, D) conditional features
    uncond: mx.array | None  # (1, L, D) for true CFG
    guidance: float
    rope: tuple[mx.array, mx.array]
    guidance_embeds: bool


def default_prompts(source: str, folder) -> list[str]:
    if is_builtin(source, folder):
        from ..builtin.world import caption, eval_prompts
        scenes = eval_prompts()
        return [caption(scenes[i]) for i in BUILTIN_PROMPT_SCENES]
    return list(GENERAL_PROMPTS)


def default_probe_size(source: str, folder) -> int:
    if is_builtin(source, folder):
        from ..catalog import find_entry
        entry = find_entry(str(source)) or find_entry("demo")
        return entry.default_size[0] if entry and entry.default_size else 64
    return 256


def build_probes(pipeline, prompts: list[str], seed: int, width: int, height: int, probe_steps: int,
                 sigma_fractions: tuple[float, ...], cancel: CancelToken | None = None) -> tuple[Probes, int]:
    """Sample the full-precision trajectories and keep the latents at the chosen points; (probes, passes)."""
    from ..flux2.schedule import flux2_sigmas
    from ..flux2.transformer import image_position_ids, text_position_ids

    guidance = pipeline.validate(None, None, width, height, probe_steps)
    use_cfg = not pipeline.distilled and guidance > 1.0
    h, w = height // pipeline.pixels_per_token, width // pipeline.pixels_per_token
    channels = pipeline.transformer.config.in_channels
    txt = pipeline.encode_prompts(prompts)
    uncond = pipeline.encode_prompts([""]) if use_cfg else None
    rope = pipeline.transformer.rope(text_position_ids(txt.shape[1]), image_position_ids(h, w))
    guidance_embeds = "guidance_embedder" in pipeline.transformer.time_guidance_embed
    sigmas = flux2_sigmas(probe_steps, h * w)
    keep = sorted({min(probe_steps - 1, int(f * probe_steps)) for f in sigma_fractions})
    noise = np.concatenate([initial_noise(seed, (1, channels, h, w)) for _ in prompts])
    x = mx.array(noise.reshape(len(prompts), channels, h * w).transpose(0, 2, 1)).astype(txt.dtype)
    probe = Probes(x, np.zeros(0), np.arange(len(prompts)), txt, uncond, guidance, rope, guidance_embeds)
    kept_x, kept_sigma, kept_prompt = [], [], []
    passes = 0
    for i in range(probe_steps):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if i in keep:
            kept_x.append(x)
            kept_sigma += [sigma] * len(prompts)
            kept_prompt += list(range(len(prompts)))
        if i == keep[-1]:
            break
        probe.x, probe.sigma = x, np.full(len(prompts), sigma)
        velocity = _velocity(pipeline.transformer, probe, slice(0, len(prompts)))
        passes += 1
        x = euler_step(x, velocity, sigma, sigma_next)
        mx.eval(x)
    probe.x = mx.concatenate(kept_x)
    probe.sigma = np.array(kept_sigma, dtype=np.float32)
    probe.prompt_index = np.array(kept_prompt)
    mx.eval(probe.x)
    return probe, passes


def _velocity(transformer, probes: Probes, rows: slice) -> mx.array:
    """The (guided) velocity for probes[rows], in one transformer pass."""
    x = probes.x[rows]
    n = x.shape[0]
    dtype = probes.txt.dtype
    txt = probes.txt[mx.array(probes.prompt_index[rows])]
    sigma = mx.array(probes.sigma[rows], dtype=dtype)
    if probes.uncond is not None:
        x_in = mx.concatenate([x, x])
        txt_in = mx.concatenate([txt, mx.broadcast_to(probes.uncond, (n, *probes.uncond.shape[1:]))])
        sigma_in = mx.concatenate([sigma, sigma])
    else:
        x_in, txt_in, sigma_in = x, txt, sigma
    guidance = mx.full((x_in.shape[0],), probes.guidance, dtype=dtype) if probes.guidance_embeds else None
    velocity = transformer(x_in, txt_in, sigma_in, probes.rope, guidance)
    if probes.uncond is not None:
        cond, uncond = velocity[:n], velocity[n:]
        velocity = uncond + probes.guidance * (cond - uncond)
    return velocity


class _Evaluator:
    """Runs the probes through the transformer in chunks; compares with the full-precision outputs."""

    def __init__(self, transformer, probes: Probes, max_batch: int):
        self.transformer = transformer
        self.probes = probes
        per_row = 2 if probes.uncond is not None else 1
        size = max(1, max_batch // per_row)
        total = probes.x.shape[0]
        self.chunks = [slice(i, min(i + size, total)) for i in range(0, total, size)]
        self.passes = 0
        self.reference = [self._run(c) for c in self.chunks]
        self.reference_energy = sum(float(mx.sum(mx.square(r)).item()) for r in self.reference)

    def _run(self, rows: slice) -> mx.array:
        out = _velocity(self.transformer, self.probes, rows).astype(mx.float32)
        mx.eval(out)
        self.passes += 1
        return out

    def error(self) -> float:
        total = 0.0
        for rows, reference in zip(self.chunks, self.reference):
            total += float(mx.sum(mx.square(self._run(rows) - reference)).item())
        return total / max(self.reference_energy, 1e-30)


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------

def measure_sensitivity(pipeline, bits: int = DEFAULT_BITS, granularity: str = "layer",
                        prompts: list[str] | None = None, seed: int = 0, size: int | None = None,
                        probe_steps: int | None = None,
                        sigma_fractions: tuple[float, ...] = DEFAULT_SIGMA_FRACTIONS, max_batch: int = 8,
                        model_name: str = "", uniform: bool = True,
                        progress: Callable[[int, int, str], None] | None = None,
                        cancel: CancelToken | None = None) -> SensitivityReport:
    """Quantize each unit of `pipeline`'s (full-precision) transformer alone at `bits`; rank by output error.

    The transformer is left exactly as it was (every unit is put back)."""
    if bits not in SUPPORTED_BITS:
        raise InvalidRequest(f"unsupported bits {bits}: choose one of "
                             f"{', '.join(map(str, sorted(SUPPORTED_BITS, reverse=True)))}")
    if granularity not in GRANULARITIES:
        raise InvalidRequest(f"unknown granularity '{granularity}': choose {' or '.join(GRANULARITIES)}")
    transformer = pipeline.transformer
    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in transformer.named_modules()):
        raise InvalidRequest("sensitivity needs the full-precision transformer, and this one is already quantized "
                             "(load the original model, without --quantize)")
    started = time.perf_counter()
    source = model_name or pipeline.info.source
    prompts = list(prompts or default_prompts(source, pipeline.info.folder))
    size = size or default_probe_size(source, pipeline.info.folder)
    probe_steps = probe_steps or min(pipeline.default_steps, MAX_PROBE_STEPS)
    group_size = GROUP_SIZE
    dense = pipeline.info.quantized_matmul == "dense"

    sizes = quantizable_layers(transformer)
    units = make_units(sizes, granularity)
    cached = set(getattr(pipeline, "_prompt_cache", {}))
    try:
        probes, passes = build_probes(pipeline, prompts, seed, size, size, probe_steps, sigma_fractions, cancel)
    finally:  # the probe prompts' features are not the caller's: do not keep them in its cache
        for prompt in set(getattr(pipeline, "_prompt_cache", {})) - cached:
            del pipeline._prompt_cache[prompt]
    evaluator = _Evaluator(transformer, probes, max_batch)
    total = len(units) + (1 if uniform else 0)

    def swap_in(paths):
        originals = []
        for path in paths:
            parent, key, module = _module_and_parent(transformer, path)
            originals.append((parent, key, module))
            _set_module(parent, key, quantized_copy(module, bits, group_size, dense))
        return originals

    def restore(originals):
        for parent, key, module in reversed(originals):
            _set_module(parent, key, module)

    for done, unit in enumerate(units):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled")
        for path in unit.layers:
            weight = _module_and_parent(transformer, path)[2].weight
            for b in SUPPORTED_BITS:
                unit.weight_sse[b] = unit.weight_sse.get(b, 0.0) + weight_sse(weight, b, group_size)
        originals = swap_in(unit.layers)
        try:
            unit.error = evaluator.error()
        finally:
            restore(originals)
        if progress is not None:
            progress(done + 1, total, unit.name)
    uniform_error = None
    if uniform:
        originals = swap_in(list(sizes))
        try:
            uniform_error = evaluator.error()
        finally:
            restore(originals)
        if progress is not None:
            progress(total, total, "all layers")
    units.sort(key=lambda u: (-u.error, u.order))
    return SensitivityReport(
        model=source, bits=bits, granularity=granularity, group_size=group_size,
        dtype=dtype_name(probes.txt.dtype), width=size, height=size, prompts=prompts, seed=seed,
        sigmas=sorted({float(s) for s in probes.sigma}, reverse=True), units=units, layer_sizes=sizes,
        fixed_bytes=fixed_bytes(transformer, pipeline.dtype, loaded_dtypes(pipeline)), uniform_error=uniform_error,
        seconds=time.perf_counter() - started, forward_passes=passes + evaluator.passes)
