"""Saving quantized models, and loading them back without the full-precision weights.

A saved folder has the diffusers layout of its source: model_index.json, scheduler/, tokenizer/ and
vae/ copied, and transformer/ and text_encoder/ written from the loaded, quantized modules. Their
safetensors carry a `quantbench` metadata entry (JSON, core/quant/saved.py): each quantized layer's
bits, group size and method, why the other layers stayed in full precision, the calibration prompts'
hash when a method was calibrated, the source model and its revision, quantbench's version; and the digest of
their tensor layout (core/safetensors.py, LAYOUT_KEY), so a header edited since is refused when it is read.
Full-precision tensors are stored in the dtype the source checkpoint had, so a saved-then-loaded
model computes bit for bit what the model quantized on the fly computes.

The folder is written under a hidden temporary name beside the target and renamed when complete;
model_index.json is written last, so an interrupted save never leaves anything that loads as a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import __version__
from .atomic import staged_folder
from .checkpoint import LoadReport
from .quant import QuantizationReport
from .quant.saved import METADATA_KEY, metadata_record
from .safetensors import write_safetensors
_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}
# Checkpoint key prefix of each saved component (the inverse of its loading rules).
_KEY_PREFIX = {"transformer": "", "text_encoder": "model."}
_WEIGHT_STEM = {"transformer": "diffusion_pytorch_model", "text_encoder": "model"}


def save_quantized(pipeline, out: Path | str, overwrite: bool = False) -> Path:
    """Write `pipeline` (a loaded, quantized pipeline) as a folder the engine loads directly.

    FLUX.2's components (transformer/, text_encoder/) are the default; a family with others says what
    to write with `saved_components()` -> {folder: (module, checkpoint key prefix, weight file stem,
    config dict, or None to copy the source's config.json)} and what to copy with `copied_folders`.
    """
    out = Path(out)
    info = pipeline.info
    source = info.folder
    with staged_folder(out, overwrite) as staging:
        for name in getattr(pipeline, "copied_folders", ("scheduler", "tokenizer", "vae")):
            if (source / name).is_dir():
                shutil.copytree(source / name, staging / name)
        components = _saved_components(pipeline)
        reports = {q.component: q for q in info.quantization}
        loads = {r.component: r for r in info.weights}
        for name, (module, prefix, stem, config) in components.items():
            _write_component(staging / name, source / name, module, reports[name], loads[name], info, prefix, stem,
                             config)
        index = json.loads((source / "model_index.json").read_text())
        index["text_encoder_out_layers"] = list(info.text_encoder_layers)
        loras = [{**lora.to_dict(strength), "file": lora.path.name} for lora, strength in info.loader.loras]
        index["quantbench_saved"] = {"source": info.source, **{name: reports[name].bits_label for name in components},
                                     **({"loras": loras} if loras else {}), "version": __version__}
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))  # last: now it is a model
    return out


def saved_model_bytes(source: str | Path, folder: Path, transformer_bits, text_encoder_bits) -> int:
    """What `quantbench save` writes: the transformer and text encoders at their precisions (the memory model's
    byte count, at the checkpoint's bytes per weight), and the folders copied as they are. 0 when the memory
    model does not know the model (no refusal on a guess)."""
    from .disk_space import folder_bytes
    from .errors import CheckpointError
    from .families import family_for_folder
    from .fit import catalog_entry_for
    from .memory_model.weights import component_size

    entry = catalog_entry_for(source, folder)
    if entry is None or not entry.components:
        return 0
    try:
        copied = getattr(family_for_folder(folder).pipeline, "copied_folders", ("scheduler", "tokenizer", "vae"))
    except CheckpointError:
        return 0
    written = [c for c in entry.components if c.role == "transformer" or c.role.startswith("text_encoder")]
    total = sum(folder_bytes(folder / name) for name in copied if name not in {c.subfolder for c in written})
    for component in written:
        bits = transformer_bits if component.role == "transformer" else text_encoder_bits
        total += component_size(component, bits if component.quantizable else None, component.checkpoint_bytes,
                                text_layers=entry.text_encoder_layers).nbytes
    return total


def _saved_components(pipeline) -> dict[str, tuple[nn.Module, str, str, dict | None]]:
    if hasattr(pipeline, "saved_components"):
        return pipeline.saved_components()
    return {name: (module, _KEY_PREFIX[name], _WEIGHT_STEM[name], None)
            for name, module in (("transformer", pipeline.ensure_transformer()),
                                 ("text_encoder", pipeline.ensure_text_encoder()))}


def _write_component(folder: Path, source: Path, module: nn.Module, report: QuantizationReport, load: LoadReport,
                     info, prefix: str, stem: str, config: dict | None = None) -> None:
    folder.mkdir()
    if config is None:
        shutil.copy2(source / "config.json", folder / "config.json")
    else:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    metadata = {"format": "pt", METADATA_KEY: metadata_record(report, info.source, _revision(source))}
    tensors = {}
    for name, array in tree_flatten(module.parameters()):
        layer, _, leaf = name.rpartition(".")
        if not (layer in report.layers and leaf in ("weight", "scales", "biases")):
            array = array.astype(_DTYPES.get(load.source_dtypes.get(name, "BF16"), mx.bfloat16))
        tensors[prefix + name] = array
    write_safetensors(folder / f"{stem}.safetensors", tensors, metadata, record_layout=True)


def _revision(component_folder: Path) -> str:
    """The Hugging Face snapshot revision when the source came from the cache, else 'local'."""
    parts = component_folder.resolve().parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "local"
