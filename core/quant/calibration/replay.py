"""How calibration runs the transformer: hooks on modules, weights read again from the checkpoint, and the
recorded transformer calls that are replayed (merged along their batch) block after block."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ...checkpoint import map_key
from ..methods import LayerStats
from .exact_sum import ExactSum
from .spill import Spill, load


# ---------------------------------------------------------------------------------------------
# Statistics and hooks
# ---------------------------------------------------------------------------------------------

@dataclass
class InputStats:
    """X^T X of every row a layer saw (float32), and how many rows. Rows are added to an exact running sum
    (exact_sum.py); `finish` makes X^T X from every rank's rows, the same bits on any number of ranks."""

    xtx: mx.array | None = None
    tokens: int = 0
    running: ExactSum = field(default_factory=ExactSum)

    def layer_stats(self, disposable: bool = False) -> LayerStats:
        """The statistics for quantizing (one object for every layer that reads this input; with `disposable`
        a method may let X^T X go once it has what it needs, see LayerStats)."""
        stats, self.xtx = LayerStats(self.xtx, self.tokens, disposable), None
        return stats

    def add(self, x: mx.array) -> None:
        self.running.add_rows(x.reshape(-1, x.shape[-1]).astype(mx.float32))

    def finish(self, ranks=None, what: str = "calibration", own_seconds: float = 0.0) -> InputStats:
        """X^T X and the row count over every rank's rows (every rank calls this, in the same order)."""
        self.xtx, self.tokens = self.running.total(ranks, what, own_seconds)
        return self


def accumulating(stats: InputStats):
    """A hook adding its layer's input to `stats` (X^T X), then running the layer."""
    def hook(module, call, args, kwargs):
        stats.add(args[0])
        return call(*args, **kwargs)
    return hook


def compose(first, second):
    """One hook doing `first` around `second` (either may be None)."""
    if first is None or second is None:
        return first or second

    def hook(module, call, args, kwargs):
        return first(module, lambda *a, **k: second(module, call, a, k), args, kwargs)
    return hook


def evaluating(module, call, args, kwargs):
    """Evaluate a block's output before the next block runs: the lazy graph then never holds more than
    one block's temporaries (the dense CPU path's dequantized weights, in particular)."""
    out = call(*args, **kwargs)
    mx.eval(out)
    return out


class Stop(Exception):
    """Raised inside a forward pass once what was needed from it has been seen."""


_HOOKED: dict[type, type] = {}


def _hooked_class(base: type) -> type:
    if base not in _HOOKED:
        def __call__(self, *args, **kwargs):
            return self.__dict__["_hook"](self, super(hooked, self).__call__, args, kwargs)
        hooked = type(f"Hooked{base.__name__}", (base,), {"__call__": __call__})
        _HOOKED[base] = hooked
    return _HOOKED[base]


@contextmanager
def hooks(pairs: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """While inside, calling the module of a (module, hook) pair calls hook(module, call, args, kwargs)
    instead, which should call `call(*args, **kwargs)` (or raise). One hook per module."""
    originals = {}
    try:
        for module, hook in pairs:
            originals[id(module)] = (module, type(module))
            object.__setattr__(module, "_hook", hook)
            module.__class__ = _hooked_class(type(module))
        yield
    finally:
        for module, cls in originals.values():
            module.__class__ = cls
            module.__dict__.pop("_hook", None)


# ---------------------------------------------------------------------------------------------
# Weights read again from the checkpoint
# ---------------------------------------------------------------------------------------------

class LazyWeights:
    """Fresh lazy (unread) weights of any part of the transformer, from its checkpoint, in its dtype (the
    forward promotes them to the activations' dtype, as for the layers a quantized model keeps)."""

    def __init__(self, component, rules):
        self.component = component
        self.sources: dict[str, tuple[str, object]] = {}
        for key in component.tensors:
            rule, target = map_key(key, rules)
            if target is not None:
                self.sources[target] = (key, rule)

    def arrays(self, prefix: str) -> list[tuple[str, mx.array]]:
        """[(name relative to prefix, lazy array)] for every parameter under `prefix` ('' for all)."""
        lead = f"{prefix}." if prefix else ""
        wanted = {t: s for t, s in self.sources.items() if t.startswith(lead)}
        loaded = self.component.load({key for key, _ in wanted.values()})
        out = []
        for target, (key, rule) in wanted.items():
            array = loaded[key]
            if rule is not None and rule.transform is not None:
                array = rule.transform(array)
            out.append((target[len(lead):], array))
        return out

    def forget(self, module: nn.Module, prefix: str) -> None:
        """Replace the module's (evaluated) weights with unread ones: its memory is released."""
        module.update(tree_unflatten(self.arrays(prefix)))


# ---------------------------------------------------------------------------------------------
# Recorded calls
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """Where a call's own array waits on disk: its place in the call's file, its shape and dtype."""

    index: int
    shape: tuple
    dtype: mx.Dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return size_of(self.shape) * self.dtype.size


@dataclass
class Call:
    """One transformer call's inputs. Arrays whose first axis is the call's batch (latents, text
    features, noise levels) are the call's own; the others (position tables) are shared between calls.
    A call kept on disk (`file`) has Slots in place of its own arrays; `inputs()` reads them back."""

    args: tuple
    kwargs: dict
    file: Path | None = None

    @property
    def batch(self) -> int:
        return first_array(self.args).shape[0]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in _leaves((self.args, self.kwargs)) if _is_batched(a, self.batch))

    def stored(self, spill: Spill, name: str) -> "Call":
        """This call with its own (evaluated) arrays written to `spill` and Slots in their place."""
        own = [a for a in _leaves((self.args, self.kwargs)) if _is_batched(a, self.batch)]
        file = spill.save(name, own)
        places = {id(a): Slot(i, tuple(a.shape), a.dtype) for i, a in enumerate(own)}
        args, kwargs = _replace((self.args, self.kwargs), lambda leaf: places.get(id(leaf), leaf))
        return Call(args, kwargs, file)

    def inputs(self) -> "Call":
        """The call with every input in memory (a stored call's own arrays read from its file, lazily)."""
        if self.file is None:
            return self
        arrays = load(self.file)
        args, kwargs = _replace((self.args, self.kwargs), lambda leaf: arrays[leaf.index] if isinstance(leaf, Slot)
                                else leaf)
        return Call(args, kwargs)


def _replace(tree, change):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_replace(item, change) for item in tree)
    if isinstance(tree, dict):
        return {k: _replace(v, change) for k, v in tree.items()}
    return change(tree)


def _leaves(tree) -> list:
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for item in tree.values() for leaf in _leaves(item)]
    return [tree]


def first_array(tree) -> mx.array | Slot:
    return next(leaf for leaf in _leaves(tree) if isinstance(leaf, (mx.array, Slot)))


def _is_batched(value, batch: int) -> bool:
    return isinstance(value, (mx.array, Slot)) and value.ndim > 0 and value.shape[0] == batch


class SharedInputs:
    """Keeps one copy of equal shared inputs (every prompt drawn at one size has the same position tables)."""

    def __init__(self) -> None:
        self.kept: list[mx.array] = []

    def dedupe(self, tree):
        batch = first_array(tree).shape[0]

        def visit(value):
            if isinstance(value, (tuple, list)):
                return type(value)(visit(v) for v in value)
            if isinstance(value, dict):
                return {k: visit(v) for k, v in value.items()}
            if isinstance(value, mx.array) and not _is_batched(value, batch):
                for kept in self.kept:
                    if kept is value or (kept.shape == value.shape and kept.dtype == value.dtype
                                         and bool(mx.array_equal(kept, value))):
                        return kept
                self.kept.append(value)
            return value
        return visit(tree)


def _signature(tree, batch: int):
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__, tuple(_signature(v, batch) for v in tree))
    if isinstance(tree, dict):
        return ("dict", tuple((k, _signature(v, batch)) for k, v in tree.items()))
    if isinstance(tree, (mx.array, Slot)):
        return ("batched", tuple(tree.shape[1:]), tree.dtype) if _is_batched(tree, batch) else ("shared", id(tree))
    return ("value", repr(tree))


def _merge(trees: list, batch: int):
    first = trees[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_merge([t[i] for t in trees], batch) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _merge([t[k] for t in trees], batch) for k in first}
    if _is_batched(first, batch):
        return mx.concatenate(trees, axis=0)
    return first


def batched(calls: list[Call], limit_bytes: int) -> list[list[Call]]:
    """The calls in groups that merge along their batch axis (same shapes, same shared inputs), each
    group holding at most `limit_bytes` of its calls' own inputs: fewer, larger forward passes replay
    much faster. `merged(group)` builds one group's call when it runs, so the merged copy is temporary
    (the calls of one prompt share its text features; merging them all at once would copy them)."""
    groups: dict[tuple, list[Call]] = {}
    for call in calls:
        groups.setdefault((call.batch, _signature((call.args, call.kwargs), call.batch)), []).append(call)
    chunks = []
    for group in groups.values():
        size = max(1, limit_bytes // max(1, group[0].nbytes()))
        chunks += [group[start:start + size] for start in range(0, len(group), size)]
    return chunks


def per_prompt(calls: list[Call], prompts: list[int]) -> list[list[Call]]:
    """The calls grouped by the prompt each was recorded for (`prompts`, one per call). Batches merge one
    prompt's calls only, so a batch's rows, and the product its statistics add, are the same however the
    prompts are split across ranks."""
    grouped: dict[int, list[Call]] = {}
    for prompt, call in zip(prompts, calls):
        grouped.setdefault(prompt, []).append(call)
    return list(grouped.values())


def merged(calls: list[Call]) -> Call:
    """One call of the group's inputs, in memory (read from disk now for calls kept there)."""
    calls = [call.inputs() for call in calls]
    if len(calls) == 1:
        return calls[0]
    args, kwargs = _merge([(c.args, c.kwargs) for c in calls], calls[0].batch)
    return Call(args, kwargs)


# ---------------------------------------------------------------------------------------------
# Block outputs, kept between passes
# ---------------------------------------------------------------------------------------------

def structure(tree):
    """The structure of a block's output with (shape without the batch axis, dtype) at the arrays."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(structure(t) for t in tree)
    return (tuple(tree.shape[1:]), tree.dtype)


def leaf_shapes(tree) -> list:
    if isinstance(tree, (tuple, list)) and not (len(tree) == 2 and isinstance(tree[1], mx.Dtype)):
        return [leaf for t in tree for leaf in leaf_shapes(t)]
    return [tree]


def build(tree, make):
    if isinstance(tree, (tuple, list)) and not (len(tree) == 2 and isinstance(tree[1], mx.Dtype)):
        return type(tree)(build(t, make) for t in tree)
    return make(*tree)


def size_of(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def placeholder(shapes):
    """A hook returning zeros shaped as a block's output, for a block whose output is never evaluated."""
    def hook(module, call, args, kwargs):
        batch = first_array(args).shape[0]
        return build(shapes, lambda shape, dtype: mx.zeros((batch, *shape), dtype))
    return hook


class BlockOutputs:
    """One block's outputs for every batch of calls, for the next block's passes: on disk (one file a
    batch, read back when its batch is replayed) or, without a spill folder, in memory."""

    def __init__(self, spill: Spill | None, shapes, name: str):
        self.spill, self.shapes, self.name = spill, shapes, name
        self.kept: list = []

    def add(self, out) -> None:
        if self.spill is None:
            self.kept.append(out)
        else:
            self.kept.append(self.spill.save(f"{self.name}-batch{len(self.kept)}", _leaves(out)))

    def __getitem__(self, index: int):
        kept = self.kept[index]
        if self.spill is None:
            return kept
        arrays = iter(load(kept))
        return build(self.shapes, lambda shape, dtype: next(arrays))

    def clear(self) -> None:
        for kept in self.kept:
            if self.spill is not None:
                self.spill.remove(kept)
        self.kept = []
