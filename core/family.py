"""The family contract: what a model family declares so that every part of quantbench runs it.

A family is one folder, core/families/<name>/, whose `__init__.py` exports one `FAMILY`: a `Family` value
naming the diffusers pipeline classes it runs, its components (how each is built from its config.json,
which layers its quantization keeps in full precision), what it supports, how a model folder's defaults
are read and which requests it refuses. The registry (core/families/__init__.py) lists every family in
one line each; the pipelines' front door, the catalog, the memory model, the lab and random-model read
it, so nothing outside the family's folder names a family.

The family's pipeline class (a PipelineBase) brings the rest: the template `load()` in
core/pipeline_base/pipeline.py calls its hooks (`setup`, `encode_prompts`, `generate`, `vae_latents`, ...).
CONTRIBUTING.md walks through adding a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.nn as nn

from .checkpoint import Component as Checkpoint
from .checkpoint import Rule, build_from_config, open_component
from .errors import CheckpointError, InvalidRequest
from .generation import check_scale, check_size, check_steps
from .quant import LayerPolicy


@dataclass(frozen=True)
class ComponentSpec:
    """One component folder of the family's diffusers layout.

    folder: its folder ("transformer", "text_encoder", "text_encoder_2", "vae").
    role: "transformer", "text_encoder" or "vae": which precision the user's options give it.
    build: build(config.json, hidden_states) -> the module the config describes (parameter names = the
      checkpoint's keys after `rules`); a text encoder is built only up to the last hidden state a pipeline
      reads (None: all). MLX arrays are lazy, so building allocates nothing: the loader fills what `build`
      returns, and the memory model and the lab count parameters and bytes on it.
    rules: checkpoint key -> parameter rules (core/checkpoint.py), or rules(module, config) when they
      depend on what was built (a text encoder cut after some layer skips the later layers' keys).
    policy: the layers that stay in full precision when it is quantized; None: never quantized (the VAE).
    label: how reports and errors name it (default: the folder, "text encoder").
    module: the class `build` returns, when it is the family's own (a loaded transformer is traced back to its
      family and policy by it).
    """

    folder: str
    role: str
    build: Callable[[dict, tuple[int, ...] | None], nn.Module]
    rules: tuple[Rule, ...] | Callable[[nn.Module, dict], list[Rule]] = ()
    policy: LayerPolicy | None = None
    label: str = ""
    module: type | None = None

    @property
    def name(self) -> str:
        return self.label or self.folder.replace("_", " ")

    def rules_for(self, module: nn.Module, config: dict) -> list[Rule]:
        return self.rules(module, config) if callable(self.rules) else list(self.rules)


@dataclass(frozen=True)
class Supports:
    """What the family's models can do (each model's own defaults say which it does: a distilled model
    takes no negative prompt even if its family can)."""

    negative_prompt: bool  # a negative prompt, with true classifier-free guidance
    embedded_guidance: bool  # a guidance scale fed to the transformer (guidance-distilled models)
    separate_true_cfg: bool = False  # a true-CFG scale apart from the guidance (`generate(true_cfg=...)`)
    reference_images: int = 0  # at most this many reference images (`generate(images=...)`, --image); 0: none


@dataclass(frozen=True)
class DistilledGuidance:
    """How a family's step-distilled models refuse guidance: it was distilled into their weights (or they sample
    without it), so they run at `fixed` whatever is asked and have no unconditional pass for a negative prompt.

    model: how the refusals name the model ("this distilled model", "Z-Image-Turbo").
    reason: why it has no unconditional pass ("its guidance was distilled into the weights").
    instead: what to use for guidance or a negative prompt ("a base model").
    """

    model: str
    reason: str
    instead: str
    fixed: float = 1.0

    def check(self, negative_prompt: str | None, guidance: float | None) -> float:
        if negative_prompt:
            raise InvalidRequest(f"a negative prompt needs an unconditional pass, and {self.model} has none "
                                 f"({self.reason}); use {self.instead}")
        if guidance is not None and guidance != self.fixed:
            raise InvalidRequest(f"guidance {guidance:g} cannot be used with {self.model}: {self.reason} "
                                 f"(leave it at {self.fixed:g}, or use {self.instead})")
        return self.fixed


@dataclass(frozen=True)
class PromptTokens:
    """The tokens a family's run really spends on its prompts, for a family that runs each prompt at its own length
    rather than padded to the model's longest (PipelineBase.prompt_tokens): the memory model predicts with them.

    encoder: tokens the text encoder runs over (the longest prompt's, chat template included);
    transformer: prompt tokens in the transformer's sequence (what the prompt features hold; a family that pads
      them to a multiple counts the padding);
    encoder_batch: prompts the text encoder runs at once (None: all of them, batched; 1: one at a time)."""

    encoder: int
    transformer: int
    encoder_batch: int | None = None


def any_guidance(defaults, negative_prompt: str | None, guidance: float | None) -> float:
    """A base model's guidance: any scale (true CFG at 1 or less runs the conditional pass alone)."""
    return float(defaults.guidance if guidance is None else guidance)


def _open_transformer(folder: Path) -> Checkpoint:
    return open_component(Path(folder) / "transformer")


@dataclass(frozen=True)
class Family:
    """One model family. See the module docstring; core/families/flux2/__init__.py is a full example.

    name: its folder under core/families and its name in reports ("flux2").
    label: how messages name it ("FLUX.2").
    pipeline_classes: the `_class_name` values of model_index.json it runs ("Flux2KleinPipeline").
    pipeline: its pipeline class, a core.pipeline_base.PipelineBase.
    components: transformer first, then the text encoder(s), then the VAE.
    folders: the folders a model folder must have (tokenizers included), checked before loading.
    supports: see Supports.
    read_defaults(folder): the folder's ModelDefaults (distilled, steps, guidance), without loading weights.
    distilled_guidance: how its step-distilled models refuse guidance (DistilledGuidance); without it,
      check_guidance sees distilled models too.
    check_guidance(defaults, negative_prompt, guidance[, true_cfg]): refuse what the model cannot do
      (InvalidRequest, one line) and return the guidance it will use; sizes and steps are checked before.
      It takes `true_cfg` only when `supports.separate_true_cfg`. Default: any guidance (any_guidance).
    open_transformer(folder): the transformer's checkpoint (headers only); another layout than
      transformer/ (FLUX.1's single files) overrides it.
    check_components(folder, hidden_states): what can be checked without reading weights (that the text
      encoder's width is what the transformer expects, ...); CheckpointError in one line.
    size_multiple: what widths and heights must be multiples of (16 unless the model needs more).
    random_models: random-weight models of the family's real shapes, as (`random-model --arch` name, write)
      pairs: write(out, width_scale, seed, distilled, dtype, max_shard_bytes, overwrite) -> the folder written.
    tensor_parallel: how the transformer splits across the ranks of an mlx.launch job (a
      core.tensor_parallel.TensorParallelPlan), or None when it does not.
    denoise_per_token: the activations a denoising step holds at its peak, per token of the joint sequence and
      batch row, in units of the transformer's inner width (heads x head size), where the family's blocks make
      fewer intermediates than FLUX.2's, on which the memory model's figure was measured
      (BackendProfile.transformer_per_token); measured with MLX's peak on a narrowed random model.
    denoise_layerwise_per_token: the same, where the CPU's tile kernel runs the quantized transformer
      (core/quant/tile_kernel.py): each quantized layer evaluates its input before its product, so a step holds
      one block's arrays at a time beside the residual stream, not a whole lazy step's; measured the same way, on
      the block whose arrays are the most. None: the figure above (an over-estimate for such runs).
    denoise_kernel_per_token: the same, where the CPU's elementwise kernel (core/blocks/elementwise_kernel.py) runs
      the family's blocks, quantized or not: each kernel pass evaluates its input and writes into an array of its
      own (the MLP's activation beside the attention's output, the queries' and keys' norms with their rotary
      embedding), so a step holds one block's arrays at a time, and fewer of them. None: the figures above.
    denoise_prompt_cache: the transformer computes every block's keys and values of the prompt once per generation
      and holds them through the denoising, and each step runs the image tokens alone, attending to them (Qwen-Image
      2.1's causal text prefix): the memory model counts 2 x layers x prompt tokens x inner width for the cache and
      the figures above for the image tokens only. False: each step runs the joint [text, image] sequence.
    lora_layout: core.checkpoint.Rules from the original code's names of the transformer's layers (as ai-toolkit and
      ComfyUI name a LoRA's, after `diffusion_model.`) to diffusers' checkpoint keys (`<layer>.weight`); every rule
      that matches applies (a fused layer gives several); their transforms act on output rows (core/lora.py). A
      name no rule matches is taken as it is.
    """

    name: str
    label: str
    pipeline_classes: tuple[str, ...]
    pipeline: type
    components: tuple[ComponentSpec, ...]
    folders: tuple[str, ...]
    supports: Supports
    read_defaults: Callable[[Path], object]
    distilled_guidance: DistilledGuidance | None = None
    check_guidance: Callable[..., float] = any_guidance
    open_transformer: Callable[[Path], Checkpoint] = _open_transformer
    check_components: Callable[[Path, tuple[int, ...]], None] = lambda folder, hidden_states: None
    size_multiple: int = 16
    random_models: tuple[tuple[str, Callable[..., Path]], ...] = ()
    tensor_parallel: object | None = None  # core.tensor_parallel.TensorParallelPlan: how the transformer splits
    denoise_per_token: float | None = None
    denoise_layerwise_per_token: float | None = None
    denoise_kernel_per_token: float | None = None
    denoise_prompt_cache: bool = False
    lora_layout: tuple = ()

    def component(self, folder: str) -> ComponentSpec:
        found = next((c for c in self.components if c.folder == folder), None)
        if found is None:
            raise CheckpointError(f"{self.label} has no component '{folder}'")
        return found

    @property
    def transformer(self) -> ComponentSpec:
        return next(c for c in self.components if c.role == "transformer")

    @property
    def text_encoders(self) -> tuple[ComponentSpec, ...]:
        return tuple(c for c in self.components if c.role == "text_encoder")

    @property
    def vae(self) -> ComponentSpec:
        return next(c for c in self.components if c.role == "vae")

    def check_folder(self, folder: Path, index: dict) -> str:
        """The folder's pipeline class, once it is one of this family's and every component folder is there."""
        pipeline_class = index.get("_class_name", "")
        if pipeline_class not in self.pipeline_classes:
            raise CheckpointError(f"{folder}: a {pipeline_class or 'unknown'} model, not {self.label} "
                                  f"({' or '.join(self.pipeline_classes)})")
        for name in self.folders:
            if not (folder / name).is_dir():
                raise CheckpointError(f"{folder}: component folder '{name}' is missing")
        return pipeline_class

    def build_transformer(self, folder: Path) -> nn.Module:
        """The transformer a model folder's config describes, with lazy (never evaluated) random weights."""
        return build_from_config(lambda config: self.transformer.build(config, None), self.open_transformer(folder))

    def validate(self, defaults, negative_prompt: str | None, guidance: float | None, width: int, height: int,
                 steps: int, true_cfg: float = 1.0) -> float:
        """Refuse what this model cannot do, in one line, before loading; return the guidance it will use."""
        if true_cfg != 1.0 and not self.supports.separate_true_cfg:
            raise InvalidRequest(f"a separate true-CFG scale is not a {self.label} option: this model's --guidance "
                                 "is its guidance")
        check_size(width, height)
        if width % self.size_multiple or height % self.size_multiple:
            raise InvalidRequest(f"{width}x{height} is not allowed for {self.label}: width and height must be "
                                 f"multiples of {self.size_multiple}")
        check_steps(steps)
        if defaults.distilled and self.distilled_guidance is not None:
            return check_scale("guidance", self.distilled_guidance.check(negative_prompt, guidance))
        options = {"true_cfg": true_cfg} if self.supports.separate_true_cfg else {}
        return check_scale("guidance", self.check_guidance(defaults, negative_prompt, guidance, **options))
