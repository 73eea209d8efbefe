"""The calibration itself: sample, record, then quantize block after block from the statistics gathered.

1. Sampling. The transformer's weights stay lazy (unread) in the checkpoint. Each block, and each quantized
   layer outside the blocks, is read when it runs and forgotten once its output is evaluated, so only one
   block's full-precision weights exist at a time. The transformer calls of the recorded steps (latents, text
   features, noise level) are written to disk (spill.py); the layers outside the blocks (text projection,
   timestep embedding, modulation) accumulate their statistics here.
2. Blocks, in the order they run. For block i the recorded calls are replayed, one batch read from disk at a
   time, through the blocks before it, which are already quantized (in effect: the outputs of block i-1 for
   every call are cached on disk), so each block corrects the error it actually receives. Memory holds the model
   quantized so far, block i's weights, one site's X^T X and one batch's activations. Inside the block, the
   layers that share an input (q, k and v) form a site; sites are calibrated in the order they run, each in a
   pass that stops as soon as its input is reached, so only one site's X^T X exists at a time and later sites
   see the quantized earlier ones. The block's weights are read once, held while it is calibrated, and replaced
   by its quantized layers. AWQ's consumers of one channel fold are gathered in one pass (their scale is chosen
   on all of them).

Under `mlx.launch` with N ranks, rank r samples prompts r, r + N, ... and keeps only their calls; in the block
stage it replays only those, and after each pass the ranks add their X^T X (exact_sum.py: one gather of
exponents and an int64 `all_sum`), so every rank quantizes the same block the same way and goes on to the next
with its own calls; no recorded input travels. A replayed batch merges one prompt's calls only, and each product
is summed exactly, so the result is bit for bit a one-process run's.

`sequential=False` instead accumulates every layer's statistics during sampling, from the full-precision model,
and quantizes everything at the end: one pass, but every X^T X at once.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ...distributed import World, available, total_over_ranks
from ...errors import Cancelled
from ..dense import slice_bytes, use_dense_matmul
from ..layers import module_at, quantize_layer, replace_layer
from ..methods import LayerStats, get_method
from ..methods.awq import fold_exactly
from ..spec import QuantSpec
from .progress import CalibrationProgress
from .replay import (BlockOutputs, Call, InputStats, LazyWeights, SharedInputs, Stop, accumulating, batched, compose,
                     evaluating, hooks, leaf_shapes, merged, per_prompt, placeholder, size_of, structure)
from .settings import SEED_OFFSET, CalibrationSettings
from .spill import Spill

STATS_BYTES = 4  # X^T X is accumulated in float32
DENSE_SHARE = 0.5  # the dense CPU path replays a block's layer when its slice is at most this of the block
CACHE_BLOCKS = 2  # in memory: keep one block's outputs for every call when they take at most this many blocks


def blocks_of(transformer: nn.Module) -> list[str]:
    """The paths of the transformer's repeated blocks (the modules in its top-level lists), in order."""
    return [f"{name}.{i}" for name, child in transformer.children().items() if isinstance(child, list)
            for i, module in enumerate(child) if isinstance(module, nn.Module)]


class Calibrator:
    """Quantizes a lazily loaded transformer layer by layer, from statistics it gathers while sampling."""

    def __init__(self, pipeline, transformer: nn.Module, weights: LazyWeights, layers: dict[str, QuantSpec],
                 settings: CalibrationSettings, progress=None, cancel=None):
        self.pipeline, self.transformer, self.weights = pipeline, transformer, weights
        self.layers, self.settings = layers, settings
        self.progress, self.cancel = progress, cancel
        self.blocks = blocks_of(transformer)
        self.calibrated = {p for p, spec in layers.items() if get_method(spec.method).needs_calibration}
        awq = any(spec.method == "awq" for spec in layers.values())
        self.folds = transformer.channel_folds() if awq and hasattr(transformer, "channel_folds") else []
        everyone = available()
        # each rank samples its share of the prompts; with fewer prompts than ranks, every rank all of them
        self.ranks = everyone if len(settings.prompts) >= everyone.size else World()
        self.calls: list[Call] = []
        self.prompt_of_call: list[int] = []
        self.prompt = 0
        self.recorded = 0  # the calls recorded on every rank together (the list goes once the blocks are done)
        self.batches: list[list[Call]] = []
        self.shared = SharedInputs()
        self.tokens: dict[str, int] = {}
        self.block_bytes = self.output_bytes = 0  # the largest block's weights; the largest output of a call
        self.dense = False  # whether the blocks replay through the dense CPU path (_dense_pays)
        self.block_statistics = 0  # the largest block's X^T X, summed over its sites (the peak target's unit)
        self.disk_bytes = 0  # the most the spill folder held
        self.step = 0
        self.spill: Spill | None = None  # where recorded calls and block outputs are kept (None: in memory)
        self.cached = False  # whether the output of the block before is kept for every call (see _before)
        self.outputs = BlockOutputs(None, None, "")
        self.output_shapes: dict[str, object] = {}
        self.current = 0
        self.started = self.stage_started = time.perf_counter()
        self.done = self.total = 0.0  # the work of the stage under way: its total is known only as it begins

    # ------------------------------------------------------------------ bookkeeping

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled("calibration cancelled")

    def _report(self, stage: str, block: int = 0, work: float = 0.0) -> None:
        self._check_cancel()
        self.done += work
        if self.progress is not None:
            share = None if self.ranks.size == 1 else (len(self.ranks.mine(len(self.settings.prompts))),
                                                        len(self.settings.prompts))
            self.progress(CalibrationProgress(stage, block, len(self.blocks), self.done, self.total,
                                              time.perf_counter() - self.stage_started, share))

    def _block_of(self, path: str) -> str | None:
        return next((b for b in self.blocks if path.startswith(b + ".")), None)

    # ------------------------------------------------------------------ stage 1: sampling

    def sample(self) -> dict[str, InputStats]:
        """Draw every prompt with the blocks read on use and forgotten after; record the transformer calls.
        Returns the statistics gathered meanwhile (the layers outside the blocks, or every layer)."""
        settings = self.settings
        outer = [p for p in self.layers if self._block_of(p) is None]
        watched = [p for p in self.calibrated if not settings.sequential or self._block_of(p) is None]
        stats = {path: InputStats() for path in watched}
        per_step = len(self.blocks) or 1
        mine = self.ranks.mine(len(settings.prompts))
        self.total = len(mine) * settings.steps * per_step
        streamed = {p: self._forgetting(p) for p in self.blocks + outer}
        watchers = {p: accumulating(stats[p]) for p in watched}
        each = [(module_at(self.transformer, p), compose(watchers.get(p), streamed.get(p)))
                for p in {**streamed, **watchers}]
        each.append((self.transformer, self._recording))

        def after_step(info) -> None:
            self.step = info.index + 1
            self._report("sampling", 0, per_step)
            if info.index + 1 == info.total:
                raise Stop  # the pictures themselves are not needed: no decode

        with hooks(each):
            for i in mine:
                self.step, self.prompt = 0, i
                try:
                    self.pipeline.generate(settings.prompts[i], None, settings.steps, settings.guidance,
                                           seed=SEED_OFFSET + i, width=settings.size, height=settings.size,
                                           preview=False, callback=after_step)
                except Stop:
                    pass
        own = time.perf_counter() - self.started
        self.recorded = total_over_ranks(self.ranks, len(self.calls), what="calibration", own_seconds=own)
        for path in sorted(stats):  # every rank in the same order: each finish is a collective
            stats[path].finish(self.ranks, "calibration", own)
        return stats

    def _recording(self, module, call, args, kwargs):
        """Keep the call's inputs for the block stage (on disk when there is a spill folder). After the
        first, the disk is checked for all of them and two blocks' outputs for each (_cache_outputs)."""
        recorded = self.settings.sequential and self.settings.records_step(self.step)
        if recorded:
            mx.eval([v for _, v in tree_flatten((args, kwargs)) if isinstance(v, mx.array)])
            kept = Call(*self.shared.dedupe((args, kwargs)))
            self.calls.append(kept.stored(self.spill, f"call{len(self.calls)}") if self.spill else kept)
            self.prompt_of_call.append(self.prompt)
        out = call(*args, **kwargs)
        if recorded and self.spill is not None and len(self.calls) == 1:
            count = len(self.ranks.mine(len(self.settings.prompts))) * self.settings.recorded_count
            self.spill.require(count * (self.calls[0].nbytes() + 2 * self.output_bytes),
                               "the recorded calls and cached block outputs")
        return out

    def _forgetting(self, path: str):
        def hook(module, call, args, kwargs):
            out = call(*args, **kwargs)
            mx.eval(out)
            self.output_bytes = max(self.output_bytes, sum(a.nbytes for _, a in tree_flatten(out)))
            self.block_bytes = max(self.block_bytes, _nbytes(module))
            self.weights.forget(module, path)
            return out
        return hook

    # ------------------------------------------------------------------ stage 2: blocks

    def calibrate_blocks(self) -> None:
        plans = self._all_steps()
        # Counted apart from the sampling: its size is known only now, and a bar that had filled while sampling
        # would otherwise fall back (to 58% at block 1 on demo) as the blocks' work joined the total.
        self.done, self.stage_started = 0.0, time.perf_counter()
        self.total = sum((self._pass_work(number) * sum(1 for step in steps if self._needs_pass(step))
                                      + (self._pass_work(number) if self.cached and number < len(plans) else 0))
                                     for number, steps in enumerate(plans, start=1))
        for number, (block_path, steps) in enumerate(zip(self.blocks, plans), start=1):
            for step in steps:
                self._calibrate_step(step, number)
                self._report("blocks", number)
            self.block_bytes = max(self.block_bytes, _nbytes(module_at(self.transformer, block_path)))
            if self.cached and number < len(self.blocks):
                self._cache_outputs(number)
            mx.clear_cache()

    def _calibrate_step(self, step: list[list[str]], number: int) -> None:
        """Gather the step's statistics, fold AWQ's scales, quantize its sites. The statistics die on return,
        before the next step gathers its own (with GPTQ, each site's X^T X dies once its factor is made)."""
        stats = self._gather(step, number) if self._needs_pass(step) else [None] * len(step)
        for fold in self.folds:
            if any(site[0] in fold[0] for site in step):
                fold_exactly(self.transformer, self.layers, fold, step, stats)
        for site, site_stats in zip(step, stats):
            given = self._layer_stats(site, site_stats)
            for path in site:
                self._quantize(path, given)

    def _layer_stats(self, site: list[str], stats: InputStats | None) -> LayerStats | None:
        """One LayerStats for the site's layers; disposable when every one of them is GPTQ's (nothing else
        reads X^T X after the factor is made)."""
        if stats is None or stats.xtx is None or not any(path in self.calibrated for path in site):
            return None
        return stats.layer_stats(disposable=all(self.layers[path].method == "gptq" for path in site))

    def _pass_work(self, number: int) -> float:
        """A pass runs `number` blocks on every batch of calls (only the last one when the output of the
        block before is cached)."""
        return len(self.batches) * (1 if self.cached else number)

    def _needs_pass(self, step: list[list[str]]) -> bool:
        return any(path in self.calibrated for site in step for path in site)

    def _gather(self, step: list[list[str]], number: int) -> list[InputStats]:
        """One pass over the recorded calls, through the quantized blocks before this one, summing X^T X at
        each site of `step` and stopping at the last."""
        stats = [InputStats() for _ in step]
        last: list[mx.array] = []  # the last site's input, summed once the pass has stopped and let go of the rest

        def accumulate(index):
            def hook(module, call, args, kwargs):
                if index + 1 == len(step):
                    mx.eval(args[0])
                    last.append(args[0])
                    raise Stop
                stats[index].add(args[0])
                return call(*args, **kwargs)
            return hook

        watched = [(module_at(self.transformer, site[0]), accumulate(i)) for i, site in enumerate(step)]
        started = time.perf_counter()
        with hooks(watched + self._before(number)):
            for index, batch in enumerate(self.batches):
                self.current = index
                self._replay(batch)
                if last:
                    stats[-1].add(last.pop())
                self._report("blocks", number, self._pass_work(number) / len(self.batches))
        return [s.finish(self.ranks, "calibration", time.perf_counter() - started) for s in stats]

    def _before(self, number: int) -> list:
        """Hooks on the blocks before block `number`. Replaying through them: each one's output is evaluated
        before the next runs (the graph holds one block's temporaries). With cached outputs: the block just
        before returns its cached output and the earlier ones return placeholders that are never evaluated
        (the block just before ignores its inputs), so a pass costs one block and the glue between blocks."""
        earlier = [module_at(self.transformer, p) for p in self.blocks[:number - 1]]
        if not self.cached:
            return [(block, evaluating) for block in earlier]
        stubs = [(block, placeholder(self.output_shapes[path])) for block, path in zip(earlier[:-1], self.blocks)]
        return stubs + [(earlier[-1], lambda module, call, args, kwargs: self.outputs[self.current])] if earlier \
            else []

    def _cache_outputs(self, number: int) -> None:
        """Block `number`'s (now quantized) outputs for every batch of calls, for the next block's passes
        (on disk with a spill folder; the block before's go once these are written)."""
        block = self.blocks[number - 1]
        outputs = BlockOutputs(self.spill, self.output_shapes[block], f"block{number}")

        def keep(module, call, args, kwargs):
            out = call(*args, **kwargs)
            mx.eval(out)
            outputs.add(out)
            raise Stop

        with hooks(self._before(number) + [(module_at(self.transformer, self.blocks[number - 1]), keep)]):
            for index, batch in enumerate(self.batches):
                self.current = index
                self._replay(batch)
                self._report("blocks", number, self._pass_work(number + 1) / len(self.batches))
        self.outputs.clear()
        self.outputs = outputs

    def _replay(self, calls: list[Call]) -> None:
        call = merged(calls)
        try:
            self.transformer(*call.args, **call.kwargs)
        except Stop:
            pass

    def _all_steps(self) -> list[list[list[list[str]]]]:
        """For every block, its steps: sites (quantized layers sharing an input) in running order, each its
        own step, except that the consumers of one AWQ fold share a step. Found in one replayed call that
        runs every block, reading each block's weights and forgetting them as in sampling."""
        seen: list[list[str]] = []
        inputs: list[mx.array] = []  # the running block's site inputs, in `seen`'s order (let go after it)

        def note(path):
            def hook(module, call, args, kwargs):
                index = next((i for i, x in enumerate(inputs) if x is args[0]), None)
                if index is None:
                    seen.append([path])
                    inputs.append(args[0])
                else:
                    seen[len(seen) - len(inputs) + index].append(path)
                return call(*args, **kwargs)
            return hook

        def shaped(path):
            forget = self._forgetting(path)

            def hook(module, call, args, kwargs):
                out = forget(module, call, args, kwargs)
                self.output_shapes[path] = structure(out)
                inputs.clear()
                return out
            return hook

        inside = [p for p in self.layers if self._block_of(p) is not None]
        streamed = [(module_at(self.transformer, b), shaped(b)) for b in self.blocks]
        with hooks([(module_at(self.transformer, p), note(p)) for p in inside] + streamed):
            self._replay(self.batches[0][:1])
        self.cached = self._cache_fits()
        per_block = [[site for site in seen if site[0].startswith(block + ".")] for block in self.blocks]
        self.block_statistics = max((sum(map(self._statistics_bytes, sites)) for sites in per_block), default=0)
        return [self._steps(sites) for sites in per_block]

    def _statistics_bytes(self, site: list[str]) -> int:
        """The size of the X^T X a site gathers (none when no layer of it calibrates)."""
        calibrated = any(path in self.calibrated for path in site)
        return calibrated * module_at(self.transformer, site[0]).weight.shape[-1] ** 2 * STATS_BYTES

    def _cache_fits(self) -> bool:
        """Keep one block's outputs for every recorded call, so that passes cost one block instead of every
        block before (see _before): always on disk, in memory when they take at most CACHE_BLOCKS blocks."""
        if self.settings.cache_outputs is not None:
            return self.settings.cache_outputs
        per_call = max((sum(size_of(shape) * dtype.size for shape, dtype in leaf_shapes(shapes))
                        for shapes in self.output_shapes.values()), default=0)
        return self.spill is not None or per_call * sum(c.batch for c in self.calls) <= CACHE_BLOCKS * self.block_bytes

    def _steps(self, sites: list[list[str]]) -> list[list[list[str]]]:
        if not self.settings.per_site:
            return [sites] if sites else []
        steps: list[list[list[str]]] = []
        placed: dict[int, list[list[str]]] = {}
        for site in sites:
            fold = next((i for i, f in enumerate(self.folds) if site[0] in f[0]), None)
            if fold is not None and fold in placed:
                placed[fold].append(site)
                continue
            steps.append([site])
            if fold is not None:
                placed[fold] = steps[-1]
        return steps

    # ------------------------------------------------------------------ quantizing one layer

    def _quantize(self, path: str, stats: LayerStats | None) -> None:
        module = module_at(self.transformer, path)
        given = stats if path in self.calibrated else None
        layer = quantize_layer(module, self.layers[path], given)
        mx.eval(layer.parameters())
        if self.dense and self._block_of(path) is not None:
            use_dense_matmul(layer)
        replace_layer(self.transformer, path, layer)
        if given is not None:
            self.tokens[path] = given.tokens

    def _dense_pays(self) -> bool:
        """Whether the blocks' layers replay through the pipeline's dense CPU path once quantized (MLX's CPU
        quantized kernel is over ten times slower on their many rows): when the largest one's slice in flight
        is at most DENSE_SHARE of a block. Not outside the blocks: for the modulation (a row a call) it is all cost."""
        inside = [module_at(self.transformer, p).weight.shape for p in self.layers if self._block_of(p) is not None]
        largest = max((slice_bytes(i, o, self.pipeline.dtype.size) for o, i in inside), default=0)
        return self.pipeline.info.quantized_matmul == "dense" and largest <= DENSE_SHARE * self.block_bytes

    def batch_bytes(self) -> int:
        """How much of the recorded inputs one replayed pass may merge: a quarter of the largest block."""
        return max(1, self.block_bytes // 4)

    def run(self) -> None:
        """Sample, then calibrate block by block (calls and outputs on disk, removed however it ends)."""
        with Spill() if self.settings.on_disk and self.settings.sequential else nullcontext() as self.spill:
            sampled = self.sample()
            self.batches = [batch for calls in per_prompt(self.calls, self.prompt_of_call)
                            for batch in batched(calls, self.batch_bytes())]
            self.dense = self._dense_pays()
            outer = [p for p in self.layers if self._block_of(p) is None]
            for path in (outer if self.settings.sequential else list(self.layers)):
                self._quantize(path, self._layer_stats([path], sampled.pop(path, None)))
            if self.settings.sequential and self.recorded:
                self.calibrate_blocks()
            self.disk_bytes = self.spill.peak if self.spill is not None else 0
        self.calls, self.prompt_of_call, self.batches = [], [], []  # before the model is finished
        self.outputs, self.shared = BlockOutputs(None, None, ""), SharedInputs()


def _nbytes(module: nn.Module) -> int:
    return sum(a.nbytes for _, a in tree_flatten(module.parameters()))
