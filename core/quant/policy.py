"""Which layers are quantized: a family's `LayerPolicy`, applied in this order:

1. only Linear and Embedding layers are candidates (norms, biases, batch-norm statistics and
   other loose tensors always stay in full precision);
2. layers whose path matches one of the family's `keep` patterns stay in full precision (small
   layers whose error feeds every token: the latent input and output projections, the first
   timestep layer; GGUF and SVDQuant also keep such layers in 16 bits);
3. weights whose input dimension is not a multiple of the group size, or with fewer than
   `min_elements` elements, stay in full precision.
Everything else gets the precision asked for (uniform) or the one a per-layer plan gives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.nn as nn

from .spec import GROUP_SIZE

FULL = "full precision"


@dataclass(frozen=True)
class KeepRule:
    pattern: str  # full-match regex over the layer path
    reason: str


@dataclass(frozen=True)
class LayerPolicy:
    keep: tuple[KeepRule, ...] = ()
    group_size: int = GROUP_SIZE
    min_elements: int = 4096

    def full_precision_reason(self, path: str, module: nn.Module, group_size: int | None = None) -> str | None:
        """Why this Linear/Embedding layer stays in full precision at `group_size` (default: the policy's),
        or None to quantize it."""
        for rule in self.keep:
            if re.fullmatch(rule.pattern, path):
                return rule.reason
        weight = module.weight
        if why := group_misfit(module, group_size or self.group_size):
            return why
        if weight.size < self.min_elements:
            return f"fewer than {self.min_elements} weights"
        return None


def group_misfit(module: nn.Module, group_size: int) -> str | None:
    """Why this Linear/Embedding layer cannot be quantized in groups of `group_size` (its input size is no multiple
    of it), or None: the one home of that rule (the policy asks it; so does loading a saved model's metadata)."""
    if module.weight.shape[-1] % group_size:
        return f"input size not a multiple of {group_size}"
    return None


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every full-precision Linear and Embedding layer."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
