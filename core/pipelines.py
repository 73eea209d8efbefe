"""One entry point for every family: read a model folder's pipeline class and load the right engine.

The family comes from the registry (core/families/__init__.py) by model_index.json's `_class_name`. Every
family's pipeline has the same API (core/pipeline_base/): `load(source, quantize=..., text_encoder_quantize=...,
dtype=..., text_encoder_layers=..., allow_download=..., quantized_matmul=..., memory=...)`, `generate(...)`,
`info`, `loader`, `distilled`, `default_steps`, `default_guidance`, `validate(...)`, `ensure_transformer()`,
`release_transformer()`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

from .catalog import find_entry
from .families import family_for_folder, family_for_transformer
from .family import Family
from .pipeline_base import ModelDefaults
from .errors import CheckpointError, InvalidRequest
from .reference_images import check_references, reference_size
from .sources import read_model_index, resolve_model_folder

DEFAULT_SIZE = 1024  # pixels a side, for a model whose folder names no size of its own
PROMPT_ROLES = ("prompt", "negative prompt")  # encoded_prompts' order


def family_for(folder: Path) -> Family:
    """The family of the model in `folder` (a one-line error for anything else)."""
    return family_for_folder(folder)


def pipeline_class_for(folder: Path):
    """The engine class that runs the model in `folder` (a one-line error for anything else)."""
    return family_for_folder(folder).pipeline


def model_defaults(folder: Path) -> ModelDefaults:
    """The folder's ModelDefaults (distilled or not, steps, guidance), read without loading weights."""
    return family_for_folder(folder).read_defaults(folder)


def supports_true_cfg(folder: Path) -> bool:
    """Whether the family has a true-CFG scale separate from its guidance (`generate(true_cfg=...)`)."""
    return family_for_folder(folder).supports.separate_true_cfg


def check_model_references(folder: Path, images) -> tuple[Path, ...]:
    """The reference images (core/reference_images.py) checked against the model in `folder` and read from their
    headers: their absolute paths; a family that takes none, or fewer, refuses them in one line."""
    family = family_for_folder(folder)
    return check_references(images, family.supports.reference_images, family.label)


def native_size(folder: Path, width: int | None, height: int | None, images: tuple[Path, ...] = ()) -> tuple[int, int]:
    """The size asked for, else the model's native size (model_index.json `default_width`/`default_height`,
    which the built-in models carry), else 1024; one side given means a square. With reference images, a side not
    given is the first image's (as it enters the model), as diffusers' FLUX.2 pipelines size an edit."""
    if images:
        first_width, first_height = reference_size(images[0])
        return width or first_width, height or first_height
    index = read_model_index(folder)
    if width is None and height is None:
        return int(index.get("default_width", DEFAULT_SIZE)), int(index.get("default_height", DEFAULT_SIZE))
    return width or height, height or width


def validate_request(folder: Path, defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None,
                     width: int, height: int, steps: int, true_cfg: float = 1.0) -> float:
    """Refuse what this model cannot do, in one line, before loading; return the guidance it will use."""
    return family_for_folder(folder).validate(defaults, negative_prompt, guidance, width, height, steps, true_cfg)


def encoded_prompts(folder: Path, defaults: ModelDefaults, prompt: str, negative_prompt: str | None, guidance: float,
                    true_cfg: float = 1.0) -> tuple[str, ...]:
    """The prompts a run of the model in `folder` encodes at `guidance` (as validate_request returns it) and
    `true_cfg`: the prompt, and the negative one (or the family's stand-in) when true CFG runs. The run asks the same
    (PipelineBase.encoded_prompts), so a fit check given these (fit.RunShape.encoding) predicts the batch it makes."""
    return pipeline_class_for(folder).encoded_prompts(defaults, prompt, negative_prompt, guidance, true_cfg)


def prompt_warnings(folder: Path, defaults: ModelDefaults, prompts: tuple[str, ...] | list[str],
                    roles: tuple[str, ...] = PROMPT_ROLES) -> list[str]:
    """One line for each text encoder that reads less than the whole of a prompt of `prompts`, read from the folder's
    tokenizers before anything loads; `roles` name the prompts in the lines (by default encoded_prompts' order: the
    prompt, then the negative one). Nothing for a tokenizer that cannot be read: loading the model says why. A prompt
    the family refuses rather than cuts (Qwen-Image 2.1's) raises InvalidRequest now, not after the model loads."""
    if (read := _prompt_reading(folder, defaults)) is None:
        return []
    return list(_prompt_warnings(str(folder), tuple(prompts), tuple(roles), *read))


def calibration_prompt_warnings(folder: Path, prompts: tuple[str, ...], prompts_file=None) -> list[str]:
    """One line for each text encoder that reads only part of some of the calibration `prompts` (read from the folder's
    tokenizers before anything loads; `prompts_file` names the file they came from, numbering them by line)."""
    from .quant.calibration import cut_prompt_warnings
    if (read := _prompt_reading(folder, model_defaults(folder))) is None:
        return []
    length, cls = read
    return cut_prompt_warnings(cls, folder, length, tuple(prompts), prompts_file)


def tell_calibration_cuts(folder: Path, calibration, calibrates: Callable[[], bool]):
    """Calibration prompts of the user's that a text encoder reads only in part, told through `calibration.warn` now,
    from the tokenizers, before anything loads: calibrating told them only once the text encoder and VAE had loaded.
    (The lines told, the options without `warn`, so that calibrating does not tell them again); (None, the options as
    they were) where nothing is to be told: no one to tell, the model's own prompts, or nothing that calibrates.
    `calibrates` is asked only where there are prompts to tell of (it may parse a plan file)."""
    if calibration is None or calibration.warn is None or calibration.prompts is None or not calibrates():
        return None, calibration
    lines = tuple(calibration_prompt_warnings(folder, calibration.prompts, calibration.prompts_file))
    for line in lines:
        calibration.warn(line)
    return lines, dataclasses.replace(calibration, warn=None)


def _prompt_reading(folder: Path, defaults: ModelDefaults):
    """(the tokens the family's text encoders read of a prompt, its pipeline class), or None when the folder's
    model_index.json cannot say (loading the model says why)."""
    cls = pipeline_class_for(folder)
    try:
        return cls.sequence_length(read_model_index(folder), defaults), cls
    except CheckpointError:
        return None


def probe_roles(count: int) -> tuple[str, ...]:
    """Names for `count` prompts given together (probe prompts): "prompt" alone, else "1st prompt", "2nd prompt"..."""
    if count == 1:
        return ("prompt",)
    suffix = {1: "st", 2: "nd", 3: "rd"}
    return tuple(f"{i}{'th' if 10 <= i % 100 <= 20 else suffix.get(i % 10, 'th')} prompt" for i in range(1, count + 1))


@functools.lru_cache(maxsize=16)  # the workbench checks a run again as its form changes
def _prompt_warnings(folder: str, prompts: tuple[str, ...], roles: tuple[str, ...], length: int, cls) -> tuple[str, ...]:
    try:
        cuts = cls.prompt_cuts(Path(folder), list(prompts), length)
    except (CheckpointError, OSError):
        return ()
    return tuple(cut.message(role) for role, prompt_cuts in zip(roles, cuts) for cut in prompt_cuts)


def load_pipeline(source: str | Path, *, allow_download: bool = True, calibration=None, **options):
    """Load any supported model (built-in name, folder or repo id) with the family's own engine; a model the
    catalog knows stacks the text-encoder hidden states the catalog names unless told otherwise.

    calibration: a quant.calibration.CalibrationOptions (prompts, progress, cancel) for a transformer
    quantized with a method that calibrates (gptq, awq); the model's own prompts when None."""
    from .quant.calibration import calibration_options
    folder = resolve_model_folder(source, allow_download=allow_download)
    options["text_encoder_layers"] = options.get("text_encoder_layers") or catalog_layers(str(source))
    with calibration_options(calibration):
        pipeline = pipeline_class_for(folder).load(source, allow_download=allow_download, **options)
    pipeline.calibration = calibration
    return pipeline


def check_model_loras(folder: Path, loras, allow_download: bool = False, say=None) -> None:
    """The LoRAs asked for (core/lora_request.py) read and checked against the model in `folder`, from headers: one
    that cannot be read, or was made for another model, is one line before any search or load. With
    `allow_download`, a LoRA on the Hub the cache lacks is fetched first (`say` hears it)."""
    from .component_loading import check_loras
    from .lora import read_loras
    from .lora_hub import fetch_loras
    fetch_loras(loras, allow_download, say)
    check_loras(family_for_folder(folder), folder, read_loras(loras))


def catalog_layers(source: str) -> tuple[int, ...] | None:
    """Which hidden states a known model stacks is a per-model fact kept in the catalog."""
    entry = find_entry(source)
    return entry.text_encoder_layers if entry is not None else None


def transformer_policy_for(transformer):
    """The layer policy (what stays in full precision) of the family this transformer module belongs to."""
    return family_for_transformer(transformer).transformer.policy
