"""The VAE decoders' convolutions and group norms, fast on MLX's CPU.

MLX's CPU convolution unfolds its whole input into a nine-times-larger matrix (im2col) and multiplies
that: 0.3 to 0.6 GB written and read again for each 3x3 convolution of a 256x256 decode. Here a
"same"-padded, stride-1 convolution is instead one BLAS product per kernel tap, summed by `mx.addmm`:
the input is padded once, with one extra row, and seen as rows of pixels, `(padded height * padded
width, channels)`. Tap (dy, dx) reads the pixel `dy * padded width + dx` rows further on, so every
tap's input is a contiguous run of those rows, a view, never a copy. Each output row of the product is
then a pixel of the padded width; the padding's columns are junk and are dropped by a view at the end.
The peak is the padded input and the output, not nine inputs. At the full-width FLUX.2 decoder's shapes
this ran at 71-115 GFLOP per CPU second where MLX's conv2d ran at 50-94; grouping a row's three taps
(K = 3C) or im2col in bands of rows ran slower than either, as building their inputs (MLX's
concatenate) costs more than the larger products gain.

The group norm's statistics are reductions over the channels' own layout (no transposed copies), and
the norm's scale and shift go into one elementwise pass, followed by SiLU on fast_math's exp where the
decoder applies it. GPUs keep MLX's own convolution and group norm, and so does the CPU while
`CPU_PATH` is False (benchmarks/vae_decode.py times both).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .fast_math import on_cpu, silu

CPU_PATH = True  # False: MLX's own kernels on the CPU too, as before this module (for benchmarks)


def _cpu_path() -> bool:
    return CPU_PATH and on_cpu()


class Conv2d(nn.Conv2d):
    """nn.Conv2d (the same parameters and keys) that runs as BLAS products per tap on the CPU."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _by_taps(self, x):
            return super().__call__(x)
        # In float32 whatever the dtype, as MLX's CPU convolution computes (its BLAS is float32).
        weight = self.weight.astype(mx.float32)
        bias = self.bias.astype(mx.float32) if "bias" in self else None
        images = [conv_by_taps(x[i:i + 1].astype(mx.float32), weight, bias, self.padding) for i in range(x.shape[0])]
        return (images[0] if len(images) == 1 else mx.concatenate(images)).astype(x.dtype)


def _by_taps(conv: nn.Conv2d, x: mx.array) -> bool:
    _, kh, kw, _ = conv.weight.shape
    return (_cpu_path() and x.ndim == 4 and conv.groups == 1 and tuple(conv.stride) == (1, 1)
            and conv.dilation in (1, (1, 1)) and kh % 2 == 1 and kw % 2 == 1
            and tuple(conv.padding) == (kh // 2, kw // 2))


def conv_by_taps(x: mx.array, weight: mx.array, bias: mx.array | None, padding: tuple[int, int]) -> mx.array:
    """A stride-1 convolution of one image (1, H, W, C) by `weight` (O, kh, kw, C), padded by `padding`
    = (kh // 2, kw // 2) so the output keeps H x W: a BLAS product per tap, summed in place."""
    _, h, w, c = x.shape
    out_channels, kh, kw, _ = weight.shape
    if kh == kw == 1:
        out = x.reshape(-1, c) @ weight.reshape(out_channels, c).T
        return (out if bias is None else out + bias).reshape(1, h, w, out_channels)
    pad_h, pad_w = padding
    wide = w + 2 * pad_w
    # The extra bottom row lets the last taps' runs of rows stay inside the array.
    rows = mx.pad(x, [(0, 0), (pad_h, pad_h + 1), (pad_w, pad_w), (0, 0)]).reshape(-1, c)
    taps = weight.transpose(1, 2, 3, 0)  # (kh, kw, C, O): each tap's (C, O) matrix contiguous
    count = h * wide
    out = None
    for dy in range(kh):
        for dx in range(kw):
            start = dy * wide + dx
            tap_input = rows[start:start + count]
            if out is None:
                out = tap_input @ taps[dy, dx] if bias is None else mx.addmm(bias, tap_input, taps[dy, dx])
            else:
                out = mx.addmm(out, tap_input, taps[dy, dx])
    return out.reshape(1, h, wide, out_channels)[:, :, :w]


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm in PyTorch's grouping (adjacent channels form a group), with diffusers' VAE eps; on the
    CPU its statistics come without transposed copies, and `normalize(x, activation)` fuses the scale and
    shift with a following SiLU."""

    def __init__(self, groups: int, channels: int, eps: float):
        super().__init__(groups, channels, eps=eps, pytorch_compatible=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.normalize(x)

    def normalize(self, x: mx.array, activation=None) -> mx.array:
        """activation(group_norm(x)); SiLU on fast_math's exp on the CPU."""
        if not (_cpu_path() and x.dtype == mx.float32):
            out = super().__call__(x)
            return out if activation is None else activation(out)
        scale, shift = self._scale_and_shift(x)
        out = _scale_shift(x, scale, shift)
        if activation is None:
            return out
        return silu(out) if activation is nn.silu else activation(out)

    def _scale_and_shift(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Per image and channel, (scale, shift) with group_norm(x) = x * scale + shift. The sums run over
        the pixels of each channel, then over a group's channels: x is read in its own layout, even as the
        strided view a convolution leaves."""
        batch, channels = x.shape[0], x.shape[-1]
        pixels = tuple(range(1, x.ndim - 1))
        per_channel = (batch,) + (1,) * len(pixels) + (channels,)

        def group_mean(channel_means: mx.array) -> mx.array:
            means = channel_means.reshape(batch, self.num_groups, -1).mean(axis=-1, keepdims=True)
            return mx.broadcast_to(means, (batch, self.num_groups, channels // self.num_groups)).reshape(per_channel)

        mean = group_mean(x.mean(axis=pixels))
        variance = group_mean(_squared_difference(x, mean).mean(axis=pixels))
        scale = mx.rsqrt(variance + self.eps)
        if "weight" in self:
            scale = scale * self.weight
            return scale, self.bias - mean * scale
        return scale, -mean * scale


@mx.compile
def _scale_shift(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    return x * scale + shift


@mx.compile
def _squared_difference(x: mx.array, mean: mx.array) -> mx.array:
    centred = x - mean
    return centred * centred
