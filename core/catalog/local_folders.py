"""Catalog entries read from model folders on disk: any registered family's folder (so the memory model
predicts any checkpoint, the tiny test models included), and the built-in models an installation ships."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..builtin import MODELS_FOLDER
from .entry import CatalogEntry, Component
from .known_models import LARGE_PRECISIONS

def entry_from_folder(folder: str | Path, text_encoder_layers: tuple[int, ...] | None = None) -> CatalogEntry:
    """A catalog entry for a local model folder of any registered family (diffusers layout), read from its
    configs and defaults without loading weights. Lets the memory model predict any checkpoint on disk, the
    tiny test models included; CheckpointError for a folder no family runs."""
    from ..checkpoint import build_from_config, open_component
    from ..families import family_for_folder
    from ..sources import read_model_index

    folder = Path(folder)
    family = family_for_folder(folder)
    index = read_model_index(folder)
    defaults = family.read_defaults(folder)
    layers = family.pipeline.hidden_states(folder, index, text_encoder_layers) or None
    components = []
    for spec in family.components:
        checkpoint = family.open_transformer(folder) if spec.role == "transformer" else open_component(folder / spec.folder)
        # As the engine reads it: a config it cannot build is refused here, in one line naming the folder.
        build_from_config(lambda config: spec.build(config, layers if spec.role == "text_encoder" else None),
                          checkpoint)
        kind = checkpoint.config.get("_class_name") or checkpoint.config.get("model_type") or spec.folder
        components.append(Component(spec.folder, kind, spec.folder, checkpoint.config,
                                    checkpoint_bytes=_stored_weight_bytes(checkpoint)))
    return CatalogEntry(
        id=folder.name, name=str(folder), family=family.name, repo=None, components=tuple(components),
        distilled=defaults.distilled, default_steps=defaults.steps, default_guidance=defaults.guidance,
        guidance=defaults.guidance_mode, negative_prompt=defaults.negative_prompt, text_encoder_layers=layers,
        max_sequence_length=int(index.get("max_sequence_length", family.pipeline.max_sequence_length(defaults))),
        licence="unknown", gated=False, download_gb=None, precisions=LARGE_PRECISIONS, runnable=True)


def _stored_weight_bytes(checkpoint) -> int:
    """Bytes per weight in a component's safetensors: the floating dtype that holds most of its values (a
    bf16 VAE keeps a few float32 statistics), 2 when unknown."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    values = Counter()
    for info in checkpoint.tensors.values():
        if info.dtype in sizes:
            values[sizes[info.dtype]] += math.prod(info.shape)
    return values.most_common(1)[0][0] if values else 2


def shipped_builtin(entry: CatalogEntry, models_folder: Path = MODELS_FOLDER) -> CatalogEntry:
    """A built-in model present in this installation, described from its own folder."""
    folder = models_folder / entry.id
    if entry.family != "builtin" or not (folder / "model_index.json").is_file():
        return entry
    index = json.loads((folder / "model_index.json").read_text())
    from_folder = entry_from_folder(folder)
    distilled = bool(index.get("is_distilled", False))
    size = (int(index.get("default_width", 64)), int(index.get("default_height", 64)))
    return replace(entry, components=from_folder.components, distilled=distilled,
                   default_steps=int(index.get("default_steps", entry.default_steps)),
                   default_guidance=1.0 if distilled else float(index.get("default_guidance", entry.default_guidance)),
                   text_encoder_layers=from_folder.text_encoder_layers,
                   max_sequence_length=int(index.get("max_sequence_length", entry.max_sequence_length)),
                   download_gb=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9,
                   runnable=True, shipped=True, default_size=size, notes="ships with quantbench")
