"""The FLUX.2 VAE decoder (diffusers' `AutoencoderKLFlux2`, decoder half) in MLX.

Activations are NHWC throughout. Parameter names equal the diffusers checkpoint keys, so the
checkpoint loads through the identity mapping (plus the conv-weight transpose).

The batch-norm running statistics live here too: the transformer works on latents that are
2x2-patchified (4 * latent_channels channels) and normalized by them; the pipeline de-normalizes
and unpatchifies with `latent_stats()` before calling `decode`.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..checkpoint import LoadReport, Rule, conv_weight, load_weights, open_component
from ..errors import CheckpointError

# diffusers builds every decoder norm with this eps, whatever the config says.
_NORM_EPS = 1e-6

_ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "mish": nn.mish}


def group_norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=_NORM_EPS, pytorch_compatible=True)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def upsample_nearest_2x(x: mx.array) -> mx.array:
    b, h, w, c = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, h * 2, w * 2, c)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, activation):
        super().__init__()
        self.activation = activation
        self.norm1 = group_norm(groups, in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = group_norm(groups, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(self.activation(self.norm1(x)))
        h = self.conv2(self.activation(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(b, 1, h * w, c)  # (batch, heads=1, seq, dim)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=c ** -0.5)
        return x + self.to_out[0](out).reshape(b, h, w, c)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, activation, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock(channels, channels, groups, activation) for _ in range(2)]
        self.attentions = [SpatialSelfAttention(channels, groups)] if add_attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        if self.attentions:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsampler(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(upsample_nearest_2x(x))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, activation,
                 add_upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, activation)
                        for i in range(num_resnets)]
        if add_upsample:
            self.upsamplers = [Upsampler(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: list[int],
                 num_up_blocks: int, layers_per_block: int, groups: int, activation, mid_block_attention: bool):
        super().__init__()
        self.activation = activation
        widths = list(reversed(block_out_channels))  # up blocks run from the widest to the narrowest
        self.conv_in = conv3x3(latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0], groups, activation, mid_block_attention)
        self.up_blocks = []
        for i in range(num_up_blocks):
            in_channels = widths[max(i - 1, 0)]
            self.up_blocks.append(UpBlock(in_channels, widths[i], layers_per_block + 1, groups, activation,
                                          add_upsample=i != len(block_out_channels) - 1))
        self.conv_norm_out = group_norm(groups, block_out_channels[0])
        self.conv_out = conv3x3(block_out_channels[0], out_channels)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.activation(self.conv_norm_out(x)))


class BatchNormStats(nn.Module):
    """The running statistics of diffusers' affine-free BatchNorm2d over packed latent channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))


class Flux2VAE(nn.Module):
    def __init__(self, *, latent_channels: int = 32, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (128, 256, 512, 512), num_up_blocks: int = 4,
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 use_post_quant_conv: bool = True, mid_block_add_attention: bool = True,
                 batch_norm_eps: float = 1e-4, patch_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.latent_channels = latent_channels
        self.batch_norm_eps = batch_norm_eps
        # Pixels per latent pixel, as diffusers' pipelines compute it.
        self.scale_factor = 2 ** (len(block_out_channels) - 1)
        self.decoder = Decoder(latent_channels, out_channels, list(block_out_channels), num_up_blocks,
                               layers_per_block, norm_num_groups, _ACTIVATIONS[act_fn], mid_block_add_attention)
        if use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, kernel_size=1)
        self.bn = BatchNormStats(math.prod(patch_size) * latent_channels)

    @classmethod
    def from_config(cls, config: dict) -> Flux2VAE:
        up_block_types = config.get("up_block_types", ["UpDecoderBlock2D"] * 4)
        unsupported = sorted(set(up_block_types) - {"UpDecoderBlock2D"})
        if unsupported:
            raise CheckpointError(f"VAE config: unsupported up_block_types {unsupported}")
        act_fn = config.get("act_fn", "silu")
        if act_fn not in _ACTIVATIONS:
            raise CheckpointError(f"VAE config: unsupported act_fn {act_fn!r}")
        block_out_channels = (config.get("decoder_block_out_channels")
                              or config.get("block_out_channels", [128, 256, 512, 512]))
        return cls(
            latent_channels=config.get("latent_channels", 32),
            out_channels=config.get("out_channels", 3),
            block_out_channels=block_out_channels,
            num_up_blocks=len(up_block_types),
            layers_per_block=config.get("layers_per_block", 2),
            norm_num_groups=config.get("norm_num_groups", 32),
            act_fn=act_fn,
            use_post_quant_conv=config.get("use_post_quant_conv", True),
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            batch_norm_eps=config.get("batch_norm_eps", 1e-4),
            patch_size=tuple(config.get("patch_size", (2, 2))),
        )

    def latent_stats(self) -> tuple[mx.array, mx.array]:
        """Per packed channel (mean, std) that normalize the transformer's latents."""
        return self.bn.running_mean, mx.sqrt(self.bn.running_var + self.batch_norm_eps)

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/8, W/8, latent_channels) de-normalized latent -> (B, H, W, 3) image in about [-1, 1]."""
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def load_vae(folder: Path | str, dtype: mx.Dtype = mx.float32) -> tuple[Flux2VAE, LoadReport]:
    component = open_component(folder)
    try:
        vae = Flux2VAE.from_config(component.config)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. channels not divisible by norm_num_groups
        raise CheckpointError(f"{component.folder}: config.json does not describe a valid VAE ({exc})") from None
    report = load_weights(vae, component, VAE_RULES, "vae", dtype=dtype)
    return vae, report


_ENCODER_ONLY = "encoder: not needed for text-to-image"

VAE_RULES = [
    Rule(r"(?:encoder|quant_conv)\..*", None, reason=_ENCODER_ONLY),
    Rule(r"bn\.num_batches_tracked", None, reason="batch-norm counter"),
    # conv_weight leaves non-4-D tensors (norm weights) untouched, so matching every `.weight` is safe.
    Rule(r"(.*\.weight)", r"\1", transform=conv_weight),
    Rule(r"(.*)", r"\1"),
]


def decode_tiled(vae: Flux2VAE, z: mx.array, tile_pixels: int, overlap: float = 0.25) -> np.ndarray:
    """Decode (B, h, w, C) latents in overlapping tiles; returns the image (B, H, W, 3) as float32 NumPy.

    Each tile is decoded and evaluated on its own, so the decode peak is one tile's activations
    instead of the whole image's. Neighbouring tiles overlap by `overlap` of a tile and are blended
    linearly across the overlap, which hides the seams that per-tile group-norm statistics leave.
    """
    scale = vae.scale_factor
    tile = max(1, tile_pixels // scale)
    _, h, w, _ = z.shape
    if h <= tile and w <= tile:
        return np.array(vae.decode(z).astype(mx.float32))
    stride = max(1, int(tile * (1 - overlap)))
    blend = (tile - stride) * scale
    keep = stride * scale
    rows = []
    for top in range(0, h, stride):
        row = []
        for left in range(0, w, stride):
            decoded = vae.decode(z[:, top:top + tile, left:left + tile]).astype(mx.float32)
            mx.eval(decoded)
            row.append(np.array(decoded))
        rows.append(row)
    out_rows = []
    for i, row in enumerate(rows):
        pieces = []
        for j, piece in enumerate(row):
            if i > 0:
                piece = _blend(rows[i - 1][j], piece, blend, axis=1)
            if j > 0:
                piece = _blend(row[j - 1], piece, blend, axis=2)
            pieces.append(piece[:, :keep, :keep])
        out_rows.append(np.concatenate(pieces, axis=2))
    return np.concatenate(out_rows, axis=1)[:, : h * scale, : w * scale]


def _blend(before: np.ndarray, after: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """Fade from the end of `before` into the start of `after` over `extent` pixels along `axis`."""
    extent = min(extent, before.shape[axis], after.shape[axis])
    if extent <= 0:
        return after
    after = after.copy()
    weights = (np.arange(extent, dtype=np.float32) / extent).reshape([-1 if a == axis else 1 for a in range(4)])
    tail = np.take(before, range(before.shape[axis] - extent, before.shape[axis]), axis=axis)
    head = np.take(after, range(extent), axis=axis)
    index = [slice(None)] * 4
    index[axis] = slice(0, extent)
    after[tuple(index)] = tail * (1 - weights) + head * weights
    return after
