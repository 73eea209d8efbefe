"""Weights: each component's parameters and bytes, counted on the engine's own modules.

A component is built by its family's `ComponentSpec.build` from its config (core/family.py), as the engine
loads it: a text encoder up to the last hidden state the pipeline reads, the VAE's decoder only. MLX arrays
are lazy and none is evaluated, so building a full-size model allocates nothing. Its Linear and Embedding
layers are the quantization candidates, with the engine's paths, and the family's own `LayerPolicy` decides
which stay in full precision. A quantized weight costs out*in*(bits + 32/group)/8 bytes (packed weights,
one bf16 scale and one bf16 bias per group: core/quant/cost.py), per layer for a mixed plan; everything else (kept layers, biases, norms, convolutions)
costs the dtype's size per parameter.

What the download holds beyond what the engine builds: the text encoder's later layers and final norm
(built in full to count them), a causal LM's head unless tied to the embedding, and what the catalog
declares for the component (`download_only_params`: a VAE's encoder, a vision tower).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType, SimpleNamespace
from typing import Mapping

import mlx.nn as nn
from mlx.utils import tree_flatten

from ..blocks.decoder_lm import DecoderLM
from ..blocks.vae import decoder_stages
from ..blocks.vae_encoder import VaeEncoder
from ..catalog import CatalogEntry, Component, Precision, precision_label
from ..errors import InvalidRequest
from ..families import family_named
from ..quant import SCALE_BYTES, LayerPolicy, QuantSpec, as_spec, quantized_weight_bytes
from ..tensor_parallel import ROW



@dataclass(frozen=True)
class Layer:
    """A quantization candidate: a Linear (weight out x in) or an Embedding (rows x dim)."""

    path: str
    in_dim: int
    out_dim: int
    bias: bool = False
    embedding: bool = False

    @property
    def weight_size(self) -> int:
        return self.in_dim * self.out_dim

    @property
    def params(self) -> int:
        return self.weight_size + (self.out_dim if self.bias else 0)

    @property
    def block(self) -> str:
        """The repeated block the layer belongs to ('transformer_blocks.3'), or its own path."""
        m = re.match(r"(.*?(?:blocks|layers|block)\.\d+)\.", self.path)
        return m.group(1) if m else self.path


@dataclass(frozen=True)
class Architecture:
    """A component as the engine builds it: its quantization candidates and everything else."""

    layers: tuple[Layer, ...]
    other_params: int  # norms, convolutions, statistics: always full precision
    unused_params: int = 0  # in the download, not loaded (LM head, later layers, vision tower, VAE encoder)
    config: object = None  # the module's own config (sizes the activations), when it has one
    stages: tuple = ()  # a VAE's decoder: (widths coarsest first, mid-block attention)

    @functools.cached_property  # frozen, and asked for thousands of times by the recommendations
    def params(self) -> int:
        return sum(layer.params for layer in self.layers) + self.other_params

    @property
    def download_params(self) -> int:
        return self.params + self.unused_params


def _freeze(value):
    if isinstance(value, (dict, MappingProxyType)):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# Components by a hashable key, so that what is built from them can be cached.
_COMPONENTS: dict[tuple, Component] = {}


def _key(component: Component) -> tuple:
    key = (component.family, component.subfolder, component.role, component.kind, _freeze(component.config),
           component.quantizable, component.checkpoint_bytes, component.download_only_params)
    _COMPONENTS.setdefault(key, component)
    return key


@functools.lru_cache(maxsize=256)
def _built(key: tuple, hidden_states: tuple[int, ...] | None) -> Architecture:
    """Build the component with its family's modules (lazily: nothing is allocated) and read its layers."""
    component = _COMPONENTS[key]
    config = dict(component.config)
    module = family_named(component.family).component(component.subfolder).build(config, hidden_states)
    layers = []
    for path, child in reversed(list(module.named_modules())):  # named_modules() walks backwards
        if isinstance(child, (nn.Linear, nn.Embedding)):
            out_dim, in_dim = child.weight.shape
            layers.append(Layer(path, in_dim, out_dim, "bias" in child, isinstance(child, nn.Embedding)))
    total = sum(array.size for _, array in tree_flatten(module.parameters()))
    other = total - sum(layer.params for layer in layers)
    head = _lm_head(module, config)
    stages = decoder_stages(module) if "decoder" in module else ()
    return Architecture(tuple(layers), other, head, getattr(module, "config", None), stages)


def vae_encoder_params(component: Component) -> int:
    """Parameters of the VAE's encoder (and its quant_conv), which a run loads only to read reference images."""
    return _vae_encoder_params(_key(component))


@functools.lru_cache(maxsize=64)
def _vae_encoder_params(key: tuple) -> int:
    config = dict(_COMPONENTS[key].config)
    module = VaeEncoder.from_config(config, config.get("latent_channels", 32), use_quant_conv=True)  # lazy: no memory
    return sum(array.size for _, array in tree_flatten(module.parameters()))


def _lm_head(module: nn.Module, config: dict) -> int:
    """A causal LM's head (vocab x hidden), in the download unless tied to the token embedding."""
    if not isinstance(module, DecoderLM):
        return 0
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False))
    return 0 if tied else module.config.vocab_size * module.config.hidden_size


def architecture(component: Component, text_layers: tuple[int, ...] | None = None) -> Architecture:
    """The component as the engine loads it (text encoders: up to the last hidden state in `text_layers`);
    `unused_params` is what the download holds besides."""
    return _architecture(_key(component), tuple(text_layers) if text_layers else None)


@functools.lru_cache(maxsize=256)
def _architecture(key: tuple, text_layers: tuple[int, ...] | None) -> Architecture:
    """architecture(), one object per component and layers: its params are summed once, not at every prediction
    (the recommendations pane predicts each catalog model at many sizes and precisions)."""
    loaded = _built(key, text_layers)
    full = _built(key, None) if text_layers else loaded
    unused = full.params - loaded.params + full.unused_params + _COMPONENTS[key].download_only_params
    return replace(loaded, unused_params=unused)


def entry_facts(entry: CatalogEntry) -> dict:
    """The catalog entry with what is derived from its configs: per component the parameters the engine
    loads, the parameters in the repository and the bytes they take to download."""
    facts = entry.to_dict()
    for c, d in zip(entry.components, facts["components"]):
        arch, loaded = architecture(c), architecture(c, entry.text_encoder_layers)
        d.update({"subfolder": c.subfolder, "repo": entry.repo, "params": arch.download_params,
                  "loaded_params": loaded.params, "download_bytes": arch.download_params * c.checkpoint_bytes})
    facts["components_download_bytes"] = sum(d["download_bytes"] for d in facts["components"])
    return facts


# ---------------------------------------------------------------------------------------------
# Layer policies: which layers stay in full precision
# ---------------------------------------------------------------------------------------------

# "all": quantize every Linear and Embedding whose input size is a multiple of the group size, as
# mflux and flux-2-swift-mlx do (nothing kept for quality).
QUANTIZE_ALL = LayerPolicy(keep=(), min_elements=0)
POLICIES = ("engine", "all")


def layer_policy(component: Component, policy: str) -> LayerPolicy:
    """The family's own policy for the component (as its engine applies it), or QUANTIZE_ALL."""
    if policy == "all":
        return QUANTIZE_ALL
    if policy != "engine":
        raise InvalidRequest(f"unknown layer policy '{policy}': choose one of {', '.join(POLICIES)}")
    return family_named(component.family).component(component.subfolder).policy or LayerPolicy()


def _as_module(layer: Layer) -> SimpleNamespace:
    """What LayerPolicy.full_precision_reason reads from a module: its weight's shape and size."""
    shape = (layer.out_dim, layer.in_dim)
    return SimpleNamespace(weight=SimpleNamespace(shape=shape, size=layer.weight_size))


# ---------------------------------------------------------------------------------------------
# Component sizes
# ---------------------------------------------------------------------------------------------

def quantized_layer_bytes(layer: Layer, spec: QuantSpec | int, dtype_bytes: int) -> int:
    """Packed weights + a bf16 scale and bias per group + the (full-precision) bias vector."""
    return quantized_weight_bytes(layer.weight_size, as_spec(spec)) + (layer.out_dim * dtype_bytes if layer.bias else 0)


@dataclass(frozen=True)
class ComponentSize:
    role: str
    kind: str
    bits: Precision
    params: int  # loaded
    download_params: int
    quantized_params: int
    nbytes: int
    full_bytes: int  # the same component in full precision (what an on-the-fly load reads first)
    largest_block_full: int  # what loading the largest repeated block holds besides the final weights: its layers
    # as stored while quantized or cast to the compute dtype (core/memory_model/weights.py _component_size)
    largest_block_final: int  # ... and at `bits`
    kept: dict = field(default_factory=dict)  # reason -> params left in full precision
    cast_bytes: int = 0  # bf16 copies the engine makes of float32 weights before quantizing them
    dense_layers: tuple = ()  # (path, weights) of each quantized Linear: what the dense CPU path dequantizes
    dense_shapes: tuple = ()  # (in, out, bits) of the same layers, as this rank holds them (the dense path's slices)

    def to_dict(self) -> dict:
        return {"role": self.role, "kind": self.kind, "precision": precision_label(self.bits),
                "params": self.params, "quantized_params": self.quantized_params, "bytes": self.nbytes,
                "full_precision_bytes": self.full_bytes, "kept_full_precision": dict(self.kept)}


def component_size(component: Component, bits: Precision, dtype_bytes: int = 2, policy: str = "engine",
                   text_layers: tuple[int, ...] | None = None, ranks: int = 1) -> ComponentSize:
    """Bytes of one component at `bits`: None (full precision at `dtype_bytes` per parameter), a spec (or bits)
    for every layer the policy quantizes, or {layer path: spec} (a mixed plan; layers it omits stay full).
    ranks > 1: what one rank holds when the family's tensor-parallel plan splits it (core/tensor_parallel.py)."""
    if isinstance(bits, Mapping):
        bits = tuple(sorted((str(p), as_spec(s)) for p, s in bits.items())) or None
    elif bits is not None:
        bits = as_spec(bits)
    if policy not in POLICIES:
        raise InvalidRequest(f"unknown layer policy '{policy}': choose one of {', '.join(POLICIES)}")
    return _component_size(_key(component), bits, dtype_bytes, policy, tuple(text_layers) if text_layers else None,
                           ranks)


def _split_rule(component: Component, ranks: int):
    """The family's tensor-parallel plan for this component, when it is split (None: every rank holds it whole)."""
    if ranks <= 1 or component.role != "transformer":
        return None
    return family_named(component.family).tensor_parallel


@functools.lru_cache(maxsize=4096)
def _component_size(key: tuple, bits, dtype_bytes, policy, text_layers, ranks: int = 1) -> ComponentSize:
    component = _COMPONENTS[key]
    split = _split_rule(component, ranks)
    arch = architecture(component, text_layers)
    quantize = bits is not None and component.quantizable and bool(arch.layers)
    rules = layer_policy(component, policy) if quantize else None
    plan = dict(bits) if isinstance(bits, tuple) else None
    nbytes = arch.other_params * dtype_bytes
    full = arch.params * dtype_bytes
    quantized = 0
    dense_layers = []
    dense_shapes = []
    kept: dict[str, int] = {}
    blocks_full: dict[str, int] = {}
    blocks_final: dict[str, int] = {}
    # Streamed loading reads each layer lazily as the checkpoint stores it, then quantizes or casts it: a layer
    # being quantized holds its stored weight and a bfloat16 copy where it is stored otherwise (core/quant rounds
    # to bf16 first), not the compute dtype's copy (on the CPU float32, twice a bf16 checkpoint's: a narrowed
    # Qwen-Image 2.1's text encoder at 8 bits peaked at 145 MiB loading, its embedding table read as bf16, where
    # float32 said 219); a layer cast to the compute dtype holds its stored copy besides (unquantized, that encoder
    # peaked at 340 MiB, its float32 weights and the bf16 table: nothing was counted).
    read_bytes = component.checkpoint_bytes + (SCALE_BYTES if component.checkpoint_bytes != SCALE_BYTES else 0)
    casts = component.checkpoint_bytes != dtype_bytes
    for layer in arch.layers:
        spec = (plan.get(layer.path) if plan is not None else bits) if rules else None
        reason = (rules.full_precision_reason(layer.path, _as_module(layer), spec.group_size) if spec is not None
                  else "not quantized")
        full_layer = layer.params * dtype_bytes
        read_layer = layer.params * component.checkpoint_bytes if casts else 0  # the stored copy, while cast
        if reason is None:
            size = quantized_layer_bytes(layer, spec, dtype_bytes)
            quantized += layer.weight_size
            read_layer = layer.weight_size * read_bytes + (layer.params - layer.weight_size) * component.checkpoint_bytes
        else:
            size = full_layer
            if quantize:
                kept[reason] = kept.get(reason, 0) + layer.params
                if not layer.embedding:  # core/quant cast_full_precision: kept weights stay as stored
                    size += layer.weight_size * (component.checkpoint_bytes - dtype_bytes)
        split_here = split is not None and split.rule_for(layer.path) is not None
        if reason is None and not layer.embedding:
            dense_layers.append((layer.path, layer.weight_size // (ranks if split_here else 1)))
            row = split_here and split.rule_for(layer.path).sharding == ROW  # the input units split
            dense_shapes.append((layer.in_dim // (ranks if row else 1),
                                 layer.out_dim // (ranks if split_here and not row else 1), spec.bits))
        if split_here:  # this rank's slice
            full -= full_layer - full_layer // ranks
            size, full_layer, read_layer = size // ranks, full_layer // ranks, read_layer // ranks
        nbytes += size
        blocks_full[layer.block] = blocks_full.get(layer.block, 0) + read_layer
        blocks_final[layer.block] = blocks_final.get(layer.block, 0) + size
    largest = max(blocks_full, key=blocks_full.get) if blocks_full else None
    cast = quantized * SCALE_BYTES if dtype_bytes != SCALE_BYTES else 0  # core/quant casts to bf16 first
    held = (plan if plan is not None else bits) if quantize else None
    return ComponentSize(component.role, component.kind, held, arch.params,
                         arch.download_params, quantized, nbytes, full,
                         blocks_full.get(largest, 0), blocks_final.get(largest, 0), kept, cast, tuple(dense_layers),
                         tuple(dense_shapes))
