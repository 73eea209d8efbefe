"""LoRA adapters, fused into a model's weights as they load: before quantizing, so the quantizer sees the adapted
weights (what the LoRA was trained for) and a run costs no more time or memory than the model alone.

A LoRA file holds, for some Linear layers, two thin matrices A (rank x in) and B (out x rank); the layer's weight
becomes W + strength * (alpha / rank) * B @ A (alpha / sqrt(rank) for rank-stabilized LoRAs), and its bias, where
the file has a `lora_B.bias`, bias + strength * (alpha / rank) * that. Three layouts are read:

- diffusers' and PEFT's, as `save_lora_weights` writes it and diffusers' `load_lora_weights` reads it: keys
  `<component>.<module>.lora_A.weight` and `.lora_B.weight` (`lora_down` and `lora_up` too), the component being
  `transformer`, `text_encoder` or `text_encoder_2`; no prefix means the transformer; alpha and rank from the
  file's `lora_adapter_metadata` (PEFT's LoraConfig: lora_alpha, r, alpha_pattern, rank_pattern, use_rslora), else
  from a `<module>.alpha` tensor, else alpha = rank (a scale of 1);
- the original code's: the transformer's layers as the original code names them, after `diffusion_model.` (as
  ai-toolkit and ComfyUI save LoRAs) or `base_model.model.`: the family's `lora_layout` rules give diffusers'
  layers, and a fused layer (FLUX's `qkv`) adapts each of diffusers' layers it holds with its rows of B and the
  whole of A;
- kohya's: either of those names with its dots as underscores, after `lora_unet_` (the transformer) or
  `lora_te1_`/`lora_te2_` (the text encoders): a name is the checkpoint's own layer's where one flattens to it, else
  the family's `lora_layout` rules, flattened alike, give diffusers' layers.

Other adapters (LoKr, LoHa, DoRA) are a one-line error that says so. A LoRA is checked against the model before any
weight loads: every layer it names must be one of the component's, with the shapes the LoRA was made for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from .checkpoint import Component
from .errors import CheckpointError, InvalidRequest, printable
from .json_text import parse_json
from .file_memo import FileMemo
from .lora_request import lora_file, lora_requests
from .quant.saved import METADATA_KEY as SAVED_METADATA_KEY
from .safetensors import TensorInfo, header_memo

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")
# The original code's names may follow (diffusers' pipelines read base_model.model. so too); a family's lora_layout
# leaves diffusers' names as they are, so a PEFT model's own (base_model.model.transformer_blocks...) read alike.
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.")
# kohya's: a layer's dotted name with its dots as underscores, after a prefix that says the component
KOHYA_PREFIXES = (("lora_unet_", "transformer"), ("lora_transformer_", "transformer"), ("lora_te1_", "text_encoder"),
                  ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"))
_METADATA_KEY = "lora_adapter_metadata"
_TENSOR = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[A-Za-z_]\w*))?"
                     r"\.(?P<param>weight|bias)")
_ALPHA = re.compile(r"(?P<module>.+)\.alpha")
_FOREIGN = (  # (what a key starts with or holds, what the layout is)
    (("unet.",), None, "a UNet model's layout (a Stable Diffusion LoRA)"),
    ((), (".lokr_", "lycoris_"), "LoKr (LyCORIS)"),
    ((), (".hada_",), "LoHa (LyCORIS)"),
    ((), ("dora_scale", "lora_magnitude_vector"), "DoRA"),
)


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: where its A and B (and B's bias) are in the file, and its scale before the strength."""

    a_key: str
    b_key: str
    bias_key: str | None
    rank: int
    in_features: int
    out_features: int
    scale: float


@dataclass
class LoraFile:
    path: Path
    layers: dict[str, dict[str, LoraLayer]] = field(default_factory=dict)  # component folder -> module -> layer
    # how the file names layers: "diffusers" (as the checkpoint does), "original" (the transformer's as the original
    # code does: Family.lora_layout) or "kohya" (either, dots as underscores)
    layout: str = "diffusers"
    tensors: dict[str, TensorInfo] = field(default_factory=dict, repr=False)  # its header's

    def load(self) -> dict[str, mx.array]:
        """Its tensors, lazily, as a checkpoint's are read (a file gone or damaged since is one line)."""
        return Component(self.path.parent, {}, self.tensors).load()

    def summary(self, strength: float = 1.0) -> str:
        parts = [f"{len(found)} layers of the {folder.replace('_', ' ')}" for folder, found in self.layers.items()]
        return f"LoRA {self.path} at strength {strength:g}: " + ", ".join(parts)

    def to_dict(self, strength: float) -> dict:
        return {"file": str(self.path.absolute()), "strength": strength,
                "layers": {folder: len(found) for folder, found in self.layers.items()}}


def read_loras(requests) -> tuple[tuple[LoraFile, float], ...]:
    """Each requested LoRA read and checked (lora_requests says what a request may be), with its strength."""
    return tuple((read_lora(request.path), request.strength) for request in lora_requests(requests))


def read_lora(path: Path) -> LoraFile:
    """The layers a LoRA file (or the one in a folder) adapts, checked: every tensor is a LoRA's, every layer has
    both matrices of one rank, and every number is finite. Read once while the file stays as it was."""
    return _read_memo(lora_file(path))


def _read_lora_file(path: Path) -> LoraFile:
    tensors, metadata = header_memo(path)
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (not a LoRA)")
    _refuse_foreign(path, tensors)
    config = _adapter_config(path, metadata)
    pairs: dict[tuple[str, str], dict[str, str]] = {}
    alphas: dict[tuple[str, str], str] = {}
    layouts = set()
    for key in tensors:
        folder, name, layout = _component(key)
        layouts.add(layout)
        if (match := _TENSOR.fullmatch(name)) is not None:
            slot = ("A" if match["kind"] in ("lora_A", "lora_down") else "B") + ("" if match["param"] == "weight"
                                                                                 else "bias")
            pairs.setdefault((folder, match["module"]), {})[slot] = key
        elif (match := _ALPHA.fullmatch(name)) is not None:
            alphas[folder, match["module"]] = key
        else:
            raise CheckpointError(f"{path}: {printable(key)} is not a LoRA tensor (lora_A, lora_B or alpha)")
    if not pairs:
        raise CheckpointError(f"{path}: holds no lora_A and lora_B matrices (not a LoRA)")
    if len(layouts) > 1:
        raise CheckpointError(f"{path}: names its layers in {' and '.join(sorted(layouts))} layouts at once: one LoRA, "
                              "one layout")
    lora = LoraFile(path, layout=layouts.pop(), tensors=tensors)
    arrays = lora.load()
    _check_finite(path, tensors, arrays)
    for (folder, module), keys in sorted(pairs.items()):
        alpha = alphas.get((folder, module))
        layer = _layer(path, tensors, folder, module, keys, None if alpha is None else (alpha, arrays[alpha]), config)
        lora.layers.setdefault(folder, {})[module] = layer
    return lora


_read_memo = FileMemo(_read_lora_file, lambda lora: lora)  # kept read-only: the workbench checks a run often


def _refuse_foreign(path: Path, tensors: dict) -> None:
    for prefixes, fragments, layout in _FOREIGN:
        for key in tensors:
            if key.startswith(prefixes) if prefixes else any(f in key for f in fragments):
                raise CheckpointError(f"{path}: a LoRA in {layout}, which quantbench does not read; it reads "
                                      "diffusers' layout (transformer.<layer>.lora_A.weight, as diffusers' "
                                      "save_lora_weights writes), the original code's (diffusion_model.<layer>) and "
                                      "kohya's (lora_unet_<layer>)")


def _component(key: str) -> tuple[str, str, str]:
    """(component folder, the layer's name in the file, the layout that names it)."""
    for prefix, folder in KOHYA_PREFIXES:
        if key.startswith(prefix):
            return folder, key.removeprefix(prefix), "kohya"
    for prefix in ORIGINAL_PREFIXES:
        if key.startswith(prefix):
            return "transformer", key.removeprefix(prefix), "original"
    for folder in COMPONENTS:
        if key.startswith(folder + "."):
            return folder, key[len(folder) + 1:], "diffusers"
    return "transformer", key, "diffusers"


def _adapter_config(path: Path, metadata: dict) -> dict:
    raw = metadata.get(_METADATA_KEY)
    if raw is None:
        return {}
    try:
        config = parse_json(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: corrupt {_METADATA_KEY} (not a JSON object)")
    return config


def _configured(config: dict, folder: str, name: str):
    return config.get(f"{folder}.{name}", config.get(name))


def _pattern_value(patterns, module: str):
    """PEFT's rank_pattern/alpha_pattern: a key matches a module whose name ends with it (as a regex)."""
    if not isinstance(patterns, dict):
        return None
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
        except re.error:
            continue
    return None


def _layer(path: Path, tensors: dict, folder: str, module: str, keys: dict, alpha: tuple[str, mx.array] | None,
           config: dict) -> LoraLayer:
    where = f"{path}: {folder}.{module}"
    if "A" not in keys or "B" not in keys:
        has, lacks = ("A", "B") if "A" in keys else ("B", "A")
        raise CheckpointError(f"{where} has lora_{has} without lora_{lacks}")
    a, b = tensors[keys["A"]], tensors[keys["B"]]
    for info, key in ((a, keys["A"]), (b, keys["B"])):
        if len(info.shape) != 2 or not info.dtype.startswith(("F", "BF")):
            raise CheckpointError(f"{path}: {key} is {info.dtype} {list(info.shape)}; a LoRA matrix is a 2-D float "
                                  "tensor (a LoRA of a convolution is not read)")
    rank = a.shape[0]
    if b.shape[1] != rank or rank == 0:
        raise CheckpointError(f"{where}: lora_A has rank {rank} but lora_B has {b.shape[1]}")
    if "Abias" in keys:  # only lora_B carries a bias in PEFT
        raise CheckpointError(f"{path}: {keys['Abias']}: a bias on lora_A is not a LoRA quantbench reads")
    if (bias := keys.get("Bbias")) is not None and tuple(tensors[bias].shape) != (b.shape[0],):
        raise CheckpointError(f"{path}: {bias} has shape {list(tensors[bias].shape)}, not [{b.shape[0]}]")
    alpha = _alpha(path, folder, module, rank, alpha, config)
    rslora = bool(_configured(config, folder, "use_rslora"))
    scale = alpha / (math.sqrt(rank) if rslora else rank)
    return LoraLayer(keys["A"], keys["B"], bias, rank, a.shape[1], b.shape[0], scale)


def _alpha(path: Path, folder: str, module: str, rank: int, alpha: tuple[str, mx.array] | None,
           config: dict) -> float:
    if config:
        value = _pattern_value(_configured(config, folder, "alpha_pattern"), module)
        value = value if value is not None else _configured(config, folder, "lora_alpha")
        if value is None:  # no alpha configured: PEFT's default is alpha = r
            return float(rank)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{path}: {_METADATA_KEY} gives {module} an alpha of {printable(repr(value))}")
        return float(value)
    if alpha is None:
        return float(rank)
    key, value = alpha
    if value.size != 1:
        raise CheckpointError(f"{path}: {key} has shape {list(value.shape)}; an alpha is one number")
    return float(value.astype(mx.float32).reshape(()).item())  # finite: _check_finite looked


def _check_finite(path: Path, tensors: dict, arrays: dict[str, mx.array]) -> None:
    names = [k for k in tensors if mx.issubdtype(arrays[k].dtype, mx.floating)]
    sums = mx.stack([mx.sum(arrays[k].astype(mx.float32)) for k in names]) if names else mx.zeros((0,))
    bad = [k for k, ok in zip(names, mx.isfinite(sums).tolist()) if not ok]
    if bad:
        raise CheckpointError(f"{path}: NaN or infinite values in {', '.join(bad[:3])}: the LoRA is damaged")


# ---------------------------------------------------------------------------------------------
# Fusing into a component as it loads
# ---------------------------------------------------------------------------------------------

@dataclass
class LoraComponent(Component):
    """A component whose adapted weights come out of `load` with their LoRAs added (in float32, then stored in the
    checkpoint's dtype, as a checkpoint with the LoRA merged would hold them: quantizing on the fly, a saved copy
    and a compare's precisions made in memory all start from the same weights). Everything else is the source
    component's."""

    source: Component | None = None
    # checkpoint key -> (LoraFile, layer, strength, whether the key is the layer's bias, B's rows or None)
    adapters: dict[str, list[tuple]] = field(default_factory=dict)

    def stored(self, key: str):
        return None if key in self.adapters else self.source.stored(key)

    def load(self, names: set[str] | None = None) -> dict[str, mx.array]:
        arrays = self.source.load(names)
        files: dict[Path, dict[str, mx.array]] = {}
        for key in [k for k in arrays if k in self.adapters]:
            fused = arrays[key].astype(mx.float32)
            for lora, layer, strength, is_bias, rows in self.adapters[key]:
                if lora.path not in files:  # each LoRA's file opened once a load
                    files[lora.path] = lora.load()
                adapter = files[lora.path]
                b = adapter[layer.bias_key if is_bias else layer.b_key].astype(mx.float32)
                b = b if rows is None else rows(b)  # a fused layer's part: its rows of B (A is shared)
                factor = strength * layer.scale
                # one fused multiply-add: no full-size temporary for B @ A on its own (a layer of Klein 4B's
                # single blocks is 85M weights)
                fused = fused + factor * b if is_bias else \
                    mx.addmm(fused, b, adapter[layer.a_key].astype(mx.float32), alpha=factor)
            arrays[key] = fused.astype(arrays[key].dtype)
        return arrays


def with_loras(component: Component, folder: str, loras: list[tuple[LoraFile, float]], layout=()) -> Component:
    """`component` with every LoRA that adapts its folder fused in as it loads (itself when none does), after
    checking that each adapted layer is one of its own, of the size the LoRA was made for. `layout`: the family's
    rules from the original code's names (Family.lora_layout), for a LoRA that uses them."""
    adapters: dict[str, list] = {}
    for lora, strength in loras:
        layers = lora.layers.get(folder, {})
        if layers and _saved_quantized(component):
            raise InvalidRequest(f"{component.folder} was saved quantized by quantbench; a LoRA is fused before "
                                 "quantizing: give the full-precision model (or save it again with --lora)")
        for named, module, layer, rows in _targets(layers, lora.layout, layout, component):
            weight = _weight_info(component, lora, folder, module, named)
            out_features = layer.out_features if rows is None else _rows_after(rows, layer.out_features)
            if tuple(weight.shape) != (out_features, layer.in_features):
                raise InvalidRequest(f"{lora.path}: made for a model whose {named} is {out_features} x "
                                     f"{layer.in_features}; this model's is {' x '.join(map(str, weight.shape))} "
                                     "(a LoRA for another model?)")
            adapters.setdefault(f"{module}.weight", []).append((lora, layer, strength, False, rows))
            if layer.bias_key is not None:
                if f"{module}.bias" not in component.tensors:
                    raise InvalidRequest(f"{lora.path}: adapts the bias of {named}, which has none in this model")
                adapters.setdefault(f"{module}.bias", []).append((lora, layer, strength, True, rows))
    if not adapters:
        return component
    return LoraComponent(component.folder, component.config, component.tensors, dict(component.metadata),
                         source=component, adapters=adapters)


def _targets(layers: dict[str, LoraLayer], naming: str, layout, component: Component):
    """(the LoRA's name, the checkpoint's layer, the layer, the rows of B it takes or None) for each adapted layer:
    a fused layer of the original code gives one for each of diffusers' layers it holds."""
    flat = {key.removesuffix(".weight").replace(".", "_"): key.removesuffix(".weight")
            for key in component.tensors if key.endswith(".weight")} if naming == "kohya" else {}
    for named, layer in layers.items():
        if named in flat:  # kohya's name of the checkpoint's own layer
            yield named, flat[named], layer, None
            continue
        key = f"{named}{'_' if naming == 'kohya' else '.'}weight"
        rules = [] if naming == "diffusers" else [
            (pattern, rule) for rule in layout if rule.target is not None
            for pattern in [rule.pattern.replace(r"\.", "_") if naming == "kohya" else rule.pattern]
            if re.fullmatch(pattern, key)]
        if not rules:
            yield named, named, layer, None
        for pattern, rule in rules:
            yield named, re.sub(pattern, rule.target, key).removesuffix(".weight"), layer, rule.transform


def _rows_after(rows, count: int) -> int:
    return rows(mx.zeros((count,), mx.int8)).shape[0]


def _weight_info(component: Component, lora: LoraFile, folder: str, module: str, named: str):
    info = component.tensors.get(f"{module}.weight")
    if info is None:
        raise InvalidRequest(f"{lora.path}: adapts {named}, which is not a layer of this model's "
                             f"{folder.replace('_', ' ')} (a LoRA for another model?)")
    if len(info.shape) != 2 or not info.dtype.startswith(("F", "BF")):
        raise InvalidRequest(f"{lora.path}: adapts {named}, which is not a Linear layer with float weights here")
    return info


def _saved_quantized(component: Component) -> bool:
    return SAVED_METADATA_KEY in component.metadata
