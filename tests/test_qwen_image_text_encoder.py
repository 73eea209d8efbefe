"""Qwen-Image's prompt path against diffusers/transformers: tokenizer, Qwen2.5-VL language model,
template dropping and the mask (float32)."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("diffusers")

import mlx.core as mx  # noqa: E402

from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.qwen_image.pipeline import pad_prompts  # noqa: E402
from quantbench.core.families.qwen_image.text_encoder import drop_template, load_text_encoder, qwen_text_config  # noqa: E402
from quantbench.core.families.qwen_image.tokenizer import PROMPT_TEMPLATE, TEMPLATE_TOKENS, QwenImageTokenizer  # noqa: E402
from reference.qwen_image import (build_tiny_qwen_image, flatten_text_encoder_config,  # noqa: E402
                                  rewrite_text_encoder_keys_with_language_model,
                                  rewrite_tokenizer_as_vocab_and_merges)

PROMPTS = [
    "A red fox sitting in the snow at dawn, soft golden light.",
    "",
    "Zebra ünïcödé 漢字 🦊 and a literal <|im_end|> inside the prompt",
]
# Both sides compute in float32 and differ in summation order and RoPE rounding: about 2e-6 measured.
MAX_ABS_ERROR = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen-image")
    return folder, build_tiny_qwen_image(folder)


def _copy(folder, tmp_path, name):
    return shutil.copytree(folder, tmp_path / name)


def _reference_tokens(tokenizer, prompts):
    """The exact call QwenImagePipeline._get_qwen_prompt_embeds makes."""
    return tokenizer([PROMPT_TEMPLATE.format(p) for p in prompts], max_length=1024 + TEMPLATE_TOKENS, padding=True,
                     truncation=True, return_tensors="np")


def _assert_tokens_match(ours, reference, prompts):
    input_ids, attention_mask = ours.encode(prompts)
    expected = _reference_tokens(reference, prompts)
    np.testing.assert_array_equal(input_ids, expected["input_ids"])
    np.testing.assert_array_equal(attention_mask, expected["attention_mask"])


def test_tokenizer_matches_the_pipelines(tiny):
    folder, pipe = tiny
    _assert_tokens_match(QwenImageTokenizer(folder / "tokenizer"), pipe.tokenizer, PROMPTS)


def test_tokenizer_reads_vocab_and_merges_as_the_released_repo_ships(tiny, tmp_path):
    folder, _ = tiny
    copy = _copy(folder, tmp_path, "vocab-merges")
    rewrite_tokenizer_as_vocab_and_merges(copy)
    assert not (copy / "tokenizer" / "tokenizer.json").exists()
    reference = transformers.Qwen2Tokenizer.from_pretrained(copy / "tokenizer")
    _assert_tokens_match(QwenImageTokenizer(copy / "tokenizer"), reference, PROMPTS)


def test_tokenizer_truncates_like_the_pipeline(tiny):
    folder, pipe = tiny
    long_prompt = " ".join(["an astronaut riding a horse across a purple desert"] * 150)
    ours = QwenImageTokenizer(folder / "tokenizer")
    _assert_tokens_match(ours, pipe.tokenizer, [long_prompt, "a cat"])
    assert ours.encode([long_prompt])[0].shape == (1, 1024 + TEMPLATE_TOKENS)


def test_tokenizer_without_vocabulary_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json, and no vocab.json"):
        QwenImageTokenizer(tmp_path)


def _prompt_features(folder, prompts):
    encoder, report = load_text_encoder(folder / "text_encoder")
    input_ids, attention_mask = QwenImageTokenizer(folder / "tokenizer").encode(prompts)
    hidden = encoder(mx.array(input_ids), mx.array(attention_mask))
    features, mask = pad_prompts(drop_template(hidden, attention_mask, TEMPLATE_TOKENS))
    return np.array(features), None if mask is None else np.array(mask), report


def _reference_features(pipe, prompts):
    with torch.no_grad():
        features, mask = pipe._get_qwen_prompt_embeds(prompts)
    return features.numpy(), mask.numpy()


def test_prompt_features_match_the_pipeline_with_padding_and_mask(tiny):
    """A batch of prompts of different lengths: last hidden state, template dropped, padded, masked."""
    folder, pipe = tiny
    expected, expected_mask = _reference_features(pipe, PROMPTS)
    got, mask, _ = _prompt_features(folder, PROMPTS)
    assert got.shape == expected.shape and not expected_mask.all()
    np.testing.assert_array_equal(mask, expected_mask)
    error = float(np.abs(got - expected).max())
    assert error < MAX_ABS_ERROR, f"max abs error {error:.2e}"


def test_the_released_key_layout_is_mapped_and_the_vision_tower_skipped(tiny):
    """transformers 5.23 writes `model.layers.*` / `visual.*` / `lm_head`, as the released files have."""
    folder, _ = tiny
    _, _, report = _prompt_features(folder, PROMPTS[:1])
    skipped = report.skipped
    assert skipped["LM head: not used for encoding"] == ["lm_head.weight"]
    vision = skipped["vision tower: text-to-image prompts have no image tokens"]
    assert vision and all(key.startswith("visual.") for key in vision)
    assert not report.unexpected


def test_the_language_model_key_layout_and_a_flat_config_load_the_same(tiny, tmp_path):
    """transformers 4.5x wrote `model.language_model.*` / `model.visual.*`; the released config is flat."""
    folder, pipe = tiny
    copy = _copy(folder, tmp_path, "other-layout")
    rewrite_text_encoder_keys_with_language_model(copy)
    flatten_text_encoder_config(copy)
    got, _, report = _prompt_features(copy, PROMPTS[:2])
    assert all(key.startswith("model.visual.") for key in
               report.skipped["vision tower: text-to-image prompts have no image tokens"])
    expected, _ = _reference_features(pipe, PROMPTS[:2])
    assert float(np.abs(got - expected).max()) < MAX_ABS_ERROR


def test_sliding_window_config_is_refused(tiny, tmp_path):
    folder, _ = tiny
    copy = _copy(folder, tmp_path, "sliding")
    config_path = copy / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["use_sliding_window"] = True
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="sliding-window attention"):
        load_text_encoder(copy / "text_encoder")


def test_the_released_config_is_read():
    """Qwen/Qwen-Image's text_encoder/config.json: flat Qwen2.5-VL-7B settings beside a partial text_config."""
    config = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
              "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "vocab_size": 152064, "rope_theta": 1000000.0,
              "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
              "use_sliding_window": False, "sliding_window": 32768, "vision_config": {"depth": 32},
              "text_config": {"hidden_size": 3584, "rope_scaling": {"mrope_section": [16, 24, 24], "type": "mrope"}}}
    cfg = qwen_text_config(config)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads) == (28, 3584, 128, 4)
    assert cfg.rms_norm_eps == 1e-6 and cfg.rope_theta == 1e6
