"""One entry point for every family: read a model folder's pipeline class and load the right engine.

Each family's pipeline (core/<family>/pipeline.py) has the same small API as Flux2Pipeline:
`load(source, quantize=..., text_encoder_quantize=..., dtype=..., allow_download=...,
quantized_matmul=..., memory=...)`, `generate(...)`, `info`, `loader`, `distilled`, `default_steps`,
`default_guidance`, `validate(...)`, `ensure_transformer()`, `release_transformer()`; and the module
has `model_defaults(folder)` and `validate_request(defaults, negative, guidance, width, height, steps)`.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from pathlib import Path

from .errors import CheckpointError, InvalidRequest
from .sources import read_model_index, resolve_model_folder

# diffusers pipeline class -> (module, class) of ours, imported only when used.
FAMILIES: dict[str, tuple[str, str]] = {
    "Flux2KleinPipeline": ("quantbench.core.families.flux2.pipeline", "Flux2Pipeline"),
    "Flux2Pipeline": ("quantbench.core.families.flux2.pipeline", "Flux2Pipeline"),
    "FluxPipeline": ("quantbench.core.families.flux1.pipeline", "Flux1Pipeline"),
    "QwenImagePipeline": ("quantbench.core.families.qwen_image.pipeline", "QwenImagePipeline"),
}


def _family(folder: Path) -> tuple[str, str]:
    name = read_model_index(folder).get("_class_name", "")
    if name not in FAMILIES:
        raise CheckpointError(f"{folder}: a {name or 'unknown'} model; quantbench runs "
                              f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def pipeline_class_for(folder: Path):
    """The engine class that runs the model in `folder` (a one-line error for anything else)."""
    module, cls = _family(folder)
    return getattr(import_module(module), cls)


def model_defaults(folder: Path):
    """The folder's ModelDefaults (distilled or not, steps, guidance), read without loading weights."""
    return import_module(_family(folder)[0]).model_defaults(folder)


def supports_true_cfg(folder: Path) -> bool:
    """Whether the family has a true-CFG scale separate from its guidance (FLUX.1 [dev])."""
    check = import_module(_family(folder)[0]).validate_request
    return "true_cfg" in inspect.signature(check).parameters


def validate_request(folder: Path, defaults, negative_prompt: str | None, guidance: float | None, width: int,
                     height: int, steps: int, true_cfg: float = 1.0) -> float:
    """Refuse what this model cannot do, in one line, before loading; return the guidance it will use."""
    check = import_module(_family(folder)[0]).validate_request
    if supports_true_cfg(folder):
        return check(defaults, negative_prompt, guidance, width, height, steps, true_cfg=true_cfg)
    if true_cfg != 1.0:
        raise InvalidRequest("a separate true-CFG scale is a FLUX.1 [dev] option; this model's --guidance "
                             "is its guidance")
    return check(defaults, negative_prompt, guidance, width, height, steps)


def load_pipeline(source: str | Path, *, allow_download: bool = True, **options):
    """Load any supported model (built-in name, folder or repo id) with the family's own engine."""
    folder = resolve_model_folder(source, allow_download=allow_download)
    return pipeline_class_for(folder).load(source, allow_download=allow_download, **options)


def transformer_policy_for(transformer):
    """The layer policy (what stays in full precision) of the family this transformer module belongs to."""
    for module, cls in FAMILIES.values():
        family = getattr(import_module(module), cls)
        if isinstance(transformer, family.transformer_class):
            return family.transformer_policy
    raise InvalidRequest(f"no layer policy for a {type(transformer).__name__}")
