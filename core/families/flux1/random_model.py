"""Random-weight FLUX.1 models ([schnell], or [dev] with `distilled=False`) in the released diffusers layout, written
by our own engine.

The transformer (19 double and 38 single blocks of 24 heads; [dev]'s guidance embedder), CLIP-L's text model (keys
under `text_model.`), the T5-XXL encoder and the VAE (the decoder and the encoder half diffusers loads), at the
released shapes (optionally narrowed with `width_scale`), with a CLIP BPE vocabulary (vocab.json, merges.txt) and a
T5 Unigram tokenizer.json over a few words, and the released scheduler configs: loading, quantization, memory and
speed measured at full size without downloading anything. The pictures are noise.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlx.core as mx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ...atomic import library_writes, staged_folder
from ...blocks.autoencoder_kl import flux1_vae_config
from ...random_weights import (WORDS, check_width_scale, encoder_weights, module_weights, narrow, write_component,
                               write_index)
from .clip import CLIPTextEncoder
from .t5 import T5Encoder
from .transformer import Flux1Transformer
from .vae import Flux1VAE

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")  # the last ids, as in CLIP's vocabulary (its end token pools)
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5's


@dataclass(frozen=True)
class Flux1Shape:
    """The numbers that size a FLUX.1 model (the released ones by default)."""

    heads: int = 24
    double_blocks: int = 19
    single_blocks: int = 38
    head_dim: int = 128
    clip_hidden: int = 768
    clip_layers: int = 12
    clip_intermediate: int = 3072
    t5_hidden: int = 4096
    t5_layers: int = 24
    t5_heads: int = 64
    t5_head_dim: int = 64
    t5_intermediate: int = 10240
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    t5_vocab_size: int = 1024  # the real one is 32,128: a random model's prompts need only a few words


ARCHITECTURES = {"flux1": Flux1Shape()}


def narrowed_shape(shape: Flux1Shape, width_scale: float) -> Flux1Shape:
    """Every width narrowed by `width_scale`; depths and head sizes stay, so per-block costs scale as width^2."""
    check_width_scale(width_scale)
    if width_scale == 1:
        return shape
    t5_heads = max(2, round(shape.t5_heads * width_scale))
    return replace(shape, heads=max(1, round(shape.heads * width_scale)),
                   clip_hidden=narrow(shape.clip_hidden, width_scale),
                   clip_intermediate=narrow(shape.clip_intermediate, width_scale), t5_heads=t5_heads,
                   t5_hidden=t5_heads * shape.t5_head_dim, t5_intermediate=narrow(shape.t5_intermediate, width_scale),
                   vae_channels=tuple(narrow(c, width_scale, 32) for c in shape.vae_channels))


def write_random_flux1(out: Path | str, width_scale: float = 1.0, seed: int = 0, distilled: bool = True,
                       dtype: mx.Dtype = mx.bfloat16, max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> Path:
    """`random-model --arch flux1`: [schnell] when `distilled`, else [dev]; built in a temporary folder and renamed
    when complete."""
    shape = narrowed_shape(ARCHITECTURES["flux1"], width_scale)
    mx.random.seed(seed)
    with staged_folder(Path(out), overwrite) as staging:
        write_flux1(staging, shape, distilled, dtype, max_shard_bytes,
                    {"random_weights": "flux1", "width_scale": width_scale, "seed": seed})
    return Path(out)


def clip_vocabulary() -> dict[str, int]:
    """Every byte-level symbol, alone and ending a word, then the start and end tokens: any text tokenizes, with no
    merges (each letter a token)."""
    symbols = pre_tokenizers.ByteLevel.alphabet()
    tokens = sorted(symbols) + sorted(s + "</w>" for s in symbols) + list(CLIP_SPECIALS)
    return {token: i for i, token in enumerate(tokens)}


def component_configs(shape: Flux1Shape, distilled: bool) -> dict[str, dict]:
    clip_vocab = len(clip_vocabulary())
    return {
        "transformer": {
            "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "out_channels": None,
            "num_layers": shape.double_blocks, "num_single_layers": shape.single_blocks,
            "attention_head_dim": shape.head_dim, "num_attention_heads": shape.heads,
            "joint_attention_dim": shape.t5_hidden, "pooled_projection_dim": shape.clip_hidden,
            "guidance_embeds": not distilled, "axes_dims_rope": [16, 56, 56]},
        "text_encoder": {
            "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": clip_vocab,
            "hidden_size": shape.clip_hidden, "intermediate_size": shape.clip_intermediate,
            "num_hidden_layers": shape.clip_layers, "num_attention_heads": shape.clip_hidden // 64,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": shape.clip_hidden, "bos_token_id": clip_vocab - 2, "eos_token_id": clip_vocab - 1,
            "pad_token_id": clip_vocab - 1},
        "text_encoder_2": {
            "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": shape.t5_vocab_size,
            "d_model": shape.t5_hidden, "d_kv": shape.t5_head_dim, "d_ff": shape.t5_intermediate,
            "num_layers": shape.t5_layers, "num_heads": shape.t5_heads, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new",
            "is_gated_act": True, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0, "is_encoder_decoder": False,
            "use_cache": False, "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1},
        "vae": flux1_vae_config(shape.vae_channels),
    }


# The released scheduler configs: [schnell] samples at a fixed shift, [dev] shifts with the image's size.
SCHEDULERS = {
    True: {"shift": 1.0, "use_dynamic_shifting": False},
    False: {"shift": 3.0, "use_dynamic_shifting": True},
}


def write_flux1(staging: Path, shape: Flux1Shape, distilled: bool, dtype: mx.Dtype, max_shard_bytes: int,
                metadata: dict) -> None:
    """Write the model's components, tokenizers, scheduler and model_index.json into `staging`."""
    configs = component_configs(shape, distilled)
    # Modules are built inline and not kept: a reference would hold every written value in memory.
    drawn = {
        "transformer": lambda: module_weights(Flux1Transformer.from_config(configs["transformer"])),
        "text_encoder": lambda: module_weights(CLIPTextEncoder.from_config(configs["text_encoder"]), "text_model."),
        "text_encoder_2": lambda: module_weights(T5Encoder.from_config(configs["text_encoder_2"])),
        "vae": lambda: {**module_weights(Flux1VAE.from_config(configs["vae"]), pytorch_convs=True),
                        **encoder_weights(configs["vae"])},
    }
    stems = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
    for name in drawn:
        write_component(staging / name, configs[name], drawn[name](), dtype, max_shard_bytes,
                        stems.get(name, "model"))
    write_clip_tokenizer(staging / "tokenizer")
    write_t5_tokenizer(staging / "tokenizer_2")
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "base_shift": 0.5,
                 "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, **SCHEDULERS[distilled]}
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    write_index(staging, index, scheduler, {**metadata, "architecture": asdict(shape)})


def write_clip_tokenizer(folder: Path) -> None:
    """CLIP's layout in the FLUX.1 repositories: vocab.json, merges.txt and the special tokens."""
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(clip_vocabulary(), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    start, end = CLIP_SPECIALS
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": start, "eos_token": end,
         "pad_token": end, "unk_token": end, "do_lower_case": True}, indent=2))


def write_t5_tokenizer(folder: Path) -> None:
    """A SentencePiece-style Unigram (word starts marked "▁") over a few words and every printable character, saved
    as transformers saves T5's fast tokenizer: tokenizer.json, with its special tokens in tokenizer_config.json."""
    pieces = [(token, 0.0) for token in T5_SPECIALS] + [("\u2581" + word, -5.0) for word in WORDS]
    pieces += [("\u2581", -8.0)] + [(char, -10.0) for char in string.printable.strip()]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>")))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.add_special_tokens(list(T5_SPECIALS))
    folder.mkdir()
    with library_writes(folder / "tokenizer.json"):  # a full disk: the library's Exception, as the OSError it is
        tokenizer.save(str(folder / "tokenizer.json"))
    pad, end, unk = T5_SPECIALS
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "pad_token": pad, "eos_token": end,
         "unk_token": unk, "extra_ids": 0}, indent=2))
