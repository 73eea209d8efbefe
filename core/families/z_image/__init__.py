"""Z-Image (Tongyi-MAI): Z-Image-Turbo (distilled, few steps, no CFG) and Z-Image (base, true CFG). The
family's descriptor (see core/family.py for the contract)."""

from ...family import DistilledGuidance, Family, Supports
from .components import COMPONENTS, ORIGINAL_LAYOUT_RULES, check_components, open_transformer
from .pipeline import ZImagePipeline, read_defaults
from .random_model import write_random_z_image
from .tensor_parallel import TENSOR_PARALLEL

FAMILY = Family(
    name="z_image",
    label="Z-Image",
    pipeline_classes=("ZImagePipeline",),
    pipeline=ZImagePipeline,
    components=COMPONENTS,
    folders=("transformer", "text_encoder", "tokenizer", "vae"),
    # Turbo: distilled, no guidance; base: true CFG with a negative prompt ("" when none is given).
    supports=Supports(negative_prompt=True, embedded_guidance=False),
    read_defaults=read_defaults,
    distilled_guidance=DistilledGuidance("Z-Image-Turbo", "its guidance was distilled into the weights",
                                         "Z-Image (base)", fixed=0.0),
    open_transformer=open_transformer,
    check_components=check_components,
    tensor_parallel=TENSOR_PARALLEL,
    lora_layout=tuple(ORIGINAL_LAYOUT_RULES),  # a LoRA under the original code's layer names
    random_models=(("z-image", write_random_z_image),),
    # Single-stream blocks with a SwiGLU feed-forward of 8/3 the width: FLUX.2's 43.1 predicted a narrowed model's
    # denoise peak 10-47% over (256-512 px, CFG on and off); 27 gives -2% to +7% (tests/test_memory_model_prompts.py).
    denoise_per_token=27.0,
    # Where the CPU's tile kernel runs a quantized transformer, a step holds one block's arrays at a time beside the
    # residual stream: at most as the joint sequence is assembled and enters the first main block. Measured 23.4 on the
    # narrowed base model (512x512, CFG), where 27 predicted its quantized denoise phase 9% over.
    denoise_layerwise_per_token=23.5,
    # Where the CPU's elementwise kernel runs (quantized or not: the feed-forward's SwiGLU, the queries' and keys'
    # norms with their rotary embedding): 16.4-16.7 measured on the narrowed base model (256 and 512 px, with and
    # without CFG, 4-bit and unquantized), where 23.5 and 27 predicted 10-23% over (tests/test_memory_model_prompts.py).
    denoise_kernel_per_token=16.7,
)
ZImagePipeline.family = FAMILY
