"""The end of a draft step in two kernels: the top-k ids of the draft's logits, its top-1 probability, and the writes
into the draft's table.

With PyTorch ops this tail is about ten kernels per drafted token (top-k, the softmax denominator, the index
arithmetic and two table writes); inside a draft graph on a small model, where a step is a few hundred kernels of a
few microseconds, that is several percent of the step. Here a first kernel reduces blocks of the vocabulary in
parallel (each block's max, sum of exponentials and top k), and a second, one program, merges the blocks and writes
depth row `offset + d` of the table (ids mapped through the reduced draft vocabulary when there is one), the top-1
probability 1 / sum(exp(logits - max)), and the next step's input token.

Ties between equal logits go to the lower id. The draft only proposes tokens, so neither tie order nor the rounding
of the probability can change the output (verification decides every token).
"""

from __future__ import annotations

import torch

from model.kernels import enter, interpreting, launch, tl, triton

BLOCK_V = 2048  # vocabulary entries per program of the first kernel


if triton is not None:
    @triton.jit
    def _block_kernel(LOGITS, V, PV, PI, PM, PS, K: tl.constexpr, K_P: tl.constexpr, BLOCK: tl.constexpr,
                      PDL: tl.constexpr):
        enter(PDL)
        p = tl.program_id(0)
        i = p * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(LOGITS + i, mask=i < V, other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        tl.store(PM + p, m)
        tl.store(PS + p, tl.sum(tl.exp(x - tl.where(m == -float("inf"), 0.0, m)), axis=0))  # a block of -inf: 0
        kk = tl.arange(0, K_P)
        vals = tl.full([K_P], -float("inf"), tl.float32)
        ids = tl.zeros([K_P], tl.int64)
        for k in tl.static_range(K):
            best = tl.max(x, axis=0)
            at = tl.min(tl.where(x == best, i, V + BLOCK), axis=0)  # the lowest id among equal values
            vals = tl.where(kk == k, best, vals)
            ids = tl.where(kk == k, at, ids)
            x = tl.where(i == at, -float("inf"), x)
        tl.store(PV + p * K_P + kk, vals)
        tl.store(PI + p * K_P + kk, ids)

    @triton.jit
    def _merge_kernel(PV, PI, PM, PS, P, V, MAP, TABLE, TOP1, TOK, OFFSET, d, stride_t,
                      HAS_MAP: tl.constexpr, K: tl.constexpr, K_P: tl.constexpr, P_P: tl.constexpr,
                      PDL: tl.constexpr):
        enter(PDL)
        q = tl.arange(0, P_P)
        kk = tl.arange(0, K_P)
        ok = (q < P)[:, None] & (kk < K)[None, :]
        v = tl.load(PV + q[:, None] * K_P + kk[None, :], mask=ok, other=-float("inf"))
        ids = tl.load(PI + q[:, None] * K_P + kk[None, :], mask=ok, other=0)
        pm = tl.load(PM + q, mask=q < P, other=-float("inf"))
        total = tl.sum(tl.where(q < P, tl.load(PS + q, mask=q < P, other=0.0) * tl.exp(pm - tl.max(pm, axis=0)), 0.0),
                       axis=0)
        row = tl.load(OFFSET) + d
        big = 1 << 62
        for k in tl.static_range(K):
            best = tl.max(tl.max(v, axis=1), axis=0)
            at = tl.min(tl.min(tl.where(v == best, ids, big), axis=1), axis=0)
            at = tl.minimum(at, V - 1)  # fewer than k finite logits (never for a model's head): stay in range
            tok = at
            if HAS_MAP:
                tok = tl.load(MAP + at)
            tl.store(TABLE + row * stride_t + k, tok)
            if k == 0:
                tl.store(TOK, tok)
            v = tl.where(ids == at, -float("inf"), v)
        tl.store(TOP1 + row, 1.0 / total)


def draft_topk(logits: torch.Tensor, k: int, table: torch.Tensor, top1: torch.Tensor, offset: torch.Tensor, d: int,
               vocab_map: torch.Tensor | None = None) -> torch.Tensor:
    """From the draft's logits [1, V'] (float32): table[offset + d, :k] = the top-k ids (through `vocab_map` when
    the draft head is reduced), top1[offset + d] = the top-1 probability; returns the top-1 id [1], the next
    step's input."""
    V = logits.shape[-1]
    block = 64 if interpreting() else BLOCK_V
    P = triton.cdiv(V, block)
    k_p = max(2, triton.next_power_of_2(k))
    dev = logits.device
    pv = torch.empty(P, k_p, dtype=torch.float32, device=dev)
    pi = torch.empty(P, k_p, dtype=torch.int64, device=dev)
    pm = torch.empty(P, dtype=torch.float32, device=dev)
    ps = torch.empty(P, dtype=torch.float32, device=dev)
    tok = torch.empty(1, dtype=torch.long, device=dev)
    pdl = launch(dev)
    _block_kernel[(P,)](logits, V, pv, pi, pm, ps, K=k, K_P=k_p, BLOCK=block, **pdl)
    has_map = vocab_map is not None
    _merge_kernel[(1,)](pv, pi, pm, ps, P, V, vocab_map if has_map else pi, table, top1, tok, offset, d,
                        table.stride(0), HAS_MAP=has_map, K=k, K_P=k_p, P_P=max(2, triton.next_power_of_2(P)), **pdl)
    return tok
