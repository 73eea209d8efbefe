"""Predicted memory of a model at a precision and a resolution, from the catalog's architecture numbers.

Everything here is a pure function of catalog data and a `Plan` (precisions, resolution, how the
text encoder and the VAE are handled, how weights are loaded, which MLX backend runs it).

Weights (exact, checked against the engine and against published tables)
    Each component's Linear/Embedding layers are enumerated from its config, with the paths the
    engine's modules use, and the engine's own `LayerPolicy` decides which stay in full precision.
    A quantized weight costs out*in*(bits + 32/64)/8 bytes (packed weights, one bf16 scale and one
    bf16 bias per group of 64); everything else (kept layers, biases, norms, convolutions) costs the
    dtype's size per parameter. Only what the engine loads is counted: the text encoder's layers up
    to the last hidden state read, the VAE's decoder.

Activations (structural formulas; coefficients measured on MLX, see BackendProfile)
    MLX evaluates lazily and asynchronously: the buffers of the last few operations are alive at
    once, so each phase's working set is a sum over a block's intermediates, linear in its widths.
    - encode: B*L^2*(mask + scores) + B*L*(a*hidden + b*H*Dh + c*KV*Dh + d*intermediate + e);
    - denoise: B*H*L^2 scores (where SDPA materializes them) + k*B*L*inner_dim, L = text + image
      tokens (image tokens = pixels / 16^2), B = 2 for true CFG (prompt and negative in one batch);
    - decode: the VAE decoder's largest stage: max over stages of the upsampling entry
      (u*C_in + v*C_out) * pixels and the resnet chain t*C*pixels at that stage's resolution, and
      the mid-block attention over (H/8 * W/8) latent pixels; tiled decoding runs the same on one
      tile, plus the float32 output image being assembled.

Phases and peaks
    encode:  the text encoder (+ transformer and VAE unless the encoder is loaded alone, "staged")
             + encode activations;
    denoise: transformer + VAE (+ text encoder if kept resident) + prompt features + activations;
    decode:  the same residents + decode activations.
    The generation peak is the largest of the three. Loading peaks, from a bf16 checkpoint:
    "full"     every component in full precision, then quantized copies made before the originals
               are released: sum(full) + sum(quantized) (the worst case of loading bf16 first; with
               float32 compute, plus the bf16 copies the engine quantizes from);
    "lazy"     lazy load, quantize, then one evaluation of everything: every full-precision weight
               read before the first is released, sum(full) + one quantized block (MLX's evaluation
               order puts the measured peak between 70% and 110% of this);
    "streamed" quantized as it is read: sum(final) + one full-precision block. quantbench's engine
               loads this way (it materializes one layer at a time, so this is an upper bound);
    "prequantized" a saved quantized copy: sum(final).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType, SimpleNamespace

from .catalog import CatalogEntry, Component, Precision, precision_label
from .errors import InvalidRequest
from .quantize import GROUP_SIZE, SUPPORTED_BITS, KeepRule, LayerPolicy

GB = 1e9
GiB = 2 ** 30
MiB = 2 ** 20
SCALE_BYTES = 2  # the engine stores group scales and biases in bfloat16 (core/quantize.py)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
PIXELS_PER_TOKEN = 16  # 8x VAE downsampling, then 2x2 patches (FLUX.1, FLUX.2 and Qwen-Image alike)


# ---------------------------------------------------------------------------------------------
# Architectures: the Linear/Embedding layers of each component, and everything else
# ---------------------------------------------------------------------------------------------

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
    layers: tuple[Layer, ...]
    other_params: int  # norms, convolutions, statistics: always full precision
    unused_params: int = 0  # in the download, not loaded (LM head, later layers, vision tower, VAE encoder)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers) + self.other_params

    @property
    def download_params(self) -> int:
        return self.params + self.unused_params


def _linear(path: str, i: int, o: int, bias: bool = False) -> Layer:
    return Layer(path, i, o, bias)


def flux2_transformer(cfg) -> Architecture:
    """Flux2Transformer2DModel, with the engine's module paths (core/families/flux2/transformer.py)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    hd = cfg["attention_head_dim"]
    mlp = int(d * cfg.get("mlp_ratio", 3.0))
    ch = cfg.get("timestep_guidance_channels", 256)
    out = cfg.get("patch_size", 1) ** 2 * (cfg.get("out_channels") or cfg["in_channels"])
    layers = [_linear("time_guidance_embed.timestep_embedder.linear_1", ch, d),
              _linear("time_guidance_embed.timestep_embedder.linear_2", d, d)]
    if cfg.get("guidance_embeds", False):
        layers += [_linear("time_guidance_embed.guidance_embedder.linear_1", ch, d),
                   _linear("time_guidance_embed.guidance_embedder.linear_2", d, d)]
    layers += [_linear("double_stream_modulation_img.linear", d, 6 * d),
               _linear("double_stream_modulation_txt.linear", d, 6 * d),
               _linear("single_stream_modulation.linear", d, 3 * d),
               _linear("x_embedder", cfg["in_channels"], d),
               _linear("context_embedder", cfg["joint_attention_dim"], d)]
    for b in range(cfg["num_layers"]):
        p = f"transformer_blocks.{b}"
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            layers.append(_linear(f"{p}.attn.{name}", d, d))
        layers += [_linear(f"{p}.attn.to_out.0", d, d), _linear(f"{p}.attn.to_add_out", d, d)]
        for ff in ("ff", "ff_context"):
            layers += [_linear(f"{p}.{ff}.linear_in", d, 2 * mlp), _linear(f"{p}.{ff}.linear_out", mlp, d)]
    for b in range(cfg["num_single_layers"]):
        p = f"single_transformer_blocks.{b}"
        layers += [_linear(f"{p}.attn.to_qkv_mlp_proj", d, 3 * d + 2 * mlp),
                   _linear(f"{p}.attn.to_out", d + mlp, d)]
    layers += [_linear("norm_out.linear", d, 2 * d), _linear("proj_out", d, out)]
    norms = cfg["num_layers"] * 4 * hd + cfg["num_single_layers"] * 2 * hd  # per-head RMSNorm weights
    return Architecture(tuple(layers), norms)


def flux1_transformer(cfg) -> Architecture:
    """FluxTransformer2DModel (diffusers paths): biases everywhere, GELU MLP, per-block modulation."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    hd = cfg["attention_head_dim"]
    mlp = int(d * cfg.get("mlp_ratio", 4.0))
    layers = []

    def embedder(prefix: str, i: int):
        layers.extend([_linear(f"{prefix}.linear_1", i, d, True), _linear(f"{prefix}.linear_2", d, d, True)])

    embedder("time_text_embed.timestep_embedder", 256)
    if cfg.get("guidance_embeds", False):
        embedder("time_text_embed.guidance_embedder", 256)
    embedder("time_text_embed.text_embedder", cfg["pooled_projection_dim"])
    layers += [_linear("x_embedder", cfg["in_channels"], d, True),
               _linear("context_embedder", cfg["joint_attention_dim"], d, True)]
    for b in range(cfg["num_layers"]):
        p = f"transformer_blocks.{b}"
        layers += [_linear(f"{p}.norm1.linear", d, 6 * d, True), _linear(f"{p}.norm1_context.linear", d, 6 * d, True)]
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            layers.append(_linear(f"{p}.attn.{name}", d, d, True))
        for ff in ("ff", "ff_context"):
            layers += [_linear(f"{p}.{ff}.net.0.proj", d, mlp, True), _linear(f"{p}.{ff}.net.2", mlp, d, True)]
    for b in range(cfg["num_single_layers"]):
        p = f"single_transformer_blocks.{b}"
        layers += [_linear(f"{p}.norm.linear", d, 3 * d, True), _linear(f"{p}.proj_mlp", d, mlp, True)]
        layers += [_linear(f"{p}.attn.{name}", d, d, True) for name in ("to_q", "to_k", "to_v")]
        layers.append(_linear(f"{p}.proj_out", d + mlp, d, True))
    layers += [_linear("norm_out.linear", d, 2 * d, True), _linear("proj_out", d, cfg["in_channels"], True)]
    norms = cfg["num_layers"] * 4 * hd + cfg["num_single_layers"] * 2 * hd
    return Architecture(tuple(layers), norms)


def qwen_image_transformer(cfg) -> Architecture:
    """QwenImageTransformer2DModel (diffusers paths): 60 dual-stream blocks, biases, GELU MLP."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    hd = cfg["attention_head_dim"]
    mlp = int(d * cfg.get("mlp_ratio", 4.0))
    joint = cfg["joint_attention_dim"]
    out = cfg["patch_size"] ** 2 * cfg["out_channels"]
    layers = [_linear("time_text_embed.timestep_embedder.linear_1", 256, d, True),
              _linear("time_text_embed.timestep_embedder.linear_2", d, d, True),
              _linear("img_in", cfg["in_channels"], d, True), _linear("txt_in", joint, d, True)]
    for b in range(cfg["num_layers"]):
        p = f"transformer_blocks.{b}"
        layers += [_linear(f"{p}.img_mod.1", d, 6 * d, True), _linear(f"{p}.txt_mod.1", d, 6 * d, True)]
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            layers.append(_linear(f"{p}.attn.{name}", d, d, True))
        for mlp_name in ("img_mlp", "txt_mlp"):
            layers += [_linear(f"{p}.{mlp_name}.net.0.proj", d, mlp, True), _linear(f"{p}.{mlp_name}.net.2", mlp, d, True)]
    layers += [_linear("norm_out.linear", d, 2 * d, True), _linear("proj_out", d, out, True)]
    norms = joint + cfg["num_layers"] * 4 * hd  # txt_norm, per-head RMSNorms
    return Architecture(tuple(layers), norms)


def decoder_lm(cfg, needed_layers: int | None) -> Architecture:
    """A decoder-only language model used as a text encoder (Qwen3, Qwen2.5-VL's LM, Mistral).

    Only the first `needed_layers` layers are loaded (all, plus the final norm, when None): the
    engine stops at the last hidden state the pipeline reads, and never loads the LM head.
    """
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    total = cfg["num_hidden_layers"]
    n = total if needed_layers is None else needed_layers
    bias = bool(cfg.get("attention_bias", False))
    qk_norm = 2 * hd if cfg.get("qk_norm", "qwen3" in cfg.get("model_type", "qwen3")) else 0
    layers = [Layer("embed_tokens", h, cfg["vocab_size"], embedding=True)]
    for i in range(n):
        p = f"layers.{i}"
        layers += [_linear(f"{p}.self_attn.q_proj", h, heads * hd, bias), _linear(f"{p}.self_attn.k_proj", h, kv * hd, bias),
                   _linear(f"{p}.self_attn.v_proj", h, kv * hd, bias), _linear(f"{p}.self_attn.o_proj", heads * hd, h),
                   _linear(f"{p}.mlp.gate_proj", h, cfg["intermediate_size"]),
                   _linear(f"{p}.mlp.up_proj", h, cfg["intermediate_size"]),
                   _linear(f"{p}.mlp.down_proj", cfg["intermediate_size"], h)]
    per_layer_norms = 2 * h + qk_norm
    final_norm = h if n == total else 0
    per_layer = (2 * h * heads * hd + 2 * h * kv * hd + (heads + 2 * kv) * hd * bias
                 + 3 * h * cfg["intermediate_size"] + per_layer_norms)
    head = 0 if cfg.get("tie_word_embeddings", False) else h * cfg["vocab_size"]
    unused = (total - n) * per_layer + (h - final_norm if n < total else 0) + head + int(cfg.get("unused_params", 0))
    return Architecture(tuple(layers), n * per_layer_norms + final_norm, unused)


def t5_encoder(cfg) -> Architecture:
    """T5EncoderModel (gated-GELU), all layers and the final norm (FLUX.1 reads the last hidden state)."""
    d, ff, n = cfg["d_model"], cfg["d_ff"], cfg["num_layers"]
    inner = cfg["num_heads"] * cfg["d_kv"]
    layers = [Layer("shared", d, cfg["vocab_size"], embedding=True),
              Layer("encoder.block.0.layer.0.SelfAttention.relative_attention_bias", cfg["num_heads"],
                    cfg["relative_attention_num_buckets"], embedding=True)]
    for b in range(n):
        p = f"encoder.block.{b}.layer"
        layers += [_linear(f"{p}.0.SelfAttention.{x}", d, inner) for x in ("q", "k", "v")]
        layers += [_linear(f"{p}.0.SelfAttention.o", inner, d), _linear(f"{p}.1.DenseReluDense.wi_0", d, ff),
                   _linear(f"{p}.1.DenseReluDense.wi_1", d, ff), _linear(f"{p}.1.DenseReluDense.wo", ff, d)]
    return Architecture(tuple(layers), n * 2 * d + d)


def clip_text(cfg) -> Architecture:
    """CLIPTextModel (FLUX.1 uses its pooled output; no projection)."""
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    layers = [Layer("embeddings.token_embedding", h, cfg["vocab_size"], embedding=True),
              Layer("embeddings.position_embedding", h, cfg["max_position_embeddings"], embedding=True)]
    for b in range(n):
        p = f"encoder.layers.{b}"
        layers += [_linear(f"{p}.self_attn.{x}", h, h, True) for x in ("q_proj", "k_proj", "v_proj", "out_proj")]
        layers += [_linear(f"{p}.mlp.fc1", h, i, True), _linear(f"{p}.mlp.fc2", i, h, True)]
    return Architecture(tuple(layers), n * 4 * h + 2 * h)


def _conv(cin: int, cout: int, k: int = 3) -> int:
    return k * k * cin * cout + cout


def _resnet(cin: int, cout: int) -> int:
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return 2 * cin + _conv(cin, cout) + 2 * cout + _conv(cout, cout) + shortcut


def autoencoder_kl(cfg) -> Architecture:
    """AutoencoderKL / AutoencoderKLFlux2: only the decoder (+ post-quant conv, batch-norm stats) is
    loaded for text-to-image; the encoder (+ quant conv) is in the download only."""
    widths = list(reversed(cfg["block_out_channels"]))
    latent, lpb = cfg["latent_channels"], cfg["layers_per_block"]
    top = widths[0]
    attention = (2 * top + 4 * (top * top + top)) if cfg.get("mid_block_add_attention", True) else 0
    decoder = _conv(latent, top) + 2 * _resnet(top, top) + attention
    for i, w in enumerate(widths):
        cin = widths[max(i - 1, 0)]
        decoder += _resnet(cin, w) + lpb * _resnet(w, w)
        if i != len(widths) - 1:
            decoder += _conv(w, w)
    decoder += 2 * widths[-1] + _conv(widths[-1], 3)
    post = _conv(latent, latent, 1) if cfg.get("use_post_quant_conv", False) else 0
    bn = 2 * cfg.get("batch_norm_channels", 0)
    # The encoder mirrors the decoder with one resnet fewer per block and down-samplers.
    enc_widths = list(cfg["block_out_channels"])
    encoder = _conv(3, enc_widths[0])
    for i, w in enumerate(enc_widths):
        cin = enc_widths[max(i - 1, 0)]
        encoder += _resnet(cin, w) + (lpb - 1) * _resnet(w, w)
        if i != len(enc_widths) - 1:
            encoder += _conv(w, w)
    encoder += 2 * _resnet(enc_widths[-1], enc_widths[-1]) + attention + 2 * enc_widths[-1]
    encoder += _conv(enc_widths[-1], 2 * latent)
    quant = _conv(2 * latent, 2 * latent, 1) if cfg.get("use_quant_conv", False) else 0
    return Architecture((), decoder + post + bn, encoder + quant)


def published_vae(cfg) -> Architecture:
    """A VAE whose counts are taken from its reference implementation (Qwen-Image's)."""
    return Architecture((), cfg["decoder_params"], cfg["total_params"] - cfg["decoder_params"])


def architecture(component: Component, text_layers: tuple[int, ...] | None = None) -> Architecture:
    """The architecture as the engine loads it (text encoders: up to the last hidden state in `text_layers`)."""
    cfg = component.config
    kind = component.kind
    if kind == "flux2-transformer":
        return flux2_transformer(cfg)
    if kind == "flux1-transformer":
        return flux1_transformer(cfg)
    if kind == "qwen-image-transformer":
        return qwen_image_transformer(cfg)
    if kind in ("qwen3", "qwen2.5-vl", "mistral"):
        needed = None
        if text_layers:
            total = cfg["num_hidden_layers"]
            needed = max(k % (total + 1) for k in text_layers)
            needed = None if needed == total else needed
        lm_cfg = {**cfg, "model_type": kind, "qk_norm": kind == "qwen3"}
        return decoder_lm(lm_cfg, needed)
    if kind == "t5-encoder":
        return t5_encoder(cfg)
    if kind == "clip-text":
        return clip_text(cfg)
    if kind in ("flux2-vae", "flux1-vae"):
        return autoencoder_kl(cfg)
    if kind == "qwen-image-vae":
        return published_vae(cfg)
    raise ValueError(f"no architecture for component kind {kind!r}")


CHECKPOINT_BYTES = 2  # every catalog repository ships bf16 safetensors


def entry_facts(entry: CatalogEntry) -> dict:
    """The catalog entry with what is derived from its configs: per component the parameters the engine
    loads, the parameters in the repository and the bytes they take to download."""
    facts = entry.to_dict()
    for c, d in zip(entry.components, facts["components"]):
        arch, loaded = architecture(c), architecture(c, entry.text_encoder_layers)
        d.update({"subfolder": c.subfolder, "repo": entry.repo, "params": arch.download_params,
                  "loaded_params": loaded.params, "download_bytes": arch.download_params * CHECKPOINT_BYTES})
    facts["components_download_bytes"] = sum(d["download_bytes"] for d in facts["components"])
    return facts


# ---------------------------------------------------------------------------------------------
# Layer policies: which layers stay in full precision
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _engine_policies() -> dict[str, LayerPolicy]:
    """Each family's own policy, as its engine applies it (the family's descriptor)."""
    from .families import family_named

    return {"flux2-transformer": family_named("flux2").transformer.policy,
            "flux1-transformer": family_named("flux1").transformer.policy,
            "qwen-image-transformer": family_named("qwen_image").transformer.policy,
            "text": family_named("flux2").component("text_encoder").policy}


# "all": quantize every Linear and Embedding whose input size is a multiple of the group size, as
# mflux and flux-2-swift-mlx do (nothing kept for quality).
QUANTIZE_ALL = LayerPolicy(keep=(), min_elements=0)
POLICIES = ("engine", "all")


def layer_policy(component: Component, policy: str) -> LayerPolicy:
    if policy == "all":
        return QUANTIZE_ALL
    if policy != "engine":
        raise InvalidRequest(f"unknown layer policy '{policy}': choose one of {', '.join(POLICIES)}")
    policies = _engine_policies()
    return policies.get(component.kind, policies["text"])


def _as_module(layer: Layer) -> SimpleNamespace:
    """What LayerPolicy.full_precision_reason reads from a module: its weight's shape and size."""
    shape = (layer.out_dim, layer.in_dim)
    return SimpleNamespace(weight=SimpleNamespace(shape=shape, size=layer.weight_size))


# ---------------------------------------------------------------------------------------------
# Component sizes
# ---------------------------------------------------------------------------------------------

def quantized_layer_bytes(layer: Layer, bits: int, dtype_bytes: int, group_size: int = GROUP_SIZE) -> int:
    """Packed weights + a bf16 scale and bias per group + the (full-precision) bias vector."""
    packed = layer.weight_size * bits // 8
    scales = layer.out_dim * (layer.in_dim // group_size) * 2 * SCALE_BYTES
    return packed + scales + (layer.out_dim * dtype_bytes if layer.bias else 0)


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
    largest_block_full: int  # bytes of the largest repeated block in full precision
    largest_block_final: int  # ... and at `bits`
    kept: dict = field(default_factory=dict)  # reason -> params left in full precision
    cast_bytes: int = 0  # bf16 copies the engine makes of float32 weights before quantizing them

    def to_dict(self) -> dict:
        return {"role": self.role, "kind": self.kind, "precision": precision_label(self.bits),
                "params": self.params, "quantized_params": self.quantized_params, "bytes": self.nbytes,
                "full_precision_bytes": self.full_bytes, "kept_full_precision": dict(self.kept)}


def component_size(component: Component, bits: Precision, dtype_bytes: int = 2, policy: str = "engine",
                   text_layers: tuple[int, ...] | None = None) -> ComponentSize:
    """Bytes of one component at `bits` (None: full precision at `dtype_bytes` per parameter)."""
    if bits is not None and bits not in SUPPORTED_BITS:
        raise InvalidRequest(f"unsupported quantization {bits}: choose one of {', '.join(map(str, SUPPORTED_BITS))}")
    if policy not in POLICIES:
        raise InvalidRequest(f"unknown layer policy '{policy}': choose one of {', '.join(POLICIES)}")
    key = (component.role, component.kind, component.subfolder, _freeze(component.config), component.quantizable,
           component.checkpoint_bytes)
    _COMPONENTS.setdefault(key, component)
    return _component_size(key, bits, dtype_bytes, policy, tuple(text_layers) if text_layers else None)


_COMPONENTS: dict = {}


def _freeze(value):
    if isinstance(value, (dict, MappingProxyType)):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=4096)
def _component_size(key, bits, dtype_bytes, policy, text_layers) -> ComponentSize:
    component = _COMPONENTS[key]
    arch = architecture(component, text_layers)
    quantize = bits is not None and component.quantizable and bool(arch.layers)
    rules = layer_policy(component, policy) if quantize else None
    nbytes = arch.other_params * dtype_bytes
    full = arch.params * dtype_bytes
    quantized = 0
    kept: dict[str, int] = {}
    blocks_full: dict[str, int] = {}
    blocks_final: dict[str, int] = {}
    for layer in arch.layers:
        reason = rules.full_precision_reason(layer.path, _as_module(layer)) if rules else "not quantized"
        full_layer = layer.params * dtype_bytes
        if reason is None:
            size = quantized_layer_bytes(layer, bits, dtype_bytes, rules.group_size)
            quantized += layer.weight_size
        else:
            size = full_layer
            if quantize:
                kept[reason] = kept.get(reason, 0) + layer.params
                if not layer.embedding:  # core/quantize.py cast_full_precision: kept weights stay as stored
                    size += layer.weight_size * (component.checkpoint_bytes - dtype_bytes)
        nbytes += size
        blocks_full[layer.block] = blocks_full.get(layer.block, 0) + full_layer
        blocks_final[layer.block] = blocks_final.get(layer.block, 0) + size
    largest = max(blocks_full, key=blocks_full.get) if blocks_full else None
    cast = quantized * SCALE_BYTES if dtype_bytes != SCALE_BYTES else 0  # core/quantize.py casts to bf16 first
    return ComponentSize(component.role, component.kind, bits if quantize else None, arch.params,
                         arch.download_params, quantized, nbytes, full,
                         blocks_full.get(largest, 0), blocks_final.get(largest, 0), kept, cast)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendProfile:
    """How an MLX backend spends memory on activations.

    The coefficients count activations (elements) alive at a phase's peak, per token and per width
    unit; they were measured with mx.get_peak_memory() on the CPU backend over ranges of widths,
    batch sizes and resolutions (tests/test_memory_model.py re-checks them against the engine).
    The Metal profile differs where its kernels do: fused attention never materializes the scores
    for head sizes 64/80/128, and its convolutions need no im2col buffer; its VAE figure is
    scaled to the one published measurement at scale (see METAL_VAE_SCALE).
    """

    name: str
    scores_materialized: bool  # SDPA builds the (B, H, L, L) scores (float32 on the CPU)
    conv_in_float32: bool  # convolutions compute in float32 whatever the dtype (CPU)
    transformer_per_token: float = 43.1  # x inner_dim, per token of the joint sequence
    te_hidden: float = 10.4  # text encoder, per token: x hidden ...
    te_query: float = 6.4  # ... x heads*head_dim
    te_kv: float = 5.25  # ... x kv_heads*head_dim
    te_intermediate: float = 2.0  # ... x intermediate
    te_const: float = 94.0
    vae_chain: float = 46.0  # resnet chain at a stage: x channels x pixels
    vae_in: float = 30.4  # entering a stage: x upsampled input channels x pixels
    vae_out: float = 16.6  # ... + x output channels x pixels
    vae_attention: float = 10.0  # mid-block attention, besides the scores: x channels x latent pixels
    vae_scale: float = 1.0


# Calibration of the Metal decode: the CPU's structure without the 3x3-conv im2col buffers (10
# inputs' worth per convolution), scaled so that Klein 4B bf16 at 1024x1024 matches the published
# generation peak (flux-2-swift-mlx: 17,846 MB with a 7,407 MB transformer). The other eight cells
# of that table and mflux's report (decode 9.6 GB of a 14 GB peak) are the checks, in the tests.
METAL_VAE_SCALE = 1.475
BACKENDS = {
    "cpu": BackendProfile("cpu", scores_materialized=True, conv_in_float32=True),
    "metal": BackendProfile("metal", scores_materialized=False, conv_in_float32=False,
                            vae_chain=26.0, vae_in=10.4, vae_out=6.6, vae_scale=METAL_VAE_SCALE),
}
# MLX's CUDA backend has fused attention and cuDNN convolutions: use the Metal profile (unchecked).
BACKENDS["cuda"] = replace(BACKENDS["metal"], name="cuda")


def backend_profile(name: str) -> BackendProfile:
    if name not in BACKENDS:
        raise InvalidRequest(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def text_encode_bytes(component: Component, batch: int, seq_len: int, dtype_bytes: int,
                      backend: BackendProfile) -> int:
    """Activations of one text encoder over `batch` prompts of `seq_len` tokens."""
    cfg = component.config
    act = dtype_bytes
    if component.kind == "t5-encoder":
        hidden, inter, heads = cfg["d_model"], cfg["d_ff"], cfg["num_heads"]
        q = kv = heads * cfg["d_kv"]
        # T5 always builds its (1, H, L, L) relative-position bias, whatever the backend.
        square = seq_len * seq_len * (heads * act + batch * (heads * 4 if backend.scores_materialized else 0))
    else:
        hidden = cfg["hidden_size"]
        inter = cfg["intermediate_size"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or hidden // heads
        q = heads * head_dim
        kv = cfg.get("num_key_value_heads", heads) * head_dim
        square = batch * seq_len * seq_len * (act + (heads * 4 if backend.scores_materialized else 0))
    per_token = (backend.te_hidden * hidden + backend.te_query * q + backend.te_kv * kv
                 + backend.te_intermediate * inter + backend.te_const)
    return int(square + batch * seq_len * act * per_token)


def prompt_feature_bytes(entry: CatalogEntry, batch: int, dtype_bytes: int) -> int:
    """The encoded prompt(s) the transformer reads at every step."""
    cfg = entry.transformer.config
    return batch * entry.max_sequence_length * cfg["joint_attention_dim"] * dtype_bytes


def image_tokens(width: int, height: int) -> int:
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


def denoise_bytes(entry: CatalogEntry, width: int, height: int, batch: int, dtype_bytes: int,
                  backend: BackendProfile) -> int:
    """Activations of one transformer call on the joint [text, image] sequence."""
    cfg = entry.transformer.config
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    length = entry.max_sequence_length + image_tokens(width, height)
    act = dtype_bytes
    scores = batch * cfg["num_attention_heads"] * length * length * 4 if backend.scores_materialized else 0
    return int(scores + backend.transformer_per_token * batch * length * inner * act)


def _decode_tile_bytes(cfg, width: int, height: int, dtype_bytes: int, backend: BackendProfile) -> int:
    widths = list(reversed(cfg["block_out_channels"]))  # coarsest first
    act = 4 if backend.conv_in_float32 else dtype_bytes
    pixels = width * height
    stages = len(widths)
    per_pixel = 0.0
    for i, w in enumerate(widths):
        fraction = 4.0 ** -(stages - 1 - i)  # block i runs at 1/2^(stages-1-i) of the full resolution
        per_pixel = max(per_pixel, backend.vae_chain * w * fraction)
        if i > 0:
            per_pixel = max(per_pixel, (backend.vae_in * widths[i - 1] + backend.vae_out * w) * fraction)
    stage_bytes = per_pixel * pixels * act * backend.vae_scale
    attention = 0.0
    if cfg.get("mid_block_add_attention", True):
        tokens = pixels / 64
        score_bytes = 4 if backend.scores_materialized else 2 * dtype_bytes  # head size 512: never fused
        attention = tokens * tokens * score_bytes + backend.vae_attention * widths[0] * tokens * act
    return int(max(stage_bytes, attention))


def decode_bytes(entry: CatalogEntry, width: int, height: int, dtype_bytes: int, backend: BackendProfile,
                 tile: int | None = None) -> int:
    """VAE decode activations: whole, or tile by tile (`tile` pixels square) into a float32 image."""
    cfg = entry.vae.config
    if tile is None or (width <= tile and height <= tile):
        return _decode_tile_bytes(cfg, width, height, dtype_bytes, backend)
    output = width * height * 3 * 4 * 2  # the assembled image and its blending weights
    return _decode_tile_bytes(cfg, min(tile, width), min(tile, height), dtype_bytes, backend) + output


# ---------------------------------------------------------------------------------------------
# Plans and predictions
# ---------------------------------------------------------------------------------------------

TEXT_ENCODER_MODES = ("resident", "evict", "staged")
LOAD_MODES = ("full", "lazy", "streamed", "prequantized")


@dataclass(frozen=True)
class Plan:
    """How a model is run: precisions, size, and the memory-saving measures taken."""

    transformer_bits: Precision = None
    text_encoder_bits: Precision = None
    width: int = 1024
    height: int = 1024
    text_encoder: str = "resident"  # kept loaded | freed after encoding | loaded alone, freed before the transformer
    vae_tiling: bool = False
    tile_size: int = 512
    load: str = "streamed"  # how weights reach memory (see the module docstring)
    dtype: str = "bfloat16"
    backend: str = "metal"
    policy: str = "engine"
    batch: int | None = None  # None: 2 for true CFG (prompt and negative batched), else 1

    def __post_init__(self):
        if self.text_encoder not in TEXT_ENCODER_MODES:
            raise InvalidRequest(f"text encoder mode '{self.text_encoder}': choose {', '.join(TEXT_ENCODER_MODES)}")
        if self.load not in LOAD_MODES:
            raise InvalidRequest(f"load mode '{self.load}': choose one of {', '.join(LOAD_MODES)}")
        if self.dtype not in DTYPE_BYTES:
            raise InvalidRequest(f"dtype '{self.dtype}': choose one of {', '.join(DTYPE_BYTES)}")
        for name, value in (("width", self.width), ("height", self.height)):
            if value % PIXELS_PER_TOKEN or not 16 <= value <= 8192:
                raise InvalidRequest(f"{name} {value}: use a multiple of 16 between 16 and 8192")
        if self.tile_size % PIXELS_PER_TOKEN or self.tile_size < 64:
            raise InvalidRequest(f"tile size {self.tile_size}: use a multiple of 16, at least 64")

    def describe(self) -> str:
        parts = [f"transformer {precision_label(self.transformer_bits)}"]
        if self.text_encoder_bits is not None:
            parts.append(f"text encoder {precision_label(self.text_encoder_bits)}")
        if self.text_encoder != "resident":
            parts.append({"evict": "text encoder freed after encoding",
                          "staged": "text encoder loaded alone"}[self.text_encoder])
        if self.vae_tiling:
            parts.append(f"tiled decode ({self.tile_size} px)")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"transformer": precision_label(self.transformer_bits),
                "text_encoder": precision_label(self.text_encoder_bits), "width": self.width,
                "height": self.height, "text_encoder_mode": self.text_encoder, "vae_tiling": self.vae_tiling,
                "tile_size": self.tile_size, "load": self.load, "dtype": self.dtype, "backend": self.backend,
                "policy": self.policy}


@dataclass(frozen=True)
class Prediction:
    entry_id: str
    plan: Plan
    components: tuple[ComponentSize, ...]
    encode_activations: int
    denoise_activations: int
    decode_activations: int
    prompt_features: int
    phases: dict  # phase -> peak bytes
    load_peaks: dict  # load mode -> peak bytes

    @property
    def weights(self) -> int:
        return sum(c.nbytes for c in self.components)

    def component_bytes(self, role_prefix: str) -> int:
        return sum(c.nbytes for c in self.components if c.role.startswith(role_prefix))

    @property
    def generation_peak(self) -> int:
        return max(self.phases.values())

    @property
    def bottleneck(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def load_peak(self) -> int:
        return self.load_peaks[self.plan.load]

    @property
    def peak(self) -> int:
        """The most this run holds at once, loading included."""
        return max(self.generation_peak, self.load_peak)

    def to_dict(self) -> dict:
        return {"model": self.entry_id, "plan": self.plan.to_dict(),
                "components": [c.to_dict() for c in self.components], "weights_bytes": self.weights,
                "activations": {"encode": self.encode_activations, "denoise": self.denoise_activations,
                                "decode": self.decode_activations, "prompt_features": self.prompt_features},
                "phases": dict(self.phases), "generation_peak": self.generation_peak,
                "bottleneck": self.bottleneck, "load_peaks": dict(self.load_peaks), "load_peak": self.load_peak,
                "peak": self.peak}


def default_dtype(backend: str) -> str:
    """The engine's default compute dtype: bfloat16 on a GPU, float32 on the CPU (core/generation.py)."""
    return "float32" if backend == "cpu" else "bfloat16"


def predict(entry: CatalogEntry, plan: Plan | None = None) -> Prediction:
    """Memory of running `entry` with `plan`: weights, activations, and the peak of every phase."""
    if not entry.components:
        raise InvalidRequest(f"{entry.id}: not shipped yet, nothing to predict")
    plan = plan or Plan()
    backend = backend_profile(plan.backend)
    dtype_bytes = DTYPE_BYTES[plan.dtype]
    batch = plan.batch or (2 if entry.true_cfg else 1)
    sizes = []
    for c in entry.components:
        bits = plan.transformer_bits if c.role == "transformer" else (
            plan.text_encoder_bits if c.role.startswith("text_encoder") else None)
        sizes.append(component_size(c, bits, dtype_bytes, plan.policy, entry.text_encoder_layers))
    sizes = tuple(sizes)
    te = sum(s.nbytes for s in sizes if s.role.startswith("text_encoder"))
    rest = sum(s.nbytes for s in sizes if not s.role.startswith("text_encoder"))
    encode = sum(text_encode_bytes(c, batch, _seq_len(entry, c), dtype_bytes, backend) for c in entry.text_encoders)
    features = prompt_feature_bytes(entry, batch, dtype_bytes)
    denoise = denoise_bytes(entry, plan.width, plan.height, batch, dtype_bytes, backend)
    decode = decode_bytes(entry, plan.width, plan.height, dtype_bytes, backend,
                          plan.tile_size if plan.vae_tiling else None)
    resident_te = te if plan.text_encoder == "resident" else 0
    phases = {
        "encode": te + (0 if plan.text_encoder == "staged" else rest) + encode + features,
        "denoise": rest + resident_te + features + denoise,
        "decode": rest + resident_te + features + decode,
    }
    return Prediction(entry.id, plan, sizes, encode, denoise, decode, features, phases,
                      _load_peaks(sizes, plan.text_encoder == "staged"))


def _seq_len(entry: CatalogEntry, component: Component) -> int:
    if component.kind == "clip-text":
        return component.config["max_position_embeddings"]
    return entry.max_sequence_length


def _load_peaks(sizes: tuple[ComponentSize, ...], staged: bool) -> dict:
    def group_peaks(group):
        final = sum(s.nbytes for s in group)
        quantized = [s for s in group if s.bits is not None]
        largest_full = max((s.largest_block_full for s in quantized), default=0)
        largest_final = max((s.largest_block_final for s in quantized), default=0)
        full = sum(s.full_bytes for s in group)
        return {"full": full + sum(s.nbytes + s.cast_bytes for s in quantized),
                "lazy": full + largest_final,
                "streamed": final + largest_full,
                "prequantized": final}

    groups = ([[s for s in sizes if s.role.startswith("text_encoder")],
               [s for s in sizes if not s.role.startswith("text_encoder")]] if staged else [list(sizes)])
    peaks = [group_peaks(g) for g in groups if g]
    return {mode: max(p[mode] for p in peaks) for mode in LOAD_MODES}
