"""LoRA files in diffusers' layout, written by hand for the tests: for the layers of a model's component, at a rank,
with alphas given as tensors or as PEFT's metadata, or broken on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from quantbench.core.checkpoint import open_component


def linear_layers(folder: Path, component: str = "transformer", count: int = 3) -> dict[str, tuple[int, int]]:
    """`count` Linear layers of a model's component (module name -> (out, in)), spread over its checkpoint."""
    tensors = open_component(Path(folder) / component).tensors
    found = {key.removesuffix(".weight"): tuple(info.shape) for key, info in sorted(tensors.items())
             if key.endswith(".weight") and len(info.shape) == 2 and info.dtype.startswith(("F", "BF"))
             and "embed" not in key.split(".")[-2]}
    names = list(found)
    picked = [names[round(i * (len(names) - 1) / max(1, count - 1))] for i in range(count)]
    return {name: found[name] for name in dict.fromkeys(picked)}


def lora_tensors(layers: dict[str, tuple[int, int]], rank: int = 4, seed: int = 0, scale: float = 0.2,
                 prefix: str = "transformer.", alpha: float | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for module, (out_features, in_features) in layers.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = (rng.standard_normal((rank, in_features)) * scale).astype(np.float32)
        tensors[f"{prefix}{module}.lora_B.weight"] = (rng.standard_normal((out_features, rank)) * scale).astype(np.float32)
        if alpha is not None:
            tensors[f"{prefix}{module}.alpha"] = np.array(alpha, dtype=np.float32)
    return tensors


def write_lora(path: Path, tensors: dict[str, np.ndarray], adapter_config: dict | None = None) -> Path:
    metadata = {"format": "pt"}
    if adapter_config is not None:
        metadata["lora_adapter_metadata"] = json.dumps(adapter_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def fused(weight: np.ndarray, tensors: dict[str, np.ndarray], module: str, factor: float,
          prefix: str = "transformer.") -> np.ndarray:
    """What a layer's weight becomes: W + factor x B @ A (factor: the strength times alpha / rank)."""
    a = tensors[f"{prefix}{module}.lora_A.weight"].astype(np.float64)
    b = tensors[f"{prefix}{module}.lora_B.weight"].astype(np.float64)
    return weight.astype(np.float64) + factor * (b @ a)
