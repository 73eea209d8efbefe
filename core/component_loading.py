"""The loading steps every family's ComponentLoader shares.

Each component is built from its config, filled from the checkpoint with weights kept lazy in their
stored dtype, quantized by the family's policy (or restored to the plan a saved model carries), cast,
and materialized layer by layer (streamed loading: the peak stays near the final size).

A family's loader is a dataclass with `folder`, `dtype`, `transformer_bits`, `text_encoder_bits`,
`matmul`, `reports` and `quantization`, and inherits these methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import Component, Rule, check_finite, load_weights
from .quantize import (LayerPolicy, cast_full_precision, evaluate_in_units, model_nbytes, quantize_model,
                       use_dense_matmul)
from .saved_models import check_requantize, prepare_saved_structure, saved_report


class ComponentLoading:
    folder: Path

    def _load_transformer(self, module: nn.Module, component: Component, rules: list[Rule],
                          policy: LayerPolicy) -> nn.Module:
        saved = prepare_saved_structure(module, component)
        check_requantize(saved, self.transformer_bits, "transformer", self.folder)
        self.reports["transformer"] = load_weights(module, component, rules, "transformer", None)
        self._quantize(module, "transformer", saved, self.transformer_bits, policy)
        return module

    def _load_text_encoder(self, name: str, label: str, load: Callable, policy: LayerPolicy, *args) -> nn.Module:
        """`load(folder, *args, prepare=...)` builds and fills the encoder; `prepare` shapes it for a saved plan."""
        saved = {}
        module, report = load(self.folder / name, *args,
                              prepare=lambda m, component: saved.update(plan=prepare_saved_structure(m, component)))
        check_requantize(saved["plan"], self.text_encoder_bits, label, self.folder)
        self.reports[name] = report
        self._quantize(module, name, saved["plan"], self.text_encoder_bits, policy)
        return module

    def _load_vae(self, load: Callable) -> nn.Module:
        module, self.reports["vae"] = load(self.folder / "vae", self.dtype)
        mx.eval(module.parameters())
        check_finite(module, self.folder / "vae")
        return module

    def _quantize(self, module: nn.Module, name: str, saved: dict | None, bits, policy: LayerPolicy) -> None:
        """Quantize (or take the saved plan), cast what stays in full precision, materialize layer by layer."""
        self.quantization[name] = (saved_report(module, saved, name) if saved
                                   else quantize_model(module, bits, policy, name))
        cast_full_precision(module, self.dtype)
        if self.matmul == "dense":
            use_dense_matmul(module)
        evaluate_in_units(module)
        check_finite(module, self.folder / name)
        self.quantization[name].nbytes = model_nbytes(module)
