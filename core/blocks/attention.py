"""Attention over heads, and the joint [text, image] attention of the MMDiT double-stream blocks.

On the CPU, attention runs in a C kernel (attention_kernel.py) wherever it can: float32, with no mask or a
mask over keys, outside mx.compile. Elsewhere (no C compiler, QUANTBENCH_ATTENTION_KERNEL=off, a mask over
queries) it runs as MLX ops, as follows. There attention is the two products with the softmax between them
written out (fast_math's exp): MLX's CPU `mx.fast.scaled_dot_product_attention` is the same three steps with MLX's own
softmax, whose scalar exp made it about half of the attention time (benchmarks/attention_ops.py).
Each CPU call holds a few score-sized arrays, so it makes at most CACHE_SCORES (1 MB) of scores: a
group of heads at a time where a head's scores fit, else one head's queries a chunk at a time, each
against all the keys. The scores are then still in cache when the softmax and the values' product read
them, and the memory a call holds is bounded whatever the image's size (at 2^32 scores in one matrix,
65,536 positions attending to 65,536 in a 2048x2048 image's VAE mid-block, MLX's CPU attention would
die with SIGFPE). Chunks are of equal size (768 queries in three chunks of 256, not 341, 341 and 86).
A group of heads is bitwise the same computation as all heads at once; chunks of queries are the same
numbers up to the BLAS's rounding. Chunked calls run in lanes (core/cpu_lanes.py), each lane a CPU stream
and a one-thread BLAS of its own, one call a lane at a time, so that both cores do the softmax's
elementwise passes, which MLX runs on one thread, as well as the products: at Klein 4B's width (24 heads)
1.70x faster at 1024x1024 (4,608 positions) and 1.46x at 256x256 (768) than the calls one after another,
with the same MLX peak (`python benchmarks/attention_ops.py --lanes --heads 24 --tokens 4608`), and bitwise
the same as those calls on a one-thread BLAS. GPUs run MLX's fused kernel, which never holds the scores.

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

from ..cpu_kernels import evaluated_output
from ..cpu_lanes import in_lanes, lane_count
from . import attention_kernel, elementwise_kernel
from .fast_math import MASKED, exp_of_difference, gelu_approx, swiglu
from .rope import normed_rope


CACHE_SCORES = 1 << 18  # scores per call on the CPU (1 MB in float32: a core's L2 cache here)
SCORE_ARRAYS = 4  # score-sized float32 arrays one call holds at once, at most (4 MB in all)
# Calls queued in each lane beyond the one it runs. Queuing one (while the main thread keeps the last
# call's output) measured no faster in alternating rounds and held more scores (benchmarks/attention_ops.py
# --lanes; docs/measurements.md), so a lane's next call is made once its last is done.
CALLS_AHEAD = 0
# The CPU's attention kernel (attention_kernel.py), where it can run; MLX's ops below where it cannot.
KERNEL = True


def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                                 mask: mx.array | None = None) -> mx.array:
    """softmax(q k^T * scale) v over (B, H, L, D); on the CPU a group of heads a call, or one head's
    queries a chunk at a time when its scores pass CACHE_SCORES, the calls in lanes. `mask` (an array:
    True for keys to attend to, or added to the scores) broadcasts to (B, H, Lq, Lk)."""
    if mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if KERNEL and attention_kernel.supports(q, k, v, mask):
        out = attention_kernel.attend(q, k, v, scale, mask)
        if out is not None:
            return out
    b, heads, lq, _ = q.shape
    calls = _cpu_calls(b, heads, lq, k.shape[2])
    packed = _PackedHeads(k, v)

    def call(heads_from: int, heads_to: int, first: int, last: int) -> mx.array:
        return heads_attention(q[:, heads_from:heads_to, first:last], *packed(heads_from, heads_to), scale,
                               _mask_of(mask, heads_from, heads_to, first, last, lq))

    inputs = [q, k, v, *([mask] if isinstance(mask, mx.array) else [])]
    outputs = _run(calls, call, _chunked(b, lq, k.shape[2]), inputs)
    per_head = [mx.concatenate(outputs[i:j], axis=2) if j - i > 1 else outputs[i]
                for i, j in _same_heads(calls)]
    return per_head[0] if len(per_head) == 1 else mx.concatenate(per_head, axis=1)


def _chunked(batch: int, queries: int, keys: int) -> bool:
    """Whether one head's scores pass CACHE_SCORES, so that its queries are chunked."""
    return batch * queries * keys > CACHE_SCORES


def _cpu_calls(batch: int, heads: int, queries: int, keys: int) -> list[tuple[int, int, int, int]]:
    """(heads from, heads to, first query, last query) of each CPU call, in order: a group of heads a call
    where a head's scores fit CACHE_SCORES, else one head's queries a chunk (_chunk_rows) a call."""
    per_head = batch * queries * keys
    if _chunked(batch, queries, keys):
        rows = _chunk_rows(batch, queries, keys)
        return [(h, h + 1, first, min(first + rows, queries)) for h in range(heads) for first in range(0, queries, rows)]
    group = max(1, CACHE_SCORES // per_head)
    return [(h, min(h + group, heads), 0, queries) for h in range(0, heads, group)]


def _same_heads(calls: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """[i, j) ranges of consecutive calls over the same heads (one head's chunks of queries)."""
    ranges, start = [], 0
    for index in range(1, len(calls) + 1):
        if index == len(calls) or calls[index][:2] != calls[start][:2]:
            ranges.append((start, index))
            start = index
    return ranges


def _run(calls: list[tuple[int, int, int, int]], call, chunked: bool, inputs: list[mx.array]) -> list[mx.array]:
    """Every call's output, in order: in lanes (core/cpu_lanes.py) where a head's queries are chunked (a
    large image: there a call's scores are CACHE_SCORES, far below the step's own arrays; the `inputs` are
    evaluated first, while BLAS has all its threads, so that the products making them do not run on
    the lanes' one-thread BLAS: an unquantized step's whole graph up to the attention), else each
    evaluated in turn, so that its scores are freed before the next call's are made (one lazy graph of all
    the calls would hold every call's scores at once). Inside mx.compile, which may not evaluate, lazy."""
    outputs: list[mx.array | None] = [None] * len(calls)

    def keep(done: list[tuple[int, mx.array]]) -> None:
        for index, output in done:
            outputs[index] = output

    lanes = lane_count() if chunked else 1
    try:
        if lanes > 1 and len(calls) > 1:  # CALLS_AHEAD + 1 calls' scores a lane at most
            mx.eval(inputs)
            in_lanes([lambda c=c: call(*c) for c in calls], lanes, keep, ahead=CALLS_AHEAD)
        else:
            for index, c in enumerate(calls):
                outputs[index] = call(*c)
                mx.eval(outputs[index])
    except ValueError:
        return [call(*c) for c in calls]
    return outputs


class _PackedHeads:
    """_packed keys and values of the heads the calls are on now: made once for all of a head's chunks, and
    let go when the calls move on (every head packed at once would be a copy of the keys and values)."""

    def __init__(self, k: mx.array, v: mx.array):
        self.k, self.v, self.heads, self.packed = k, v, None, None

    def __call__(self, heads_from: int, heads_to: int) -> tuple[mx.array, mx.array]:
        if self.heads != (heads_from, heads_to):
            self.heads, self.packed = (heads_from, heads_to), _packed(self.k, self.v, heads_from, heads_to)
        return self.packed


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


def cpu_scores_held(batch: int, heads: int, queries: int, keys: int, lanes: int | None = None) -> int:
    """The scores the CPU calls of scaled_dot_product_attention make at once (the memory model's term): one
    call's (cpu_call_scores), or where a head's queries are chunked, CALLS_AHEAD + 1 calls' on each lane
    (lane_count() unless given), never more calls than there are. Alone, a call holds
    up to SCORE_ARRAYS arrays of them (the scores and what the softmax makes of them); inside a denoising
    step, where the block's own arrays are freed as the call makes its own, the step's peak grows by about
    one array of them (tiny Klein's step: 4.8 bytes more a score, from 65k to 262k scores a call). Where the C
    kernel runs (attention_kernel.py), MLX holds none: each thread keeps a block's scores in a buffer of its own
    (a few MB, outside MLX's memory, like the tile kernel's tiles)."""
    if KERNEL and attention_kernel.expected():
        return 0
    in_flight = min(len(_cpu_calls(batch, heads, queries, keys)), (CALLS_AHEAD + 1) * (lanes or lane_count()))
    return (in_flight if _chunked(batch, queries, keys) else 1) * cpu_call_scores(batch, heads, queries, keys)


def cpu_call_scores(batch: int, heads: int, queries: int, keys: int) -> int:
    """The scores one CPU call makes: a chunk of one head's queries against all the keys, or a group of
    heads whose scores fit CACHE_SCORES."""
    per_head = batch * queries * keys
    if per_head > CACHE_SCORES:
        return batch * _chunk_rows(batch, queries, keys) * keys
    return min(heads, max(1, CACHE_SCORES // per_head)) * per_head


def _chunk_rows(batch: int, queries: int, keys: int) -> int:
    """Queries a chunk: the fewest chunks of at most CACHE_SCORES scores, of equal size."""
    chunks = -(-queries // max(1, CACHE_SCORES // (batch * keys)))
    return -(-queries // chunks)


def _mask_of(mask: mx.array | None, heads_from: int, heads_to: int, first: int, last: int,
             queries: int) -> mx.array | None:
    """The part of a (broadcast) mask that heads [heads_from, heads_to) and queries [first, last) see."""
    if mask is None:
        return None
    if mask.ndim >= 3 and mask.shape[-3] != 1:
        mask = mask[..., heads_from:heads_to, :, :]
    if mask.ndim >= 2 and mask.shape[-2] != 1 and (first, last) != (0, queries):
        mask = mask[..., first:last, :]
    return mask


def attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
    """q, k, v: (B, L, H, D); mask: keys to attend to, broadcast to (B, H, L, L), or None -> (B, L, H*D)."""
    b, length, heads, dim = q.shape
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    out = scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(dim), mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, length, heads * dim)


ACTIVATIONS = {"swiglu": swiglu, "gelu_tanh": gelu_approx}


def _split_last(view, parts: int, size: int):
    """The view with its last axis split in (parts, size): still a view of the same memory (setting the shape
    raises where that would need a copy, which the kernel would write in vain)."""
    split = view.view()
    split.shape = (*view.shape[:-1], parts, size)
    return split


def attention_beside(q: mx.array, k: mx.array, v: mx.array, hidden: mx.array, activation: str) -> mx.array:
    """mx.concatenate([attention(q, k, v), ACTIVATIONS[activation](hidden)], axis=-1): a parallel block's attention
    output beside its MLP's activation, as its output projection reads them. On the CPU the C kernels write both
    into their columns of one array (attention_kernel.py, elementwise_kernel.py), with no concatenation's copy."""
    b, length, heads, dim = q.shape
    width = hidden.shape[-1] // 2 if activation == "swiglu" else hidden.shape[-1]
    by_head = [t.transpose(0, 2, 1, 3) for t in (q, k, v)]
    if (KERNEL and hidden.ndim == 3 and hidden.shape[:2] == (b, length) and attention_kernel.supports(*by_head, None)
            and elementwise_kernel.runs(hidden)):
        made = evaluated_output((b, length, heads * dim + width), *by_head, hidden)
        out, written = made if made is not None else (None, None)
        if (made is not None and attention_kernel.attend(*by_head, 1.0 / math.sqrt(dim), None,
                                    into=_split_last(written[..., : heads * dim], heads, dim))
                and elementwise_kernel.activation(activation, hidden, into=written[..., heads * dim:])):
            return out
    return mx.concatenate([attention(q, k, v), ACTIVATIONS[activation](hidden)], axis=-1)


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
        q = normed_rope([(self.norm_added_q, self._heads(self.add_q_proj(txt))),
                         (self.norm_q, self._heads(self.to_q(img)))], *rope)
        k = normed_rope([(self.norm_added_k, self._heads(self.add_k_proj(txt))),
                         (self.norm_k, self._heads(self.to_k(img)))], *rope)
        v = mx.concatenate([self._heads(self.add_v_proj(txt)), self._heads(self.to_v(img))], axis=1)
        out = attention(q, k, v, mask)
        txt_len = txt.shape[1]
        return self.to_out[0](out[:, txt_len:]), self.to_add_out(out[:, :txt_len])
