"""Attention over heads, and the joint [text, image] attention of the MMDiT double-stream blocks.

MLX's CPU backend computes attention as whole score matrices: every head's scores are made, then the
softmax, then the product with the values, each pass over memory far larger than the cache. So on the
CPU attention runs a group of heads at a time, a group's scores about CACHE_SCORES (4 MB) where a head's
fit: each head is the same computation as in the whole call, so the output is bitwise the same, and the
scores are still in cache when the softmax and the values' product read them (30% of the attention time
at Klein's sizes, tests/test_attention.py times it).

At 2^32 scores in one matrix (65,536 positions attending to 65,536: a 2048x2048 image in a VAE's
mid-block) MLX's CPU attention dies with SIGFPE, and long before that one head's scores outgrow the
machine. So a head whose scores pass MAX_SCORES runs in chunks of queries, each against all the keys:
the same numbers up to rounding (softmax is per query), a bounded score matrix. GPUs run MLX's fused
kernel, which never holds the scores, whole.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .rope import apply_rope


MAX_SCORES = 1 << 28  # attention scores held at once on the CPU (1 GiB in float32)
CACHE_SCORES = 1 << 20  # scores per group of heads on the CPU (4 MB in float32: a core's share of the cache)


def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                                 mask: mx.array | None = None) -> mx.array:
    """mx.fast.scaled_dot_product_attention over (B, H, L, D); on the CPU a group of heads at a time, and
    in chunks of queries when one head's scores would pass MAX_SCORES. `mask` (an array) broadcasts to
    (B, H, Lq, Lk)."""
    b, heads, lq, _ = q.shape
    per_head = b * lq * k.shape[2]
    if mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if per_head > MAX_SCORES:
        return _query_chunks(q, k, v, scale, mask)
    group = max(1, CACHE_SCORES // per_head)
    if group >= heads:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    parts = [_evaluated(mx.fast.scaled_dot_product_attention(
        q[:, h:h + group], k[:, h:h + group], v[:, h:h + group], scale=scale, mask=_heads_of(mask, h, h + group)))
        for h in range(0, heads, group)]
    return mx.concatenate(parts, axis=1)


def cpu_scores_held(batch: int, heads: int, queries: int, keys: int) -> int:
    """Attention scores held at once by scaled_dot_product_attention on the CPU (the memory model's term)."""
    per_head = batch * queries * keys
    if per_head > MAX_SCORES:
        return batch * heads * max(1, MAX_SCORES // (batch * heads * keys)) * keys
    return min(heads, max(1, CACHE_SCORES // per_head)) * per_head


def _heads_of(mask: mx.array | None, start: int, stop: int) -> mx.array | None:
    """The part of a (broadcast) mask that heads [start, stop) see."""
    if mask is None or mask.ndim < 3 or mask.shape[-3] == 1:
        return mask
    return mask[..., start:stop, :, :]


def _query_chunks(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    b, h, lq, _ = q.shape
    rows = max(1, MAX_SCORES // (b * h * k.shape[2]))
    chunks = []
    for start in range(0, lq, rows):
        part = mask if mask is None or mask.ndim < 2 or mask.shape[-2] == 1 else mask[..., start:start + rows, :]
        chunks.append(_evaluated(mx.fast.scaled_dot_product_attention(q[:, :, start:start + rows], k, v, scale=scale,
                                                                      mask=part)))
    return mx.concatenate(chunks, axis=2)


def _evaluated(chunk: mx.array) -> mx.array:
    """Evaluate a chunk now, so its scores are freed before the next chunk's are made: one lazy graph of all
    the chunks holds every chunk's scores at once. Inside mx.compile, which may not evaluate, it stays lazy."""
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
