"""One entry point for every family: read a model folder's pipeline class and load the right engine.

Each family's pipeline (core/<family>/pipeline.py) has the same small API as Flux2Pipeline:
`load(source, quantize=..., text_encoder_quantize=..., dtype=..., allow_download=...,
quantized_matmul=..., memory=...)`, `generate(...)`, `info`, `loader`, `distilled`, `default_steps`,
`default_guidance`, `validate(...)`, `ensure_transformer()`, `release_transformer()`.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from .errors import CheckpointError
from .sources import read_model_index, resolve_model_folder

# diffusers pipeline class -> (module, class) of ours, imported only when used.
FAMILIES: dict[str, tuple[str, str]] = {
    "Flux2KleinPipeline": ("quantbench.core.flux2.pipeline", "Flux2Pipeline"),
    "Flux2Pipeline": ("quantbench.core.flux2.pipeline", "Flux2Pipeline"),
    "FluxPipeline": ("quantbench.core.flux1.pipeline", "Flux1Pipeline"),
    "QwenImagePipeline": ("quantbench.core.qwen_image.pipeline", "QwenImagePipeline"),
}


def pipeline_class_for(folder: Path):
    """The engine class that runs the model in `folder` (a one-line error for anything else)."""
    name = read_model_index(folder).get("_class_name", "")
    if name not in FAMILIES:
        raise CheckpointError(f"{folder}: a {name or 'unknown'} model; quantbench runs "
                              f"{', '.join(sorted(FAMILIES))}")
    module, cls = FAMILIES[name]
    return getattr(import_module(module), cls)


def load_pipeline(source: str | Path, *, allow_download: bool = True, **options):
    """Load any supported model (built-in name, folder or repo id) with the family's own engine."""
    folder = resolve_model_folder(source, allow_download=allow_download)
    return pipeline_class_for(folder).load(source, allow_download=allow_download, **options)
