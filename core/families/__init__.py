"""The registry of model families: one line per family. Each family is one folder holding only what is its
own (shared blocks are in core/blocks) and exporting one descriptor, FAMILY (core/family.py). Everything
that needs to know which families exist reads this list; nothing else names a family."""

from __future__ import annotations

import os
import threading
from importlib import import_module
from pathlib import Path

from ..errors import CheckpointError, InvalidRequest
from ..family import Family
from ..file_memo import settled, signature
from ..model_files import config_memo
from ..sources import read_model_index

# One line per family: its folder here, whose __init__.py exports FAMILY.
REGISTERED = (
    "flux2",
    "flux1",
    "qwen_image",
    "z_image",
    "qwen_image21",
)
FAMILIES: tuple[Family, ...] = tuple(import_module(f"{__name__}.{name}").FAMILY for name in REGISTERED)


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise InvalidRequest(f"unknown model family '{name}': choose one of {', '.join(f.name for f in FAMILIES)}")


def family_for_class(pipeline_class: str) -> Family | None:
    """The family that runs model_index.json's `_class_name`, or None."""
    return next((f for f in FAMILIES if pipeline_class in f.pipeline_classes), None)


# Each folder's family as last decided, with what its files were then ({file: signature}): one plan asks for it
# through four readers (defaults, validation, the pipeline class, the transformer's structure), and each read every
# component's config.json. Asked again, the files are only stat'ed; one that changed is read again. A file modified
# in the last RACY_NS is not trusted to its signature (file_memo.py), so a folder being written is read each time.
_DECIDED: dict[str, tuple[dict[Path, tuple | None], Family]] = {}
_DECIDED_FOLDERS = 64  # the most remembered (a workbench session visits a few)
_DECIDING = threading.Lock()


def family_for_folder(folder: Path) -> Family:
    """The family that runs the model in `folder` (a one-line error for anything else)."""
    folder = Path(folder)
    key = os.path.abspath(folder)
    known = _DECIDED.get(key)
    if known is not None and all(signature(file) == kept for file, kept in known[0].items()):
        return known[1]
    index_file = folder / "model_index.json"
    files = {index_file: signature(index_file)}  # before reading: a change made while reading is seen next time
    index = read_model_index(folder)
    name = index.get("_class_name", "")
    family = family_for_class(name)
    if family is None:
        runs = sorted(c for f in FAMILIES for c in f.pipeline_classes)
        raise CheckpointError(f"{folder}: a {name or 'unknown'} model; quantbench runs {', '.join(runs)}")
    _check_component_classes(folder, index, files)
    kept = settled(files.values())
    with _DECIDING:  # the workbench's threads ask too
        _DECIDED.pop(key, None)
        while kept and len(_DECIDED) >= _DECIDED_FOLDERS:
            _DECIDED.pop(next(iter(_DECIDED)))
        if kept:
            _DECIDED[key] = files, family
    return family


def _check_component_classes(folder: Path, index: dict, files: dict[Path, tuple | None]) -> None:
    """A diffusers component whose config.json names another class than model_index.json does came from another
    model: a Z-Image transformer copied into a FLUX.2 folder was read with FLUX.2's defaults (refused as needing
    60 GB), and `save` said the transformer expected "joint_attention_dim None". One line naming both classes.
    A config that cannot be read is left to its own reader, which says what is wrong with it. `files` gets each
    config's signature, taken before it is read; the read is config_memo's, which the component's readers share."""
    for component, entry in index.items():
        if component.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"
                                             and isinstance(entry[1], str)):
            continue
        config = folder / component / "config.json"
        files[config] = signature(config)
        try:
            data = config_memo(config)
        except (CheckpointError, OSError):
            continue
        declared = data.get("_class_name") if isinstance(data, dict) else None
        if isinstance(declared, str) and declared != entry[1]:
            raise CheckpointError(f"{config}: a {declared}, but model_index.json names {entry[1]} for the {component} "
                                  "(a component from another model?)")


def family_for_transformer(transformer) -> Family:
    """The family a transformer module belongs to (its layer policy comes with it)."""
    for family in FAMILIES:
        if family.transformer.module is not None and isinstance(transformer, family.transformer.module):
            return family
    raise InvalidRequest(f"no model family has a {type(transformer).__name__} transformer")
