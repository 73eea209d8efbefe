"""The encoder half of diffusers' AutoencoderKL in MLX: pixels -> latents, for reference images.

Text-to-image never needs it, so it is built and loaded on its own, only for a run that encodes an image, and
freed after. Its blocks are the decoder's (core/blocks/autoencoder_kl.py) run the other way: each down block's
resnets, then a stride-2 convolution padded on the bottom and right only (diffusers' Downsample2D, padding 0).
The latent is the mean of the Gaussian the encoder outputs ("argmax" sampling, as diffusers' pipelines use for
reference images); the log-variance half is dropped.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import Rule, conv_weight
from ..errors import CheckpointError
from .autoencoder_kl import ACTIVATIONS, MidBlock, ResnetBlock, config_activation, conv3x3, group_norm
from .vae_ops import Conv2d


class Downsampler(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, activation,
                 add_downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, activation)
                        for i in range(num_resnets)]
        if add_downsample:
            self.downsamplers = [Downsampler(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        if "downsamplers" in self:
            x = self.downsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: list[int], layers_per_block: int,
                 groups: int, activation, mid_block_attention: bool):
        super().__init__()
        self.activation = activation
        self.conv_in = conv3x3(in_channels, block_out_channels[0])
        self.down_blocks = [
            DownBlock(block_out_channels[max(i - 1, 0)], width, layers_per_block, groups, activation,
                      add_downsample=i != len(block_out_channels) - 1)
            for i, width in enumerate(block_out_channels)]
        self.mid_block = MidBlock(block_out_channels[-1], groups, activation, mid_block_attention)
        self.conv_norm_out = group_norm(groups, block_out_channels[-1])
        self.conv_out = conv3x3(block_out_channels[-1], 2 * latent_channels)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out.normalize(self.mid_block(x), self.activation))


class VaeEncoder(nn.Module):
    """diffusers' `encoder` and `quant_conv`, under their checkpoint names."""

    def __init__(self, *, in_channels: int = 3, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 use_quant_conv: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        self.latent_channels = latent_channels
        self.scale_factor = 2 ** (len(block_out_channels) - 1)
        self.encoder = Encoder(in_channels, latent_channels, list(block_out_channels), layers_per_block,
                               norm_num_groups, ACTIVATIONS[act_fn], mid_block_add_attention)
        if use_quant_conv:
            self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, kernel_size=1)

    @classmethod
    def from_config(cls, config: dict, latent_channels: int, use_quant_conv: bool) -> "VaeEncoder":
        down_block_types = config.get("down_block_types", ["DownEncoderBlock2D"] * 4)
        unsupported = sorted(set(down_block_types) - {"DownEncoderBlock2D"})
        if unsupported:
            raise CheckpointError(f"VAE config: unsupported down_block_types {unsupported}")
        act_fn = config_activation(config)
        widths = tuple(config.get("block_out_channels", (128, 256, 512, 512)))
        if len(widths) != len(down_block_types):
            raise CheckpointError(f"VAE config: {len(down_block_types)} down blocks for {len(widths)} widths")
        return cls(in_channels=config.get("in_channels", 3), latent_channels=config.get("latent_channels", latent_channels),
                   block_out_channels=widths, layers_per_block=config.get("layers_per_block", 2),
                   norm_num_groups=config.get("norm_num_groups", 32), act_fn=act_fn,
                   use_quant_conv=config.get("use_quant_conv", use_quant_conv),
                   mid_block_add_attention=config.get("mid_block_add_attention", True))

    def encode(self, image: mx.array) -> mx.array:
        """(B, H, W, 3) pixels in [-1, 1] -> (B, H/8, W/8, latent_channels): the posterior's mean."""
        moments = self.encoder(image)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        return moments[..., : self.latent_channels]


_DECODER_HALF = "decoder: loaded with the VAE"

VAE_ENCODER_RULES = [
    Rule(r"(?:decoder|post_quant_conv|bn)\..*", None, reason=_DECODER_HALF),
    Rule(r"(.*\.weight)", r"\1", transform=conv_weight),
    Rule(r"(.*)", r"\1"),
]

