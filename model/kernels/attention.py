"""Attention over the KV cache whose result for a query depends only on the query and the keys it sees.

A query row of token t sees two sets of cache slots (`Extents`, one entry per token):
  1. the prefix `[lo_t, prefix_t)`: the committed sequence before the token (lo_t > 0 only under a sliding window);
  2. the run `[run_lo_t, slot_t]`: a few more slots ending with the token's own key (for a decoded token or a tree
     node just its own slot; for a block of tokens scored together, the block before it); they hold consecutive
     positions, so a sliding window cuts the run at slot_t - window.
The prefix is reduced by `_split_kernel` in fixed chunks of CHUNK slots aligned to absolute slot numbers (online
softmax inside a chunk, BLOCK_N keys at a time), and `_combine_kernel` merges, per row, the chunks in slot order and
then the run one key at a time. Nothing depends on how many rows share the call or where the own key sits: a tree
node at depth d and the same token decoded alone see the same prefix slots and reduce them in the same order, which
is what makes a verification pass bit-identical to plain decoding.

q [n_kv, T*g, D] (row = token * g + query head in group, as `rope.rope_write` writes it), caches [n_kv, S, D];
the output is [T, n_q * D] (token-major, as the output projection reads it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from model.kernels import enter, launch, tl, triton

CHUNK = 128  # prefix slots per split program: fixed, part of the reduction order
BLOCK_N = 64
BLOCK_M = 16


@dataclass
class Extents:
    """What each of T tokens attends to (all [T] int64 on the tensors' device); see the module docstring."""

    prefix: torch.Tensor
    run_lo: torch.Tensor
    slot: torch.Tensor
    pos: torch.Tensor  # rotary position, for the sliding window's lower bound
    window: int = 0  # 0 = no sliding window; else a token at position p sees positions > p - window

    def __post_init__(self):
        # the kernels (attention, RoPE + cache write) index these as dense arrays: an expanded view (stride 0, as the
        # layer search passes its window start) is materialised; a dense tensor is kept as it is
        for name in ("prefix", "run_lo", "slot", "pos"):
            setattr(self, name, getattr(self, name).contiguous())


if triton is not None:
    @triton.jit
    def _lower(POS, t, ok, window):
        if window > 0:
            lo = tl.maximum(tl.load(POS + t, mask=ok, other=0) - window + 1, 0)
        else:
            lo = (t * 0).to(tl.int64)
        return lo

    @triton.jit
    def _split_kernel(Q, K, V, PREFIX, POS, Op, Mp, Lp, R, g, n_chunks, window, scale,
                      sk_h, sk_s, sv_h, sv_s, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
        enter(PDL)
        h = tl.program_id(0)
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        c = tl.program_id(2)
        ok = rm < R
        t = rm // g
        pref = tl.load(PREFIX + t, mask=ok, other=0)
        lo = _lower(POS, t, ok, window)
        hi_tile = tl.max(pref, 0)
        lo_tile = tl.min(tl.where(ok, lo, 1 << 30), 0)
        start = tl.maximum(c * CHUNK, (lo_tile // BLOCK_N) * BLOCK_N)
        end = tl.minimum((c + 1) * CHUNK, hi_tile)
        rd = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + (h * R + rm[:, None]) * HEAD_DIM + rd[None, :], mask=ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for off in range(start, end, BLOCK_N):  # fully hidden blocks of the tile are skipped (they change nothing)
            rn = off + tl.arange(0, BLOCK_N)
            k = tl.load(K + h * sk_h + rn[None, :] * sk_s + rd[:, None])
            if IEEE:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            seen = (rn[None, :] >= lo[:, None]) & (rn[None, :] < pref[:, None])
            s = tl.where(seen, s * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_use[:, None])
            alpha = tl.exp(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + h * sv_h + rn[:, None] * sv_s + rd[None, :])
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        idx = (h * n_chunks + c) * R + rm
        tl.store(Op + idx[:, None] * HEAD_DIM + rd[None, :], acc, mask=ok[:, None])
        tl.store(Mp + idx, m_i, mask=ok)
        tl.store(Lp + idx, l_i, mask=ok)

    @triton.jit
    def _combine_kernel(Q, K, V, PREFIX, RUN_LO, SLOT, POS, Op, Mp, Lp, O, R, g, n_chunks, window, scale,
                        sk_h, sk_s, sv_h, sv_s, so_t, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
                        PDL: tl.constexpr):
        enter(PDL)
        h = tl.program_id(0)
        r = tl.program_id(1)
        t = r // g
        rd = tl.arange(0, HEAD_DIM)
        pref = tl.load(PREFIX + t)
        lo = _lower(POS, t, True, window)
        m = -float("inf")
        m = m + tl.zeros([1], tl.float32)  # a tensor, so the loop-carried types agree
        l_ = tl.zeros([1], tl.float32)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        for c in range(lo // CHUNK, (pref + CHUNK - 1) // CHUNK):  # the prefix chunks, in slot order
            idx = (h * n_chunks + c) * R + r
            m2 = tl.load(Mp + idx + tl.arange(0, 1))
            l2 = tl.load(Lp + idx + tl.arange(0, 1))
            o2 = tl.load(Op + idx * HEAD_DIM + rd)
            mn = tl.maximum(m, m2)
            mu = tl.where(mn == float("-inf"), 0.0, mn)
            a1 = tl.exp(m - mu)
            a2 = tl.exp(m2 - mu)
            l_ = l_ * a1 + l2 * a2
            acc = acc * a1 + o2 * a2
            m = mn
        q = tl.load(Q + (h * R + r) * HEAD_DIM + rd).to(tl.float32)
        own = tl.load(SLOT + t)
        run_lo = tl.load(RUN_LO + t)
        if window > 0:  # the run holds consecutive positions ending at the token's own
            run_lo = tl.maximum(run_lo, own - window + 1)
        for j in range(run_lo, own + 1):  # the run, one key at a time, own key last
            k = tl.load(K + h * sk_h + j * sk_s + rd).to(tl.float32)
            s = tl.sum(q * k, 0) * scale + tl.zeros([1], tl.float32)
            mn = tl.maximum(m, s)
            a1 = tl.exp(m - mn)
            p = tl.exp(s - mn)
            v = tl.load(V + h * sv_h + j * sv_s + rd).to(tl.float32)
            l_ = l_ * a1 + p
            acc = acc * a1 + p * v
            m = mn
        out = acc / l_
        tl.store(O + t * so_t + (h * g + r % g) * HEAD_DIM + rd, out.to(O.dtype.element_ty))


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ext: Extents) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over each row's slots (module docstring); q [n_kv, T*g, D] -> [T, n_kv*g*D]."""
    n_kv, R, D = q.shape
    T = ext.slot.shape[0]
    g = R // T
    S = k_cache.shape[1]
    assert D & (D - 1) == 0 and D >= 16, "head size must be a power of two >= 16"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.is_contiguous()
    assert S % BLOCK_N == 0, "the cache length must be a multiple of BLOCK_N (whole key blocks)"
    n_chunks = triton.cdiv(S, CHUNK)
    dev = q.device
    op = torch.empty(n_kv * n_chunks * R, D, dtype=torch.float32, device=dev)
    mp = torch.empty(n_kv * n_chunks * R, dtype=torch.float32, device=dev)
    lp = torch.empty_like(mp)
    o = torch.empty(T, n_kv * g * D, dtype=q.dtype, device=dev)
    scale = 1.0 / math.sqrt(D)
    common = (n_chunks, int(ext.window), scale, k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
              v_cache.stride(1))
    pdl = launch(dev)
    with torch.cuda.device(dev) if q.is_cuda else contextlib.nullcontext():
        _split_kernel[(n_kv, triton.cdiv(R, BLOCK_M), n_chunks)](
            q, k_cache, v_cache, ext.prefix, ext.pos, op, mp, lp, R, g, *common,
            HEAD_DIM=D, CHUNK=CHUNK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IEEE=q.dtype == torch.float32, num_warps=4,
            **pdl)
        _combine_kernel[(n_kv, R)](q, k_cache, v_cache, ext.prefix, ext.run_lo, ext.slot, ext.pos, op, mp, lp, o,
                                   R, g, *common, o.stride(0), HEAD_DIM=D, CHUNK=CHUNK, num_warps=1, **pdl)
    return o


def reference_mask(ext: Extents, S: int) -> torch.Tensor:
    """The bool mask [T, S] (True = seen) of the same extents, for SDPA and the tests."""
    j = torch.arange(S, device=ext.slot.device)[None, :]
    lo = (ext.pos - ext.window + 1).clamp_min(0)[:, None] if ext.window else 0
    prefix = (j >= lo) & (j < ext.prefix[:, None])
    run = (j >= ext.run_lo[:, None]) & (j <= ext.slot[:, None])
    if ext.window:  # the run's slots hold consecutive positions ending at the token's own
        run &= j > ext.slot[:, None] - ext.window
    return prefix | run
