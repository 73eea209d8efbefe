"""FLUX.1 ([schnell] and [dev]): the family's descriptor (see core/family.py for the contract)."""

from ...family import Family, Supports
from .components import COMPONENTS, check_components, transformer_checkpoint
from .pipeline import Flux1Pipeline, check_guidance, read_defaults
from .random_model import write_random_flux1
from .single_file import BFL_TRANSFORMER_RULES
from .tensor_parallel import TENSOR_PARALLEL

FAMILY = Family(
    name="flux1",
    label="FLUX.1",
    pipeline_classes=("FluxPipeline",),
    pipeline=Flux1Pipeline,
    components=COMPONENTS,
    # transformer/ may be absent: BFL's single file at the top of the folder stands in for it.
    folders=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"),
    # schnell: distilled; dev: embedded guidance, and true CFG with a negative prompt at a second scale.
    supports=Supports(negative_prompt=True, embedded_guidance=True, separate_true_cfg=True),
    read_defaults=read_defaults,
    check_guidance=check_guidance,
    open_transformer=transformer_checkpoint,
    check_components=check_components,
    tensor_parallel=TENSOR_PARALLEL,
    lora_layout=tuple(BFL_TRANSFORMER_RULES),  # a LoRA under the original code's layer names
    random_models=(("flux1", write_random_flux1),),
    # Measured on the tests' tiny pipeline with a narrowed transformer of FLUX.1's head size (benchmarks/memory_model.py
    # --fit, docs/measurements.md): a step's activations per token and inner width with the tile kernel running the
    # quantized layers (26.2, 8 and 4 bits) and with the elementwise kernel running the blocks (16.2-16.3, quantized
    # or not), at 256 and 512 px. Unquantized in MLX's ops it is 34-35, under FLUX.2's 43.1 that predicts it (+5%).
    denoise_layerwise_per_token=26.3,
    denoise_kernel_per_token=16.3,
)
Flux1Pipeline.family = FAMILY
