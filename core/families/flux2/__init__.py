"""FLUX.2 (Klein 4B/9B distilled and base, [dev]): the family's descriptor. Everything the rest of quantbench
needs to know about FLUX.2 is declared here (see core/family.py for the contract)."""

from ...family import DistilledGuidance, Family, Supports
from .components import COMPONENTS, check_components
from .original_layout import ORIGINAL_LAYOUT_RULES
from .pipeline import Flux2Pipeline, check_guidance, read_defaults
from .tensor_parallel import TENSOR_PARALLEL

FAMILY = Family(
    name="flux2",
    label="FLUX.2",
    pipeline_classes=("Flux2KleinPipeline", "Flux2Pipeline"),
    pipeline=Flux2Pipeline,
    components=COMPONENTS,
    folders=("transformer", "text_encoder", "tokenizer", "vae"),
    # Klein base: true CFG with a negative prompt; Klein: distilled; [dev]: embedded guidance. Every variant edits
    # from reference images (BFL: up to 10 for [dev], fewer advised for Klein; the memory model counts their tokens).
    supports=Supports(negative_prompt=True, embedded_guidance=True, reference_images=10),
    read_defaults=read_defaults,
    distilled_guidance=DistilledGuidance("this distilled model", "its guidance was distilled into the weights",
                                         "a base model"),
    check_guidance=check_guidance,
    check_components=check_components,
    tensor_parallel=TENSOR_PARALLEL,
    lora_layout=ORIGINAL_LAYOUT_RULES,  # a LoRA under the original code's layer names
    # Where the CPU's tile kernel runs a quantized transformer, a step holds one block's arrays at a time (beside the
    # residual stream and the streams kept for the joint one): at most in a single block, whose fused QKV and MLP
    # projection (3 + 2 x 3 widths) is held while the attention, the SwiGLU (3) and the output projection's input
    # (4) are made. Measured 28.0 on a narrowed Klein (width 1/16, 64 and 128 px), where 43.1 predicted its quantized
    # denoise phase 24% over (tests/test_memory_model.py).
    denoise_layerwise_per_token=28.0,
    # Where the CPU's elementwise kernel runs (quantized or not), the single block's SwiGLU is written beside the
    # attention's output in the output projection's input, and the queries' and keys' norms and rotary embedding are
    # one array each: 19.1, measured on the same narrowed Klein (64 and 128 px, 4-bit and unquantized), where 28
    # and 43.1 predicted 18% and 12% over (tests/test_memory_model.py).
    denoise_kernel_per_token=19.1,
)
Flux2Pipeline.family = FAMILY
