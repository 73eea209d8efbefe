"""Reading diffusers-layout component folders: config, sharded safetensors, declarative key mapping.

A component folder holds `config.json` and either one `*.safetensors` file or several shards listed
in a `*.safetensors.index.json`. Every file's header is checked against its size before anything is
loaded, so a truncated download is reported by name instead of failing deep inside MLX.
Weights are loaded lazily (`mx.load` reads tensor data only when it is evaluated).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .errors import CheckpointError
from .generation import CancelToken, check_cancel
from .model_files import config_memo, weight_map_memo
from .safetensors import DTYPE_BYTES, TensorInfo, broken_link, header_memo, read_safetensors_header  # noqa: F401 (re-exported)

@dataclass
class Component:
    """One component folder (transformer, text_encoder, vae...) of a diffusers-layout model."""

    folder: Path
    config: dict
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    @property
    def nbytes(self) -> int:
        total = 0
        for t in self.tensors.values():
            count = 1
            for d in t.shape:
                count *= d
            total += count * DTYPE_BYTES.get(t.dtype, 4)
        return total

    def stored(self, key: str) -> TensorInfo | None:
        """Where tensor `key`'s bytes lie in its file, as they are loaded (None if loading transforms them)."""
        info = self.tensors.get(key)
        return info if info is not None and info.start is not None else None

    def load(self, names: set[str] | None = None) -> dict[str, mx.array]:
        """Lazily load the named tensors (all when None)."""
        arrays: dict[str, mx.array] = {}
        for file in self.files:
            wanted = [k for k, t in self.tensors.items() if t.file == file and (names is None or k in names)]
            if not wanted:
                continue
            try:
                loaded = mx.load(str(file))
            except Exception as exc:  # MLX raises RuntimeError/ValueError with long messages
                raise CheckpointError(f"{file}: cannot be read ({str(exc).splitlines()[0]})") from None
            arrays.update({k: loaded[k] for k in wanted})
        return arrays


def open_component(folder: Path | str) -> Component:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder}: no config.json")
    config = config_memo(config_path)  # each file read once while it stays as it was (file_memo.py)
    files = _weight_files(folder)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for file in files:
        found, meta = header_memo(file)
        tensors.update(found)
        metadata.update(meta)
    return Component(folder, config, tensors, metadata)


def _weight_files(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = weight_map_memo(indexes[0])
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            if (broken := broken_link(folder / absent[0])) is not None:
                raise CheckpointError(broken)
            raise CheckpointError(f"{folder}: shard(s) listed in {indexes[0].name} but absent: {', '.join(absent)}")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors weights")
    return files


# ---------------------------------------------------------------------------------------------
# Declarative key mapping
# ---------------------------------------------------------------------------------------------

def conv_weight(w: mx.array) -> mx.array:
    """PyTorch conv weights are (out, in, kh, kw); MLX wants (out, kh, kw, in)."""
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


@dataclass(frozen=True)
class Rule:
    """Map checkpoint keys matching `pattern` (a full-match regex) to `target` (a re.sub template).

    `target=None` skips the key on purpose; `reason` says why, and the load report lists it.
    `transform` reshapes the tensor into the layout the MLX module expects.
    """

    pattern: str
    target: str | None
    transform: Callable[[mx.array], mx.array] | None = None
    reason: str = ""


@dataclass
class LoadReport:
    component: str
    used: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    unexpected: list[str] = field(default_factory=list)
    source_dtypes: dict[str, str] = field(default_factory=dict)  # module parameter -> safetensors dtype
    stored_as: dict[str, str] = field(default_factory=dict)  # module parameter -> its key, when loaded untransformed
    bytes_read: int = 0  # checkpoint bytes that materializing the component reads

    def summary(self) -> str:
        parts = [f"{self.component}: {self.used} tensors loaded"]
        for reason, keys in self.skipped.items():
            parts.append(f"{len(keys)} skipped ({reason})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {', '.join(self.unexpected[:5])}")
        return "; ".join(parts)


def map_key(key: str, rules: list[Rule]) -> tuple[Rule | None, str | None]:
    for rule in rules:
        if re.fullmatch(rule.pattern, key):
            return rule, (None if rule.target is None else re.sub(rule.pattern, rule.target, key))
    return None, key


def _shape_mismatch(module: nn.Module, component: Component, key: str, target: str, shape, wanted) -> str:
    """Why tensor `key` (shape `shape`) cannot fill parameter `target` (shape `wanted`), in one line. In a model
    quantbench saved quantized, the layers' shapes come from its quantbench metadata, not config.json."""
    layer, _, _ = target.rpartition(".")
    owner = module
    for part in layer.split(".") if layer else []:
        owner = owner[int(part)] if isinstance(owner, list) else getattr(owner, part, None)
    file = component.tensors[key].file
    if isinstance(owner, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return (f"{file}: {key} has shape {list(shape)}, but the quantbench metadata says {layer} is {owner.bits}-bit "
                f"in groups of {owner.group_size}, stored as {list(wanted)}: the metadata and the tensors disagree "
                "(save the model again from the original)")
    quantized = key.rpartition(".")[0] + ".scales"
    if quantized in component.tensors:
        return (f"{file}: {key} is stored quantized (beside {quantized}), but no quantbench metadata says the layer "
                "is quantized: the metadata was edited or removed (save the model again from the original)")
    return (f"{component.folder}: config does not match weights: {key} has shape {list(shape)}, "
            f"the model built from config.json expects {list(wanted)}")


def load_weights(module: nn.Module, component: Component, rules: list[Rule], name: str,
                 dtype: mx.Dtype | None = mx.float32) -> LoadReport:
    """Fill `module` from `component` through `rules`; every checkpoint key is used or reported.

    Floating tensors are cast to `dtype`, or keep the checkpoint's dtype when it is None (the caller
    quantizes first and casts what stays in full precision afterwards, see quantize.py).

    Raises CheckpointError when a module parameter has no tensor or a tensor's shape does not match
    the module built from the config.
    """
    expected = dict(tree_flatten(module.parameters()))
    report = LoadReport(name)
    plan: dict[str, tuple[str, Rule | None]] = {}
    for key, info in component.tensors.items():
        rule, target = map_key(key, rules)
        if target is None:
            report.skipped.setdefault(rule.reason or "not used", []).append(key)
            continue
        if target not in expected:
            report.unexpected.append(key)
            continue
        shape = _shape_after(info.shape, rule)
        if tuple(expected[target].shape) != shape:
            raise CheckpointError(_shape_mismatch(module, component, key, target, shape, expected[target].shape))
        if info.dtype.startswith(("F", "BF")) != mx.issubdtype(expected[target].dtype, mx.floating):
            raise CheckpointError(  # a header that says I16 over BF16 bytes: the same size, other numbers
                f"{component.folder}: {key} is stored as {info.dtype}, but the model holds "
                f"{'floating-point' if mx.issubdtype(expected[target].dtype, mx.floating) else 'integer'} numbers there")
        plan[target] = (key, rule)
        report.source_dtypes[target] = info.dtype
        report.bytes_read += info.nbytes
        if rule is None or rule.transform is None:
            report.stored_as[target] = key
    missing = sorted(set(expected) - set(plan))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{component.folder}: weights missing from the checkpoint: {', '.join(missing[:3])}{more}")
    arrays = component.load({key for key, _ in plan.values()})
    weights = []
    for target, (key, rule) in plan.items():
        w = arrays[key]
        if rule is not None and rule.transform is not None:
            w = rule.transform(w)
        if dtype is not None and mx.issubdtype(w.dtype, mx.floating):
            w = w.astype(dtype)
        weights.append((target, w))
    module.update(tree_unflatten(weights))
    report.used = len(weights)
    return report


@contextmanager
def reading_config(component: Component) -> Iterator[None]:
    """Around building a module from a component's config: what a malformed config makes the builder raise
    becomes one line naming the folder."""
    try:
        yield
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(component.folder)) else
                              f"{component.folder}: {message}") from None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise CheckpointError(f"{component.folder}/config.json does not describe a model that can be built "
                              f"({type(exc).__name__}: {detail})") from None


def build_from_config(build: Callable[[dict], nn.Module], component: Component) -> nn.Module:
    with reading_config(component):
        return build(component.config)


def check_finite(module: nn.Module, where: Path | str, batch: int = 64, cancel: CancelToken | None = None) -> None:
    """Refuse a loaded component with NaN or infinite weights (they draw a black picture), naming them.

    A quantized layer's non-finite scales or biases come from its weight, so the weight is named. Sums are
    checked first (NaN and infinity survive a sum, and summing is ten times faster than isfinite on MLX's
    CPU backend); only a tensor whose sum is not finite is looked at element by element. `cancel` is checked
    between batches."""
    params = [(name, p) for name, p in tree_flatten(module.parameters()) if mx.issubdtype(p.dtype, mx.floating)]
    bad = []
    for start in range(0, len(params), batch):
        check_cancel(cancel)
        chunk = params[start:start + batch]
        sums = mx.isfinite(mx.stack([mx.sum(p).astype(mx.float32) for _, p in chunk])).tolist()
        bad += [name for (name, p), ok in zip(chunk, sums) if not ok and not mx.all(mx.isfinite(p)).item()]
    if bad:
        names = list(dict.fromkeys(re.sub(r"\.(scales|biases)$", ".weight", name) for name in bad))
        more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
        raise CheckpointError(f"{where}: NaN or infinite values in {', '.join(names[:3])}{more}; the checkpoint is "
                              f"damaged (the picture would be black)")


def _shape_after(shape: tuple[int, ...], rule: Rule | None) -> tuple[int, ...]:
    if rule is None or rule.transform is None:
        return tuple(shape)
    return tuple(rule.transform(mx.zeros(shape, dtype=mx.int8)).shape) if len(shape) <= 5 else tuple(shape)


# ---------------------------------------------------------------------------------------------
# Other layouts: tensors renamed, split or reordered on the way in
# ---------------------------------------------------------------------------------------------

def rows(index: int, parts: tuple[int, ...]) -> Callable[[mx.array], mx.array]:
    """Take part `index` of a tensor fused along its output rows from parts of relative sizes `parts`."""
    start, total = sum(parts[:index]), sum(parts)

    def take(w: mx.array) -> mx.array:
        unit = w.shape[0] // total
        return w[start * unit: (start + parts[index]) * unit]

    return take


def fused(pattern: str, targets: tuple[str, ...], parts: tuple[int, ...]) -> list[Rule]:
    """Rules splitting a tensor fused along its output rows (e.g. one qkv Linear) into `targets`."""
    return [Rule(pattern, target, transform=rows(i, parts)) for i, target in enumerate(targets)]


@dataclass
class MappedComponent(Component):
    """A component whose tensors are renamed, split or reordered from another's on the way in.

    `tensors` lists the mapped names with the shapes they get; `origins` says, for each, the source
    tensor and the transform that produces it. Source tensors no rule maps keep their own names (less
    the layout's prefix): the loader's rules use them as they are, or report them.
    """

    source: Component | None = None
    origins: dict[str, tuple[str, Callable[[mx.array], mx.array] | None]] = field(default_factory=dict)

    def stored(self, key: str) -> TensorInfo | None:
        origin, transform = self.origins.get(key, (None, None))
        return self.source.stored(origin) if origin is not None and transform is None else None

    def load(self, names: set[str] | None = None) -> dict[str, mx.array]:
        wanted = [n for n in self.tensors if names is None or n in names]
        arrays = self.source.load({self.origins[n][0] for n in wanted})
        out = {}
        for name in wanted:
            key, transform = self.origins[name]
            out[name] = arrays[key] if transform is None else transform(arrays[key])
        return out


def map_component(source: Component, rules: list[Rule], prefix: str = "") -> MappedComponent:
    """Present `source` under the module's keys: every rule that matches a key (with `prefix` removed)
    applies, so a fused tensor gives several; slices are taken lazily, as the model is materialized."""
    tensors: dict[str, TensorInfo] = {}
    origins: dict[str, tuple[str, Callable | None]] = {}
    for key, info in source.tensors.items():
        name = key.removeprefix(prefix)
        matched = [rule for rule in rules if re.fullmatch(rule.pattern, name)]
        for rule in matched:
            target = re.sub(rule.pattern, rule.target, name)
            shape = info.shape if rule.transform is None else tuple(rule.transform(mx.zeros(info.shape, mx.int8)).shape)
            tensors[target] = TensorInfo(shape, info.dtype, info.file)
            origins[target] = (key, rule.transform)
        if not matched:  # the same name (without the prefix): used as it is, or reported
            tensors[name], origins[name] = info, (key, None)
    return MappedComponent(source.folder, source.config, tensors, dict(source.metadata), source=source, origins=origins)
