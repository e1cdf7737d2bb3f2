"""Skinny matrix products with fused prologue and epilogue, bit-identical per row whatever the number of rows.

    y = epilogue(prologue(x) @ w.T)       x [M, K] (M = 1 .. a few hundred), w [N, K]

prologue: none | RMSNorm(x) * norm_w (`norm=`) | SiLU(gate) * up of x = [gate | up] (`glu=True`)
epilogue: + bias | residual += y in place, optionally only for rows whose `keep` flag is set (`residual=`, `keep=`)

Why one kernel for decoding and verification alike: a decode step multiplies one row, a tree verification 8..64
rows. cuBLAS picks a different algorithm (GEMV, split-K GEMM, tensor-core tiles) per row count, so the same token
gets different rounding in the two passes, and bf16 greedy outputs of SWIFT and vanilla decoding part after a
near-tie. Here every row is computed by the same instructions in the same order:

* rows come in blocks of 16, each multiplied by its own `tl.dot` of shape [16, BLOCK_K] x [BLOCK_K, BLOCK_N] (the
  tensor-core instruction and its accumulation order along K never change); a program holds 1, 2 or 4 such blocks
  (MB) so that the weights are read once for up to 64 rows, but the blocks never share a dot;
* the block shape (BLOCK_N, BLOCK_K, warps, stages) depends on the weight shape only (`config`), never on M;
* K is walked in one sequential loop: no split-K, no atomics;
* the RMSNorm's sum of squares is computed per row, in the same BLOCK_K slices, by every program that needs it.

Memory traffic is the weights, once per call, which is what bounds decoding; the 15 idle rows of a one-row call cost
tensor-core cycles that a memory-bound product has to spare.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from model.kernels import interpreting, tl, triton

ROWS = 16  # rows per tensor-core block: fixed, so a row's arithmetic never depends on the call's row count


@dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


# Block shapes per (N, K) measured on an H200 (scripts/tune_kernels.py); other shapes use `heuristic`.
TUNED: dict[tuple[int, int], Config] = {}


def heuristic(n: int, k: int) -> Config:
    """A block shape for an (N, K) weight that keeps enough programs in flight for a memory-bound product."""
    if interpreting():
        return Config(16, 32, 1, 1)
    block_n = 16 if n <= 8192 else 32  # shared memory: 3 stages of 4 x-blocks + the weight tile stay < 150 KB
    return Config(block_n, min(256, max(64, triton.next_power_of_2(k))), 4, 3)


def config(n: int, k: int) -> Config:
    return TUNED.get((n, k)) or heuristic(n, k)


if triton is not None:
    @triton.jit
    def _row_rstd(X, rows, M, K, stride_xm, eps, BLOCK_K: tl.constexpr):
        """1 / sqrt(mean(x^2) + eps) of 16 rows, summed in BLOCK_K slices in order."""
        ss = tl.zeros([16], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + rows[:, None] * stride_xm + rk[None, :], mask=(rows < M)[:, None] & (rk < K)[None, :],
                        other=0.0).to(tl.float32)
            ss += tl.sum(x * x, axis=1)
        return 1.0 / tl.sqrt(ss / K + eps)

    @triton.jit
    def _x_tile(X, NW, rows, rk, rstd, M, K, stride_xm, NORM: tl.constexpr, GLU: tl.constexpr):
        """The prologue-applied input tile [16, BLOCK_K], rounded to the input dtype as eager PyTorch would."""
        m = (rows < M)[:, None] & (rk < K)[None, :]
        ptr = X + rows[:, None] * stride_xm + rk[None, :]
        if GLU:  # x = [gate | up]: silu(gate) * up
            g = tl.load(ptr, mask=m, other=0.0)
            u = tl.load(ptr + K, mask=m, other=0.0)
            gf = g.to(tl.float32)
            a = (gf * tl.sigmoid(gf)).to(u.dtype)
            x = (a.to(tl.float32) * u.to(tl.float32)).to(u.dtype)
        else:
            x = tl.load(ptr, mask=m, other=0.0)
            if NORM:
                nw = tl.load(NW + rk, mask=rk < K, other=0.0)
                xn = (x.to(tl.float32) * rstd[:, None]).to(nw.dtype)
                x = (xn.to(tl.float32) * nw.to(tl.float32)[None, :]).to(nw.dtype)
        return x

    @triton.jit
    def _dot(x, wt, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(x, wt, acc, input_precision="ieee")
        return tl.dot(x, wt, acc)

    @triton.jit
    def _epilogue(acc, Y, B, R, KEEP, rows, rn, M, N, stride_ym, stride_rm,
                  HAS_BIAS: tl.constexpr, RESID: tl.constexpr, GATED: tl.constexpr):
        m = (rows < M)[:, None] & (rn < N)[None, :]
        if HAS_BIAS:
            acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if RESID:  # residual += y, in place; rows whose keep flag is 0 keep their residual
            rp = R + rows[:, None] * stride_rm + rn[None, :]
            r = tl.load(rp, mask=m, other=0.0)
            out = (r.to(tl.float32) + acc.to(r.dtype).to(tl.float32)).to(r.dtype)
            if GATED:
                keep = tl.load(KEEP + rows, mask=rows < M, other=0)
                out = tl.where((keep != 0)[:, None], out, r)
            tl.store(rp, out, mask=m)
        else:
            tl.store(Y + rows[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _gemm_kernel(X, NW, W, B, R, KEEP, Y, M, N, K, eps, stride_xm, stride_wn, stride_rm, stride_ym,
                     NORM: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr, RESID: tl.constexpr,
                     GATED: tl.constexpr, IEEE: tl.constexpr, EVEN: tl.constexpr, MB: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        r0 = tl.program_id(1) * (16 * MB) + tl.arange(0, 16)
        r1 = r0 + 16
        r2 = r0 + 32
        r3 = r0 + 48
        s0 = tl.full([16], 1.0, tl.float32)
        s1 = s0
        s2 = s0
        s3 = s0
        if NORM:
            s0 = _row_rstd(X, r0, M, K, stride_xm, eps, BLOCK_K)
            if MB >= 2:
                s1 = _row_rstd(X, r1, M, K, stride_xm, eps, BLOCK_K)
            if MB >= 4:
                s2 = _row_rstd(X, r2, M, K, stride_xm, eps, BLOCK_K)
                s3 = _row_rstd(X, r3, M, K, stride_xm, eps, BLOCK_K)
        acc0 = tl.zeros([16, BLOCK_N], tl.float32)
        acc1 = acc0
        acc2 = acc0
        acc3 = acc0
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            wp = W + rn[:, None] * stride_wn + rk[None, :]
            if EVEN:
                w = tl.load(wp)
            else:
                w = tl.load(wp, mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0)
            wt = tl.trans(w)
            acc0 = _dot(_x_tile(X, NW, r0, rk, s0, M, K, stride_xm, NORM, GLU).to(w.dtype), wt, acc0, IEEE)
            if MB >= 2:
                acc1 = _dot(_x_tile(X, NW, r1, rk, s1, M, K, stride_xm, NORM, GLU).to(w.dtype), wt, acc1, IEEE)
            if MB >= 4:
                acc2 = _dot(_x_tile(X, NW, r2, rk, s2, M, K, stride_xm, NORM, GLU).to(w.dtype), wt, acc2, IEEE)
                acc3 = _dot(_x_tile(X, NW, r3, rk, s3, M, K, stride_xm, NORM, GLU).to(w.dtype), wt, acc3, IEEE)
        _epilogue(acc0, Y, B, R, KEEP, r0, rn, M, N, stride_ym, stride_rm, HAS_BIAS, RESID, GATED)
        if MB >= 2:
            _epilogue(acc1, Y, B, R, KEEP, r1, rn, M, N, stride_ym, stride_rm, HAS_BIAS, RESID, GATED)
        if MB >= 4:
            _epilogue(acc2, Y, B, R, KEEP, r2, rn, M, N, stride_ym, stride_rm, HAS_BIAS, RESID, GATED)
            _epilogue(acc3, Y, B, R, KEEP, r3, rn, M, N, stride_ym, stride_rm, HAS_BIAS, RESID, GATED)


def row_blocks(m: int) -> int:
    """16-row blocks per program: the weights are read once for up to 64 rows."""
    return 1 if m <= ROWS else (2 if m <= 2 * ROWS else 4)


def gemm(x: torch.Tensor, w: torch.Tensor, *, bias: torch.Tensor | None = None, norm: torch.Tensor | None = None,
         eps: float = 1e-6, glu: bool = False, residual: torch.Tensor | None = None, keep: torch.Tensor | None = None,
         out_dtype: torch.dtype | None = None, cfg: Config | None = None) -> torch.Tensor | None:
    """prologue(x) @ w.T + bias, for x [M, K] (or [M, 2K] with `glu`), w [N, K] (K contiguous).

    `norm`: RMSNorm weight [K] applied to x first (eps); `glu`: x holds [gate | up], the product's input is
    SiLU(gate) * up. With `residual` [M, N] the result is added to it in place (rows with `keep` [M] == 0 keep their
    value) and nothing is returned; else a new [M, N] tensor of `out_dtype` (default x's dtype) is returned."""
    M = x.shape[0]
    N, K = w.shape
    assert x.stride(-1) == 1 and w.stride(1) == 1, "rows must be contiguous"
    assert x.shape[1] == (2 * K if glu else K), (x.shape, w.shape, glu)
    cfg = cfg or config(N, K)
    mb = row_blocks(M)
    if residual is None:
        y = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
        stride_ym, r, stride_rm = y.stride(0), y, 0
    else:
        assert residual.shape == (M, N) and residual.stride(-1) == 1
        y, stride_ym, r, stride_rm = residual, 0, residual, residual.stride(0)
    even = N % cfg.block_n == 0 and K % cfg.block_k == 0
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, ROWS * mb))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _gemm_kernel[grid](x, norm if norm is not None else w, w, bias if bias is not None else w, r,
                           keep if keep is not None else x, y, M, N, K, float(eps), x.stride(0), w.stride(0),
                           stride_rm, stride_ym,
                           NORM=norm is not None, GLU=glu, HAS_BIAS=bias is not None, RESID=residual is not None,
                           GATED=keep is not None, IEEE=w.dtype == torch.float32, EVEN=even, MB=mb,
                           BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                           num_stages=1 if w.dtype == torch.float32 else cfg.num_stages)  # fp32 tiles: no room
    return None if residual is not None else y
