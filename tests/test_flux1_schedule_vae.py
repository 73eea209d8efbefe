"""FLUX.1's sigmas against diffusers' scheduler as FluxPipeline drives it, and the VAE decode with scaling and shift."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
flux_module = pytest.importorskip("diffusers.pipelines.flux.pipeline_flux")

import mlx.core as mx  # noqa: E402

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.flux1.schedule import Flux1Schedule, timestep_input  # noqa: E402
from quantbench.core.families.flux1.vae import load_vae  # noqa: E402
from reference.flux1 import build_scheduler, build_vae  # noqa: E402


def _reference_sigmas(scheduler, steps, seq_len):
    """FluxPipeline.__call__: linspace sigmas, mu from the scheduler config, retrieve_timesteps."""
    config = scheduler.config
    mu = flux_module.calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                     config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return mu, scheduler.sigmas.numpy(), scheduler.timesteps.numpy()


@pytest.mark.parametrize("dev", [False, True], ids=["schnell", "dev"])
@pytest.mark.parametrize("steps,seq_len", [(1, 16), (4, 1024), (28, 4096), (50, 256), (8, 16384)])
def test_sigmas_match_diffusers(dev, steps, seq_len):
    scheduler = build_scheduler(dev)
    schedule = Flux1Schedule.from_config(dict(scheduler.config))
    assert schedule.use_dynamic_shifting == dev
    mu, expected, timesteps = _reference_sigmas(scheduler, steps, seq_len)
    if dev:
        assert schedule.mu(seq_len) == pytest.approx(mu, rel=1e-12)
    ours = schedule.sigmas(steps, seq_len)
    assert ours.dtype == np.float32 and ours.shape == (steps + 1,) and ours[-1] == 0.0
    np.testing.assert_array_equal(ours, expected)
    # what the transformer is given: the scheduler's timestep / 1000, in float32
    expected_inputs = (torch.from_numpy(timesteps) / 1000).numpy()
    np.testing.assert_array_equal(np.array([timestep_input(s) for s in ours[:-1]]), expected_inputs)


def test_unsupported_scheduler_options_are_refused():
    with pytest.raises(CheckpointError, match="use_karras_sigmas is not supported"):
        Flux1Schedule.from_config({"use_karras_sigmas": True})


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory):
    vae = build_vae(seed=2)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder, safe_serialization=True)
    return vae, folder


def test_decode_with_scaling_and_shift_matches_diffusers(saved_vae):
    torch_vae, folder = saved_vae
    ours, report = load_vae(folder)
    assert not report.unexpected
    assert ours.scaling_factor == pytest.approx(0.3611) and ours.shift_factor == pytest.approx(0.1159)
    z = np.random.default_rng(0).standard_normal((2, 16, 6, 5)).astype(np.float32)  # NCHW, non-square
    with torch.no_grad():  # FluxPipeline: latents / scaling_factor + shift_factor, then decode
        config = torch_vae.config
        expected = torch_vae.decode(torch.from_numpy(z) / config.scaling_factor + config.shift_factor).sample
    got = np.array(ours.decode(ours.denormalize(mx.array(z.transpose(0, 2, 3, 1)))))
    assert got.shape == (2, 48, 40, 3)
    assert np.abs(got - expected.numpy().transpose(0, 2, 3, 1)).max() < 1e-4


def test_load_report_skips_the_encoder(saved_vae):
    torch_vae, folder = saved_vae
    _, report = load_vae(folder)
    encoder_keys = {k for k in torch_vae.state_dict() if k.startswith(("encoder.", "quant_conv."))}
    assert set(report.skipped["encoder: not needed for text-to-image"]) == encoder_keys
    assert report.used == len(torch_vae.state_dict()) - len(encoder_keys)
