"""The step profile: where a denoising step's time goes, per block type."""

import quantbench.core  # noqa: F401
import mlx.core as mx

from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.profile import CATEGORIES, OUTSIDE, profiling
from reference.pipelines import TEXT_LAYERS


def test_profile_splits_the_last_step_by_block_type_and_kind_of_work(tiny_klein, monkeypatch):
    """In the slices, so that the dequantization is a region of its own (the tile kernel's is inside the product)."""
    from quantbench.core.quant import dense

    monkeypatch.setattr(dense, "TILE_KERNEL", False)
    folder, _ = tiny_klein
    model = Flux2Pipeline.load(folder, quantize=4, text_encoder_layers=TEXT_LAYERS, quantized_matmul="dense")
    transformer = model.transformer
    with profiling(transformer) as profile:
        plain = model.generate("a star", steps=2, width=64, height=64, preview=False)
    report = profile.to_dict()
    blocks = report["by_block"]
    assert blocks["DoubleStreamBlock"]["blocks"] == len(transformer.transformer_blocks)  # one step's worth
    assert blocks["SingleStreamBlock"]["blocks"] == len(transformer.single_transformer_blocks)
    assert OUTSIDE in blocks
    for name in ("matmul", "dequantize", "attention", "norm", "elementwise"):
        assert report["by_category"][name] > 0, name
    parts = sum(report["by_category"][c] for c in CATEGORIES)
    assert abs(parts - report["total_seconds"]) < 0.1 * report["total_seconds"] + 0.01
    # Profiling leaves the model as it was: same classes, same picture.
    assert type(transformer).__name__ == "Flux2Transformer" and type(transformer).__bases__[0] is not type(transformer)
    again = model.generate("a star", steps=2, width=64, height=64, preview=False)
    assert (mx.array(again.pixels) == mx.array(plain.pixels)).all().item()
