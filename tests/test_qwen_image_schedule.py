"""Qwen-Image's sigmas against diffusers' scheduler driven the way QwenImagePipeline drives it."""

import json

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
pipeline_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage")

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image.schedule import QwenImageSchedule  # noqa: E402
from reference.qwen_image import SCHEDULER_CONFIG  # noqa: E402


def _reference_sigmas(config, steps, seq_len):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    c = scheduler.config
    mu = pipeline_module.calculate_shift(seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return mu, scheduler.sigmas.numpy()


@pytest.mark.parametrize("steps,seq_len", [(2, 16), (4, 256), (20, 1024), (50, 4096), (50, 8192), (30, 16384)])
def test_sigmas_match_diffusers_with_the_terminal_stretch(steps, seq_len):
    mu, expected = _reference_sigmas(SCHEDULER_CONFIG, steps, seq_len)
    ours = QwenImageSchedule.from_config(SCHEDULER_CONFIG)
    assert ours == QwenImageSchedule(), "Qwen-Image's scheduler config is the default"
    assert ours.mu(seq_len) == pytest.approx(mu, rel=1e-12)
    sigmas = ours.sigmas(steps, seq_len)
    assert sigmas.shape == (steps + 1,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas[-2] == pytest.approx(0.02, abs=1e-6), "the last nonzero sigma is stretched to shift_terminal"
    assert np.abs(sigmas - expected).max() < 1e-6


@pytest.mark.parametrize("config", [
    {**SCHEDULER_CONFIG, "shift_terminal": None},
    {**SCHEDULER_CONFIG, "time_shift_type": "linear", "base_shift": 1.5, "max_shift": 3.0},
    {**SCHEDULER_CONFIG, "use_dynamic_shifting": False, "shift": 3.0},
])
def test_other_scheduler_configs_match_too(config):
    _, expected = _reference_sigmas(config, 8, 1024)
    assert np.abs(QwenImageSchedule.from_config(config).sigmas(8, 1024) - expected).max() < 1e-6


def test_one_step_is_well_defined():
    """diffusers' stretch divides by zero for a single step (NaN); ours keeps the single sigma 1."""
    assert QwenImageSchedule().sigmas(1, 1024).tolist() == [1.0, 0.0]


def test_read_from_the_model_folder(tmp_path):
    assert QwenImageSchedule.read(tmp_path) == QwenImageSchedule()
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**SCHEDULER_CONFIG, "max_shift": 1.2}))
    assert QwenImageSchedule.read(tmp_path).max_shift == 1.2
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"use_karras_sigmas": True}))
    with pytest.raises(CheckpointError, match="use_karras_sigmas"):
        QwenImageSchedule.read(tmp_path)
