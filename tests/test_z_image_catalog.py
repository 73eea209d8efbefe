"""Z-Image in the catalog and the memory model: parameter counts equal the reference classes built on the meta
device from the catalog's configs; download sizes, quantized sizes and the kept layers at the real sizes."""

import pytest

from quantbench.core.catalog import get_entry
from quantbench.core.families.z_image.components import TRANSFORMER_POLICY
from quantbench.core.memory_model import Plan, architecture, component_size, entry_facts, predict

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

MODELS = ("z-image-turbo", "z-image")


def _meta_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def reference_counts():
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    entry = get_entry("z-image-turbo")
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**{k: v for k, v in entry.transformer.config.items()})
        text = Qwen3Model(Qwen3Config(**dict(entry.component("text_encoder").config)))
        vae = AutoencoderKL(**{k: v for k, v in entry.vae.config.items() if not k.startswith("use_")},
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            use_quant_conv=False, use_post_quant_conv=False)
    return {"transformer": _meta_count(transformer), "text_encoder": _meta_count(text), "vae": _meta_count(vae)}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("role", ["transformer", "text_encoder", "vae"])
def test_parameter_counts_equal_the_reference_classes(reference_counts, model, role):
    assert architecture(get_entry(model).component(role)).download_params == reference_counts[role]


def test_the_real_transformer_is_6_15b_parameters(reference_counts):
    assert reference_counts["transformer"] == 6_154_908_736


def test_kept_layers_are_a_small_fraction_of_the_weights():
    size = component_size(get_entry("z-image").transformer, 4, policy="engine")
    kept = sum(size.kept.values())
    assert kept / size.params < 0.001
    assert size.quantized_params / size.params > 0.99


@pytest.mark.parametrize("model", MODELS)
def test_generation_facts(model):
    entry = get_entry(model)
    turbo = model == "z-image-turbo"
    assert entry.runnable and entry.family == "z-image" and not entry.gated and entry.licence == "Apache-2.0"
    assert (entry.distilled, entry.default_steps, entry.default_guidance, entry.negative_prompt) == \
        ((True, 9, 0.0, False) if turbo else (False, 50, 4.0, True))
    assert entry.text_encoder_layers == (-2,)


def test_download_sizes_follow_the_stored_dtypes():
    """Turbo's repository stores its transformer in float32 (24.6 GB), the base model's in bfloat16 (12.3 GB)."""
    turbo, base = (entry_facts(get_entry(m)) for m in MODELS)
    assert turbo["components"][0]["download_bytes"] / 1e9 == pytest.approx(24.6, abs=0.05)
    assert base["components"][0]["download_bytes"] / 1e9 == pytest.approx(12.3, abs=0.05)
    assert turbo["components_download_bytes"] / 1e9 == pytest.approx(32.8, abs=0.1)
    text = turbo["components"][1]
    assert text["loaded_params"] < text["params"]  # the last layer and the final norm are never loaded


def test_quantized_sizes_and_true_cfg_batch():
    entry = get_entry("z-image")
    full, q4 = (predict(entry, Plan(transformer_bits=b)).component_bytes("transformer") for b in (None, 4))
    assert 0.28 < q4 / full < 0.29
    turbo = predict(get_entry("z-image-turbo"), Plan(transformer_bits=4))
    base = predict(entry, Plan(transformer_bits=4))
    assert base.denoise_activations > 1.9 * turbo.denoise_activations  # prompt and negative in one batch


def test_memory_model_uses_the_engines_policy():
    size = component_size(get_entry("z-image").transformer, 4)
    engine_kept = {rule.reason for rule in TRANSFORMER_POLICY.keep}
    assert engine_kept <= set(size.kept)
