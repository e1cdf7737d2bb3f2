"""Rotary embedding of q and k, and the key/value write into the cache: one kernel after the q/k/v product.

qkv [T, (n_q + 2 n_kv) * D] (the product's output: q heads, then k heads, then v heads) ->
  q    [n_kv, T * g, D]   rotated, grouped-query heads folded onto the row axis (row = token * g + head in group),
  k, v written at `slots[t]` of the layer's cache [n_kv, S, D] (k rotated).
One program per (token, head); the angle pos * inv_freq and its cos/sin are computed in float32 for every program
alike (rotate-half convention of Hugging Face checkpoints). Elementwise only: nothing depends on the row count.
"""

from __future__ import annotations

import contextlib

import torch

from model.kernels import enter, launch, tl, triton

if triton is not None:
    @triton.jit
    def _rope_kernel(QKV, POS, SLOTS, INV, Q, K, V, stride_t, n_q, n_kv, g, T,
                     sk_h, sk_s, sv_h, sv_s, HALF: tl.constexpr, PDL: tl.constexpr):
        enter(PDL)
        t = tl.program_id(0)
        h = tl.program_id(1)  # 0..n_q-1: q heads, n_q..n_q+n_kv-1: k heads, then v heads
        d = tl.arange(0, HALF)
        src = QKV + t * stride_t + h * (2 * HALF)
        x1 = tl.load(src + d)
        x2 = tl.load(src + HALF + d)
        if h < n_q + n_kv:
            ang = tl.load(POS + t).to(tl.float32) * tl.load(INV + d)
            c = tl.cos(ang)
            s = tl.sin(ang)
            f1 = x1.to(tl.float32)
            f2 = x2.to(tl.float32)
            y1 = (f1 * c - f2 * s).to(x1.dtype)
            y2 = (f2 * c + f1 * s).to(x1.dtype)
            if h < n_q:
                kvh = h // g
                dst = Q + (kvh * T * g + t * g + h % g) * (2 * HALF)
            else:
                dst = K + (h - n_q) * sk_h + tl.load(SLOTS + t) * sk_s
            tl.store(dst + d, y1)
            tl.store(dst + HALF + d, y2)
        else:
            dst = V + (h - n_q - n_kv) * sv_h + tl.load(SLOTS + t) * sv_s
            tl.store(dst + d, x1)
            tl.store(dst + HALF + d, x2)


def rope_write(qkv: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, inv_freq: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, n_q: int, n_kv: int) -> torch.Tensor:
    """Rotate q and k of `qkv` [T, (n_q+2n_kv)*D] at positions `pos` [T]; write k and v at `slots` [T] of the layer's
    caches [n_kv, S, D]; return q [n_kv, T*g, D]."""
    T = qkv.shape[0]
    D = k_cache.shape[-1]
    g = n_q // n_kv
    assert qkv.stride(1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    q = torch.empty(n_kv, T * g, D, dtype=qkv.dtype, device=qkv.device)
    with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():
        _rope_kernel[(T, n_q + 2 * n_kv)](qkv, pos, slots, inv_freq, q, k_cache, v_cache, qkv.stride(0), n_q, n_kv,
                                          g, T, k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
                                          v_cache.stride(1), HALF=D // 2, num_warps=1, **launch(qkv.device))
    return q
