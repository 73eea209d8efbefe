"""The one test every registered model family passes (diffusers' idea: one common test per pipeline).

For each family in the registry (core/families/__init__.py) and each of its tiny reference folders
(tests/reference/families.py): the descriptor is complete, the folder loads with the family's engine,
generates, cancels between steps, draws the same image from the same seed (and in lean memory), quantizes, saves and loads back
bit for bit (the memory model counting exactly the bytes it holds), and refuses in one line what the model
cannot do.
"""

from __future__ import annotations

from importlib import import_module

import numpy as np
import pytest

pytest.importorskip("diffusers")

from quantbench.core.catalog import entry_from_folder  # noqa: E402
from quantbench.core.errors import Cancelled, InvalidRequest  # noqa: E402
from quantbench.core.families import FAMILIES, REGISTERED, family_for_folder  # noqa: E402
from quantbench.core.generation import CancelToken, dtype_name  # noqa: E402
from quantbench.core.memory_model import Plan, predict  # noqa: E402
from quantbench.core.pipeline_base import MemoryOptions  # noqa: E402
from quantbench.core.pipelines import load_pipeline  # noqa: E402
from quantbench.core.quant import model_nbytes  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.families import TINY_MODELS  # noqa: E402
from lora_files import fused, linear_layers, lora_tensors, write_lora  # noqa: E402
from quantbench.core.checkpoint import open_component  # noqa: E402
import mlx.core as mx  # noqa: E402

VARIANTS = [(family.name, variant) for family in FAMILIES for variant in TINY_MODELS.get(family.name, {})]
PROMPT, STEPS = "a red star over a blue sky", 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    made = {}
    for name, variant in VARIANTS:
        folder = root / f"{name}-{variant}"
        TINY_MODELS[name][variant].build(folder)
        made[name, variant] = folder
    return made


@pytest.fixture(scope="module")
def pipelines(folders):
    """Each reference folder loaded once in full precision."""
    return {key: load_pipeline(folder, allow_download=False, **TINY_MODELS[key[0]][key[1]].load)
            for key, folder in folders.items()}


def _generate(pipeline, size: int, **options):
    return pipeline.generate(PROMPT, steps=STEPS, width=size, height=size, preview=False, **options)


def _size(key) -> int:
    return TINY_MODELS[key[0]][key[1]].size


def test_every_registered_family_has_a_reference_folder():
    assert [family.name for family in FAMILIES] == list(REGISTERED)
    assert all(TINY_MODELS.get(family.name) for family in FAMILIES), "add the family's builder to reference/families.py"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_the_descriptor_is_complete(family):
    assert import_module(f"quantbench.core.families.{family.name}").FAMILY is family
    assert family.pipeline.family is family and family.pipeline_classes and family.folders
    assert family.components[0] is family.transformer and family.transformer.module is not None
    assert family.transformer.policy is not None and all(c.policy is not None for c in family.text_encoders)
    assert family.text_encoders and family.vae.policy is None
    assert len({c.folder for c in family.components}) == len(family.components)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_loads_and_generates_with_its_own_engine(folders, pipelines, key):
    family, folder, pipeline = family_for_folder(folders[key]), folders[key], pipelines[key]
    assert family.name == key[0] and isinstance(pipeline, family.pipeline)
    assert pipeline.info.pipeline_class in family.pipeline_classes
    assert pipeline.info.defaults == family.read_defaults(folder)
    steps = []
    result = pipeline.generate(PROMPT, steps=STEPS, width=_size(key), height=_size(key), callback=steps.append)
    # RGB, or RGBA where the model's VAE decodes an alpha channel (Qwen-Image 2.1)
    assert result.pixels.shape[:2] == (_size(key), _size(key)) and result.pixels.shape[2] in (3, 4)
    assert np.isfinite(result.pixels).all()
    assert result.image.size == (_size(key), _size(key)) and len(result.step_seconds) == STEPS
    assert [s.index for s in steps] == list(range(STEPS)) and steps[-1].preview is not None


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_step_previews_do_not_raise_the_runs_peak(pipelines, key):
    pipeline = pipelines[key]
    plain = _generate(pipeline, _size(key))
    pipeline._preview_matrix = None  # the preview map is fitted at the first previewed run after loading
    previewed = pipeline.generate(PROMPT, steps=STEPS, width=_size(key), height=_size(key), callback=lambda step: None)
    assert previewed.peak_memory <= plain.peak_memory * 1.05, (previewed.phase_peaks, plain.phase_peaks)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_the_same_seed_draws_the_same_image(pipelines, key):
    first, again = (_generate(pipelines[key], _size(key), seed=3) for _ in range(2))
    other = _generate(pipelines[key], _size(key), seed=4)
    assert np.array_equal(first.pixels, again.pixels)
    assert not np.array_equal(first.pixels, other.pixels)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_cancel_stops_between_steps(pipelines, key):
    token, seen = CancelToken(), []

    def cancel_after_first(step):
        seen.append(step.index)
        token.cancel()

    with pytest.raises(Cancelled):
        pipelines[key].generate(PROMPT, steps=4, width=_size(key), height=_size(key), callback=cancel_after_first,
                                cancel=token, preview=False)
    assert seen == [0]


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_the_declared_build_is_the_loaded_transformer(folders, pipelines, key):
    """What the memory model and the lab count (built from the config, nothing allocated) is what loads."""
    built = family_for_folder(folders[key]).build_transformer(folders[key])
    loaded = pipelines[key].ensure_transformer()
    shapes = lambda module: {k: v.shape for k, v in _flatten(module)}  # noqa: E731
    assert type(built) is type(loaded) and shapes(built) == shapes(loaded)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_quantizes_saves_and_loads_back_bit_for_bit_and_the_memory_model_counts_it(folders, key, tmp_path):
    options = TINY_MODELS[key[0]][key[1]].load
    quantized = load_pipeline(folders[key], quantize=8, text_encoder_quantize=8, allow_download=False, **options)
    assert quantized.info.transformer_bits == 8 and quantized.info.text_encoder_bits == 8
    # The memory model, reading the same folder, counts exactly the bytes the engine holds.
    entry = entry_from_folder(folders[key], options.get("text_encoder_layers"))
    prediction = predict(entry, Plan(transformer_bits=8, text_encoder_bits=8, width=_size(key), height=_size(key),
                                     dtype=dtype_name(quantized.dtype), backend="cpu"))
    engine = {q.component: q.nbytes for q in quantized.info.quantization}
    assert {c.role: c.nbytes for c in prediction.components} == {**engine, "vae": model_nbytes(quantized.vae)}
    expected = _generate(quantized, _size(key), seed=1)
    saved = save_quantized(quantized, tmp_path / "saved")
    reloaded = load_pipeline(saved, allow_download=False, **options)
    assert reloaded.info.transformer_bits == 8
    assert np.array_equal(_generate(reloaded, _size(key), seed=1).pixels, expected.pixels)
    with pytest.raises(InvalidRequest, match="cannot be requantized"):
        load_pipeline(saved, quantize=4, allow_download=False, **options)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_lean_memory_frees_and_reloads_and_draws_the_same_picture(folders, pipelines, key):
    """--low-memory without tiling: the text encoder is freed after encoding, the transformer before the decode
    and reloaded for the next run, and neither changes a pixel (the prompt's features are kept)."""
    lean = load_pipeline(folders[key], allow_download=False, memory=MemoryOptions.lean(vae_tile=None),
                         **TINY_MODELS[key[0]][key[1]].load)
    assert lean.transformer is None and lean.text_encoder is not None
    first = _generate(lean, _size(key), seed=2)
    assert lean.text_encoder is None and lean.transformer is None
    assert "load transformer" in first.phase_peaks
    second = _generate(lean, _size(key), seed=2)
    resident = _generate(pipelines[key], _size(key), seed=2)
    assert np.array_equal(first.pixels, second.pixels) and np.array_equal(first.pixels, resident.pixels)
    lean.memory = MemoryOptions.lean(vae_tile=_size(key) // 2)  # and a decode in four tiles
    tiled = _generate(lean, _size(key), seed=2)
    assert tiled.pixels.shape == resident.pixels.shape and np.isfinite(tiled.pixels).all()
    assert not np.array_equal(tiled.pixels, np.zeros_like(tiled.pixels))


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_a_lora_is_fused_into_the_layers_it_adapts_and_draws_another_picture(folders, pipelines, key, tmp_path):
    """A LoRA in diffusers' layout on three of the transformer's Linear layers (first, middle, last of its
    checkpoint), alphas as tensors (alpha / rank = 2), at strength 0.5: each layer's weight is W + 0.5 x 2 x B @ A,
    every other weight is as without it, and the picture changes."""
    folder, options = folders[key], TINY_MODELS[key[0]][key[1]].load
    layers = linear_layers(folder)
    tensors = lora_tensors(layers, rank=2, alpha=4.0, seed=3)
    lora = write_lora(tmp_path / "style.safetensors", tensors)
    adapted = load_pipeline(folder, allow_download=False, loras=[f"{lora}:0.5"], **options)
    transformer = adapted.ensure_transformer()
    stored_as = adapted.loader.reports["transformer"].stored_as  # parameter -> checkpoint key
    parameter = {key: name for name, key in stored_as.items()}
    source = open_component(folder / "transformer").load()
    weights = dict(_flatten(transformer))
    for module in layers:
        name = parameter[f"{module}.weight"]
        expected = fused(np.array(source[f"{module}.weight"].astype(mx.float32)), tensors, module, 0.5 * 2)
        assert np.allclose(np.array(weights[name]), expected, rtol=1e-5, atol=1e-6), module
    untouched = {name for name in weights if name not in {parameter[f"{m}.weight"] for m in layers}}
    base = dict(_flatten(pipelines[key].ensure_transformer()))
    assert all(np.array_equal(np.array(weights[n]), np.array(base[n])) for n in untouched)
    assert not np.array_equal(_generate(adapted, _size(key), seed=1).pixels,
                              _generate(pipelines[key], _size(key), seed=1).pixels)


@pytest.mark.parametrize("key", VARIANTS, ids="-".join)
def test_refuses_what_the_model_cannot_do_in_one_line(pipelines, key):
    pipeline = pipelines[key]
    family, defaults, size = pipeline.family, pipeline.info.defaults, _size(key)
    refused = [dict(width=size + 8), dict(steps=1001)]
    if not defaults.negative_prompt:
        refused.append(dict(negative_prompt="blurry"))
    if not family.supports.separate_true_cfg or defaults.distilled:
        refused.append(dict(true_cfg=2.0))
    for options in refused:
        request = {"steps": STEPS, "width": size, "height": size, **options}
        with pytest.raises(InvalidRequest) as refusal:
            pipeline.generate(PROMPT, preview=False, **request) if "true_cfg" not in request else \
                family.validate(defaults, None, None, request["width"], request["height"], request["steps"],
                                request["true_cfg"])
        assert "\n" not in str(refusal.value), options
    if defaults.negative_prompt:  # what it can do, it does
        assert _generate(pipeline, size, negative_prompt="blurry", guidance=2.0).negative_prompt == "blurry"


def _flatten(module):
    from mlx.utils import tree_flatten
    return tree_flatten(module.parameters())
