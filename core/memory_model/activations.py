"""Activations: the working set of each phase, from structural formulas with coefficients measured on MLX.

MLX evaluates lazily and asynchronously: the buffers of the last few operations are alive at once, so
each phase's working set is a sum over a block's intermediates, linear in its widths. The widths come
from the engine's own modules (weights.architecture: the module's config, a VAE decoder's stages).
- encode: B*L^2*(mask + scores) + B*L*(a*hidden + b*H*Dh + c*KV*Dh + d*intermediate + e);
- denoise: B*H*L^2 scores (where SDPA materializes them) + k*B*L*inner_dim, L = text + image
  tokens (image tokens = pixels / 16^2), B = 2 for true CFG (prompt and negative in one batch); k is smaller
  where the CPU's tile kernel runs the quantized layers (each evaluates its input: one block's arrays at a time);
- decode: the VAE decoder's largest stage: max over stages of the upsampling entry
  (u*C_in + v*C_out) * pixels and the resnet chain t*C*pixels at that stage's resolution, and
  the mid-block attention over the latent pixels (H/8 * W/8 for an 8x VAE); tiled decoding runs the same on one
  tile, plus the float32 output image being assembled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..blocks.attention import cpu_scores_held
from ..catalog import CatalogEntry, Component
from ..errors import InvalidRequest
from ..families import family_named
from ..family import PromptTokens
from .weights import architecture, vae_encoder_params

PIXELS_PER_TOKEN = 16  # 8x VAE downsampling, then 2x2 patches (every family's real models)


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
    scores_materialized: bool  # SDPA builds (B, H, L, L) scores (float32; on the CPU a group of heads at a time)
    conv_in_float32: bool  # convolutions compute in float32 whatever the dtype (CPU)
    transformer_per_token: float = 43.1  # x inner_dim, per token of the joint sequence (FLUX.2's; a family may say)
    te_hidden: float = 10.4  # text encoder, per token: x hidden ...
    te_query: float = 6.4  # ... x heads*head_dim
    te_kv: float = 5.25  # ... x kv_heads*head_dim
    te_intermediate: float = 2.0  # ... x intermediate
    te_const: float = 94.0
    # The CPU's VAE figures are those of the decoder's CPU path (blocks/vae_ops.py: a convolution as a
    # product per tap, no im2col buffer), refitted when it came: about a quarter of MLX's own conv2d's.
    vae_chain: float = 10.4  # resnet chain at a stage: x channels x pixels
    vae_in: float = 7.4  # entering a stage: x upsampled input channels x pixels
    vae_out: float = 3.1  # ... + x output channels x pixels
    # ... + x upsampled input channels x pixels where the block upsampling into the stage adds its input as a
    # parameter-free shortcut (a gather of its channels, then their 2x2 interleave: Qwen-Image 2.1's decoder).
    # Measured on its decoder at base widths 8-32, 128-384 px: 2.2-2.7 (the decode was 19-23% under without it).
    vae_shortcut: float = 2.5
    # ... in place of vae_in where the block upsampling into the stage halves the channels (a nearest 2x of its
    # input, then a convolution to half of them: Qwen-Image's decoder), x the upsampled input channels. Measured on
    # its decoder at width 1/16, 128 and 256 px: 5.5 (counted as vae_in, 7.4, its decode was 20-25% over). None:
    # vae_in (Metal's is not measured).
    vae_halving_in: float | None = 5.5
    vae_attention: float = 10.0  # mid-block attention, besides the scores: x channels x latent pixels
    vae_scale: float = 1.0


# Calibration of the Metal decode: MLX's own convolutions' structure without their 3x3-conv im2col
# buffers (10 inputs' worth per convolution), scaled so that Klein 4B bf16 at 1024x1024 matches the published
# generation peak (flux-2-swift-mlx: 17,846 MB with a 7,407 MB transformer). The other eight cells
# of that table and mflux's report (decode 9.6 GB of a 14 GB peak) are the checks, in the tests.
METAL_VAE_SCALE = 1.475
BACKENDS = {
    "cpu": BackendProfile("cpu", scores_materialized=True, conv_in_float32=True),
    "metal": BackendProfile("metal", scores_materialized=False, conv_in_float32=False,
                            vae_chain=26.0, vae_in=10.4, vae_out=6.6, vae_scale=METAL_VAE_SCALE, vae_halving_in=None),
}
# MLX's CUDA backend has fused attention and cuDNN convolutions: use the Metal profile (unchecked).
BACKENDS["cuda"] = replace(BACKENDS["metal"], name="cuda")


def backend_profile(name: str) -> BackendProfile:
    if name not in BACKENDS:
        raise InvalidRequest(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderShape:
    """The widths of a text encoder, read from its engine config (decoder LMs, T5 and CLIP name them apart)."""

    hidden: int
    intermediate: int
    heads: int
    query: int  # heads x head_dim
    kv: int  # key/value heads x head_dim
    relative_bias: bool  # builds an (H, L, L) position bias on every call (T5)
    positions: int | None  # a learned position table fixes the sequence length (CLIP: 77 tokens)


def encoder_shape(config) -> EncoderShape:
    def first(*names, default=None):
        return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)

    hidden = first("hidden_size", "d_model")
    heads = first("num_attention_heads", "num_heads")
    head_dim = first("head_dim", "d_kv", default=hidden // heads)
    return EncoderShape(hidden, first("intermediate_size", "d_ff"), heads, heads * head_dim,
                        first("num_key_value_heads", default=heads) * head_dim,
                        hasattr(config, "relative_attention_num_buckets"),
                        first("max_position_embeddings"))


def text_sequence_length(entry: CatalogEntry, component: Component, prompt: PromptTokens | None = None) -> int:
    """Tokens the text encoder runs over: a learned position table's (CLIP), else the prompt's own when it is
    known and its family runs it at its own length, else the model's longest prompt (what a padding family runs)."""
    positions = encoder_shape(architecture(component, entry.text_encoder_layers).config).positions
    return positions or (prompt.encoder if prompt is not None else entry.max_sequence_length)


def text_encode_bytes(component: Component, batch: int, seq_len: int, dtype_bytes: int,
                      backend: BackendProfile) -> int:
    """Activations of one text encoder over `batch` prompts of `seq_len` tokens."""
    shape = encoder_shape(architecture(component).config)
    act = dtype_bytes
    scores = shape.heads * 4 if backend.scores_materialized else 0
    if shape.relative_bias:  # the (1, H, L, L) relative-position bias is built whatever the backend
        square = seq_len * seq_len * (shape.heads * act + batch * scores)
    else:
        square = batch * seq_len * seq_len * (act + scores)
    per_token = (backend.te_hidden * shape.hidden + backend.te_query * shape.query + backend.te_kv * shape.kv
                 + backend.te_intermediate * shape.intermediate + backend.te_const)
    return int(square + batch * seq_len * act * per_token)


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------

def _transformer_config(entry: CatalogEntry):
    """The transformer's engine config: it names num_attention_heads, attention_head_dim and joint_attention_dim."""
    return architecture(entry.transformer).config


def text_tokens(entry: CatalogEntry, prompt: PromptTokens | None = None) -> int:
    """Prompt tokens in the transformer's sequence: the prompt's own when known (PromptTokens), else the longest."""
    return prompt.transformer if prompt is not None else entry.max_sequence_length


def prompt_feature_bytes(entry: CatalogEntry, batch: int, dtype_bytes: int, prompt: PromptTokens | None = None) -> int:
    """The encoded prompt(s) the transformer reads at every step."""
    return batch * text_tokens(entry, prompt) * _transformer_config(entry).joint_attention_dim * dtype_bytes


def image_tokens(width: int, height: int) -> int:
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


def denoise_bytes(entry: CatalogEntry, width: int, height: int, batch: int, dtype_bytes: int,
                  backend: BackendProfile, prompt: PromptTokens | None = None, layerwise: bool = False,
                  elementwise: bool = False, reference_tokens: int = 0) -> int:
    """Activations of one transformer call on the joint [text, image] sequence; `layerwise`: run a layer at a time
    (the CPU's tile kernel evaluates each quantized layer's input); `elementwise`: the CPU's elementwise kernel runs
    the blocks' activations and norms; see transformer_per_token. A family whose steps run the image tokens alone
    against the prompt's keys and values, computed once per generation (Family.denoise_prompt_cache), holds those
    (two arrays a block) and the activations of the image tokens, or of the prompt's while its pass computes them
    (a long prompt at a small size): 466 prompt tokens at 128x128 (64 image tokens) measured 10% over the step's.
    `reference_tokens`: reference images' tokens, which run through every block beside the image's."""
    cfg = _transformer_config(entry)
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    text, image = text_tokens(entry, prompt), image_tokens(width, height) + reference_tokens
    cached = family_named(entry.transformer.family).denoise_prompt_cache
    cache = 2 * cfg.num_layers * batch * text * inner * dtype_bytes if cached else 0
    heads = cfg.num_attention_heads
    per_token = transformer_per_token(entry, backend, layerwise, elementwise)
    if not cached:
        scores = cpu_scores_held(batch, heads, text + image, text + image) * 4 if backend.scores_materialized else 0
        return int(scores + per_token * batch * (text + image) * inner * dtype_bytes)
    # the prompt's pass (one prompt at a time, its tokens through every block as the image's are in a step), or a
    # step's, whichever holds more, beside the cache
    scores = max(cpu_scores_held(batch, heads, image, text + image), cpu_scores_held(1, heads, text, text)) * 4 \
        if backend.scores_materialized else 0
    return int(scores + cache + per_token * max(batch * image, text) * inner * dtype_bytes)


def transformer_per_token(entry: CatalogEntry, backend: BackendProfile, layerwise: bool = False,
                          elementwise: bool = False) -> float:
    """A denoising step's activations per token and inner width: the family's own figure where its blocks make
    fewer intermediates than FLUX.2's (Family.denoise_per_token; structural, so every backend's), else the
    backend's. `layerwise` (the tile kernel runs the quantized layers, each evaluating its input): the step holds
    the arrays of one block at a time, with the residual stream, the family's Family.denoise_layerwise_per_token
    where it has one (FLUX.2's fused single block 28 against 43.1, Qwen-Image 19 against 26, Z-Image 23.5 against
    27), else the figure above. `elementwise` (the CPU's elementwise kernel runs the blocks' activations, norms and
    rotary embedding, quantized or not): the family's Family.denoise_kernel_per_token where it has one (FLUX.2 19.1,
    Qwen-Image 12.5, Z-Image 16.7, FLUX.1 16.3, Qwen-Image 2.1 13.5), first."""
    family = family_named(entry.transformer.family)
    if elementwise and family.denoise_kernel_per_token is not None:
        return family.denoise_kernel_per_token
    if layerwise and family.denoise_layerwise_per_token is not None:
        return family.denoise_layerwise_per_token
    own = family.denoise_per_token
    return backend.transformer_per_token if own is None else own


# ---------------------------------------------------------------------------------------------
# VAE decode
# ---------------------------------------------------------------------------------------------

def decode_tile_bytes(stages: tuple[tuple[int, ...], bool, bool, bool], width: int, height: int, dtype_bytes: int,
                      backend: BackendProfile) -> int:
    """One decode of a width x height tile; `stages` as blocks.vae.decoder_stages gives them."""
    widths, _, shortcut, halving = stages  # widths coarsest (widest) first
    entering_in = backend.vae_halving_in if halving and backend.vae_halving_in is not None else backend.vae_in
    entering = entering_in + (backend.vae_shortcut if shortcut else 0.0)
    act = 4 if backend.conv_in_float32 else dtype_bytes
    pixels = width * height
    count = len(widths)
    per_pixel = 0.0
    for i, w in enumerate(widths):
        fraction = 4.0 ** -(count - 1 - i)  # block i runs at 1/2^(count-1-i) of the full resolution
        per_pixel = max(per_pixel, backend.vae_chain * w * fraction)
        if i > 0:
            per_pixel = max(per_pixel, (entering * widths[i - 1] + backend.vae_out * w) * fraction)
    stage_bytes = per_pixel * pixels * act * backend.vae_scale
    return int(max(stage_bytes, mid_attention_bytes(stages, pixels, dtype_bytes, backend)))


def mid_attention_bytes(stages: tuple[tuple[int, ...], bool, bool, bool], pixels: int, dtype_bytes: int,
                        backend: BackendProfile) -> float:
    """A VAE's mid-block attention (the encoder's and the decoder's alike) over an image of `pixels`: it runs at the
    latent resolution, one head of the widest width; 0 where the VAE has none."""
    widths, mid_attention = stages[0], stages[1]
    if not mid_attention:
        return 0.0
    act = 4 if backend.conv_in_float32 else dtype_bytes
    tokens = pixels / 4 ** (len(widths) - 1)
    score_bytes = 4 if backend.scores_materialized else 2 * dtype_bytes  # head size 512: never fused
    return tokens * tokens * score_bytes + backend.vae_attention * widths[0] * tokens * act


def decode_bytes(entry: CatalogEntry, width: int, height: int, dtype_bytes: int, backend: BackendProfile,
                 tile: int | None = None) -> int:
    """VAE decode activations: whole, or tile by tile (`tile` pixels square) into a float32 image."""
    stages = architecture(entry.vae).stages
    if tile is None or (width <= tile and height <= tile):
        return decode_tile_bytes(stages, width, height, dtype_bytes, backend)
    output = width * height * 3 * 4 * 2  # the assembled image and its blending weights
    return decode_tile_bytes(stages, min(tile, width), min(tile, height), dtype_bytes, backend) + output


# A VAE encoder's peak, in arrays the size of its first (full-resolution) stage's activations: the stage's resnets
# and its stride-2 downsampler, whose convolution unfolds its input (MLX's own kernel). Measured 12.5-12.8 on the CPU
# (benchmarks/reference_images.py), at FLUX.2's widths (128, 256, 512, 512) and narrowed ones (16 to 32), 128-512 px.
ENCODER_ARRAYS = 13.0


def encode_image_bytes(stages: tuple[tuple[int, ...], bool, bool, bool], width: int, height: int, dtype_bytes: int,
                       backend: BackendProfile) -> int:
    """One VAE encode of a width x height image; `stages` as blocks.vae.decoder_stages gives them (the encoder runs
    the decoder's widths the other way: the narrowest at full resolution). Its mid block's attention runs at the
    latent resolution, as the decoder's."""
    act = 4 if backend.conv_in_float32 else dtype_bytes
    pixels = width * height
    finest_first = tuple(reversed(stages[0]))
    per_pixel = max(w * 4.0 ** -i for i, w in enumerate(finest_first))
    return int(max(ENCODER_ARRAYS * per_pixel * pixels * act, mid_attention_bytes(stages, pixels, dtype_bytes, backend)))


def reference_encode_bytes(entry: CatalogEntry, sizes: tuple[tuple[int, int], ...], dtype_bytes: int,
                           backend: BackendProfile) -> int:
    """The VAE encoder's weights and its activations for the largest reference image (they are encoded one at a
    time); 0 without references."""
    if not sizes:
        return 0
    stages = architecture(entry.vae).stages
    activations = max(encode_image_bytes(stages, w, h, dtype_bytes, backend) for w, h in sizes)
    return vae_encoder_params(entry.vae) * dtype_bytes + activations
