"""What a saved quantized model records, and what loading it back checks.

Each saved component's safetensors carry a `quantbench` metadata entry (JSON, format 2):

    {"format": 2, "layers": {"transformer_blocks.0.attn.to_q": {"bits": 4, "group_size": 64, "method": "hqq"}, ...},
     "kept": {path: why it stays in full precision}, "calibration": {"prompts_sha256": ...} or null,
     "source": "black-forest-labs/FLUX.2-klein-4B", "revision": "...", "version": "0.x"}

Format 1 (quantbench before methods and group sizes: {"layers": {path: bits}, "group_size": 64}) still
loads, as round-to-nearest in groups of 64. A saved component loads as saved, and asking for any other
precision is refused in one line: its full-precision weights are gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import mlx.nn as nn

from .. import __version__
from ..errors import CheckpointError, InvalidRequest
from ..json_text import parse_json
from .layers import quantize_structure
from .model import QuantizationReport, count_parameters, precision_label
from .policy import group_misfit
from .spec import DEFAULT_METHOD, GROUP_SIZE, QuantSpec, as_spec, checked

METADATA_KEY = "quantbench"
FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass
class SavedQuantization:
    layers: dict[str, QuantSpec]
    kept: dict[str, str] = field(default_factory=dict)
    source: str = ""
    revision: str = "local"
    version: str = ""
    calibration: dict | None = None

    @property
    def label(self) -> str:
        return precision_label(self.layers)

    @property
    def spec(self) -> QuantSpec | dict[str, QuantSpec] | None:
        """What is saved, as --quantize asks for it: its one spec, its plan ({path: spec}) when the layers differ,
        or None when no layer is quantized (saved in full precision)."""
        specs = set(self.layers.values())
        if not specs:
            return None
        return next(iter(specs)) if len(specs) == 1 else dict(self.layers)

    def matches(self, requested) -> bool:
        """Whether asking for `requested` (a spec, bits or {path: spec}) is asking for what is saved."""
        if isinstance(requested, Mapping):
            return {p: as_spec(s) for p, s in requested.items()} == self.layers
        return isinstance(self.spec, QuantSpec) and as_spec(requested) == self.spec

    def holds(self, folder: Path | str, name: str) -> str:
        """How a message names it: "FOLDER holds a 4-bit transformer saved by quantbench"."""
        article = "an" if self.label[:1] in "aeiou8" else "a"  # an unquantized, an 8-bit; a 4-bit
        return f"{folder} holds {article} {self.label} {name} saved by quantbench"


def metadata_record(report: QuantizationReport, source: str, revision: str) -> str:
    """The JSON a saved component's safetensors metadata carries under METADATA_KEY."""
    return json.dumps({"format": FORMAT, "layers": {p: s.to_dict() for p, s in report.layers.items()},
                       "kept": report.kept, "calibration": report.calibration, "source": source,
                       "revision": revision, "version": __version__})


def read_saved(component) -> SavedQuantization | None:
    """The saved quantization of a checkpoint component (its safetensors metadata), or None if quantbench
    did not save it. Unreadable or unknown records are one-line CheckpointErrors."""
    raw = component.metadata.get(METADATA_KEY)
    if raw is None:
        return None
    where = component.folder
    try:
        data = parse_json(raw)
    except ValueError:
        raise CheckpointError(f"{where}: corrupt quantbench metadata") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        found = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{where}: saved by a quantbench with an unknown format {found!r} (this one reads "
                              f"formats {', '.join(map(str, READABLE_FORMATS))}; save it again from the original)")
    if not isinstance(data.get("layers"), dict):
        raise CheckpointError(f"{where}: corrupt quantbench metadata (no 'layers' record of the quantized layers)")
    try:
        layers = {str(p): _layer_spec(p, v, data) for p, v in data["layers"].items()}
    except (InvalidRequest, TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{where}: corrupt quantbench metadata ({error})") from None
    return SavedQuantization(layers, dict(data.get("kept") or {}), str(data.get("source", "")),
                             str(data.get("revision", "local")), str(data.get("version", "")),
                             data.get("calibration"))


def _layer_spec(path: str, value, data: dict) -> QuantSpec:
    if data["format"] == 1:  # {path: bits}, one group size for all, round-to-nearest
        return checked(QuantSpec(_whole(value, "bits"), _whole(data.get("group_size", GROUP_SIZE), "group size"),
                                 DEFAULT_METHOD))
    if not isinstance(value, dict):
        raise ValueError(f"layer {path}: {json.dumps(value)} is not a {{bits, group_size, method}} record")
    return checked(QuantSpec(_whole(value.get("bits"), "bits"), _whole(value.get("group_size"), "group size"),
                             str(value.get("method"))))


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} {json.dumps(value)} is not a whole number")
    return value


def prepare_saved_structure(module: nn.Module, component) -> SavedQuantization | None:
    """Before loading a saved component: quantize the layers it names, so its stored weights fit."""
    saved = read_saved(component)
    if saved is not None and saved.layers:
        for path, layer in module.named_modules():
            spec = saved.layers.get(path)
            if (spec is not None and isinstance(layer, (nn.Linear, nn.Embedding))
                    and group_misfit(layer, spec.group_size)):
                raise CheckpointError(f"{_metadata_file(component)}: its quantbench metadata says layer {path} is "
                                      f"quantized in groups of {spec.group_size}, which its input size "
                                      f"{layer.weight.shape[-1]} cannot be: the metadata was edited or damaged "
                                      "(save the model again from the original)")
        missing = quantize_structure(module, saved.layers)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(f"{_metadata_file(component)}: its quantbench metadata names layer {missing[0]}{more}, "
                                  "which is no quantizable layer of this model (save it again from the original)")
    return saved


def _metadata_file(component) -> Path:
    """The weights file whose header holds the quantbench record (the folder when it cannot be told)."""
    from ..safetensors import read_safetensors_header
    for file in component.files:
        try:
            if METADATA_KEY in read_safetensors_header(file)[1]:
                return file
        except (OSError, ValueError, CheckpointError):
            continue
    return Path(component.folder)


def check_requantize(saved: SavedQuantization | None, requested, name: str, folder: Path,
                     asked: str | None = None) -> None:
    """A saved model is used at the precision it was saved with; asking for another is refused (`asked`: how
    the refusal names the request, when not by its spec)."""
    if saved is None or requested is None or saved.matches(requested):
        return
    asked = asked or ("another plan" if isinstance(requested, Mapping) else as_spec(requested).label)
    source = f" from {saved.source}" if saved.source else ""
    raise InvalidRequest(f"{saved.holds(folder, name)}{source}: it cannot be requantized to {asked} "
                         f"(load the original model, or drop the option)")


def saved_report(module: nn.Module, saved: SavedQuantization, name: str) -> QuantizationReport:
    report = count_parameters(module, saved.layers, saved.kept, name)
    report.prequantized = True
    report.calibration = saved.calibration
    return report
