"""Cancelling while the model loads (the workbench's ctrl+x, a quit): the load stops within a layer, the slot is
left empty, what was read is let go, and the next load with a fresh token draws the same picture as a clean load."""

import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from quantbench.core.component_loading import ComponentLoader
from quantbench.core.errors import Cancelled
from quantbench.core.generate import ModelSlot, generate_image
from quantbench.core.generation import CancelToken, GenerationSettings
from quantbench.core.pipeline_base import MemoryOptions, free_buffers
from quantbench.core.random_model import write_random_model
from quantbench.tui.history import HistoryStore


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("cancel-load") / "k4", "klein-4b", width_scale=0.05)


def settings(folder, **changes) -> GenerationSettings:
    return GenerationSettings(model=str(folder), prompt="a red cube", steps=2, width=64, height=64, seed=3,
                              quantize=4, **changes)


class CountedEvals:
    """mlx.core for core/quant/model.py, with each layer's evaluation counted (and `then` called after it)."""

    def __init__(self, then=None):
        self.count, self.then = 0, then

    def __getattr__(self, name):
        return getattr(mx, name)

    def eval(self, *args):
        mx.eval(*args)
        self.count += 1
        if self.then is not None:
            self.then(self.count)


def quant_model_module():
    return sys.modules["quantbench.core.quant.model"]


def clean_picture(folder, tmp_path, memory=None) -> np.ndarray:
    outcome = generate_image(settings(folder), images_dir=tmp_path / "clean", slot=ModelSlot(), memory=memory)
    return np.asarray(outcome.result.image)


def test_a_load_cancelled_after_its_first_component_leaves_the_slot_empty_and_the_next_load_draws_the_same(
        model, tmp_path, monkeypatch):
    expected = clean_picture(model, tmp_path)
    free_buffers()
    held_before = mx.get_active_memory()
    token, loaded = CancelToken(), []
    text_encoder = ComponentLoader.text_encoder

    def cancelled_after_it(self, *args, **kwargs):  # the user presses ctrl+x once the text encoder is in
        module = text_encoder(self, *args, **kwargs)
        loaded.append(sum(a.nbytes for _, a in tree_flatten(module.parameters())))
        token.cancel()
        return module

    monkeypatch.setattr(ComponentLoader, "text_encoder", cancelled_after_it)
    slot, history = ModelSlot(), HistoryStore(tmp_path / "history.jsonl")
    images = tmp_path / "images"
    with pytest.raises(Cancelled) as caught:  # kept, as the workbench's worker keeps the error it ended with
        generate_image(settings(model), images_dir=images, slot=slot, history=history, cancel=token)
    assert str(caught.value) == "cancelled"
    assert slot.pipeline is None and slot.key is None  # nothing half-loaded for the next run to reuse
    assert not list(images.glob("*.png")) and history.load() == []
    # the text encoder's arrays were let go, though the exception (and the frames that were loading) is still held
    held_after = mx.get_active_memory()
    assert loaded and held_after - held_before < loaded[0] / 2, (held_before, held_after, loaded)

    monkeypatch.setattr(ComponentLoader, "text_encoder", text_encoder)
    outcome = generate_image(settings(model), images_dir=images, slot=slot, history=history, cancel=CancelToken())
    assert slot.pipeline is not None and slot.key is not None
    assert np.array_equal(np.asarray(outcome.result.image), expected)
    assert len(history.load()) == 1


def test_a_load_stops_within_a_layer_of_the_press(model, tmp_path, monkeypatch):
    """The transformer is read and quantized layer by layer; a cancel between two of them is the last one read."""
    token = CancelToken()
    pressed_at = {}

    def press_at_the_fifth_layer(count):
        if count == 5:
            pressed_at["count"] = count
            token.cancel()

    counted = CountedEvals(press_at_the_fifth_layer)
    monkeypatch.setattr(quant_model_module(), "mx", counted)
    slot = ModelSlot()
    with pytest.raises(Cancelled):
        generate_image(settings(model), images_dir=tmp_path / "images", slot=slot, cancel=token)
    assert counted.count == pressed_at["count"]  # not one layer more was read after the press
    assert slot.pipeline is None and slot.key is None

    whole = CountedEvals()
    monkeypatch.setattr(quant_model_module(), "mx", whole)
    generate_image(settings(model), images_dir=tmp_path / "images", slot=ModelSlot(), cancel=CancelToken())
    assert whole.count > 4 * counted.count  # a whole load evaluates many more layers than were read


def test_a_lean_run_cancelled_while_its_transformer_loads_stops_and_the_next_run_loads_it(model, tmp_path,
                                                                                            monkeypatch):
    """Lean runs load the transformer once the prompt is encoded, inside the run: a cancel stops that load too."""
    expected = clean_picture(model, tmp_path, MemoryOptions.lean())
    token = CancelToken()
    transformer = ComponentLoader.transformer
    counted = CountedEvals(lambda count: count == 3 and token.cancel())

    def counted_transformer(self):
        monkeypatch.setattr(quant_model_module(), "mx", counted)
        try:
            return transformer(self)
        finally:
            monkeypatch.setattr(quant_model_module(), "mx", mx)

    monkeypatch.setattr(ComponentLoader, "transformer", counted_transformer)
    slot, images = ModelSlot(), tmp_path / "images"
    with pytest.raises(Cancelled):
        generate_image(settings(model), images_dir=images, slot=slot, memory=MemoryOptions.lean(), cancel=token)
    assert counted.count == 3
    assert slot.pipeline is None or slot.pipeline.transformer is None
    assert not list(images.glob("*.png"))
    outcome = generate_image(settings(model), images_dir=images, slot=slot, memory=MemoryOptions.lean(),
                             cancel=CancelToken())
    assert np.array_equal(np.asarray(outcome.result.image), expected)


def test_a_load_cancelled_while_it_keeps_layers_dense_keeps_nothing(model, tmp_path, monkeypatch):
    """--keep-dequantized dequantizes the transformer's layers one by one after the load: a cancel there stops it
    too, and the next run has the whole model with every layer kept, not a transformer kept in part."""
    import math

    from quantbench.core.quant import dense

    token, kept = CancelToken(), []
    dequantize = dense.dequantize_weight

    def cancelled_at_the_third(layer, dtype):
        kept.append(layer)
        if len(kept) == 3:
            token.cancel()
        return dequantize(layer, dtype)

    monkeypatch.setattr(dense, "dequantize_weight", cancelled_at_the_third)
    memory = MemoryOptions(keep_dequantized=math.inf)
    slot = ModelSlot()
    with pytest.raises(Cancelled):
        generate_image(settings(model), images_dir=tmp_path / "images", slot=slot, memory=memory, cancel=token)
    assert len(kept) == 3 and slot.pipeline is None and slot.key is None
    monkeypatch.setattr(dense, "dequantize_weight", dequantize)
    outcome = generate_image(settings(model), images_dir=tmp_path / "images", slot=slot, memory=memory,
                             cancel=CancelToken())
    assert outcome.pipeline.info.kept_dequantized_bytes > 0
