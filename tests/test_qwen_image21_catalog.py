"""Qwen-Image 2.1 in the catalog: parameter counts equal the reference classes built at the real sizes on the
meta device, the memory model's layers are the engine's own modules, and the recommendations for small Macs."""

import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from quantbench.core.catalog import get_entry
from quantbench.core.families.qwen_image21.text_encoder import text_encoder_module
from quantbench.core.families.qwen_image21.transformer import QwenImage21Transformer
from quantbench.core.families.qwen_image21.vae import QwenImage21VAE
from quantbench.core.memory_model import Plan, architecture, predict
from quantbench.core.recommend import recommend

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

# Qwen3-VL-8B's vision tower (not loaded for text-to-image, but in the download).
QWEN3_VL_8B_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                          deepstack_visual_indexes=[8, 16, 24], patch_size=16, num_position_embeddings=2304)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mlx_count(module: nn.Module) -> int:
    return sum(a.size for _, a in tree_flatten(module.parameters()))


def _linears(module: nn.Module) -> dict[str, tuple[int, int]]:
    return {path: tuple(m.weight.shape) for path, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding))}


@pytest.fixture(scope="module")
def entry():
    return get_entry("qwen-image-2.1")


def test_transformer_count_equals_diffusers_at_the_real_size(entry):
    from diffusers import QwenImage21Transformer2DModel

    config = dict(entry.transformer.config)
    with torch.device("meta"):
        reference = QwenImage21Transformer2DModel(**config)
    assert architecture(entry.transformer).download_params == _count(reference) == 7_115_124_736


def test_text_encoder_count_equals_transformers_at_the_real_size(entry):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    te = entry.component("text_encoder")
    text = {k: v for k, v in te.config["text_config"].items() if k != "tie_word_embeddings"}
    with torch.device("meta"):
        reference = Qwen3VLForConditionalGeneration(Qwen3VLConfig(
            text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                     "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
            vision_config=QWEN3_VL_8B_VISION, tie_word_embeddings=False))
    arch = architecture(te)
    assert arch.download_params == _count(reference) == 8_767_123_696
    language_model = reference.model.language_model
    assert arch.params == _count(language_model) - language_model.norm.weight.numel()  # read before the norm


def test_vae_counts_equal_diffusers(entry):
    from diffusers import AutoencoderKLQwenImage21

    with torch.device("meta"):
        reference = AutoencoderKLQwenImage21()
    time_convs = sum(p.numel() for name, p in reference.decoder.named_parameters() if "time_conv" in name)
    arch = architecture(entry.vae)
    assert arch.download_params == _count(reference)
    assert arch.params == _count(reference.decoder) - time_convs + _count(reference.post_quant_conv)
    assert arch.params == _mlx_count(QwenImage21VAE())  # the engine's decoder, built at the released config


def test_memory_model_layers_are_the_engines_modules_at_the_real_size(entry):
    """Paths and shapes of every quantizable layer equal the MLX modules built from the real configs (the
    parameters are never evaluated, so nothing is allocated)."""
    transformer = QwenImage21Transformer.from_config(dict(entry.transformer.config))
    arch = architecture(entry.transformer)
    assert {layer.path: (layer.out_dim, layer.in_dim) for layer in arch.layers} == _linears(transformer)
    assert arch.params == _mlx_count(transformer)
    te = entry.component("text_encoder")
    encoder = text_encoder_module(dict(te.config))
    assert {layer.path for layer in architecture(te).layers} == set(_linears(encoder))
    assert architecture(te).params == _mlx_count(encoder)


def test_turbo_is_the_same_model_distilled_to_its_own_grid():
    base, turbo = get_entry("qwen-image-2.1"), get_entry("qwen-image-2.1-turbo")
    assert (turbo.distilled, turbo.default_steps, turbo.guidance, turbo.negative_prompt) == (True, 8, "none", False)
    assert (base.distilled, base.default_steps, base.default_guidance, base.guidance) == (False, 40, 1.0, "true-cfg")
    assert turbo.components == base.components


def test_the_default_run_is_one_pass_per_step_and_cfg_doubles_the_batch(entry):
    """The base samples without guidance by default, so predictions use a batch of one unless asked."""
    default = predict(entry, Plan(transformer_bits=4, backend="cpu", dtype="float32"))
    cfg = predict(entry, Plan(transformer_bits=4, backend="cpu", dtype="float32", batch=2))
    assert cfg.denoise_activations > 1.9 * default.denoise_activations


@pytest.mark.parametrize("ram,fits", [(16, True), (8, False)])
def test_recommendations_for_small_macs(ram, fits):
    advice = recommend(ram, "qwen-image-2.1").get("qwen-image-2.1")
    assert (advice.status in ("fits", "tight")) == fits
    if fits:  # a 16 GB Mac needs the 15 GB bf16 text encoder at 8 bits, loaded alone
        assert advice.plan.text_encoder_bits == 8 and advice.plan.text_encoder == "staged"
