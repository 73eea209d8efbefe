"""The catalog: lookups, the facts users read, and parameter counts derived from the configs."""

import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from quantbench.core.catalog import ENTRIES, entry_from_folder, find_entry, get_entry
from quantbench.core.errors import InvalidRequest
from quantbench.core.blocks.decoder_lm import DecoderLM
from quantbench.core.families.flux2.text_encoder import qwen3_config
from quantbench.core.families.flux2.transformer import Flux2Transformer, Flux2TransformerConfig
from quantbench.core.families.flux2.vae import Flux2VAE
from quantbench.core.memory_model import architecture, entry_facts

# Parameter counts of the reference implementations (diffusers 0.42 / transformers 5.23 models built
# from the same configs on the meta device; tied embeddings counted once).
REFERENCE_PARAMS = {
    ("klein-4b", "transformer"): 3_875_544_576,
    ("klein-9b", "transformer"): 9_078_581_248,
    ("flux2-dev", "transformer"): 32_223_281_152,
    ("flux1-dev", "transformer"): 11_901_408_320,
    ("flux1-schnell", "transformer"): 11_891_178_560,
    ("qwen-image", "transformer"): 20_430_401_088,
    ("klein-4b", "text_encoder"): 4_022_468_096,  # Qwen3-4B
    ("klein-9b", "text_encoder"): 8_190_735_360,  # Qwen3-8B
    ("flux1-dev", "text_encoder"): 123_060_480,  # CLIP-L
    ("flux1-dev", "text_encoder_2"): 4_762_310_656,  # T5-v1.1-XXL encoder
    ("klein-4b", "vae"): 84_046_115 + 256,  # AutoencoderKLFlux2 + its batch-norm statistics
    ("flux1-dev", "vae"): 83_819_683,
    ("qwen-image", "vae"): 126_892_531,
}


def test_every_model_the_issue_names_is_there_with_a_unique_short_id():
    ids = [e.id for e in ENTRIES]
    assert len(ids) == len(set(ids))
    for wanted in ("klein-4b", "klein-4b-base", "klein-9b", "klein-9b-base", "flux2-dev", "flux1-schnell",
                   "flux1-dev", "qwen-image", "demo", "demo-turbo"):
        assert wanted in ids


def test_find_entry_matches_id_or_repo_case_insensitively():
    assert find_entry("klein-4b").repo == "black-forest-labs/FLUX.2-klein-4B"
    assert find_entry("Black-Forest-Labs/flux.2-klein-4b").id == "klein-4b"
    assert find_entry("  QWEN-IMAGE ").id == "qwen-image"
    assert find_entry("nope") is None


def test_unknown_model_is_a_one_line_error_listing_the_choices():
    with pytest.raises(InvalidRequest) as err:
        get_entry("sdxl")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unknown model 'sdxl'")
    assert "klein-4b" in message and "qwen-image" in message


def test_runnable_models_are_the_flux2_family_and_the_shipped_builtins():
    runnable = {e.id for e in ENTRIES if e.runnable}
    assert {"klein-4b", "klein-4b-base", "klein-9b", "klein-9b-base", "flux2-dev"} <= runnable
    assert {e.id for e in ENTRIES if e.family == "builtin" and e.shipped} <= runnable


@pytest.mark.parametrize("model,distilled,steps,guidance,negative,layers", [
    ("klein-4b", True, 4, 1.0, False, (9, 18, 27)),
    ("klein-9b-base", False, 50, 4.0, True, (9, 18, 27)),
    ("flux2-dev", False, 50, 4.0, False, (10, 20, 30)),
    ("flux1-schnell", True, 4, 0.0, False, None),
    ("flux1-dev", False, 28, 3.5, False, None),
    ("qwen-image", False, 50, 4.0, True, None),
])
def test_generation_facts(model, distilled, steps, guidance, negative, layers):
    e = get_entry(model)
    assert (e.distilled, e.default_steps, e.default_guidance, e.negative_prompt, e.text_encoder_layers) == \
        (distilled, steps, guidance, negative, layers)


def test_licences_and_gating():
    assert not get_entry("klein-4b").gated and get_entry("klein-4b").licence == "Apache-2.0"
    assert get_entry("flux1-dev").gated and get_entry("klein-9b").gated and get_entry("flux2-dev").gated
    assert not get_entry("qwen-image").gated


def test_qwen_image_text_encoder_is_never_quantized():
    assert not get_entry("qwen-image").component("text_encoder").quantizable


@pytest.mark.parametrize("key,expected", sorted(REFERENCE_PARAMS.items()))
def test_parameter_counts_derived_from_configs_equal_the_reference_implementations(key, expected):
    model, role = key
    assert architecture(get_entry(model).component(role)).download_params == expected


def test_derived_counts_agree_with_the_published_figures():
    for entry in ENTRIES:
        for c in entry.components:
            if c.published_params:
                derived = architecture(c).download_params
                assert derived == pytest.approx(c.published_params, rel=0.02), (entry.id, c.role)


def test_klein_4b_transformer_is_3_88b_params_and_7_75_gb_in_bf16():
    params = architecture(get_entry("klein-4b").transformer).params
    assert round(params / 1e9, 2) == 3.88
    assert round(params * 2 / 1e9, 2) == 7.75


def _linears(module: nn.Module) -> dict[str, tuple[int, int]]:
    return {path: tuple(m.weight.shape) for path, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding))}


def _count(module: nn.Module) -> int:
    return sum(a.size for _, a in tree_flatten(module.parameters()))


def test_transformer_layers_are_the_engines_own_modules_at_klein_4b_size():
    """Paths and shapes of every quantizable layer equal the MLX module built from the real config
    (parameters are never evaluated, so nothing is allocated)."""
    cfg = dict(get_entry("klein-4b").transformer.config)
    module = Flux2Transformer(Flux2TransformerConfig.from_dict(cfg))
    arch = architecture(get_entry("klein-4b").transformer)
    assert {layer.path: (layer.out_dim, layer.in_dim) for layer in arch.layers} == _linears(module)
    assert arch.params == _count(module)


def test_text_encoder_counts_only_the_layers_the_engine_loads():
    entry = get_entry("klein-4b")
    te = entry.component("text_encoder")
    module = DecoderLM(qwen3_config(dict(te.config)), num_layers=27)
    arch = architecture(te, entry.text_encoder_layers)
    assert arch.params == _count(module)
    assert {layer.path for layer in arch.layers} == set(_linears(module))
    assert arch.download_params == architecture(te).params  # the 9 later layers are download only


def test_vae_counts_the_decoder_the_engine_builds():
    module = Flux2VAE()
    assert architecture(get_entry("klein-4b").vae).params == _count(module)


def test_entry_from_a_local_folder(tiny_klein):
    folder, _ = tiny_klein
    entry = entry_from_folder(folder, (1, 3, 5))
    assert entry.runnable and entry.distilled and entry.text_encoder_layers == (1, 3, 5)
    assert entry.transformer.config["num_attention_heads"] == 2


def test_component_download_sizes_match_models_md():
    """Klein 4B: transformer 7.75 GB + Qwen3-4B 8.05 GB + the VAE (models.md)."""
    facts = entry_facts(get_entry("klein-4b"))
    sizes = {c["role"]: c["download_bytes"] / 1e9 for c in facts["components"]}
    assert sizes["transformer"] == pytest.approx(7.75, abs=0.01)
    assert sizes["text_encoder"] == pytest.approx(8.05, abs=0.01)
    assert sizes["vae"] == pytest.approx(0.17, abs=0.01)
    text = facts["components"][1]
    assert (text["subfolder"], text["repo"]) == ("text_encoder", "black-forest-labs/FLUX.2-klein-4B")
    assert text["loaded_params"] < text["params"]  # layers after 27 are never loaded
    # the published repository sizes also hold the single-file checkpoints: never smaller
    for entry in ENTRIES:
        if entry.download_gb and entry.components:
            assert entry_facts(entry)["components_download_bytes"] / 1e9 <= entry.download_gb * 1.03, entry.id


def test_a_shipped_builtin_model_is_described_from_its_own_folder(tmp_path):
    import json

    from quantbench.core.catalog import find_entry, shipped_builtin
    from quantbench.core.random_model import write_random_model

    folder = write_random_model(tmp_path / "demo", "tiny", distilled=False)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(default_steps=20, default_guidance=1.5, default_width=64, default_height=64, max_sequence_length=32)
    (folder / "model_index.json").write_text(json.dumps(index))
    placeholder = find_entry("demo")
    entry = shipped_builtin(placeholder, tmp_path)
    assert entry.shipped and entry.runnable and entry.transformer is not None
    assert (entry.default_steps, entry.default_guidance, entry.default_size) == (20, 1.5, (64, 64))
    assert entry.max_sequence_length == 32 and entry.text_encoder_layers == (1, 2, 3)
    assert shipped_builtin(placeholder, tmp_path / "nowhere") is placeholder
