"""What a folder that quantbench saved quantized can be asked for, checked before any long work.

A saved component loads as saved: its full-precision weights are gone. Loading refuses another precision
(quant/saved.py check_requantize), but only once it reaches that component, after the text encoder has
encoded or the reference pictures are drawn; and a calibration that can never run there was silently
skipped. Every command asks here first, from the safetensors headers alone (nothing is loaded):

- no --quantize (the workbench's "full"): the folder's own quantization;
- a --quantize equal to it (the spec it was saved with, or a plan file with its layers): the same;
- anything else (another spec, full precision by name, an auto: search, another plan) is one line naming
  what the folder holds;
- --calibration-prompts: no calibration runs on a saved transformer, so they are taken only when they are
  the prompts it was calibrated on (the digest its record keeps) and refused otherwise;
- what needs the full-precision transformer (compare's and eval's reference, sensitivity, plan searches)
  refuses a saved one whatever is asked (`refuse_saved_transformer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest
from .model_files import present
from .quant import QuantSpec, is_full_precision, parse_spec, parse_text_encoder_spec
from .quant.saved import SavedQuantization, check_requantize, read_saved


@dataclass(frozen=True)
class SavedModel:
    """The quantbench records of a model folder's transformer and text encoders (None / absent: not saved by
    quantbench)."""

    folder: Path
    transformer: SavedQuantization | None = None
    text_encoders: dict[str, SavedQuantization] = field(default_factory=dict)

    @property
    def transformer_spec(self) -> QuantSpec | dict[str, QuantSpec] | None:
        """What the saved transformer is, as --quantize would ask for it: its one spec, or its plan (None: not
        saved by quantbench, or saved in full precision)."""
        return None if self.transformer is None else self.transformer.spec

    @property
    def text_encoder_spec(self) -> QuantSpec | dict[str, QuantSpec] | None:
        """What the saved text encoders hold, as --text-encoder-quantize would ask for it: their one spec (what
        `quantbench save` writes), their layers' specs when those differ, or None (full precision, or not saved
        by quantbench)."""
        layers = {path: spec for record in self.text_encoders.values() for path, spec in record.layers.items()}
        return SavedQuantization(layers).spec


def read_saved_model(folder: Path | str) -> SavedModel:
    """The folder's saved records, read from the weights' headers (a one-line error for a folder no family runs)."""
    from .checkpoint import open_component
    from .pipelines import family_for
    folder = Path(folder)
    family = family_for(folder)
    text_encoders = {}
    for spec in family.text_encoders:
        if present(folder / spec.folder / "config.json"):
            saved = read_saved(open_component(folder / spec.folder))
            if saved is not None:
                text_encoders[spec.folder] = saved
    return SavedModel(folder, read_saved(family.open_transformer(folder)), text_encoders)


def check_saved_request(folder: Path | str, quantize=None, text_encoder_quantize=None, *,
                        calibration_prompts: tuple[str, ...] | None = None, prompts_file=None) -> SavedModel:
    """Refuse (InvalidRequest, one line) what a saved folder cannot give: `quantize` and `text_encoder_quantize`
    as the user gave them (None: not given, so the folder's own; 'bf16': full precision asked by name; a spec,
    'auto:...' or a plan file), and calibration prompts (`prompts_file` names them) that would never be used.
    Returns the folder's records."""
    saved = read_saved_model(folder)
    if saved.transformer is not None:
        if quantize is not None:
            check_requantize(saved.transformer, _requested(quantize, saved), "transformer", saved.folder,
                             asked=_asked(quantize))
        if calibration_prompts is not None:
            _check_prompts(saved, calibration_prompts, prompts_file)
    if text_encoder_quantize is not None:
        spec = parse_text_encoder_spec(text_encoder_quantize)
        for name, record in saved.text_encoders.items():
            check_requantize(record, {} if spec is None else spec, name.replace("_", " "), saved.folder,
                             asked="full precision" if spec is None else None)
    return saved


def refuse_saved_transformer(folder: Path | str, what: str) -> None:
    """`what` ('compare', 'eval', ...) needs the full-precision transformer: refuse a saved one in one line."""
    saved = read_saved_model(folder)
    if saved.transformer is not None:
        raise InvalidRequest(f"{what} needs the full-precision transformer, and {_holds(saved)} (give the model "
                             f"it was saved from{_source(saved.transformer)})")


def _requested(value, saved: SavedModel):
    """The value as check_requantize compares it: a spec, a plan's layers, or a marker that matches nothing."""
    from .lab.plans import is_plan_path, load_plan
    if isinstance(value, (QuantSpec, dict)):
        return value
    text = str(value).strip()
    if is_full_precision(text) or text.lower().startswith("auto:"):
        return {}  # full precision, or a plan searched on the full-precision model: never what is saved
    if is_plan_path(text):
        return dict(load_plan(text).layers)
    return parse_spec(text)


def _asked(value) -> str | None:
    """How a refusal names what was asked (None: the spec's own label)."""
    if isinstance(value, (QuantSpec, dict)):
        return None
    text = str(value).strip()
    if is_full_precision(text):
        return "full precision"
    if text.lower().startswith("auto:"):
        return f"'{text}' (a plan searched on the full-precision model)"
    from .lab.plans import is_plan_path
    return f"the plan {text}" if is_plan_path(text) else None


def _check_prompts(saved: SavedModel, prompts: tuple[str, ...], prompts_file) -> None:
    from .quant.calibration.settings import prompts_digest
    record = saved.transformer.calibration or {}
    if record.get("prompts_sha256") == prompts_digest(prompts):
        return  # the very prompts it was calibrated on: what is saved is what was asked
    given = f"--calibration-prompts {prompts_file}" if prompts_file is not None else "calibration prompts"
    how = (f"was calibrated on {record.get('prompts', 'other')} other prompts" if record
           else "was not calibrated")
    raise InvalidRequest(f"{given}: {_holds(saved)}, which {how}; it loads as saved and no calibration runs "
                         f"(drop --calibration-prompts, or give the model it was saved from"
                         f"{_source(saved.transformer)})")


def _holds(saved: SavedModel) -> str:
    return saved.transformer.holds(saved.folder, "transformer")


def _source(record: SavedQuantization) -> str:
    """', demo-turbo' for a built-in model (not the folder it is installed in), ', FOLDER' for others."""
    from .builtin import BUILTIN_MODELS, MODELS_FOLDER
    if not record.source:
        return ""
    source = Path(record.source)
    builtin = source.name in BUILTIN_MODELS and source.parent.resolve() == MODELS_FOLDER
    return f", {source.name if builtin else record.source}"

