"""The memory (and temporary disk) a calibration (core/quant/calibration/) holds at its peak.

While a block is calibrated, memory holds what stays for the run (the VAE, the user's prompt features),
the transformer quantized so far (at most the final model), the block's weights as stored (they are read
once and held until its layers are quantized), one site's X^T X (summed exactly as int64, exact_sum.py,
with one block of its rows in flight as float32) or, while GPTQ factors it, two (in, in) float32 matrices,
as many bytes as the int64 sum (X^T X is let go once copied: the damped copy and its Cholesky factor, then
the factor and its triangular inverse), and either one replayed batch of calls (its inputs, at most a quarter
of a block's weights, calibrator.batch_bytes; the output of the block before for that batch; one forward
pass's activations at the calibration size; on the CPU, for a model large enough, also the dequantized slices
of a quantized weight in flight: the dense path of quant/dense.py, two slices a lane) or, once that pass has stopped at the site and let
its activations go, one block of X^T X's rows being summed; the calibration prompts' text features stay
encoded throughout. The
recorded transformer inputs (text features and latents of every recorded call) and the outputs of the block before for every call are on disk, in a temporary
folder (quant/calibration/spill.py): `calibration_disk_bytes` is their size, with two blocks' outputs
(the next block's are written before the previous block's go).
"""

from __future__ import annotations

from ..quant.calibration.calibrator import DENSE_SHARE, STATS_BYTES
from ..quant.calibration.exact_sum import ROW_BLOCK
from ..quant.calibration.settings import BUILTIN_PROMPTS, GENERAL_SIZE, RECORDED_STEPS
from ..quant.dense import bytes_in_flight, slice_bytes
from .activations import _transformer_config, denoise_bytes, image_tokens, prompt_feature_bytes
from .weights import architecture

STATS_COPIES = 2  # (in, in) float32 matrices at once: GPTQ's factorisation (or the int64 sum), one site at a time
PRODUCT_BYTES = 4 + 8  # per entry of the block of rows in flight: float32 product and its grid units (added in place)
CHECKPOINT_BYTES = 2  # the blocks' weights are read as stored: bfloat16 checkpoints
BATCH_SHARE = 4  # one replayed batch's inputs are at most a block's weights over this


def calibration_bytes(entry, transformer_size, others: int, dtype_bytes: int, batch: int, backend) -> int:
    """Predicted peak bytes of calibrating `entry`'s transformer to the plan `transformer_size` was made for
    (a memory_model.ComponentSize); `others` is what stays resident besides (VAE, prompt features)."""
    layers = architecture(entry.transformer).layers
    blocks: dict[str, int] = {}
    for layer in layers:
        blocks[layer.block] = blocks.get(layer.block, 0) + layer.params
    block = max(blocks.values(), default=0) * CHECKPOINT_BYTES
    widest = max((layer.in_dim for layer in layers if not layer.embedding), default=0)
    statistics = STATS_COPIES * widest ** 2 * STATS_BYTES
    summing = min(ROW_BLOCK, widest) * widest * PRODUCT_BYTES
    size = _size(entry)
    activations = denoise_bytes(entry, size, size, batch, dtype_bytes, backend)
    replayed = block // BATCH_SHARE + _block_output_bytes(entry, size, batch, dtype_bytes)
    prompts = BUILTIN_PROMPTS * prompt_feature_bytes(entry, batch, dtype_bytes)  # encoded once, held throughout
    inside = [layer for layer in layers if layer.block != layer.path] if backend.name == "cpu" else []
    largest = max((slice_bytes(layer.in_dim, layer.out_dim, dtype_bytes) for layer in inside), default=0)
    dense = max((bytes_in_flight(layer.in_dim, layer.out_dim, dtype_bytes) for layer in inside), default=0)
    dense = dense if largest <= block * DENSE_SHARE else 0  # the calibrator's rule (Calibrator._dense_pays)
    forward = replayed + activations + dense  # let go before the batch's rows are summed (Calibrator._gather)
    return others + transformer_size.nbytes + block + statistics + max(forward, summing) + prompts


def calibration_disk_bytes(entry, dtype_bytes: int, batch: int) -> int:
    """Predicted temporary disk bytes of a calibration: the recorded calls and two blocks' outputs."""
    size = _size(entry)
    steps = min(entry.default_steps, RECORDED_STEPS)
    latents = batch * image_tokens(size, size) * entry.transformer.config.get("in_channels", 64) * dtype_bytes
    recorded = BUILTIN_PROMPTS * steps * (prompt_feature_bytes(entry, batch, dtype_bytes) + latents)  # per call
    outputs = 2 * BUILTIN_PROMPTS * steps * _block_output_bytes(entry, size, batch, dtype_bytes)
    return recorded + outputs


def _size(entry) -> int:
    return entry.default_size[0] if entry.family == "builtin" else GENERAL_SIZE


def _block_output_bytes(entry, size: int, batch: int, dtype_bytes: int) -> int:
    """A block's output for one call: the hidden states of the joint [text, image] sequence."""
    cfg = _transformer_config(entry)
    length = entry.max_sequence_length + image_tokens(size, size)
    return batch * length * cfg.num_attention_heads * cfg.attention_head_dim * dtype_bytes
