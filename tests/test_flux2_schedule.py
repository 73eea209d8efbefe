"""FLUX.2's sigmas against diffusers' scheduler driven the way Flux2KleinPipeline drives it."""

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
pipeline_module = pytest.importorskip("diffusers.pipelines.flux2.pipeline_flux2_klein")

from quantbench.core.families.flux2.schedule import empirical_mu, flux2_sigmas  # noqa: E402


@pytest.mark.parametrize("steps,seq_len", [(4, 16), (4, 1024), (28, 4096), (50, 4300), (50, 4301), (8, 16384)])
def test_sigmas_match_diffusers(steps, seq_len):
    assert empirical_mu(seq_len, steps) == pytest.approx(pipeline_module.compute_empirical_mu(seq_len, steps))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                          use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=empirical_mu(seq_len, steps))
    ours = flux2_sigmas(steps, seq_len)
    assert ours.shape == (steps + 1,) and ours[-1] == 0.0
    assert np.abs(ours - scheduler.sigmas.numpy()).max() < 1e-6
