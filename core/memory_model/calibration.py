"""The memory a calibration (core/quant/calibration/) holds at its peak.

While a block is calibrated, memory holds what stays for the run (the VAE, the user's prompt features),
the transformer quantized so far (at most the final model), the block's weights as stored (they are read
once and held until its layers are quantized), the outputs of the block before it for every recorded call
(kept when they take at most CACHE_BLOCKS blocks' weights), one site's X^T X: while it is summed, an
(in, in) int64 running sum (exact_sum.py) and one block of rows of the product in flight; then, while GPTQ
factors it, two (in, in) float32 matrices (X^T X is let go once copied: the damped copy and its Cholesky
factor, then the factor and its triangular inverse), the same bytes as the int64 sum, the recorded transformer inputs (text features per prompt,
latents per recorded step) and one forward pass's activations at the calibration size.
"""

from __future__ import annotations

from ..quant.calibration.calibrator import CACHE_BLOCKS
from ..quant.calibration.exact_sum import ROW_BLOCK
from ..quant.calibration.settings import BUILTIN_PROMPTS, GENERAL_SIZE, RECORDED_STEPS
from .activations import denoise_bytes, image_tokens, prompt_feature_bytes
from .weights import architecture

STATS_BYTES = 8  # X^T X is summed in int64 (exact_sum.py); GPTQ then holds two float32 copies: as many bytes
PRODUCT_BYTES = 4 + 8 + 8  # per entry of the block of rows in flight: float32 product, its grid units, the shifted sum
CHECKPOINT_BYTES = 2  # the blocks' weights are read as stored: bfloat16 checkpoints


def calibration_bytes(entry, transformer_size, others: int, dtype_bytes: int, batch: int, backend) -> int:
    """Predicted peak bytes of calibrating `entry`'s transformer to the plan `transformer_size` was made for
    (a memory_model.ComponentSize); `others` is what stays resident besides (VAE, prompt features)."""
    layers = architecture(entry.transformer).layers
    blocks: dict[str, int] = {}
    for layer in layers:
        blocks[layer.block] = blocks.get(layer.block, 0) + layer.params
    block = max(blocks.values(), default=0) * CHECKPOINT_BYTES
    widest = max((layer.in_dim for layer in layers if not layer.embedding), default=0)
    statistics = widest ** 2 * STATS_BYTES + min(ROW_BLOCK, widest) * widest * PRODUCT_BYTES
    size = entry.default_size[0] if entry.family == "builtin" else GENERAL_SIZE
    steps = min(entry.default_steps, RECORDED_STEPS)
    latents = batch * image_tokens(size, size) * entry.transformer.config.get("in_channels", 64) * dtype_bytes
    recorded = BUILTIN_PROMPTS * (prompt_feature_bytes(entry, batch, dtype_bytes) + steps * latents)
    activations = denoise_bytes(entry, size, size, batch, dtype_bytes, backend)
    return others + transformer_size.nbytes + (1 + CACHE_BLOCKS) * block + statistics + recorded + activations
