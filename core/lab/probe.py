"""The lab's yardstick: a few fixed pictures, drawn again with some layers quantized, compared in pixels.

A PictureProbe draws its prompts (fixed seed, size and steps) once with the pipeline's full-precision
transformer; `error(layers)` swaps quantized copies of the named layers into the transformer, draws the
same pictures, puts the original layers back and returns the mean squared error against the first
pictures on the 0-255 scale (so PSNR = 10 log10(255^2 / error)). The whole sampling run is measured,
decoded to pixels, because that is what a user compares: errors made early in the trajectory grow or
fade by the last step, and a plan that lowers the transformer's output error at a few noise levels can
still draw worse pictures. The probe runs each family's own `generate`, so it works for every model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import Cancelled, InvalidRequest, QuantbenchError
from ..generation import CancelToken
from ..quant import (LayerStats, QuantSpec, as_spec, module_at, quantized_copy, replace_layer,
                     require_full_precision)
from ..sources import read_model_index
from .models import is_builtin

# Prompts for models trained on natural images; the built-in models get captions of their world.
GENERAL_PROMPTS = (
    "a photo of a cat sitting on a window sill in the afternoon sun",
    "a city street at night with neon signs reflected in the rain",
    "a bowl of fruit on a wooden table, studio lighting",
)
# Indices into world.eval_prompts(): different shapes and backgrounds, none of the mixed-precision
# benchmark's evaluation scenes.
BUILTIN_PROMPT_SCENES = (0, 41, 83, 20, 63, 105)
MAX_PROBE_STEPS = 20
PIXEL_PEAK = 255.0


def default_prompts(source: str, folder) -> list[str]:
    if is_builtin(source, folder):
        from ..builtin.captions import caption
        from ..builtin.world import eval_prompts
        scenes = eval_prompts()
        prompts = [caption(scenes[i]) for i in BUILTIN_PROMPT_SCENES]
    else:
        prompts = list(GENERAL_PROMPTS)
    count = declared_probe(folder).get("prompts")
    return prompts[:count] if isinstance(count, int) and count > 0 else prompts


def declared_probe(folder) -> dict:
    """The probe settings a model folder declares for itself (model_index.json: "quantbench": {"probe":
    {"size": 64, "steps": 4, "prompts": 1}}), as random-weight models do; {} when it declares none."""
    try:
        settings = read_model_index(Path(folder)).get("quantbench", {}).get("probe", {})
    except (OSError, QuantbenchError):
        return {}
    return settings if isinstance(settings, dict) else {}


def default_probe_size(source: str, folder) -> int:
    declared = declared_probe(folder).get("size")
    if isinstance(declared, int) and declared > 0:
        return declared
    if is_builtin(source, folder):
        from ..catalog import find_entry
        entry = find_entry(str(source)) or find_entry("demo")
        return entry.default_size[0] if entry and entry.default_size else 64
    return 256


def probe_settings(pipeline, prompts: list[str] | None, size: int | None, steps: int | None,
                   model_name: str = "") -> tuple[str, list[str], int, int]:
    """(model name, prompts, size, steps) with the defaults filled in."""
    source = model_name or str(pipeline.info.source)
    prompts = list(prompts or default_prompts(source, pipeline.info.folder))
    size = size or default_probe_size(source, pipeline.info.folder)
    declared = declared_probe(pipeline.info.folder).get("steps")
    steps = steps or (declared if isinstance(declared, int) and declared > 0 else None) \
        or min(pipeline.default_steps, MAX_PROBE_STEPS)
    return source, prompts, size, steps


def psnr_of(error: float) -> float:
    """PSNR in dB of a mean squared error on the 0-255 scale."""
    return math.inf if error <= 0 else 10 * math.log10(PIXEL_PEAK ** 2 / error)


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------

class PictureProbe:
    """Fixed pictures from the full-precision pipeline; `error(layers)` redraws them with layers quantized.

    Use as a context manager: on exit the probe prompts' text features leave the pipeline's cache (they
    are not the caller's) and the quantized copies are dropped. Quantized copies of the layers in
    `retain(...)` are kept between calls (the configuration a search is moving from); others are made
    for one call."""

    def __init__(self, pipeline, prompts: list[str], seed: int, size: int, steps: int,
                 cancel: CancelToken | None = None, stats: Mapping[str, LayerStats] | None = None):
        if pipeline.transformer is None or getattr(pipeline.memory, "release_transformer_for_decode", False):
            raise InvalidRequest("the lab needs the transformer kept in memory between pictures (load the model "
                                 "without --low-memory)")
        require_full_precision(pipeline.transformer)
        if not prompts:
            raise InvalidRequest("the probe needs at least one prompt")
        self.pipeline = pipeline
        self.prompts, self.seed, self.size, self.steps = list(prompts), seed, size, steps
        self.cancel = cancel
        self.dense = pipeline.info.quantized_matmul == "dense"
        self.draws = 0
        self._cached_prompts = set(getattr(pipeline, "_prompt_cache", {}))
        self._copies: dict[tuple[str, QuantSpec], nn.Module] = {}
        self._retained: set[tuple[str, QuantSpec]] = set()
        self.stats = stats or {}  # calibration statistics per layer, for methods that need them (gptq, awq)
        self._calibrated: dict[tuple[str, QuantSpec], nn.Module] = {}  # such copies are slow to make: all kept
        self.reference = [self._draw(prompt) for prompt in self.prompts]

    def __enter__(self) -> "PictureProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        cache = getattr(self.pipeline, "_prompt_cache", {})
        for prompt in set(cache) - self._cached_prompts:
            del cache[prompt]
        self._copies.clear()
        self._calibrated.clear()
        mx.clear_cache()

    def _draw(self, prompt: str) -> np.ndarray:
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled("cancelled")
        result = self.pipeline.generate(prompt, seed=self.seed, steps=self.steps, width=self.size,
                                        height=self.size, preview=False)
        self.draws += 1
        return np.asarray(result.pixels, dtype=np.float32)

    def retain(self, layers: Mapping[str, QuantSpec | int]) -> None:
        """Keep the quantized copies of these (layer, spec) between calls; drop every other one."""
        self._retained = {(path, as_spec(spec)) for path, spec in layers.items()}
        for key in set(self._copies) - self._retained:
            del self._copies[key]

    def _copy(self, path: str, spec: QuantSpec, module: nn.Module) -> nn.Module:
        key = (path, spec)
        if key in self._copies or key in self._calibrated:
            return self._copies.get(key) or self._calibrated[key]
        stats = self.stats.get(path)
        copy = quantized_copy(module, spec, self.dense, stats)
        if stats is not None:
            self._calibrated[key] = copy
        elif key in self._retained:
            self._copies[key] = copy
        return copy

    def error(self, layers: Mapping[str, QuantSpec | int]) -> float:
        """Mean squared pixel error (0-255 scale) of the pictures with `layers` ({path: spec}) quantized."""
        transformer = self.pipeline.transformer
        originals = []
        try:
            for path, spec in layers.items():
                original = module_at(transformer, path)
                replace_layer(transformer, path, self._copy(path, as_spec(spec), original))
                originals.append((path, original))
            pictures = [self._draw(prompt) for prompt in self.prompts]
        finally:
            for path, original in reversed(originals):
                replace_layer(transformer, path, original)
        scale = PIXEL_PEAK / 2  # pixels come in [-1, 1]
        return float(np.mean([np.mean(np.square((a - b) * scale)) for a, b in zip(pictures, self.reference)]))
