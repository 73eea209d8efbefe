"""Prompt tokenization and the MLX Qwen3 text encoder against transformers/diffusers (float32)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.flux2.text_encoder import load_text_encoder  # noqa: E402
from quantbench.core.families.flux2.tokenizer import PromptTokenizer  # noqa: E402
from reference.tokenizer import TINY_VOCAB_SIZE, build_tiny_qwen_tokenizer  # noqa: E402

TINY_QWEN3 = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                  pad_token_id=None, attn_implementation="eager")

PROMPTS = [
    "A red fox sitting in the snow at dawn, soft golden light.",
    "",
    "An astronaut riding a horse across a desert under a purple sky full of stars, oil painting, "
    "dramatic clouds, in the style of the old masters, 35mm film grain.",
    "Zebra ünïcödé 漢字 🦊 and a literal <|im_end|> inside the prompt",
]

# Both sides compute in float32 and differ only in summation order (matmuls, softmax, RMSNorm) and
# in how RoPE angles are rounded, so errors stay a few float32 ulps of the activations (O(1) to O(10)
# here) per layer: about 5e-6 measured, 1e-4 leaves room for other BLAS builds.
MAX_ABS_ERROR = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tokenizer = build_tiny_qwen_tokenizer()
    tokenizer_folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(tokenizer_folder)

    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**TINY_QWEN3)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # they start at exactly 1; give them signal so a wrong norm shows
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.ndim == 2:  # default init (std 0.02) keeps activations tiny; make them O(1)
                fan_in = 1 if name.endswith("embed_tokens.weight") else p.shape[1]
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    encoder_folder = tmp_path_factory.mktemp("text_encoder")
    model.save_pretrained(encoder_folder)
    return model, tokenizer_folder, encoder_folder


def hf_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("max_length", [512, 32])
def test_tokenizer_matches_transformers(folders, max_length):
    _, tokenizer_folder, _ = folders
    ours = PromptTokenizer(tokenizer_folder)
    reference = hf_tokenizer(tokenizer_folder)
    input_ids, attention_mask = ours.encode(PROMPTS, max_length=max_length)
    assert input_ids.shape == attention_mask.shape == (len(PROMPTS), max_length)
    for i, prompt in enumerate(PROMPTS):
        # The exact calls Flux2KleinPipeline._get_qwen3_prompt_embeds makes.
        text = reference.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        assert ours.render(prompt) == text
        expected = reference(text, return_tensors="np", padding="max_length", truncation=True, max_length=max_length)
        np.testing.assert_array_equal(input_ids[i], expected["input_ids"][0])
        np.testing.assert_array_equal(attention_mask[i], expected["attention_mask"][0])
    if max_length == 32:
        assert attention_mask[2].all(), "the long prompt should be truncated to max_length"
    assert not attention_mask[1].all(), "the empty prompt should be padded"


def test_tokenizer_reads_template_from_tokenizer_config(folders, tmp_path):
    _, tokenizer_folder, _ = folders
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tokenizer_folder / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = (tokenizer_folder / "chat_template.jinja").read_text()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert PromptTokenizer(tmp_path).render("a cat") == PromptTokenizer(tokenizer_folder).render("a cat")


def test_tokenizer_errors(folders, tmp_path):
    _, tokenizer_folder, _ = folders
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        PromptTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_folder / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_bytes((tokenizer_folder / "tokenizer_config.json").read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(CheckpointError, match="not valid Jinja"):
        PromptTokenizer(tmp_path)


def test_hidden_states_match_pipeline(folders):
    model, tokenizer_folder, encoder_folder = folders
    prompts, layers, max_length = PROMPTS[:2], (1, 3, 5), 64
    with torch.no_grad():
        expected = diffusers.Flux2KleinPipeline._get_qwen3_prompt_embeds(
            model, hf_tokenizer(tokenizer_folder), prompts, max_sequence_length=max_length,
            hidden_states_layers=layers).numpy()

    encoder, _ = load_text_encoder(encoder_folder, layers=layers)
    input_ids, attention_mask = PromptTokenizer(tokenizer_folder).encode(prompts, max_length=max_length)
    got = encoder.hidden_states(mx.array(input_ids), mx.array(attention_mask), layers)
    assert got.shape == expected.shape == (2, max_length, 3 * 64)
    error = float(np.abs(np.array(got) - expected).max())
    assert error < MAX_ABS_ERROR, f"max abs error {error:.2e}"


def test_left_padding_follows_tokenizer_config(folders, tmp_path):
    """Left padding leaves padded queries with every key masked; eager attention averages them uniformly."""
    model, tokenizer_folder, encoder_folder = folders
    for file in tokenizer_folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    prompts, layers, max_length = PROMPTS[:2], (2, 4), 40
    with torch.no_grad():
        expected = diffusers.Flux2KleinPipeline._get_qwen3_prompt_embeds(
            model, hf_tokenizer(tmp_path), prompts, max_sequence_length=max_length,
            hidden_states_layers=layers).numpy()
    input_ids, attention_mask = PromptTokenizer(tmp_path).encode(prompts, max_length=max_length)
    assert attention_mask[1, 0] == 0 and attention_mask[:, -1].all(), "expected padding on the left"
    encoder, _ = load_text_encoder(encoder_folder, layers=layers)
    got = encoder.hidden_states(mx.array(input_ids), mx.array(attention_mask), layers)
    assert float(np.abs(np.array(got) - expected).max()) < MAX_ABS_ERROR


def test_last_hidden_state_has_final_norm(folders):
    """Index num_hidden_layers is the normed output in transformers, so the norm is loaded then."""
    model, tokenizer_folder, encoder_folder = folders
    layers = (0, 6)
    with torch.no_grad():
        expected = diffusers.Flux2KleinPipeline._get_qwen3_prompt_embeds(
            model, hf_tokenizer(tokenizer_folder), PROMPTS[0], max_sequence_length=24,
            hidden_states_layers=layers).numpy()
    encoder, report = load_text_encoder(encoder_folder, layers=layers)
    assert "model.norm.weight" not in sum(report.skipped.values(), [])
    input_ids, attention_mask = PromptTokenizer(tokenizer_folder).encode(PROMPTS[:1], max_length=24)
    got = encoder.hidden_states(mx.array(input_ids), mx.array(attention_mask), layers)
    assert float(np.abs(np.array(got) - expected).max()) < MAX_ABS_ERROR


def test_only_needed_layers_are_built(folders):
    _, _, encoder_folder = folders
    encoder, report = load_text_encoder(encoder_folder, layers=(1, 3))
    assert len(encoder.layers) == 3
    names = {name for name, _ in tree_flatten(encoder.parameters())}
    assert "layers.2.self_attn.q_norm.weight" in names and "embed_tokens.weight" in names
    assert not any(name.startswith(("layers.3.", "norm.")) for name in names)

    skipped_layers = report.skipped["layers after the last one the pipeline reads"]
    assert {key.split(".")[2] for key in skipped_layers} == {"3", "4", "5"}
    assert sorted(report.skipped["final norm and LM head: not used for encoding"]) == [
        "lm_head.weight", "model.norm.weight"]
    assert report.unexpected == []
    assert report.used == len(names)


def test_config_with_too_few_layers_is_rejected(folders, tmp_path):
    _, _, encoder_folder = folders
    for file in encoder_folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    with pytest.raises(CheckpointError, match="has 6 layers"):
        load_text_encoder(tmp_path, layers=(9, 18, 27))
