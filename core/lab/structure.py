"""A model folder's transformer without reading its weights: the structure its config describes (lazy
arrays, never evaluated), its checkpoint's headers and the dtypes its parameters are stored in."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

CHECKPOINT_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def transformer_component(model_folder: Path | str):
    """The folder's transformer checkpoint (headers only), whichever family and layout it is."""
    from ..pipelines import family_for
    folder = Path(model_folder)
    return family_for(folder).open_transformer(folder)


def transformer_structure(model_folder: Path | str) -> nn.Module:
    """The transformer a folder's config describes, with lazy (never evaluated) random weights:
    enough to check a plan's layer paths without reading any weights."""
    from ..pipelines import family_for
    folder = Path(model_folder)
    return family_for(folder).build_transformer(folder)


def loaded_dtypes(pipeline) -> dict[str, str]:
    """{transformer parameter: safetensors dtype} of a loaded pipeline's checkpoint."""
    return next((dict(r.source_dtypes) for r in pipeline.info.weights if r.component == "transformer"), {})


def checkpoint_dtypes(model_folder: Path | str) -> dict[str, str]:
    """{transformer parameter: safetensors dtype} from the folder's headers (the transformer's keys are its
    parameter names)."""
    return {key: info.dtype for key, info in transformer_component(model_folder).tensors.items()}
