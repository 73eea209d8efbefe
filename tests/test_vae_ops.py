"""The VAE decoders' CPU path (core/blocks/vae_ops.py): the same numbers as MLX's own convolution and group
norm, a float64 group norm's accuracy, and a decode that holds far less memory than MLX's im2col."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from quantbench.core.blocks import vae_ops
from quantbench.core.blocks.vae_ops import Conv2d, GroupNorm
from quantbench.core.families.flux2.vae import Flux2VAE


@pytest.fixture
def mlx_kernels():
    vae_ops.CPU_PATH = False
    yield
    vae_ops.CPU_PATH = True


@pytest.mark.parametrize("batch, height, width, channels, out_channels, kernel, bias", [
    (1, 7, 5, 8, 6, 3, True),  # non-square, odd sizes
    (2, 9, 4, 16, 3, 3, False),  # a batch, no bias, three output channels (conv_out)
    (1, 6, 6, 8, 8, 1, True),  # 1x1 (shortcuts, post_quant_conv)
    (3, 5, 8, 4, 4, 5, True),  # a wider kernel
])
def test_convolution_by_taps_matches_mlx_conv2d(batch, height, width, channels, out_channels, kernel, bias):
    mx.random.seed(0)
    conv = Conv2d(channels, out_channels, kernel_size=kernel, padding=kernel // 2, bias=bias)
    x = mx.random.normal((batch, height, width, channels))
    expected = nn.Conv2d.__call__(conv, x)
    out = conv(x)
    assert out.shape == expected.shape == (batch, height, width, out_channels)
    assert float(mx.abs(out - expected).max()) < 1e-5


def test_other_convolutions_run_as_mlx_runs_them():
    conv = Conv2d(4, 4, kernel_size=3, stride=2, padding=1)
    x = mx.random.normal((1, 8, 8, 4))
    assert mx.array_equal(conv(x), nn.Conv2d.__call__(conv, x))


def test_group_norm_is_as_accurate_as_float64_and_fuses_silu():
    mx.random.seed(1)
    norm = GroupNorm(8, 32, eps=1e-6)
    norm.weight, norm.bias = mx.random.normal((32,)), mx.random.normal((32,))
    x = mx.random.normal((2, 40, 24, 32)) * 3 + 20  # a mean far from zero: a one-pass variance would drift
    grouped = np.array(x).astype(np.float64).reshape(2, -1, 8, 4)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    variance = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(variance + 1e-6)).reshape(x.shape) * np.array(norm.weight) + np.array(norm.bias)
    assert np.abs(np.array(norm(x)) - expected).max() < 1e-4
    silu = expected / (1 + np.exp(-expected))
    assert np.abs(np.array(norm.normalize(x, nn.silu)) - silu).max() < 1e-4
    # A strided view, as a convolution leaves its output, gives the same numbers.
    wide = mx.pad(x, [(0, 0), (0, 0), (0, 2), (0, 0)])[:, :, :24]
    assert mx.array_equal(norm(wide), norm(x))


def test_cpu_decode_matches_mlx_kernels_and_holds_a_fraction_of_their_memory(mlx_kernels):
    vae = Flux2VAE(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)
    mx.eval(vae.parameters())
    z = mx.random.normal((1, 16, 16, 32))
    mx.eval(z)

    def decode():
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        image = vae.decode(z)
        mx.eval(image)
        return image, mx.get_peak_memory() - before

    mlx_image, mlx_peak = decode()
    vae_ops.CPU_PATH = True
    image, peak = decode()
    assert float(mx.abs(image - mlx_image).max()) < 1e-3 * float(mx.abs(mlx_image).max())
    assert peak < 0.4 * mlx_peak  # no nine-times-larger im2col buffer per convolution


def test_a_bfloat16_convolution_computes_in_float32_as_mlx_conv2d_does():
    conv = Conv2d(8, 8, kernel_size=3, padding=1)
    conv.set_dtype(mx.bfloat16)
    x = mx.random.normal((1, 6, 5, 8)).astype(mx.bfloat16)
    out = conv(x)
    assert out.dtype == mx.bfloat16
    expected = nn.Conv2d.__call__(conv, x).astype(mx.float32)
    assert float(mx.abs(out.astype(mx.float32) - expected).max()) <= 0.02 * float(mx.abs(expected).max())
