"""Attention over heads, and the joint [text, image] attention of the MMDiT double-stream blocks."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .rope import apply_rope


def attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
    """q, k, v: (B, L, H, D); mask: keys to attend to, broadcast to (B, H, L, L), or None -> (B, L, H*D)."""
    b, length, heads, dim = q.shape
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(dim), mask=mask)
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
