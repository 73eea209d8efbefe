"""Will this run fit in this machine's memory? Asked before minutes of loading, answered by the memory model.

A run whose predicted peak exceeds the memory the machine can give (RAM less a small reserve for the
OS; a CUDA card's own memory) is refused with a one-line reason and the largest precision that would
fit; `force=True` (the CLI's --force) runs it anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .catalog import CatalogEntry, entry_from_folder, find_entry, shipped_builtin
from .errors import CheckpointError, InvalidRequest
from .families import family_named
from .family import PromptTokens
from .memory import format_bytes
from .memory_model import Plan, predict
from .quant import SUPPORTED_BITS, QuantSpec, as_spec
from .budget import Budget, budget_from_hardware
from .saved_request import SavedModel, read_saved_model

# Smaller precisions a refusal suggests. 2 bits is only ever the user's choice: with round-to-nearest it
# is past the quality cliff even on the built-in models.
SUGGESTED_BITS = tuple(b for b in SUPPORTED_BITS if b >= 3)


class WillNotFit(InvalidRequest):
    """The memory model says the run needs more memory than the machine has."""


@dataclass(frozen=True)
class RunShape:
    """What decides a run's memory, in the engine's terms."""

    transformer_bits: QuantSpec | int | Mapping[str, QuantSpec] | None = None
    text_encoder_bits: QuantSpec | int | Mapping[str, QuantSpec] | None = None
    width: int = 1024
    height: int = 1024
    text_encoder_alone: bool = True  # the engine's default: encode, free the encoder, then load the transformer
    vae_tile: int | None = None
    dtype: str = "float32"
    text_encoder_layers: tuple[int, ...] | None = None  # the hidden states stacked, when not the folder's own
    release_transformer_for_decode: bool = False  # --low-memory: the decode runs without the transformer
    ranks: int = 1  # the transformer split across this many ranks (tensor-parallel): the share one rank holds
    keep_dequantized: float = 0.0  # bytes of dense copies of quantized layers kept (--keep-dequantized)
    # The run's prompts (the prompt, and the negative one when true CFG runs): a family that runs each prompt at its
    # own length is predicted with their real tokens; None: with the model's longest prompt (a bound).
    prompts: tuple[str, ...] | None = None
    # Whether the run makes a second, negative pass per step (PipelineBase.runs_true_cfg at the run's --guidance,
    # --true-cfg): prompt and negative batched, twice the denoise activations. None: as the model's defaults do.
    true_cfg: bool | None = None
    reference_sizes: tuple[tuple[int, int], ...] = ()  # reference images, (width, height) as they enter the model

    def encoding(self, prompts: tuple[str, ...]) -> "RunShape":
        """This shape for a run that encodes `prompts` (pipelines.encoded_prompts): their tokens, and a negative
        pass per step when there are two; empty: as the model's defaults and its longest prompt."""
        return replace(self, prompts=tuple(prompts) or None, true_cfg=len(prompts) == 2 if prompts else None)


@dataclass(frozen=True)
class FitCheck:
    model: str
    peak: int  # predicted bytes at the run's peak, loading included
    phase: str  # where the peak falls
    usable: int  # what the machine can give
    budget: Budget
    backend: str
    generation_peak: int | None = None  # predicted MLX peak of the generation alone (no loading)
    kept_dequantized: int = 0  # of which dense copies of quantized layers (--keep-dequantized)
    phases: Mapping[str, int] | None = field(default=None, compare=False)  # predicted MLX peak of each phase (encode, denoise, decode...)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable

    def to_dict(self) -> dict:
        return {"model": self.model, "predicted_peak_bytes": self.peak, "peak_phase": self.phase,
                "usable_bytes": self.usable, "fits": self.fits, "kept_dequantized_bytes": self.kept_dequantized,
                **({"phase_peaks": dict(self.phases)} if self.phases is not None else {})}


def catalog_entry_for(source: str | Path, folder: Path,
                      text_encoder_layers: tuple[int, ...] | None = None) -> CatalogEntry | None:
    """The catalog's facts for a model: its entry (built-in name or repo id), else read from its folder."""
    entry = find_entry(str(source))
    if entry is not None:
        return shipped_builtin(entry)
    try:
        return entry_from_folder(folder, text_encoder_layers)
    except CheckpointError:
        return None  # a folder no family runs: no prediction


def check_fit(source: str | Path, folder: Path, shape: RunShape, hardware=None) -> FitCheck | None:
    """The predicted peak of this run against this machine, or None when the model is unknown to the
    memory model."""
    from .hardware import detect

    entry = catalog_entry_for(source, folder, shape.text_encoder_layers)
    if entry is None or not entry.components:
        return None
    hardware = hardware or detect()
    try:
        return _fit(entry, folder, shape, budget_from_hardware(hardware), hardware.backend)
    except CheckpointError:
        return None  # configs the engine cannot build (loading will say why, in one line): no prediction


def default_text_encoder_bits(source: str | Path, folder: Path, shape: RunShape, hardware=None) -> int | None:
    """The text encoder's precision when the user names none: the memory model's best for this run.

    Full precision when the run then fits comfortably (the recommendations' budget); otherwise 8 bits,
    where the model's encoder may be quantized and that lowers the predicted peak (on the CPU a full
    precision encoder is float32 and often the largest phase of a quantized run); else full precision,
    and the fit check decides.
    """
    from .hardware import detect

    entry = catalog_entry_for(source, folder, shape.text_encoder_layers)
    if entry is None or not entry.components:
        return None
    hardware = hardware or detect()
    budget = budget_from_hardware(hardware)
    try:
        full = _fit(entry, folder, replace(shape, text_encoder_bits=None), budget, hardware.backend)
        if full.peak <= budget.comfortable or not all(c.quantizable for c in entry.text_encoders):
            return None
        eight = _fit(entry, folder, replace(shape, text_encoder_bits=8), budget, hardware.backend)
    except CheckpointError:
        return None  # the fit check and loading say why, in one line
    return 8 if eight.peak < full.peak else None


MIN_AUTO_TILE = 128  # smaller tiles decode slower (25% overlap each side) for little saving


def lean_vae_tile(source: str | Path, folder: Path, shape: RunShape, hardware=None) -> int | None:
    """The VAE tile for a lean run, following the image and the run's other phases: the largest tile
    (a multiple of 64 px, at least 128) whose decode does not set the run's peak; None (the whole image
    at once) when the whole decode does not, or when the memory model does not know the model."""
    from .hardware import detect

    entry = catalog_entry_for(source, folder, shape.text_encoder_layers)
    if entry is None or not entry.components:
        return None
    backend = (hardware or detect()).backend
    try:
        return _lean_vae_tile(entry, folder, shape, backend)
    except CheckpointError:
        return None  # the fit check and loading say why, in one line


def _lean_vae_tile(entry: CatalogEntry, folder: Path, shape: RunShape, backend: str) -> int | None:
    whole = replace(shape, vae_tile=None)
    phases = predict(entry, _plan(folder, whole, backend, entry)).phases
    others = max(peak for phase, peak in phases.items() if phase != "decode")
    if phases["decode"] <= others:
        return None
    side = max(shape.width, shape.height)
    for tile in range(side - side % 64, MIN_AUTO_TILE - 1, -64):
        tiled = predict(entry, _plan(folder, replace(shape, vae_tile=tile), backend, entry)).phases
        if tiled["decode"] <= others:
            return tile
    return MIN_AUTO_TILE


def refuse_if_too_big(source: str | Path, folder: Path, shape: RunShape, force: bool = False,
                      hardware=None) -> FitCheck | None:
    """Raise WillNotFit (one line, with what would fit) unless the run fits or `force` is set."""
    check = check_fit(source, folder, shape, hardware)
    if check is None or check.fits or force:
        return check
    raise WillNotFit(
        f"{check.model} at {_label(shape.transformer_bits, shape.dtype)} needs about {format_bytes(check.peak)} at its peak "
        f"({check.phase}); this machine can give {format_bytes(check.usable)}: "
        f"{_smaller_precision(source, folder, shape, check)}pass --force to run it anyway (it will swap)")


def _fit(entry: CatalogEntry, folder: Path, shape: RunShape, budget: Budget, backend: str) -> FitCheck:
    prediction = predict(entry, _plan(folder, shape, backend, entry))
    phase = "loading" if prediction.load_peak >= prediction.generation_peak else prediction.bottleneck
    return FitCheck(entry.id, prediction.peak, phase, budget.minimum, budget, backend, prediction.generation_peak,
                    prediction.kept_dequantized, dict(prediction.phases))


def _smaller_precision(source, folder: Path, shape: RunShape, check: FitCheck) -> str:
    """The first of: the same precision with --low-memory, then smaller precisions (alone, then lean)."""
    entry = catalog_entry_for(source, folder, shape.text_encoder_layers)
    lean = {"text_encoder_alone": True, "vae_tile": shape.vae_tile or 512}
    current = _average_bits(shape.transformer_bits) or 16
    tries = [({}, ""), (lean, " --low-memory")] if shape.vae_tile is None else [({}, "")]
    options = [(lean, "--low-memory")] if shape.vae_tile is None else []
    for bits in sorted((b for b in SUGGESTED_BITS if b < current), reverse=True):
        options += [({"transformer_bits": bits, **extra}, f"--quantize {bits}{flag}") for extra, flag in tries]
    for change, flags in options:
        candidate = _fit(entry, folder, replace(shape, **change), check.budget, check.backend)
        if candidate.fits:
            return f"{flags} would fit ({format_bytes(candidate.peak)}), or "
    return "no precision fits; "


def _plan(folder: Path, shape: RunShape, backend: str, entry: CatalogEntry | None = None) -> Plan:
    """The memory model's plan for this run. What a folder quantbench saved holds is what loads (the requests
    were checked against it before, core/saved_request.py): its transformer layer by layer, and its text
    encoder as saved, whatever the shape says when the user named no precision for it. With `entry` and the
    shape's prompts, a family that runs each prompt at its own length is planned with their real tokens."""
    saved = _saved(folder)
    layers = saved.transformer.layers if saved.transformer is not None and saved.transformer.layers else None
    return Plan(transformer_bits=layers or shape.transformer_bits,
                text_encoder_bits=saved.text_encoder_spec if saved.text_encoders else shape.text_encoder_bits,
                width=shape.width, height=shape.height,
                text_encoder="staged" if shape.text_encoder_alone else "resident",
                vae_tiling=shape.vae_tile is not None, tile_size=shape.vae_tile or 512,
                load="prequantized" if layers else "streamed", dtype=shape.dtype, backend=backend,
                transformer_for_decode=not shape.release_transformer_for_decode, ranks=shape.ranks,
                keep_dequantized=shape.keep_dequantized, batch=None if shape.true_cfg is None else 1 + shape.true_cfg,
                prompt_tokens=prompt_tokens(folder, entry, shape.prompts) if entry is not None else None,
                reference_sizes=shape.reference_sizes)


def prompt_tokens(folder: Path, entry: CatalogEntry, prompts: tuple[str, ...] | None) -> PromptTokens | None:
    """The tokens `prompts` cost a run of this model, where its family runs each prompt at its own length
    (PipelineBase.prompt_tokens, from the folder's tokenizer); None where they are not known or every prompt is
    padded to the longest (the memory model's bound is then used)."""
    if not prompts or entry.transformer is None:
        return None
    return _prompt_tokens(str(folder), tuple(prompts), entry.max_sequence_length, entry.transformer.family)


@functools.lru_cache(maxsize=16)  # one run's fit check plans it many times (tiles, text encoder, smaller precisions)
def _prompt_tokens(folder: str, prompts: tuple[str, ...], max_length: int, family: str) -> PromptTokens | None:
    try:
        return family_named(family).pipeline.prompt_tokens(Path(folder), list(prompts), max_length)
    except (CheckpointError, InvalidRequest, OSError):
        return None  # a tokenizer that cannot be read, or a prompt the model refuses (its run says why): the bound


def _saved(folder: Path) -> SavedModel:
    """The folder's quantbench records (none where they cannot be read: loading says why, in one line)."""
    try:
        return read_saved_model(folder)
    except CheckpointError:
        return SavedModel(Path(folder))


def _average_bits(bits) -> float | None:
    if bits is None:
        return None
    if not isinstance(bits, Mapping):
        return as_spec(bits).bits
    values = [as_spec(b).bits for b in bits.values()]
    return sum(values) / len(values) if values else None


def _label(bits, dtype: str) -> str:
    if bits is None:
        return f"full precision ({dtype})"
    if not isinstance(bits, Mapping):
        return as_spec(bits).label
    return f"a mixed plan (~{_average_bits(bits):.1f} bits)"
