"""Parity of the MLX FLUX.2 VAE decoder with diffusers' AutoencoderKLFlux2 on a tiny random model."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from quantbench.core.errors import CheckpointError
from quantbench.core.families.flux2.vae import Flux2VAE, load_vae

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Three levels with a different width each, so both the shortcut convs and the block order are exercised;
# latent_channels 32 keeps FLUX.2's 128 packed batch-norm channels.
TINY_CONFIG = dict(
    block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=32,
)

# float32 on both sides; the only difference is accumulated rounding over ~20 convs, norms and one attention:
# measured ~5e-6 for outputs up to ~4. 1e-4 leaves headroom for other BLAS backends, while any real mismatch
# (wrong norm grouping, block order, upsampling) gives errors of order 0.1-1.
TOLERANCE = 1e-4


def tiny_torch_vae(**overrides):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2(**{**TINY_CONFIG, **overrides}).float().eval()
    with torch.no_grad():
        # The default init leaves some weights at trivial values (norms at 1/0); randomize everything.
        for param in vae.parameters():
            param.add_(0.05 * torch.randn_like(param))
        vae.bn.running_mean.copy_(torch.randn(vae.bn.num_features))
        vae.bn.running_var.copy_(torch.rand(vae.bn.num_features) * 2 + 0.1)
    return vae


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory):
    vae = tiny_torch_vae()
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder, safe_serialization=True)
    return vae, folder


def test_decode_matches_diffusers(saved_vae):
    torch_vae, folder = saved_vae
    mlx_vae, _ = load_vae(folder)
    z = np.random.default_rng(0).standard_normal((2, 32, 6, 5)).astype(np.float32)  # NCHW, non-square

    with torch.no_grad():
        expected = torch_vae.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.array(mlx_vae.decode(mx.array(z.transpose(0, 2, 3, 1))))

    assert got.shape == expected.shape == (2, 24, 20, 3)
    max_error = np.abs(got - expected).max()
    assert max_error < TOLERANCE, f"max abs diff {max_error:.3g}"


def test_latent_stats(saved_vae):
    torch_vae, folder = saved_vae
    mlx_vae, _ = load_vae(folder)
    mean, std = mlx_vae.latent_stats()
    expected_std = torch.sqrt(torch_vae.bn.running_var + torch_vae.config.batch_norm_eps).numpy()
    np.testing.assert_allclose(np.array(mean), torch_vae.bn.running_mean.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.array(std), expected_std, rtol=1e-6)
    assert mean.shape == (128,)


def test_load_report_skips_encoder(saved_vae):
    torch_vae, folder = saved_vae
    _, report = load_vae(folder)
    state = torch_vae.state_dict()
    encoder_keys = {k for k in state if k.startswith(("encoder.", "quant_conv."))}
    assert encoder_keys
    assert set(report.skipped["encoder: not needed for text-to-image"]) == encoder_keys
    assert report.skipped["batch-norm counter"] == ["bn.num_batches_tracked"]
    assert report.unexpected == []
    assert report.used == len(state) - len(encoder_keys) - 1


@pytest.mark.parametrize("overrides", [{}, {"mid_block_add_attention": False, "use_post_quant_conv": False}])
def test_parameter_names_equal_decoder_keys(overrides):
    torch_vae = diffusers.AutoencoderKLFlux2(**{**TINY_CONFIG, **overrides})
    decoder_side = {k for k in torch_vae.state_dict()
                    if not k.startswith(("encoder.", "quant_conv.")) and k != "bn.num_batches_tracked"}
    mlx_vae = Flux2VAE.from_config(dict(torch_vae.config))
    assert {name for name, _ in tree_flatten(mlx_vae.parameters())} == decoder_side


def test_config_not_matching_weights_raises(saved_vae, tmp_path):
    _, folder = saved_vae
    edited = tmp_path / "vae"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config["block_out_channels"] = [16, 32, 48]
    (edited / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError) as info:
        load_vae(edited)
    message = str(info.value)
    assert "\n" not in message and "does not match" in message
