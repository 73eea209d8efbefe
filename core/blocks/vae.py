"""Decoding in tiles, for any VAE with `decode` and `scale_factor`; the shape of a VAE's decoder stages."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def decode_tiled(vae: nn.Module, z: mx.array, tile_pixels: int, overlap: float = 0.25) -> np.ndarray:
    """Decode (B, h, w, C) latents in overlapping tiles; returns the image (B, H, W, 3) as float32 NumPy.

    Each tile is decoded and evaluated on its own, so the decode peak is one tile's activations
    instead of the whole image's. Neighbouring tiles overlap by `overlap` of a tile and are blended
    linearly across the overlap, which hides the seams that per-tile group-norm statistics leave.
    """
    scale = vae.scale_factor
    tile = max(1, tile_pixels // scale)
    _, h, w, _ = z.shape
    if h <= tile and w <= tile:
        return np.array(vae.decode(z).astype(mx.float32))
    stride = max(1, int(tile * (1 - overlap)))
    blend = (tile - stride) * scale
    keep = stride * scale
    rows = []
    for top in range(0, h, stride):
        row = []
        for left in range(0, w, stride):
            decoded = vae.decode(z[:, top:top + tile, left:left + tile]).astype(mx.float32)
            mx.eval(decoded)
            row.append(np.array(decoded))
        rows.append(row)
    out_rows = []
    for i, row in enumerate(rows):
        pieces = []
        for j, piece in enumerate(row):
            if i > 0:
                piece = _blend(rows[i - 1][j], piece, blend, axis=1)
            if j > 0:
                piece = _blend(row[j - 1], piece, blend, axis=2)
            pieces.append(piece[:, :keep, :keep])
        out_rows.append(np.concatenate(pieces, axis=2))
    return np.concatenate(out_rows, axis=1)[:, : h * scale, : w * scale]


def _blend(before: np.ndarray, after: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """Fade from the end of `before` into the start of `after` over `extent` pixels along `axis`."""
    extent = min(extent, before.shape[axis], after.shape[axis])
    if extent <= 0:
        return after
    after = after.copy()
    weights = (np.arange(extent, dtype=np.float32) / extent).reshape([-1 if a == axis else 1 for a in range(4)])
    tail = np.take(before, range(before.shape[axis] - extent, before.shape[axis]), axis=axis)
    head = np.take(after, range(extent), axis=axis)
    index = [slice(None)] * 4
    index[axis] = slice(0, extent)
    after[tuple(index)] = tail * (1 - weights) + head * weights
    return after


def decoder_stages(vae: nn.Module) -> tuple[tuple[int, ...], bool, bool, bool]:
    """(channels of each up block, widest first; whether the mid block has attention; whether an upsampling
    block adds a parameter-free shortcut of its input, upsampled, to its output; whether the upsamplers halve the
    channels, Qwen-Image's: a block starts from fewer than the block before ends with), read from the decoder as
    diffusers' VAE decoders lay it out (`mid_block.attentions`, `up_blocks.N.resnets.0.conv1` / `conv2`,
    `up_blocks.N.avg_shortcut`: Qwen-Image 2.1's residual up blocks)."""
    decoder = vae.decoder
    widths = tuple(block.resnets[0].conv2.weight.shape[0] for block in decoder.up_blocks)
    starts = [block.resnets[0].conv1.weight.shape[-1] for block in decoder.up_blocks]
    return (widths, bool(decoder.mid_block.attentions), any("avg_shortcut" in block for block in decoder.up_blocks),
            any(start < before for start, before in zip(starts[1:], widths)))
