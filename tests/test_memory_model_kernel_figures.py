"""The denoise phase of FLUX.1 and Qwen-Image 2.1 against the memory model, with the CPU's elementwise kernel and
without it (QUANTBENCH_ELEMENTWISE_KERNEL=off), unquantized and at 4 bits (the tile kernel then runs the quantized
layers): their figures per token and inner width (Family.denoise_kernel_per_token, denoise_layerwise_per_token,
denoise_per_token), measured as docs/measurements.md says, and Qwen-Image 2.1's prompt cache
(Family.denoise_prompt_cache)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from quantbench.core.blocks import elementwise_kernel
from quantbench.core.catalog import get_entry
from quantbench.core.family import PromptTokens
from quantbench.core.memory_model import Plan, predict

SIZE = 256
# MLX's peak for the same run moves with the machine's load (tests/test_memory_model.py, PEAK_RUNS): the measured
# peak is the most of these runs.
PEAK_RUNS = 2
LONG_PROMPT = " ".join(["a red star over a blue sky, a green hill under a white cloud, two birds in the wind"] * 8)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """family -> a narrowed model folder: Qwen-Image 2.1 from random-model at width 1/16; FLUX.1, which random-model
    lacks, the tests' tiny reference pipeline with FLUX.1's head size and 2 heads (reference.flux1)."""
    root = tmp_path_factory.mktemp("narrow")
    written = {}

    def folder(family: str):
        if family not in written:
            if family == "flux1":
                pytest.importorskip("diffusers")
                from reference.flux1 import NARROWED_TRANSFORMER, build_tiny_flux1

                build_tiny_flux1(root / family, dev=False, transformer=NARROWED_TRANSFORMER)
                written[family] = root / family
            else:
                from quantbench.core.random_model import write_random_model

                written[family] = write_random_model(root / family, "qwen-image-2.1", width_scale=0.0625)
        return written[family]

    return folder


def _denoise(folder, tmp_path, kernel: str, bits: int | None, prompt: str = "a red star",
             size: int = SIZE) -> tuple[int, int]:
    """(measured, predicted) denoise peaks of `generate --json`, a process of its own each run, as a user runs it."""
    measured, predicted = [], None
    for run in range(PEAK_RUNS):
        proc = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--model", str(folder),
                               "--prompt", prompt, "--width", str(size), "--height", str(size), "--steps", "1",
                               *(["-q", str(bits)] if bits else []), "--out", str(tmp_path / f"{run}.png"), "--json",
                               "--quiet"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HOME": str(tmp_path / "home"),
                                   **({"QUANTBENCH_ELEMENTWISE_KERNEL": "off"} if kernel == "off" else {})})
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["load"]["cpu_elementwise_kernel"]["state"] == ("off" if kernel == "off" else "ready")
        measured.append(summary["phase_peaks"]["denoise"])
        predicted = summary["predicted"]["phase_peaks"]["denoise"]
    return max(measured), predicted


@pytest.mark.skipif(not elementwise_kernel.ready(), reason="no elementwise kernel here: its figures are the CPU's")
@pytest.mark.parametrize("kernel", ["on", "off"])
@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("family", ["flux1", "qwen-image-2.1"])
def test_the_denoise_phase_is_predicted_with_the_familys_figures(narrow, tmp_path, family, bits, kernel):
    """256x256, one step. With the elementwise kernel the blocks make fewer arrays: counted with FLUX.2's figures
    (43.1 per token and inner width, the backend's) FLUX.1 was 21% over unquantized and 73% at 4 bits, Qwen-Image 2.1
    5.5% and 21% (and 47% at 512 px in MLX's ops); with each family's own figures (FLUX.1: 16.3 with the kernel, 26.3
    with the tile kernel; Qwen-Image 2.1: 13.5, 19.6, and 26.0 unquantized in MLX's ops) the phase is within
    -5%/+10%. FLUX.1 unquantized in MLX's ops keeps FLUX.2's figure (measured 34-35: +5% here)."""
    measured, predicted = _denoise(narrow(family), tmp_path, kernel, bits)
    assert 0.95 <= predicted / measured <= 1.10, (predicted, measured)


@pytest.mark.skipif(not elementwise_kernel.ready(), reason="no elementwise kernel here: its figures are the CPU's")
def test_qwen_image21_holds_its_long_prompts_keys_and_values(narrow, tmp_path):
    """Qwen-Image 2.1 computes every block's keys and values of the prompt once and holds them through the steps,
    which run the image tokens alone: with a long prompt (466 tokens through the transformer) at 128x128 (64 image
    tokens) the cache (2 x 32 layers x 466 tokens x inner width, 29 MiB here) is most of the denoise phase, which
    counted the prompt's tokens as more tokens of a step. Counted, with the prompt's own pass through the blocks
    where it holds more than a step (here), the phase is within -5%/+10% (-1% to -3%)."""
    measured, predicted = _denoise(narrow("qwen-image-2.1"), tmp_path, "on", 4, prompt=LONG_PROMPT, size=128)
    assert 0.95 <= predicted / measured <= 1.10, (predicted, measured)


def test_a_prompt_token_costs_qwen_image21_two_arrays_a_block():
    """Each prompt token adds its keys and values in every block (2 x 32 x 4096 floats at full size) to the
    denoise phase, and no activations: the step runs the image tokens alone. Its attention's scores are the image
    tokens' against every token."""
    entry = get_entry("qwen-image-2.1")
    plan = Plan(width=512, height=512, backend="cpu", dtype="float32", batch=1, elementwise_kernel=True)
    short, long = (predict(entry, dataclasses.replace(plan, prompt_tokens=PromptTokens(tokens + 42, tokens)))
                   for tokens in (20, 220))
    assert long.denoise_activations - short.denoise_activations == 200 * 2 * 32 * 4096 * 4 + _scores_growth(plan)


def _scores_growth(plan) -> int:
    from quantbench.core.blocks.attention import cpu_scores_held

    image = (plan.width // 16) * (plan.height // 16)
    return (cpu_scores_held(1, 32, image, image + 220) - cpu_scores_held(1, 32, image, image + 20)) * 4
