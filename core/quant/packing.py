"""MLX's affine layout: integer codes packed little-endian as one bit stream per row, in uint32 words.

Code j of a row occupies bits [j*b, (j+1)*b) of that row's stream, so at 3, 5 and 6 bits a code can
straddle two words. Every group of 32, 64 or 128 codes fills whole words (32*b bits = b words).
"""

from __future__ import annotations

import mlx.core as mx

WORD = 32


def pack(codes: mx.array, bits: int) -> mx.array:
    """Codes (rows, n) with values in [0, 2^bits) -> packed uint32 words (rows, n * bits / 32)."""
    rows, n = codes.shape
    chunks = codes.astype(mx.uint32).reshape(rows, n // WORD, WORD)  # 32 codes fill `bits` words
    words = []
    for word in range(bits):
        total = mx.zeros((rows, n // WORD), dtype=mx.uint32)
        for j in _codes_touching(word, bits):
            offset = j * bits - word * WORD
            code = chunks[..., j]
            total = total | (code << offset if offset >= 0 else code >> -offset)
        words.append(total)
    return mx.stack(words, axis=-1).reshape(rows, n * bits // WORD)


def unpack(words: mx.array, bits: int) -> mx.array:
    """Packed uint32 words (rows, m) -> codes (rows, m * 32 / bits) as uint32."""
    rows, m = words.shape
    chunks = words.reshape(rows, m // bits, bits)
    mask = (1 << bits) - 1
    codes = []
    for j in range(WORD):
        first, offset = divmod(j * bits, WORD)
        code = chunks[..., first] >> offset
        if offset + bits > WORD:
            code = code | (chunks[..., first + 1] << (WORD - offset))
        codes.append(code & mask)
    return mx.stack(codes, axis=-1).reshape(rows, m * WORD // bits)


def _codes_touching(word: int, bits: int) -> range:
    """The codes (0..31 within a chunk of 32) with at least one bit in `word`."""
    first = (word * WORD) // bits
    last = min(WORD - 1, ((word + 1) * WORD - 1) // bits)
    return range(first, last + 1)
