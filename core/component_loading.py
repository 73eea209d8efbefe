"""Loading a family's components one at a time, so a pipeline can load, drop and reload each.

Each component is built from its config.json by the family's `ComponentSpec.build`, filled from the
checkpoint through its rules with weights kept lazy in their stored dtype, quantized by the family's
policy (or restored to the plan a saved model carries), cast, and materialized layer by layer (streamed
loading: the peak stays near the final size). A folder saved by `quantbench save` is recognised and
loaded as it was saved.

A load can be stopped: while a run's cancel token is set on the loader (`stopped_by`), each component
checks it before it starts, between layers as they are read and quantized, and between the batches of the
finiteness check, and raises Cancelled (core/errors.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import Component, LoadReport, Rule, build_from_config, check_finite, load_weights, open_component
from .errors import InvalidRequest
from .family import ComponentSpec, Family
from .generation import CancelToken, check_cancel
from .lora import LoraFile, with_loras
from .quant import (LayerPolicy, QuantizationReport, cast_full_precision, evaluate_in_units, model_nbytes,
                    quantize_model, use_dense_matmul)
from .quant.saved import SavedQuantization, check_requantize, prepare_saved_structure, saved_report

Prepare = Callable[[nn.Module, Component], object]


def build_and_fill(component: Component | Path | str, build: Callable[[dict], nn.Module],
                   rules: Callable[[nn.Module, dict], list[Rule]] | list[Rule], name: str,
                   dtype: mx.Dtype | None = mx.float32, prepare: Prepare | None = None) -> tuple[nn.Module, LoadReport]:
    """Build the module a component's config describes (a config it cannot build is a one-line CheckpointError
    naming the folder) and fill it from its weights through `rules` (a list, or rules(module, config) for rules
    that depend on what was built). `prepare(module, component)` runs in between (a saved quantized model gets
    its quantized layers there). dtype None keeps the stored one."""
    component = component if isinstance(component, Component) else open_component(component)
    module = build_from_config(build, component)
    if prepare is not None:
        prepare(module, component)
    rules = rules(module, component.config) if callable(rules) else rules
    return module, load_weights(module, component, rules, name, dtype=dtype)


def check_loras(family: Family, folder: Path, loras) -> None:
    """Each LoRA ((LoraFile, strength) pairs) against the components it adapts, from their headers: before any
    weight loads, a LoRA for another model is one line."""
    for name in dict.fromkeys(name for lora, _ in loras for name in lora.layers):
        if name == family.transformer.folder:
            with_loras(family.open_transformer(folder), name, list(loras), family.lora_layout)
        elif name in {spec.folder for spec in family.text_encoders}:
            with_loras(open_component(folder / name), name, list(loras))
        else:
            lora = next(lora for lora, _ in loras if name in lora.layers)
            raise InvalidRequest(f"{lora.path}: adapts a {name.replace('_', ' ')}, which this model does not have "
                                 "(a LoRA for another model?)")


@dataclass
class ComponentLoader:
    """One model folder's components, loaded as its family declares them (core/family.py)."""

    family: Family
    folder: Path
    dtype: mx.Dtype
    transformer_bits: int | dict | None
    text_encoder_bits: int | dict | None
    matmul: str  # "dense" or "native" for quantized layers
    text_encoder_layers: tuple[int, ...] = ()  # the hidden states the pipeline reads (() : the family's own)
    ranks: object = None  # an mx.distributed.Group: the transformer is split across it (core/tensor_parallel.py)
    reports: dict[str, LoadReport] = field(default_factory=dict)
    quantization: dict[str, QuantizationReport] = field(default_factory=dict)
    # Calibration (core/quant/calibration/) sets this to get the transformer with its weights unread, as
    # stored, and reads them itself one block at a time from `transformer_source` (component, rules).
    lazy_transformer: bool = False
    transformer_source: tuple | None = None
    cancel: CancelToken | None = None  # the run's, while it loads (stopped_by): checked between layers
    loras: tuple[tuple[LoraFile, float], ...] = ()  # fused into the weights they adapt as those load (core/lora.py)

    @contextmanager
    def stopped_by(self, cancel: CancelToken | None) -> Iterator[None]:
        """Components loaded inside stop with Cancelled once `cancel` is set (the run's token: each run sets its
        own, so a token a past run cancelled never stops a later load)."""
        previous, self.cancel = self.cancel, cancel
        try:
            yield
        finally:
            self.cancel = previous

    def check(self) -> None:
        """Everything that can be checked without reading weights (the family's checks)."""
        self.family.check_components(self.folder, self.text_encoder_layers)
        check_loras(self.family, self.folder, self.loras)

    def transformer(self) -> nn.Module:
        check_cancel(self.cancel)
        component = self._adapted(self.family.open_transformer(self.folder), self.family.transformer.folder)
        if self.lazy_transformer:
            if self.ranks is not None:
                raise InvalidRequest("a calibrating method (gptq, awq) cannot run split across ranks yet: calibrate "
                                     "and save on one machine, then split the saved model's full-precision source")
            return self._unquantized_transformer(component)
        return self._quantized(self.family.transformer, component, self.transformer_bits,
                               split=self.ranks is not None)

    def _unquantized_transformer(self, component: Component) -> nn.Module:
        """The transformer built with its weights mapped but unread, for calibration to read block by block."""
        spec = self.family.transformer

        def refuse_saved(module: nn.Module, component: Component) -> None:
            if prepare_saved_structure(module, component):
                raise InvalidRequest(f"{self.folder} holds a transformer quantized by quantbench: calibration "
                                     "needs the full-precision model (give the original)")

        module, self.reports[spec.folder] = build_and_fill(
            component, lambda config: spec.build(config, None), spec.rules_for, spec.folder, None, refuse_saved)
        self.transformer_source = (component, spec.rules_for(module, component.config))
        return module

    def text_encoder(self, folder: str = "text_encoder") -> nn.Module:
        check_cancel(self.cancel)
        return self._quantized(self.family.component(folder),
                               self._adapted(open_component(self.folder / folder), folder), self.text_encoder_bits)

    def _adapted(self, component: Component, folder: str) -> Component:
        """The component with the run's LoRAs that adapt it fused in as its weights load."""
        layout = self.family.lora_layout if folder == self.family.transformer.folder else ()
        adapted = with_loras(component, folder, list(self.loras), layout)
        if adapted is not component and folder == self.family.transformer.folder and self.ranks is not None:
            raise InvalidRequest("a LoRA cannot be fused into a transformer split across ranks yet: run it on one "
                                 "machine")
        return adapted

    def vae(self) -> nn.Module:
        check_cancel(self.cancel)
        spec = self.family.vae
        module, self.reports[spec.folder] = build_and_fill(
            self.folder / spec.folder, lambda config: spec.build(config, None), spec.rules_for, spec.folder, self.dtype)
        mx.eval(module.parameters())  # small (tens of millions of parameters): read at once
        check_finite(module, self.folder / spec.folder, cancel=self.cancel)
        return module

    def _quantized(self, spec: ComponentSpec, component: Component, bits, split: bool = False) -> nn.Module:
        saved = {}

        def prepare(module: nn.Module, component: Component) -> None:
            saved["plan"] = prepare_saved_structure(module, component)
            check_requantize(saved["plan"], bits, spec.name, self.folder)

        layers = self.text_encoder_layers or None
        module, self.reports[spec.folder] = build_and_fill(
            component, lambda config: spec.build(config, layers), spec.rules_for, spec.folder, None, prepare)
        if not split:
            self._quantize(module, spec.folder, saved["plan"], bits, spec.policy)
            return module
        from . import tensor_parallel
        plan = self.family.tensor_parallel
        if plan is None or saved["plan"]:
            raise InvalidRequest(f"{self.family.label if plan is None else 'a saved quantized'} transformer cannot be "
                                 "split across ranks yet: give the full-precision model, or run on one rank")
        policy = tensor_parallel.shard(module, plan, spec.policy, self.ranks, spec.folder, bits)
        self.quantization[spec.folder] = tensor_parallel.read_own_slices(
            module, plan, self.ranks, component, self.reports[spec.folder], bits, policy, spec.folder)
        self._materialize(module, spec.folder)
        tensor_parallel.connect(module, plan, self.ranks)
        return module

    def _quantize(self, module: nn.Module, name: str, saved: SavedQuantization | None, bits,
                  policy: LayerPolicy) -> None:
        """Quantize (or take the saved plan), cast what stays in full precision, materialize layer by layer."""
        self.quantization[name] = (saved_report(module, saved, name) if saved
                                   else quantize_model(module, bits, policy, name))
        self._materialize(module, name)

    def _materialize(self, module: nn.Module, name: str) -> None:
        cast_full_precision(module, self.dtype)
        if self.matmul == "dense":
            use_dense_matmul(module)
        evaluate_in_units(module, self.cancel)
        check_finite(module, self.folder / name, cancel=self.cancel)
        self.quantization[name].nbytes = model_nbytes(module)
