"""Attention over heads, and the joint [text, image] attention of the MMDiT double-stream blocks.

On the CPU, attention is the two products with the softmax between them written out (fast_math's
exp): MLX's CPU `mx.fast.scaled_dot_product_attention` is the same three steps with MLX's own
softmax, whose scalar exp made it about half of the attention time (benchmarks/attention_ops.py).
Each CPU call holds a few score-sized arrays, so it makes at most CACHE_SCORES (1 MB) of scores: a
group of heads at a time where a head's scores fit, else one head's queries a chunk at a time, each
against all the keys. The scores are then still in cache when the softmax and the values' product read
them, and the memory a call holds is bounded whatever the image's size (at 2^32 scores in one matrix,
65,536 positions attending to 65,536 in a 2048x2048 image's VAE mid-block, MLX's CPU attention would
die with SIGFPE). Chunks are of equal size (768 queries in three chunks of 256, not 341, 341 and 86).
A group of heads is bitwise the same computation as all heads at once; chunks of queries are the same
numbers up to the BLAS's rounding. GPUs run MLX's fused kernel, which never holds the scores, whole.

The CPU's scores are laid out keys by queries (k q^T), and the softmax's max and sum are taken over the
keys' axis, -2: MLX's CPU reductions along an array's last axis run one element after another, across rows
they are vectorized (the max and sum of 256 queries' scores against 768 keys took 0.23 ms along the last
axis, 0.07 ms across rows). The values' product then reads the weights transposed, which BLAS does without
a copy.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .fast_math import MASKED, exp_of_difference
from .rope import apply_rope


CACHE_SCORES = 1 << 18  # scores per call on the CPU (1 MB in float32: a core's L2 cache here)
SCORE_ARRAYS = 4  # score-sized float32 arrays one call holds at once, at most (4 MB in all)


def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                                 mask: mx.array | None = None) -> mx.array:
    """softmax(q k^T * scale) v over (B, H, L, D); on the CPU a group of heads at a time, or one head's
    queries a chunk at a time when its scores pass CACHE_SCORES. `mask` (an array: True for keys to attend
    to, or added to the scores) broadcasts to (B, H, Lq, Lk)."""
    b, heads, lq, _ = q.shape
    per_head = b * lq * k.shape[2]
    if mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if per_head > CACHE_SCORES:
        return mx.concatenate([_query_chunks(q[:, h:h + 1], *_packed(k, v, h, h + 1), scale,
                                             _heads_of(mask, h, h + 1)) for h in range(heads)], axis=1)
    group = max(1, CACHE_SCORES // per_head)
    parts = [_evaluated(heads_attention(q[:, h:h + group], *_packed(k, v, h, h + group), scale,
                                        _heads_of(mask, h, h + group)))
             for h in range(0, heads, group)]
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)


def _packed(k: mx.array, v: mx.array, start: int, stop: int) -> tuple[mx.array, mx.array]:
    """Heads [start, stop) of the keys and values, each head's rows packed together: a head of (B, L, H, D)
    seen as (B, H, L, D) has rows H * D apart, and BLAS multiplied such rows in 1.4-1.8x the time of packed
    ones (256 queries against 768 keys of 128 channels). Copied once a call, for all its query chunks."""
    return mx.contiguous(k[:, start:stop]), mx.contiguous(v[:, start:stop])


def heads_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """One CPU attention call over all the heads it is given: the scores (keys by queries, see the module's
    note), their softmax, the values' product. The softmax is normalized after the product, on (L, D)
    rather than (L, L) numbers: one pass and one score-sized array fewer."""
    scores = k @ (q * scale).swapaxes(-1, -2)
    if mask is not None:
        mask = (mask if mask.ndim >= 2 else mask.reshape(1, -1)).swapaxes(-1, -2)
        scores = mx.where(mask, scores, MASKED) if mask.dtype == mx.bool_ else scores + mask
    weights = exp_of_difference(scores, mx.max(scores, axis=-2, keepdims=True))
    totals = weights.sum(axis=-2, keepdims=True).swapaxes(-1, -2)
    return (weights.swapaxes(-1, -2).astype(v.dtype) @ v) / totals.astype(v.dtype)


def cpu_scores_held(batch: int, heads: int, queries: int, keys: int) -> int:
    """The scores one CPU call of scaled_dot_product_attention makes (the memory model's term). Alone, a
    call holds up to SCORE_ARRAYS arrays of them (the scores and what the softmax makes of them); inside a
    denoising step, where the block's own arrays are freed as the call makes its own, the step's peak
    grows by about one array of them (tiny Klein's step: 4.8 bytes more a score, from 65k to 262k scores a
    call)."""
    per_head = batch * queries * keys
    if per_head > CACHE_SCORES:
        return batch * _chunk_rows(batch, queries, keys) * keys
    return min(heads, max(1, CACHE_SCORES // per_head)) * per_head


def _chunk_rows(batch: int, queries: int, keys: int) -> int:
    """Queries a chunk: the fewest chunks of at most CACHE_SCORES scores, of equal size."""
    chunks = -(-queries // max(1, CACHE_SCORES // (batch * keys)))
    return -(-queries // chunks)


def _heads_of(mask: mx.array | None, start: int, stop: int) -> mx.array | None:
    """The part of a (broadcast) mask that heads [start, stop) see."""
    if mask is None or mask.ndim < 3 or mask.shape[-3] == 1:
        return mask
    return mask[..., start:stop, :, :]


def _query_chunks(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """One head, CACHE_SCORES scores at a time: rows of queries against all the keys."""
    b, _, lq, _ = q.shape
    rows = _chunk_rows(b, lq, k.shape[2])
    chunks = []
    for start in range(0, lq, rows):
        part = mask if mask is None or mask.ndim < 2 or mask.shape[-2] == 1 else mask[..., start:start + rows, :]
        chunks.append(_evaluated(heads_attention(q[:, :, start:start + rows], k, v, scale, part)))
    return mx.concatenate(chunks, axis=2)


def _evaluated(chunk: mx.array) -> mx.array:
    """Evaluate a chunk now, so its scores are freed before the next chunk's are made: one lazy graph of all
    the chunks holds every chunk's scores at once (and a call left in its block's graph holds its arrays
    beside the block's). Inside mx.compile, which may not evaluate, it stays lazy."""
    try:
        mx.eval(chunk)
    except ValueError:
        pass
    return chunk


def attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
    """q, k, v: (B, L, H, D); mask: keys to attend to, broadcast to (B, H, L, L), or None -> (B, L, H*D)."""
    b, length, heads, dim = q.shape
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    out = scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(dim), mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, length, heads * dim)


class JointAttention(nn.Module):
    """Attention over [text, image] with separate projections and per-head RMS query/key norms for each
    stream (`to_*` for the image, `add_*_proj` for the text), as diffusers' FluxAttention and its kin."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_out = [nn.Linear(inner, dim, bias=bias)]
        self.add_q_proj = nn.Linear(dim, inner, bias=bias)
        self.add_k_proj = nn.Linear(dim, inner, bias=bias)
        self.add_v_proj = nn.Linear(dim, inner, bias=bias)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_add_out = nn.Linear(inner, dim, bias=bias)

    def _heads(self, x: mx.array) -> mx.array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)

    def __call__(self, img: mx.array, txt: mx.array, rope: tuple[mx.array, mx.array],
                 mask: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """(image output, text output); `mask` hides padded text tokens (see attention)."""
        q = mx.concatenate([self.norm_added_q(self._heads(self.add_q_proj(txt))),
                            self.norm_q(self._heads(self.to_q(img)))], axis=1)
        k = mx.concatenate([self.norm_added_k(self._heads(self.add_k_proj(txt))),
                            self.norm_k(self._heads(self.to_k(img)))], axis=1)
        v = mx.concatenate([self._heads(self.add_v_proj(txt)), self._heads(self.to_v(img))], axis=1)
        out = attention(apply_rope(q, *rope), apply_rope(k, *rope), v, mask)
        txt_len = txt.shape[1]
        return self.to_out[0](out[:, txt_len:]), self.to_add_out(out[:, :txt_len])
