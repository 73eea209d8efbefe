"""Calibration: quantbench samples its own prompts, gathers each layer's X^T X, and quantizes block by block."""

import dataclasses
from shutil import _ntuple_diskusage as shutil_usage

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from quantbench.core.builtin.captions import parse_caption
from quantbench.core.builtin.world import eval_prompts
from quantbench.core.errors import Cancelled, InvalidRequest
from quantbench.core.generation import CancelToken
from quantbench.core.pipelines import load_pipeline
from quantbench.core.quant import QuantSpec, module_at
from quantbench.core.quant import calibration as cal
from quantbench.core.quant.calibration.replay import Call, batched, merged
from quantbench.core.quant.calibration.spill import Spill, calibration_root
from quantbench.core.quant.methods.awq import fold_rows

PROMPT = "a small red circle on the left over a flat blue background"


def test_builtin_calibration_prompts_are_world_captions_disjoint_from_the_eval_set():
    prompts = cal.builtin_prompts(16)
    assert len(prompts) == len(set(prompts)) == 16
    evaluated = set(eval_prompts())
    assert not any(parse_caption(p) in evaluated for p in prompts)
    assert prompts == cal.builtin_prompts(16)  # fixed: the saved model's hash must mean something


def test_prompt_files(tmp_path):
    good = tmp_path / "prompts.txt"
    good.write_text("# mine\na red fox\n\n  a blue bird  \n", encoding="utf-8")
    assert cal.read_prompt_file(good) == ["a red fox", "a blue bird"]
    assert cal.prompts_digest(["a", "b"]) != cal.prompts_digest(["b", "a"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    for path in (empty, tmp_path / "missing.txt"):
        with pytest.raises(InvalidRequest):
            cal.read_prompt_file(path)


def test_calls_merge_along_their_batch_and_share_position_tables():
    rope = (mx.ones((5, 4)), mx.zeros((5, 4)))
    calls = [Call((mx.full((1, 3, 2), float(i)), mx.full((1, 7), 10.0 + i), rope, None), {}) for i in range(5)]
    calls_merged = [merged(group) for group in batched(calls, limit_bytes=2 * calls[0].nbytes())]
    assert [c.batch for c in calls_merged] == [2, 2, 1]
    first = calls_merged[0]
    assert first.args[2][0] is rope[0] and first.args[2][1] is rope[1] and first.args[3] is None
    assert np.array_equal(np.array(first.args[0][:, 0, 0]), [0.0, 1.0])
    assert np.array_equal(np.array(calls_merged[2].args[1][:, 0]), [14.0])


def test_calls_kept_on_disk_read_back_the_same_and_the_folder_goes(tmp_path):
    rope = (mx.ones((5, 4)), mx.zeros((5, 4)))
    calls = [Call((mx.random.normal((1, 3, 2)).astype(mx.bfloat16), mx.full((1, 7), 10.0 + i), rope), {"t": None})
             for i in range(3)]
    with Spill(tmp_path) as spill:
        stored = [c.stored(spill, f"call{i}") for i, c in enumerate(calls)]
        assert spill.bytes > sum(c.nbytes() for c in calls) and len(list(spill.folder.iterdir())) == 3
        assert [c.nbytes() for c in stored] == [c.nbytes() for c in calls]  # the shared rope is not written
        for before, after in zip(calls, stored):
            back = after.inputs()
            assert back.args[2][0] is rope[0] and back.args[2][1] is rope[1] and back.kwargs == {"t": None}
            assert back.args[0].dtype == mx.bfloat16 and bool(mx.array_equal(back.args[0], before.args[0]))
        assert [c.batch for c in map(merged, batched(stored, 2 * calls[0].nbytes()))] == [2, 1]
    assert list(tmp_path.iterdir()) == []


def test_hooks_see_the_call_and_leave_the_modules_as_they_were():
    layer = nn.Linear(4, 2)
    seen = []

    def hook(module, call, args, kwargs):
        seen.append(args[0].shape)
        return call(*args, **kwargs) * 0

    with cal.hooks([(layer, hook)]):
        assert float(mx.abs(layer(mx.ones((3, 4)))).sum()) == 0
    assert type(layer) is nn.Linear and "_hook" not in layer.__dict__
    assert float(mx.abs(layer(mx.ones((3, 4)))).sum()) > 0 and seen == [(3, 4)]


def test_channel_folds_leave_the_model_unchanged():
    """AWQ's folds are exact: scaling consumer columns by s and producer rows by 1/s changes nothing."""
    pipeline = load_pipeline("demo-turbo", allow_download=False)
    transformer = pipeline.transformer
    calls = []
    with cal.hooks([(transformer, lambda m, call, a, k: calls.append((a, k)) or call(*a, **k))]):
        pipeline.generate(PROMPT, seed=0, width=64, height=64, steps=2, preview=False)
    args, kwargs = calls[-1]
    before = transformer(*args, **kwargs)
    rng = np.random.default_rng(0)
    folds = transformer.channel_folds()
    assert len(folds) == 3 * 2 + 3
    for consumers, producers in folds:
        scales = mx.array(np.exp(rng.standard_normal(module_at(transformer, consumers[0]).weight.shape[1]))
                          .astype(np.float32))
        for path in consumers:
            module_at(transformer, path).weight = module_at(transformer, path).weight * scales[None, :]
        for path, segments in producers:
            fold_rows(module_at(transformer, path), segments, scales)
    after = transformer(*args, **kwargs)
    assert float(mx.abs(after - before).max()) < 1e-5 * float(mx.abs(before).max())


@pytest.fixture(scope="module")
def turbo():
    return load_pipeline("demo-turbo", allow_download=False)


def _options(prompts=4, **options):
    return cal.CalibrationOptions(prompts=tuple(cal.builtin_prompts(prompts)), **options)


def _transformer_error(transformer, reference, calls) -> float:
    errors = []
    for args, kwargs in calls:
        expected = reference(*args, **kwargs)
        errors.append(float(mx.mean(mx.square(transformer(*args, **kwargs) - expected))))
    return float(np.mean(errors))


def test_calibrated_gptq_beats_round_to_nearest_on_the_model_output(turbo):
    """Held-out inputs (another prompt, every step): the calibrated 2-bit transformer's velocity error is
    well below round-to-nearest's at the same bits and group size."""
    reference_pipeline = load_pipeline("demo-turbo", allow_download=False)
    reference = reference_pipeline.transformer
    calls = []
    with cal.hooks([(reference, lambda m, call, a, k: calls.append((a, k)) or call(*a, **k))]):
        reference_pipeline.generate(PROMPT, seed=3, width=64, height=64, preview=False)
    progress = []
    result = cal.calibrate(turbo, QuantSpec(2, 64, "gptq"), _options(progress=progress.append))
    assert turbo.transformer is result.transformer
    gptq_error = _transformer_error(result.transformer, reference, calls)
    rtn = load_pipeline("demo-turbo", quantize=QuantSpec(2, 64, "rtn"), allow_download=False)
    rtn_error = _transformer_error(rtn.transformer, reference, calls)
    assert gptq_error < rtn_error / 2, (gptq_error, rtn_error)
    report = result.report
    assert set(report.layers) == {p for p, m in result.transformer.named_modules() if isinstance(m, nn.QuantizedLinear)}
    assert report.calibration["prompts"] == 4 and report.calibration["prompts_sha256"] == \
        cal.prompts_digest(cal.builtin_prompts(4))
    assert turbo.loader.quantization["transformer"] is report
    # Progress: sampling first, then every block in order, with an estimate of the time left.
    blocks = [p.block for p in progress if p.stage == "blocks"]
    assert progress[0].stage == "sampling" and blocks == sorted(blocks) and blocks[-1] == 5
    assert "block 5 of 5" in progress[-1].line() and "left" in progress[-1].line()
    # Each stage fills its own bar, never falling back (the sampling's once filled, then fell to 58% at block 1).
    for stage in ("sampling", "blocks"):
        shown = [p.done / p.total for p in progress if p.stage == stage]
        assert shown == sorted(shown) and shown[-1] == pytest.approx(1.0), (stage, shown)
        assert shown[0] <= 0.1, (stage, shown[:3])  # from the start of its own work: block 1 showed 28-58% before
    sampling = [p.line() for p in progress if p.stage == "sampling"]
    assert "(100%" in sampling[-1], sampling[-1]


def test_cancelling_leaves_no_transformer(turbo):
    cancel = CancelToken()

    def stop_in_block_two(progress):
        if progress.stage == "blocks" and progress.block == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        cal.calibrate(turbo, QuantSpec(3, 64, "gptq"), _options(2, progress=stop_in_block_two, cancel=cancel))
    assert turbo.transformer is None
    assert not list(calibration_root().iterdir())  # the recorded calls and cached outputs went too


def test_calibrating_with_its_inputs_on_disk_gives_the_same_weights_with_less_memory():
    """The recorded calls and the cached block outputs on disk (the default) or in memory: bitwise the same
    quantized transformer; on disk MLX's peak is lower and the temporary folder is gone afterwards."""
    results = {}
    for on_disk in (True, False):
        pipeline = load_pipeline("demo-turbo", allow_download=False)
        settings = dataclasses.replace(cal.settings_for(pipeline, _options()), on_disk=on_disk)
        results[on_disk] = cal.calibrate(pipeline, QuantSpec(3, 64, "gptq"), settings=settings)
    on_disk, in_memory = results[True], results[False]
    weights = dict(tree_flatten(in_memory.transformer.parameters()))
    assert all(bool(mx.array_equal(a, weights[k])) for k, a in tree_flatten(on_disk.transformer.parameters()))
    assert on_disk.report.calibration["disk_bytes"] > 0 == in_memory.report.calibration["disk_bytes"]
    assert on_disk.report.calibration["calls"] == 4 * 4  # 4 prompts x 4 steps
    assert on_disk.peak < in_memory.peak, (on_disk.peak, in_memory.peak)
    assert not list(calibration_root().iterdir())


def test_a_calibration_the_disk_cannot_hold_is_refused_in_one_line(turbo, monkeypatch):
    from quantbench.core.quant.calibration import spill
    monkeypatch.setattr(spill.shutil, "disk_usage", lambda path: shutil_usage(total=1 << 40, used=0, free=1 << 20))
    with pytest.raises(InvalidRequest, match="temporary space") as refused:
        cal.calibrate(turbo, QuantSpec(3, 64, "gptq"), _options(2))
    assert "\n" not in str(refused.value) and spill.ROOT_VARIABLE in str(refused.value)
    assert turbo.transformer is None and not list(calibration_root().iterdir())


def test_layer_statistics_cover_every_layer_from_one_pass(turbo):
    """The plan search's statistics: every quantizable layer's X^T X from the full-precision model, with as
    many rows as the recorded calls fed it; the pipeline's transformer is left as it was."""
    from quantbench.core.lab.layer_bytes import quantizable_layers
    pipeline = load_pipeline("demo-turbo", allow_download=False)
    before = pipeline.transformer
    paths = list(quantizable_layers(before))
    stats = cal.layer_statistics(pipeline, paths, _options(2))
    assert pipeline.transformer is before and set(stats) == set(paths)
    calls = 2 * pipeline.default_steps
    # Image-stream layers see the 16 latent tokens of each call, text-stream layers its 32 text tokens.
    assert stats["transformer_blocks.0.attn.to_q"].tokens == calls * 16
    assert stats["transformer_blocks.0.attn.add_q_proj"].tokens == calls * 32
    xtx = stats["single_transformer_blocks.0.attn.to_out"].xtx
    assert xtx.shape == (512, 512) and bool(mx.all(mx.diagonal(xtx) >= 0))


def _exact_total(batches) -> np.ndarray:
    from quantbench.core.quant.calibration.exact_sum import ExactSum
    running = ExactSum()
    for rows in batches:
        running.add_rows(mx.array(rows))
    xtx, tokens = running.total()
    assert tokens == sum(len(rows) for rows in batches)
    return np.asarray(xtx)


def test_x_t_x_is_the_same_bits_in_any_order_and_close_to_the_exact_sum():
    """What lets a calibration split across ranks give one process's weights: the sum of the batches'
    products does not depend on their order (a float32 running sum does), and it is as accurate as float32."""
    rng = np.random.default_rng(0)
    width = 700  # three blocks of rows, the last partial
    scales = np.where(np.arange(width) % 97 == 0, 40.0, 1.0).astype(np.float32)  # a few large channels
    batches = [(rng.standard_normal((n, width)) * scales * s).astype(np.float32)
               for n, s in [(300, 1.0), (17, 30.0), (256, 0.01), (1, 1.0), (120, 3.0)]]
    forward = _exact_total(batches)
    assert np.array_equal(forward.view(np.uint32), _exact_total(batches[::-1]).view(np.uint32))
    assert np.array_equal(forward.view(np.uint32), _exact_total([batches[i] for i in (2, 0, 4, 1, 3)]).view(np.uint32))
    exact = sum(b.astype(np.float64).T @ b.astype(np.float64) for b in batches)
    assert np.abs(forward - exact).max() <= 1e-6 * np.abs(exact).max()
    running = np.zeros((width, width), np.float32)  # the plain float32 running sum is order-dependent
    orders = [np.asarray(sum((b.T @ b for b in order), running)) for order in (batches, batches[::-1])]
    assert not np.array_equal(orders[0], orders[1])


def test_products_too_far_apart_to_add_exactly_are_refused_in_one_line():
    small = np.full((4, 8), 1e-12, np.float32)
    with pytest.raises(InvalidRequest, match="cannot add their statistics exactly"):
        _exact_total([small, np.full((4, 8), 1e12, np.float32)])


@pytest.mark.parametrize("scale", [1.0, 1e-3])  # 1e-3: a finer grid, the running sum is shifted onto it
def test_summing_a_batch_holds_one_block_of_rows_in_flight_beside_the_running_sum(scale):
    """Calibration's peak is the running int64 X^T X plus what a batch adds while it is summed: one block of
    ROW_BLOCK rows of the product (float32) and its grid units (int64). The running sum is added to in
    place, not copied."""
    from quantbench.core.quant.calibration.exact_sum import ROW_BLOCK, ExactSum
    width = 1024
    rng = np.random.default_rng(1)
    running = ExactSum()
    running.add_rows(mx.array(rng.standard_normal((64, width)).astype(np.float32)))
    rows = mx.array((rng.standard_normal((64, width)) * scale).astype(np.float32))
    mx.eval(rows)
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    running.add_rows(rows)
    in_flight = mx.get_peak_memory() - before
    assert in_flight <= ROW_BLOCK * width * (4 + 8) * 1.1, in_flight / (ROW_BLOCK * width)
