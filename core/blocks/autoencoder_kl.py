"""The decoder half of diffusers' AutoencoderKL in MLX (FLUX.1's VAE; FLUX.2's adds latent statistics).

Activations are NHWC throughout. Parameter names equal the diffusers checkpoint keys, so the checkpoint
loads through the identity mapping (plus the conv-weight transpose). Text-to-image never encodes, so the
encoder is not built and its weights are skipped with their reason.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import Rule, conv_weight
from ..errors import CheckpointError
from .attention import scaled_dot_product_attention
from .vae_ops import Conv2d, GroupNorm

# diffusers builds every decoder norm with this eps, whatever the config says.
_NORM_EPS = 1e-6

ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "mish": nn.mish}


def group_norm(groups: int, channels: int) -> GroupNorm:
    return GroupNorm(groups, channels, eps=_NORM_EPS)


def conv3x3(in_channels: int, out_channels: int) -> Conv2d:
    return Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def upsample_nearest_2x(x: mx.array) -> mx.array:
    b, h, w, c = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, h * 2, w * 2, c)


def config_activation(config: dict) -> str:
    """A VAE config's `act_fn` (silu when it has none); one the blocks lack is a one-line CheckpointError."""
    act_fn = config.get("act_fn", "silu")
    if act_fn not in ACTIVATIONS:
        raise CheckpointError(f"VAE config: unsupported act_fn {act_fn!r}")
    return act_fn


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, activation):
        super().__init__()
        self.activation = activation
        self.norm1 = group_norm(groups, in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = group_norm(groups, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.conv_shortcut = Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(self.norm1.normalize(x, self.activation))
        h = self.conv2(self.norm2.normalize(h, self.activation))
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
        out = scaled_dot_product_attention(q, k, v, scale=c ** -0.5)
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
        return self.conv_out(self.conv_norm_out.normalize(x, self.activation))


class AutoencoderKL(nn.Module):
    """The decoder and the post-quant convolution; a family's VAE adds how its latents enter (`denormalize`)."""

    def __init__(self, *, latent_channels: int, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (128, 256, 512, 512), num_up_blocks: int = 4,
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 use_post_quant_conv: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        self.latent_channels = latent_channels
        # Pixels per latent pixel, as diffusers' pipelines compute it.
        self.scale_factor = 2 ** (len(block_out_channels) - 1)
        self.decoder = Decoder(latent_channels, out_channels, list(block_out_channels), num_up_blocks,
                               layers_per_block, norm_num_groups, ACTIVATIONS[act_fn], mid_block_add_attention)
        if use_post_quant_conv:
            self.post_quant_conv = Conv2d(latent_channels, latent_channels, kernel_size=1)

    @staticmethod
    def decoder_options(config: dict, latent_channels: int) -> dict:
        """The constructor's arguments from a diffusers config.json (`latent_channels` when it has none)."""
        up_block_types = config.get("up_block_types", ["UpDecoderBlock2D"] * 4)
        unsupported = sorted(set(up_block_types) - {"UpDecoderBlock2D"})
        if unsupported:
            raise CheckpointError(f"VAE config: unsupported up_block_types {unsupported}")
        act_fn = config_activation(config)
        return dict(
            latent_channels=config.get("latent_channels", latent_channels),
            out_channels=config.get("out_channels", 3),
            block_out_channels=tuple(config.get("decoder_block_out_channels")
                                     or config.get("block_out_channels", (128, 256, 512, 512))),
            num_up_blocks=len(up_block_types),
            layers_per_block=config.get("layers_per_block", 2),
            norm_num_groups=config.get("norm_num_groups", 32),
            act_fn=act_fn,
            use_post_quant_conv=config.get("use_post_quant_conv", True),
            mid_block_add_attention=config.get("mid_block_add_attention", True),
        )

    def decode(self, z: mx.array) -> mx.array:
        """(B, H/8, W/8, latent_channels) de-normalized latent -> (B, H, W, 3) image in about [-1, 1]."""
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class ScaledAutoencoderKL(AutoencoderKL):
    """FLUX.1's 16-channel VAE (Z-Image's too): the transformer works on latents scaled and shifted,
    z' = (z - shift) * scaling, so decoding first undoes that, z = z' / scaling + shift."""

    def __init__(self, *, latent_channels: int = 16, use_post_quant_conv: bool = False,
                 scaling_factor: float = 0.3611, shift_factor: float = 0.1159, **decoder):
        super().__init__(latent_channels=latent_channels, use_post_quant_conv=use_post_quant_conv, **decoder)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor

    @classmethod
    def from_config(cls, config: dict) -> "ScaledAutoencoderKL":
        return cls(**cls.decoder_options(config, latent_channels=16),
                   scaling_factor=float(config.get("scaling_factor", 0.3611)),
                   shift_factor=float(config.get("shift_factor") or 0.0))

    def denormalize(self, z: mx.array) -> mx.array:
        """The transformer's latents -> the decoder's: undo the scaling and shift."""
        return z / self.scaling_factor + self.shift_factor


_ENCODER_ONLY = "encoder: not needed for text-to-image"

AUTOENCODER_KL_RULES = [
    Rule(r"(?:encoder|quant_conv)\..*", None, reason=_ENCODER_ONLY),
    Rule(r"bn\.num_batches_tracked", None, reason="batch-norm counter"),
    # conv_weight leaves non-4-D tensors (norm weights) untouched, so matching every `.weight` is safe.
    Rule(r"(.*\.weight)", r"\1", transform=conv_weight),
    Rule(r"(.*)", r"\1"),
]


def flux1_vae_config(channels: tuple[int, ...] = (128, 256, 512, 512)) -> dict:
    """The config.json of FLUX.1's released AutoencoderKL (Z-Image ships the same VAE), at `channels` wide: random
    models write it."""
    return {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 16,
            "block_out_channels": list(channels), "layers_per_block": 2,
            "up_block_types": ["UpDecoderBlock2D"] * len(channels),
            "down_block_types": ["DownEncoderBlock2D"] * len(channels), "norm_num_groups": 32, "act_fn": "silu",
            "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
            "mid_block_add_attention": True}
