"""The models quantbench knows about, declared in one place.

Each entry lists its components (transformer, text encoder(s), VAE) with the architecture numbers
that size them, copied from the published configs (see /work/shared/reference/models.md and each
repository's `*/config.json`). Parameter counts and bytes are *derived* from these configs by
`memory_model`; the published figures are kept next to them (`published_params`) so that the
derivation is checked, not trusted.

`memory_model.entry_facts(entry)` adds what is derived: parameters per component (in the repository
and as loaded) and their download size.

Adding a model: append a `CatalogEntry` to `ENTRIES`. The built-in models (`demo`, `demo-turbo`)
are declared here already with `shipped=False`; when their engine lands, give them components
and set `shipped=True` and `runnable=True` (nothing else needs to change: recommendations skip
unshipped entries and list them as "not yet shipped").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .errors import CheckpointError, InvalidRequest

# Precisions, as the engine spells them: None is the compute dtype (bf16 on a GPU), ints are bits.
Precision = int | None


def precision_label(bits: Precision) -> str:
    return "bf16" if bits is None else f"q{bits}"


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Component:
    """One component folder of a diffusers-layout repository."""

    role: str  # "transformer", "text_encoder", "text_encoder_2", "vae"
    kind: str  # architecture family understood by memory_model (see memory_model.ARCHITECTURES)
    subfolder: str
    config: Mapping  # the architecture numbers from the component's config.json
    published_params: float | None = None  # from models.md / the model card, to check the derivation
    quantizable: bool = True  # False: keep in full precision whatever the user asks (quality)
    note: str = ""
    checkpoint_bytes: int = 2  # bytes per weight as stored (bfloat16 for the published checkpoints)

    def __post_init__(self):
        object.__setattr__(self, "config", _frozen(self.config))


@dataclass(frozen=True)
class CatalogEntry:
    id: str  # short name used on the command line
    name: str
    family: str  # "flux2", "flux1", "qwen-image", "builtin"
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
# Mistral-Small-3.x-24B's language model (the folder also holds a ~0.4B vision tower, not used for text).
MISTRAL_SMALL_24B = {"vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
                     "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 128, "tie_word_embeddings": False, "unused_params": 0.44e9}
# Qwen2.5-VL-7B's language model (plus a ~0.67B vision tower, not used for text-to-image).
QWEN25_VL_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "attention_bias": True,
                "tie_word_embeddings": False, "unused_params": 0.676e9}
T5_XXL_ENCODER = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                  "d_kv": 64, "relative_attention_num_buckets": 32}
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77}

FLUX1_TRANSFORMER = {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                     "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                     "mlp_ratio": 4.0}
QWEN_IMAGE_TRANSFORMER = {"in_channels": 64, "out_channels": 16, "patch_size": 2, "num_layers": 60,
                          "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                          "mlp_ratio": 4.0}

FLUX2_VAE = {"latent_channels": 32, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": True,
             "use_quant_conv": True, "batch_norm_channels": 128}
FLUX1_VAE = {"latent_channels": 16, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": False,
             "use_quant_conv": False}
# AutoencoderKLQwenImage (Wan-style causal 3-D convolutions): base_dim 96, dim_mult (1, 2, 4, 4).
# Its decoder is not the AutoencoderKL layout, so its parameter counts are taken from diffusers
# (decoder 73,295,331 + post_quant_conv 272; whole VAE 126,892,531) and its decode memory is
# estimated with the 2-D layout of the same widths (see memory_model.decode_activation_bytes).
QWEN_IMAGE_VAE = {"latent_channels": 16, "block_out_channels": (96, 192, 384, 384), "layers_per_block": 2,
                  "mid_block_add_attention": True, "upsample_halves_channels": True,
                  "decoder_params": 73_295_603, "total_params": 126_892_531}


def _klein_components(transformer: dict, text: dict, transformer_params: float, text_params: float):
    return (
        Component("transformer", "flux2-transformer", "transformer", transformer, transformer_params),
        Component("text_encoder", "qwen3", "text_encoder", text, text_params),
        Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6),
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
                      note="Mistral-Small-3.x 24B"),
            Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6),
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
            Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6),
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
            Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6),
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
                      note="Qwen2.5-VL-7B; kept in full precision (quantizing it degrades prompt understanding)"),
            Component("vae", "qwen-image-vae", "vae", QWEN_IMAGE_VAE, 127e6),
        ),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=58.0,
        precisions=_LARGE_PRECISIONS, runnable=True,
        notes="true CFG with norm rescaling; the text encoder stays in full precision by default"),
    # The built-in models: declared so that every list shows them, not released yet. When they
    # ship, give them components and set shipped=True, runnable=True.
    CatalogEntry(
        id="demo", name="quantbench demo", family="builtin", repo=None, components=(),
        distilled=False, default_steps=20, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=77, licence="MIT", gated=False, download_gb=None,
        precisions=(None, 8, 4), runnable=False, shipped=False, default_size=(256, 256),
        notes="built-in model, not yet shipped"),
    CatalogEntry(
        id="demo-turbo", name="quantbench demo turbo", family="builtin", repo=None, components=(),
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
    """A catalog entry for a local FLUX.2 Klein folder (diffusers layout), read from its configs.

    Lets the memory model predict any checkpoint on disk, the tiny test models included.
    """
    folder = Path(folder)

    def config(name: str) -> dict:
        from .model_files import read_config, read_model_index
        return read_model_index(folder) if name == "model_index.json" else read_config(folder / name)

    index = config("model_index.json")
    if index.get("_class_name") != "Flux2KleinPipeline":
        raise CheckpointError(f"{folder}: not a FLUX.2 Klein folder ({index.get('_class_name') or 'no pipeline class'})")
    transformer, text, vae = (config(f"{c}/config.json") for c in ("transformer", "text_encoder", "vae"))
    # As the engine reads them: the family's defaults filled in, every value checked.
    from .families.flux2.text_encoder import qwen3_config
    from .families.flux2.transformer import Flux2TransformerConfig
    transformer = asdict(Flux2TransformerConfig.from_dict(transformer))
    qwen3_config(text.get("text_config") or text)
    vae_config = {"latent_channels": vae.get("latent_channels", 32),
                  "block_out_channels": tuple(vae.get("decoder_block_out_channels")
                                                  or vae.get("block_out_channels", (128, 256, 512, 512))),
                  "layers_per_block": vae.get("layers_per_block", 2),
                  "norm_num_groups": vae.get("norm_num_groups", 32),
                  "mid_block_add_attention": vae.get("mid_block_add_attention", True),
                  "use_post_quant_conv": vae.get("use_post_quant_conv", True),
                  "use_quant_conv": vae.get("use_quant_conv", True),
                  "batch_norm_channels": 4 * vae.get("latent_channels", 32)}
    distilled = bool(index.get("is_distilled", False))
    layers = tuple(text_encoder_layers or index.get("text_encoder_out_layers") or (9, 18, 27))
    stored = _stored_weight_bytes(folder / "transformer")
    return CatalogEntry(
        id=folder.name, name=str(folder), family="flux2", repo=None,
        components=(Component("transformer", "flux2-transformer", "transformer", transformer,
                              checkpoint_bytes=stored),
                    Component("text_encoder", "qwen3", "text_encoder", text,
                              checkpoint_bytes=_stored_weight_bytes(folder / "text_encoder")),
                    Component("vae", "flux2-vae", "vae", vae_config)),
        distilled=distilled, default_steps=4 if distilled else 50, default_guidance=1.0 if distilled else 4.0,
        guidance="none" if distilled else "true-cfg", negative_prompt=not distilled, text_encoder_layers=layers,
        max_sequence_length=512, licence="unknown", gated=False, download_gb=None,
        precisions=_KLEIN_PRECISIONS, runnable=True)


def _stored_weight_bytes(component_folder: Path) -> int:
    """Bytes per weight in a component's safetensors (its largest floating dtype), 2 when unreadable."""
    from .checkpoint import open_component

    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    try:
        dtypes = {info.dtype for info in open_component(component_folder).tensors.values()}
    except CheckpointError:
        return 2
    return max((sizes[d] for d in dtypes if d in sizes), default=2)


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
