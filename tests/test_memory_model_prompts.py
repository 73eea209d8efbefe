"""The memory model against the engine on narrowed random Z-Image, Qwen-Image and Qwen-Image 2.1 models (width 1/16):
families that run each prompt at its own length, a decoder with residual up blocks, and a text encoder whose embedding table is
most of what loading it reads."""

import gc
import json
import os
import subprocess
import sys

import mlx.core as mx
import pytest

from quantbench.cli.main import main
from quantbench.core.fit import RunShape, _plan, catalog_entry_for
from quantbench.core.memory_model import predict
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.pipelines import load_pipeline
from quantbench.core.random_model import write_random_model

SCALE = 0.0625
# MLX's peak for the same run moves with the machine's load (tests/test_memory_model.py, PEAK_RUNS): each phase's
# measured peak is the most of these runs.
PEAK_RUNS = 2


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    root = tmp_path_factory.mktemp("narrow")
    written = {}

    def folder(arch: str, distilled: bool = True):
        name = arch if distilled else f"{arch}-base"
        if name not in written:
            written[name] = write_random_model(root / name, arch, width_scale=SCALE, distilled=distilled)
        return written[name]

    return folder


@pytest.fixture(scope="module")
def runs(narrow, tmp_path_factory):
    """arch -> (measured phase peaks, the most of PEAK_RUNS runs; predicted phase peaks) of `generate --json` at
    256x256, -q 4, an 8-bit text encoder: a process of its own each run, as a user runs it."""
    done = {}

    def measure(arch: str) -> tuple[dict, dict]:
        if arch in done:
            return done[arch]
        tmp = tmp_path_factory.mktemp(f"runs-{arch}")
        measured, predicted = {}, None
        for run in range(PEAK_RUNS):
            proc = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--model", str(narrow(arch)),
                                   "--prompt", "a red star", "--width", "256", "--height", "256", "--steps", "1",
                                   "-q", "4", "--text-encoder-quantize", "8", "--out", str(tmp / f"{run}.png"),
                                   "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "HOME": str(tmp / "home")})
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
            for phase, peak in summary["phase_peaks"].items():
                measured[phase] = max(measured.get(phase, 0), peak)
            predicted = summary["predicted"]["phase_peaks"]
        done[arch] = measured, predicted
        return done[arch]

    return measure


@pytest.mark.parametrize("arch", ["z-image", "qwen-image-2.1"])
def test_encode_and_denoise_are_predicted_with_the_prompts_own_tokens(runs, arch):
    """These families run a prompt at its own length, not padded to the longest they read (512, 1024 tokens): the
    prediction `generate` makes counts the prompt's tokens. Counting the longest, the encode phase was 29-73% over
    and the denoise phase 64-117% (a short prompt, 256x256, -q 4, an 8-bit text encoder); now -6% to +10%, checked
    within -10%/+20% (a run whose MLX peak comes out low, as one in a few does, reads as more over). Qwen-Image's:
    test_the_denoise_phase_counts_the_familys_own_activations."""
    measured, predicted = runs(arch)
    for phase in ("encode", "denoise"):
        assert 0.90 <= predicted[phase] / measured[phase] <= 1.20, (phase, predicted, measured)


def test_qwen_image21_decode_counts_its_up_blocks_shortcut(runs):
    """Qwen-Image 2.1's decoder adds each upsampling block's input to its output through a parameter-free shortcut
    (a gather of channels, then their 2x2 interleave), at the finer resolution: the decode phase at 256x256 was 17%
    under without it; now within -5%/+10%."""
    measured, predicted = runs("qwen-image-2.1")
    assert 0.95 <= predicted["decode"] / measured["decode"] <= 1.10, (predicted, measured)


@pytest.mark.parametrize("te_bits", [8, None])
def test_the_text_encoder_loads_its_embedding_table_as_stored(narrow, te_bits):
    """Loading reads each layer as the checkpoint stores it (bf16) and quantizes it, or casts it to the float32 the
    CPU computes in: the largest, Qwen-Image 2.1's embedding table, is held in bf16 for a moment besides what is
    kept. Loading the VAE and the text encoder (lean: the transformer comes after encoding) peaks where the memory
    model says, within 5%: it said 39% more at 8 bits (the table in float32) and 21% less unquantized (no cast)."""
    folder = narrow("qwen-image-2.1")
    shape = RunShape(4, te_bits, 256, 256, True, None, "float32")
    prediction = predict(catalog_entry_for(str(folder), folder), _plan(folder, shape, "cpu"))
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    pipeline = load_pipeline(folder, quantize=4, text_encoder_quantize=te_bits, memory=MemoryOptions.lean(None))
    measured = mx.get_peak_memory() - before
    assert pipeline.transformer is None  # what was measured is the text encoder's load, with the VAE loaded before it
    assert prediction.load_peak == pytest.approx(measured, rel=0.05), (prediction.load_peaks, measured)


def test_recommend_says_its_peaks_count_the_longest_prompt(capsys):
    """`recommend` knows no prompt: for these families it keeps the bound, and says so."""
    assert main(["recommend", "--ram", "16", "--model", "z-image"]) == 0
    out = capsys.readouterr().out
    assert "z-image: peaks count the longest prompt they read (512 tokens)" in " ".join(out.split())
    assert main(["recommend", "--ram", "16", "--model", "klein-4b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not any("longest prompt" in note for note in data["notes"])  # Klein pads every prompt to 512: exact
    assert "prompt_tokens" not in data["models"][0]["plan"]


def _phase_peaks(folder, tmp, guidance: str, size: int = 256) -> tuple[dict, dict]:
    """(measured, predicted) phase peaks of `generate --json` at this --guidance (size x size, -q 4, one step)."""
    out = tmp / f"{guidance}-{size}.png"
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--model", str(folder), "--prompt",
                           "a red star", "--width", str(size), "--height", str(size), "--steps", "1", "-q", "4",
                           "--text-encoder-quantize", "8", "--guidance", guidance, "--out", str(out),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp / "home")})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    return summary["phase_peaks"], summary["predicted"]["phase_peaks"]


def _denoise_peaks(folder, tmp, guidance: str) -> tuple[int, int]:
    measured, predicted = _phase_peaks(folder, tmp, guidance)
    return measured["denoise"], predicted["denoise"]


def test_true_cfg_is_predicted_from_the_runs_guidance(narrow, tmp_path):
    """Z-Image base runs true CFG (prompt and negative batched) at its default guidance 4 and none at --guidance 0.
    The fit check predicted from the model's default whatever the run asked: at --guidance 0 the denoise phase was
    41% over (batch 2 for a run of one). Now the batch is what the run does (PipelineBase.runs_true_cfg), so the
    prediction follows --guidance. With FLUX.2's activations per token the CFG run was then 20% over (+10% without
    CFG); with Z-Image's own (Family.denoise_per_token) both are within -5%/+10%."""
    folder = narrow("z-image", distilled=False)
    plain_measured, plain_predicted = _denoise_peaks(folder, tmp_path, "0")
    assert 0.95 <= plain_predicted / plain_measured <= 1.10, (plain_predicted, plain_measured)
    cfg_measured, cfg_predicted = _denoise_peaks(folder, tmp_path, "4")
    assert cfg_predicted > plain_predicted
    assert 0.95 <= cfg_predicted / cfg_measured <= 1.10, (cfg_predicted, cfg_measured)


@pytest.mark.parametrize("arch, distilled", [("z-image", False), ("qwen-image", True)])
def test_the_denoise_phase_counts_the_familys_own_activations(narrow, tmp_path, arch, distilled):
    """The denoise phase's activations per token are the family's own: Z-Image's single-stream blocks and
    Qwen-Image's dual-stream ones make fewer intermediates than FLUX.2's fused single blocks, whose figure (43.1 per
    token and inner width) predicted these runs (512x512, true CFG at guidance 4) 47% and 34% over; now -5%/+10%.
    The CPU's tile kernel (quant/tile_kernel.py) evaluates each quantized layer's input, so the step lets go of its
    activations layer by layer: the figures fitted in the slices (27, 26) were 9% and 13% over it; the families'
    figures for such a step (Family.denoise_layerwise_per_token: 23.5, 19) are within -5%/+10% too. Where the CPU's
    elementwise kernel runs the blocks they make fewer arrays (Z-Image's 23.5 was 23% over, Qwen-Image's 19 14%):
    each family's figure for that (Family.denoise_kernel_per_token: 16.7, 12.5) is within the same bounds.
    The encode phase, Qwen-Image's prompt run at its own length (PipelineBase.prompt_tokens), is -3%."""
    measured, predicted = _phase_peaks(narrow(arch, distilled), tmp_path, "4", size=512)
    assert 0.95 <= predicted["denoise"] / measured["denoise"] <= 1.10, (arch, predicted, measured)
    assert 0.90 <= predicted["encode"] / measured["encode"] <= 1.10, (arch, predicted, measured)


def test_qwen_images_decoder_is_predicted_with_its_halving_upsamplers(narrow, tmp_path):
    """Qwen-Image's decoder upsamples a block's channels (a nearest 2x), then convolves them to half: entering a stage
    holds less than in decoders that keep the channels, on whose decodes the figures were fitted. Counted as those,
    its decode (`--low-memory`, so the phase is the decode's own) was 20% and 25% over at 128 and 256 px; with the
    figure measured for such a stage (BackendProfile.vae_halving_in) within -5%/+10% (now -2% and -1%)."""
    measured, predicted = 0, None
    for run in range(PEAK_RUNS):
        proc = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--model",
                               str(narrow("qwen-image")), "--prompt", "a red star", "--width", "256", "--height", "256",
                               "--steps", "1", "-q", "4", "--low-memory", "--out", str(tmp_path / f"{run}.png"),
                               "--json", "--quiet"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HOME": str(tmp_path / "home")})
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        measured = max(measured, summary["phase_peaks"]["decode"])
        predicted = summary["predicted"]["phase_peaks"]["decode"]
    assert 0.95 <= predicted / measured <= 1.10, (predicted, measured)
