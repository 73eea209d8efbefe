"""The models quantbench knows about, declared in one place.

Each entry lists its components (transformer, text encoder(s), VAE) with the architecture numbers
that size them, copied from the published configs (each repository's `*/config.json`; the figures are
collected in the project's reference notes on models). Parameter counts and bytes are *derived* from
these configs by `memory_model`, which builds each component with its family's own modules (the entry's
`family`, a registered family in core/families); the published figures are kept next to them
(`published_params`) so that the derivation is checked, not trusted.

`memory_model.entry_facts(entry)` adds what is derived: parameters per component (in the repository
and as loaded) and their download size.

Adding a model: append a `CatalogEntry` to `ENTRIES`. The built-in models (`demo`, `demo-turbo`) are
declared here without components; in an installation that ships their folders (core/builtin/models),
`_shipped_builtin` describes each from its own folder and marks it shipped and runnable. Entries that
are not shipped are listed by recommendations as "not yet shipped".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .errors import InvalidRequest
from .quant.spec import QuantSpec, as_spec

# Precisions, as the engine spells them: None is the compute dtype (bf16 on a GPU), ints are bits (round-to-
# nearest in groups of 64), a QuantSpec names its method and group too, a mapping is a per-layer plan.
Precision = QuantSpec | int | Mapping[str, QuantSpec | int] | None


def precision_label(bits: Precision) -> str:
    """'bf16', 'q4', 'q3:hqq:32', or 'mixed 3-8' for a per-layer plan."""
    if bits is None:
        return "bf16"
    if isinstance(bits, Mapping):
        values = sorted({as_spec(s).bits for s in bits.values()})
        return "bf16" if not values else (f"q{values[0]}" if len(values) == 1 else f"mixed {values[0]}-{values[-1]}")
    return f"q{as_spec(bits)}"


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Component:
    """One component folder of a diffusers-layout repository."""

    role: str  # "transformer", "text_encoder", "text_encoder_2", "vae"
    kind: str  # what it is, for people ("qwen3", "t5-encoder"); the family's modules decide its shape
    subfolder: str  # also the family's component (core/family.py) that builds it
    config: Mapping  # the architecture numbers from the component's config.json
    published_params: float | None = None  # from models.md / the model card, to check the derivation
    quantizable: bool = True  # False: keep in full precision whatever the user asks (quality)
    note: str = ""
    checkpoint_bytes: int = 2  # bytes per weight as stored (bfloat16 for the published checkpoints)
    # Parameters in the download that the engine never builds (a VAE's encoder, a vision tower), counted
    # by the reference implementation.
    download_only_params: int = 0
    family: str = ""  # the registered family whose modules build it (set from its entry)

    def __post_init__(self):
        object.__setattr__(self, "config", _frozen(self.config))


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # short name used on the command line
    name: str
    family: str  # "flux2", "flux1", "qwen-image", "z-image", "qwen-image-2.1", "builtin": how lists group it
    repo: str | None  # Hugging Face repository id
    components: tuple[Component, ...]
    distilled: bool  # step-distilled (few steps, no classifier-free guidance)
    default_steps: int
    default_guidance: float
    guidance: str  # "none" (distilled into the weights), "embedded" (guidance-distilled), "true-cfg"
    negative_prompt: bool
    text_encoder_layers: tuple[int, ...] | None  # hidden states stacked for the transformer (None: last)
    max_sequence_length: int
    licence: str
    gated: bool
    download_gb: float | None  # published size of the repository (None: unknown, see download_estimate)
    precisions: tuple[Precision, ...]  # the sensible choices, best quality first
    runnable: bool  # quantbench's engine can run it today
    shipped: bool = True  # False: declared but not released yet (built-in models)
    default_size: tuple[int, int] = (1024, 1024)
    notes: str = ""
    engine: str = ""  # the registered family that runs it (default: `family`, spelled as its folder)

    def __post_init__(self):
        object.__setattr__(self, "components",
                           tuple(replace(c, family=self.engine_family) for c in self.components))

    @property
    def engine_family(self) -> str:
        return self.engine or self.family.replace("-", "_")

    def component(self, role: str) -> Component | None:
        return next((c for c in self.components if c.role == role), None)

    @property
    def transformer(self) -> Component | None:
        return self.component("transformer")

    @property
    def text_encoders(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.role.startswith("text_encoder"))

    @property
    def vae(self) -> Component | None:
        return self.component("vae")

    @property
    def subfolders(self) -> tuple[str, ...]:
        return tuple(c.subfolder for c in self.components)

    @property
    def true_cfg(self) -> bool:
        return self.guidance == "true-cfg"

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "family": self.family, "repo": self.repo,
            "distilled": self.distilled, "default_steps": self.default_steps,
            "default_guidance": self.default_guidance, "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
            "text_encoder_layers": list(self.text_encoder_layers) if self.text_encoder_layers else None,
            "max_sequence_length": self.max_sequence_length, "licence": self.licence, "gated": self.gated,
            "download_gb": self.download_gb, "precisions": [precision_label(p) for p in self.precisions],
            "runnable": self.runnable, "shipped": self.shipped, "default_size": list(self.default_size),
            "components": [{"role": c.role, "kind": c.kind, "subfolder": c.subfolder,
                            "published_params": c.published_params, "quantizable": c.quantizable}
                           for c in self.components],
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# Architecture configs (the numbers of each component's config.json that size it)
# ---------------------------------------------------------------------------------------------

def _flux2_transformer(layers: int, single: int, heads: int, joint: int, guidance: bool) -> dict:
    return {"in_channels": 128, "num_layers": layers, "num_single_layers": single, "attention_head_dim": 128,
            "num_attention_heads": heads, "joint_attention_dim": joint, "timestep_guidance_channels": 256,
            "mlp_ratio": 3.0, "guidance_embeds": guidance, "patch_size": 1}


KLEIN_4B_TRANSFORMER = _flux2_transformer(5, 20, 24, 7680, False)
KLEIN_9B_TRANSFORMER = _flux2_transformer(8, 24, 32, 12288, False)
FLUX2_DEV_TRANSFORMER = _flux2_transformer(8, 48, 48, 15360, True)

QWEN3_4B = {"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True}
QWEN3_8B = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False}
# Mistral-Small-3.x-24B's language model (the folder also holds a ~0.44B vision tower, not used for text).
MISTRAL_SMALL_24B = {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
                     "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 128, "tie_word_embeddings": False}
MISTRAL_VISION_PARAMS = 440_000_000
# Qwen2.5-VL-7B's language model (plus a ~0.676B vision tower, not used for text-to-image).
QWEN25_VL_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "attention_bias": True,
                "tie_word_embeddings": False}
QWEN25_VL_VISION_PARAMS = 676_000_000
T5_XXL_ENCODER = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                  "d_kv": 64, "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu"}
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77}

FLUX1_TRANSFORMER = {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                     "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                     "mlp_ratio": 4.0}
# Tongyi-MAI/Z-Image-Turbo's and Tongyi-MAI/Z-Image's transformer/config.json (the same architecture).
Z_IMAGE_TRANSFORMER = {"in_channels": 16, "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30,
                       "n_kv_heads": 30, "qk_norm": True, "cap_feat_dim": 2560, "axes_dims": (32, 48, 48),
                       "all_patch_size": (2,), "all_f_patch_size": (1,)}
QWEN_IMAGE_TRANSFORMER = {"in_channels": 64, "out_channels": 16, "patch_size": 2, "num_layers": 60,
                          "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                          "mlp_ratio": 4.0}

FLUX2_VAE = {"latent_channels": 32, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": True,
             "use_quant_conv": True}
FLUX1_VAE = {"latent_channels": 16, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": False,
             "use_quant_conv": False}
# The AutoencoderKL encoders (and FLUX.2's quant_conv), in the download only: diffusers' count of the whole
# VAE less the decoder the engine builds (AutoencoderKLFlux2 84,046,115 + 256 batch-norm statistics;
# AutoencoderKL 83,819,683).
FLUX2_VAE_ENCODER_PARAMS = 34_425_856
FLUX1_VAE_ENCODER_PARAMS = 34_274_208
# AutoencoderKLQwenImage (Wan-style causal 3-D convolutions): base_dim 96, dim_mult (1, 2, 4, 4). The
# engine decodes one frame, so it keeps one temporal slice of each 3-D kernel; the download holds the
# whole VAE, 126,892,531 parameters in diffusers' count.
QWEN_IMAGE_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                  "temperal_downsample": (False, True, True)}
QWEN_IMAGE_VAE_DOWNLOAD_PARAMS = 126_892_531
QWEN_IMAGE_VAE_ENGINE_PARAMS = 25_291_955  # its single-frame decoder and post_quant_conv


# Qwen-Image 2.1 (QwenImage21Transformer2DModel's defaults, the released config): 32 single-stream blocks.
QWEN_IMAGE21_TRANSFORMER = {"in_channels": 64, "out_channels": 64, "patch_size": 1, "num_layers": 32,
                            "attention_head_dim": 128, "num_attention_heads": 32, "context_in_dim": 4096,
                            "mlp_ratio": 3}
# Qwen3-VL-8B's language model (its config.json nests it under text_config), read before its final norm.
QWEN3_VL_8B = {"text_config": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                               "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "head_dim": 128, "rms_norm_eps": 1e-6},
               "tie_word_embeddings": False}
# In the download, never built: the 0.58B vision tower (transformers' count) and the final norm.
QWEN3_VL_8B_UNBUILT_PARAMS = 576_388_336 + 4096
# AutoencoderKLQwenImage21 (Wan 2.2-style residual VAE, 16x, RGBA): decoder widths 144 x (1, 2, 4, 8, 8). The
# engine builds the single-frame decoder and post_quant_conv (253,070,484: diffusers' decoder less its temporal
# convolutions, never used on one frame); the download holds the whole VAE, 337,740,404 in diffusers' count.
QWEN_IMAGE21_VAE = {"base_dim": 96, "decoder_base_dim": 144, "z_dim": 64, "dim_mult": (1, 2, 4, 8, 8),
                    "num_res_blocks": 2, "temperal_downsample": (False, True, True, True), "out_channels": 4,
                    "is_residual": True}
QWEN_IMAGE21_VAE_DOWNLOAD_PARAMS = 337_740_404
QWEN_IMAGE21_VAE_ENGINE_PARAMS = 253_070_484


def _qwen_image21_components() -> tuple[Component, ...]:
    return (
        Component("transformer", "qwen-image-2.1-transformer", "transformer", QWEN_IMAGE21_TRANSFORMER, 7.12e9),
        Component("text_encoder", "qwen3-vl", "text_encoder", QWEN3_VL_8B, 8.77e9,
                  note="Qwen3-VL-8B; full precision unless --text-encoder-quantize asks (it is 15 GB in bf16)",
                  download_only_params=QWEN3_VL_8B_UNBUILT_PARAMS),
        Component("vae", "qwen-image-2.1-vae", "vae", QWEN_IMAGE21_VAE, 338e6,
                  download_only_params=QWEN_IMAGE21_VAE_DOWNLOAD_PARAMS - QWEN_IMAGE21_VAE_ENGINE_PARAMS),
    )


def _klein_components(transformer: dict, text: dict, transformer_params: float, text_params: float):
    return (
        Component("transformer", "flux2-transformer", "transformer", transformer, transformer_params),
        Component("text_encoder", "qwen3", "text_encoder", text, text_params),
        Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6, download_only_params=FLUX2_VAE_ENCODER_PARAMS),
    )


def _z_image_components(transformer_bytes: int):
    """Z-Image's transformer, the Qwen3-4B it reads the penultimate hidden state of, and FLUX.1's VAE."""
    return (
        Component("transformer", "z-image-transformer", "transformer", Z_IMAGE_TRANSFORMER, 6.15e9,
                  checkpoint_bytes=transformer_bytes),
        Component("text_encoder", "qwen3", "text_encoder", QWEN3_4B, 4.02e9, note="Qwen3-4B"),
        Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6, download_only_params=FLUX1_VAE_ENCODER_PARAMS),
    )


_KLEIN_PRECISIONS = (None, 8, 6, 4)
_LARGE_PRECISIONS = (None, 8, 6, 4)

ENTRIES: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        id="klein-4b", name="FLUX.2 [klein] 4B", family="flux2", repo="black-forest-labs/FLUX.2-klein-4B",
        components=_klein_components(KLEIN_4B_TRANSFORMER, QWEN3_4B, 3.88e9, 4.02e9),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="Apache-2.0", gated=False,
        download_gb=24.0, precisions=_KLEIN_PRECISIONS, runnable=True,
        notes="step-distilled from the 4B base; guidance fixed at 1.0"),
    CatalogEntry(
        id="klein-4b-base", name="FLUX.2 [klein] base 4B", family="flux2",
        repo="black-forest-labs/FLUX.2-klein-base-4B",
        components=_klein_components(KLEIN_4B_TRANSFORMER, QWEN3_4B, 3.88e9, 4.02e9),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="Apache-2.0", gated=False,
        download_gb=None, precisions=_KLEIN_PRECISIONS, runnable=True,
        notes="undistilled; true CFG runs the prompt and the negative prompt as a batch of two"),
    CatalogEntry(
        id="klein-9b", name="FLUX.2 [klein] 9B", family="flux2", repo="black-forest-labs/FLUX.2-klein-9B",
        components=_klein_components(KLEIN_9B_TRANSFORMER, QWEN3_8B, 9.08e9, 8.19e9),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="FLUX Non-Commercial License",
        gated=True, download_gb=53.0, precisions=_KLEIN_PRECISIONS, runnable=True),
    CatalogEntry(
        id="klein-9b-base", name="FLUX.2 [klein] base 9B", family="flux2",
        repo="black-forest-labs/FLUX.2-klein-base-9B",
        components=_klein_components(KLEIN_9B_TRANSFORMER, QWEN3_8B, 9.08e9, 8.19e9),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="FLUX Non-Commercial License",
        gated=True, download_gb=None, precisions=_KLEIN_PRECISIONS, runnable=True),
    CatalogEntry(
        id="flux2-dev", name="FLUX.2 [dev]", family="flux2", repo="black-forest-labs/FLUX.2-dev",
        components=(
            Component("transformer", "flux2-transformer", "transformer", FLUX2_DEV_TRANSFORMER, 32.2e9),
            Component("text_encoder", "mistral", "text_encoder", MISTRAL_SMALL_24B, 24.0e9,
                      note="Mistral-Small-3.x 24B", download_only_params=MISTRAL_VISION_PARAMS),
            Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6, download_only_params=FLUX2_VAE_ENCODER_PARAMS),
        ),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="embedded", negative_prompt=False,
        text_encoder_layers=(10, 20, 30), max_sequence_length=512,
        licence="FLUX.2 [dev] Non-Commercial License", gated=True, download_gb=177.0,
        precisions=_LARGE_PRECISIONS, runnable=True,
        notes="guidance-distilled: one pass per step, embedded guidance (default 4.0), Mistral-Small-3 text encoder"),
    CatalogEntry(
        id="flux1-schnell", name="FLUX.1 [schnell]", family="flux1", repo="black-forest-labs/FLUX.1-schnell",
        components=(
            Component("transformer", "flux1-transformer", "transformer", {**FLUX1_TRANSFORMER,
                                                                          "guidance_embeds": False}, 11.9e9),
            Component("text_encoder", "clip-text", "text_encoder", CLIP_L_TEXT, 123e6, note="CLIP-L"),
            Component("text_encoder_2", "t5-encoder", "text_encoder_2", T5_XXL_ENCODER, 4.76e9,
                      note="T5-v1.1-XXL encoder"),
            Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6, download_only_params=FLUX1_VAE_ENCODER_PARAMS),
        ),
        distilled=True, default_steps=4, default_guidance=0.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=256, licence="Apache-2.0", gated=False, download_gb=34.0,
        precisions=_LARGE_PRECISIONS, runnable=True,
        notes="distilled to 4 steps without guidance; the single-file BFL transformer is accepted too"),
    CatalogEntry(
        id="flux1-dev", name="FLUX.1 [dev]", family="flux1", repo="black-forest-labs/FLUX.1-dev",
        components=(
            Component("transformer", "flux1-transformer", "transformer", {**FLUX1_TRANSFORMER,
                                                                          "guidance_embeds": True}, 11.9e9),
            Component("text_encoder", "clip-text", "text_encoder", CLIP_L_TEXT, 123e6, note="CLIP-L"),
            Component("text_encoder_2", "t5-encoder", "text_encoder_2", T5_XXL_ENCODER, 4.76e9,
                      note="T5-v1.1-XXL encoder"),
            Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6, download_only_params=FLUX1_VAE_ENCODER_PARAMS),
        ),
        distilled=False, default_steps=28, default_guidance=3.5, guidance="embedded", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=512, licence="FLUX.1 [dev] Non-Commercial License",
        gated=True, download_gb=34.0, precisions=_LARGE_PRECISIONS, runnable=True,
        notes="guidance-distilled (one pass per step); a negative prompt needs --true-cfg (two passes)"),
    CatalogEntry(
        id="qwen-image", name="Qwen-Image", family="qwen-image", repo="Qwen/Qwen-Image",
        components=(
            Component("transformer", "qwen-image-transformer", "transformer", QWEN_IMAGE_TRANSFORMER, 20.4e9),
            Component("text_encoder", "qwen2.5-vl", "text_encoder", QWEN25_VL_7B, 8.29e9, quantizable=False,
                      note="Qwen2.5-VL-7B; kept in full precision (quantizing it degrades prompt understanding)",
                      download_only_params=QWEN25_VL_VISION_PARAMS),
            Component("vae", "qwen-image-vae", "vae", QWEN_IMAGE_VAE, 127e6,
                      download_only_params=QWEN_IMAGE_VAE_DOWNLOAD_PARAMS - QWEN_IMAGE_VAE_ENGINE_PARAMS),
        ),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=58.0,
        precisions=_LARGE_PRECISIONS, runnable=True,
        notes="true CFG with norm rescaling; the text encoder stays in full precision by default"),
    CatalogEntry(
        id="z-image-turbo", name="Z-Image-Turbo", family="z-image", repo="Tongyi-MAI/Z-Image-Turbo",
        components=_z_image_components(transformer_bytes=4),
        distilled=True, default_steps=9, default_guidance=0.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(-2,), max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=32.9,
        precisions=_KLEIN_PRECISIONS, runnable=True,
        notes="distilled from Z-Image: 9 steps, no guidance; the repository's transformer is float32 (24.6 GB)"),
    CatalogEntry(
        id="z-image", name="Z-Image", family="z-image", repo="Tongyi-MAI/Z-Image",
        components=_z_image_components(transformer_bytes=2),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(-2,), max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=20.5,
        precisions=_KLEIN_PRECISIONS, runnable=True,
        notes="base model: true CFG (diffusers' scale: cond + 4 x (cond - uncond)) with a negative prompt"),
    CatalogEntry(
        id="qwen-image-2.1", name="Qwen-Image 2.1", family="qwen-image-2.1", engine="qwen_image21",
        repo="Qwen/Qwen-Image-2.1", components=_qwen_image21_components(),
        distilled=False, default_steps=40, default_guidance=1.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=1024, licence="Qwen Research License", gated=False,
        download_gb=None, precisions=_LARGE_PRECISIONS, runnable=True,
        notes="samples without guidance by default (40 steps); guidance above 1 runs true CFG with a negative "
              "prompt, two passes per step"),
    CatalogEntry(
        id="qwen-image-2.1-turbo", name="Qwen-Image 2.1 Turbo", family="qwen-image-2.1", engine="qwen_image21",
        repo="Qwen/Qwen-Image-2.1-Turbo", components=_qwen_image21_components(),
        distilled=True, default_steps=8, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=1024, licence="Qwen Research License", gated=False,
        download_gb=None, precisions=_LARGE_PRECISIONS, runnable=True,
        notes="step-distilled: samples on the grid its model_index.json ships (sample_sigmas), no guidance"),
    # The built-in models: declared so that every list shows them, not released yet. When they
    # ship, give them components and set shipped=True, runnable=True.
    CatalogEntry(
        id="demo", name="quantbench demo", family="builtin", engine="flux2", repo=None, components=(),
        distilled=False, default_steps=20, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=77, licence="MIT", gated=False, download_gb=None,
        precisions=(None, 8, 4), runnable=False, shipped=False, default_size=(256, 256),
        notes="built-in model, not yet shipped"),
    CatalogEntry(
        id="demo-turbo", name="quantbench demo turbo", family="builtin", engine="flux2", repo=None, components=(),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=77, licence="MIT", gated=False, download_gb=None,
        precisions=(None, 8, 4), runnable=False, shipped=False, default_size=(256, 256),
        notes="built-in model, not yet shipped"),
)


def all_entries(shipped_only: bool = False) -> tuple[CatalogEntry, ...]:
    return tuple(e for e in ENTRIES if e.shipped or not shipped_only)


def find_entry(name_or_repo: str) -> CatalogEntry | None:
    """The entry whose id or repository id is `name_or_repo` (case-insensitive), or None."""
    key = name_or_repo.strip().lower()
    for entry in ENTRIES:
        if key == entry.id or (entry.repo is not None and key == entry.repo.lower()):
            return entry
    return None


def get_entry(name: str) -> CatalogEntry:
    entry = find_entry(name)
    if entry is None:
        raise InvalidRequest(f"unknown model '{name}': choose one of {', '.join(e.id for e in ENTRIES)}")
    return entry


def entry_from_folder(folder: str | Path, text_encoder_layers: tuple[int, ...] | None = None) -> CatalogEntry:
    """A catalog entry for a local model folder of any registered family (diffusers layout), read from its
    configs and defaults without loading weights. Lets the memory model predict any checkpoint on disk, the
    tiny test models included; CheckpointError for a folder no family runs."""
    from .checkpoint import build_from_config, open_component
    from .families import family_for_folder
    from .sources import read_model_index

    folder = Path(folder)
    family = family_for_folder(folder)
    index = read_model_index(folder)
    defaults = family.read_defaults(folder)
    layers = family.pipeline.hidden_states(folder, index, text_encoder_layers) or None
    components = []
    for spec in family.components:
        checkpoint = family.open_transformer(folder) if spec.role == "transformer" else open_component(folder / spec.folder)
        # As the engine reads it: a config it cannot build is refused here, in one line naming the folder.
        build_from_config(lambda config: spec.build(config, layers if spec.role == "text_encoder" else None),
                          checkpoint)
        kind = checkpoint.config.get("_class_name") or checkpoint.config.get("model_type") or spec.folder
        components.append(Component(spec.folder, kind, spec.folder, checkpoint.config,
                                    checkpoint_bytes=_stored_weight_bytes(checkpoint)))
    return CatalogEntry(
        id=folder.name, name=str(folder), family=family.name, repo=None, components=tuple(components),
        distilled=defaults.distilled, default_steps=defaults.steps, default_guidance=defaults.guidance,
        guidance=defaults.guidance_mode, negative_prompt=defaults.negative_prompt, text_encoder_layers=layers,
        max_sequence_length=int(index.get("max_sequence_length", family.pipeline.max_sequence_length(defaults))),
        licence="unknown", gated=False, download_gb=None, precisions=_LARGE_PRECISIONS, runnable=True)


def _stored_weight_bytes(checkpoint) -> int:
    """Bytes per weight in a component's safetensors: the floating dtype that holds most of its values (a
    bf16 VAE keeps a few float32 statistics), 2 when unknown."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    values = Counter()
    for info in checkpoint.tensors.values():
        if info.dtype in sizes:
            values[sizes[info.dtype]] += math.prod(info.shape)
    return values.most_common(1)[0][0] if values else 2


BUILTIN_MODELS_FOLDER = Path(__file__).resolve().parent / "builtin" / "models"


def _shipped_builtin(entry: CatalogEntry, models_folder: Path = BUILTIN_MODELS_FOLDER) -> CatalogEntry:
    """A built-in model present in this installation, described from its own folder."""
    folder = models_folder / entry.id
    if entry.family != "builtin" or not (folder / "model_index.json").is_file():
        return entry
    index = json.loads((folder / "model_index.json").read_text())
    from_folder = entry_from_folder(folder)
    distilled = bool(index.get("is_distilled", False))
    size = (int(index.get("default_width", 64)), int(index.get("default_height", 64)))
    return replace(entry, components=from_folder.components, distilled=distilled,
                   default_steps=int(index.get("default_steps", entry.default_steps)),
                   default_guidance=1.0 if distilled else float(index.get("default_guidance", entry.default_guidance)),
                   text_encoder_layers=from_folder.text_encoder_layers,
                   max_sequence_length=int(index.get("max_sequence_length", entry.max_sequence_length)),
                   download_gb=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9,
                   runnable=True, shipped=True, default_size=size, notes="ships with quantbench")


ENTRIES = tuple(_shipped_builtin(e) for e in ENTRIES)
