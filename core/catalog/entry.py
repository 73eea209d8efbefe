"""What the catalog says about a model: its components (with the architecture numbers that size them)
and how it runs (defaults, guidance, licence, the precisions worth offering)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from ..quant.spec import QuantSpec, as_spec

# Precisions, as the engine spells them: None is the compute dtype (bf16 on a GPU), ints are bits (round-to-
# nearest in groups of 64), a QuantSpec names its method and group too, a mapping is a per-layer plan.
Precision = QuantSpec | int | Mapping[str, QuantSpec | int] | None


# How an unquantized precision is shown: the dtype it is held and computed in.
DTYPE_LABELS = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def precision_label(bits: Precision, dtype: str = "bfloat16") -> str:
    """'q4', 'q3:hqq:32', 'mixed 3-8' for a per-layer plan; unquantized, the compute dtype ('bf16', or 'f32'
    on the CPU)."""
    unquantized = DTYPE_LABELS.get(dtype, dtype)
    if bits is None:
        return unquantized
    if isinstance(bits, Mapping):
        values = sorted({as_spec(s).bits for s in bits.values()})
        return unquantized if not values else (f"q{values[0]}" if len(values) == 1
                                               else f"mixed {values[0]}-{values[-1]}")
    return f"q{as_spec(bits)}"


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Component:
    """One component folder of a diffusers-layout repository."""

    role: str  # "transformer", "text_encoder", "text_encoder_2", "vae"
    kind: str  # what it is, for people ("qwen3", "t5-encoder"); the family's modules decide its shape
    subfolder: str  # also the family's component (core/family.py) that builds it
    config: Mapping  # the architecture numbers from the component's config.json
    published_params: float | None = None  # from models.md / the model card, to check the derivation
    quantizable: bool = True  # False: keep in full precision whatever the user asks (quality)
    note: str = ""
    checkpoint_bytes: int = 2  # bytes per weight as stored (bfloat16 for the published checkpoints)
    # Parameters in the download that the engine never builds (a VAE's encoder, a vision tower), counted
    # by the reference implementation.
    download_only_params: int = 0
    family: str = ""  # the registered family whose modules build it (set from its entry)

    def __post_init__(self):
        object.__setattr__(self, "config", _frozen(self.config))


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # short name used on the command line
    name: str
    family: str  # "flux2", "flux1", "qwen-image", "z-image", "qwen-image-2.1", "builtin": how lists group it
    repo: str | None  # Hugging Face repository id
    components: tuple[Component, ...]
    distilled: bool  # step-distilled (few steps, no classifier-free guidance)
    default_steps: int
    default_guidance: float
    guidance: str  # "none" (distilled into the weights), "embedded" (guidance-distilled), "true-cfg"
    negative_prompt: bool
    text_encoder_layers: tuple[int, ...] | None  # hidden states stacked for the transformer (None: last)
    max_sequence_length: int
    licence: str
    gated: bool
    download_gb: float | None  # published size of the repository (None: unknown, see download_estimate)
    precisions: tuple[Precision, ...]  # the sensible choices, best quality first
    runnable: bool  # quantbench's engine can run it today
    shipped: bool = True  # False: declared but not released yet (built-in models)
    default_size: tuple[int, int] = (1024, 1024)
    notes: str = ""
    engine: str = ""  # the registered family that runs it (default: `family`, spelled as its folder)

    def __post_init__(self):
        object.__setattr__(self, "components",
                           tuple(replace(c, family=self.engine_family) for c in self.components))

    @property
    def engine_family(self) -> str:
        return self.engine or self.family.replace("-", "_")

    def component(self, role: str) -> Component | None:
        return next((c for c in self.components if c.role == role), None)

    @property
    def transformer(self) -> Component | None:
        return self.component("transformer")

    @property
    def text_encoders(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.role.startswith("text_encoder"))

    @property
    def vae(self) -> Component | None:
        return self.component("vae")

    @property
    def subfolders(self) -> tuple[str, ...]:
        return tuple(c.subfolder for c in self.components)

    @property
    def true_cfg(self) -> bool:
        return self.guidance == "true-cfg"

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "family": self.family, "repo": self.repo,
            "distilled": self.distilled, "default_steps": self.default_steps,
            "default_guidance": self.default_guidance, "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
            "text_encoder_layers": list(self.text_encoder_layers) if self.text_encoder_layers else None,
            "max_sequence_length": self.max_sequence_length, "licence": self.licence, "gated": self.gated,
            "download_gb": self.download_gb, "precisions": [precision_label(p) for p in self.precisions],
            "runnable": self.runnable, "shipped": self.shipped, "default_size": list(self.default_size),
            "components": [{"role": c.role, "kind": c.kind, "subfolder": c.subfolder,
                            "published_params": c.published_params, "quantizable": c.quantizable}
                           for c in self.components],
            "notes": self.notes,
        }
