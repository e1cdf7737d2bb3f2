"""Skinny matrix products with fused prologue and epilogue, bit-identical per row whatever the number of rows.

    y = epilogue(prologue(x) @ w.T)       x [M, K] (M = 1 .. a few hundred), w [N, K]

prologue: none | RMSNorm(x) * norm_w (`norm=`)
epilogue: + bias | SiLU(gate) * up of the two halves of w = [w_gate; w_up] (`glu=True`, y is [M, N/2]) |
          residual += y in place, optionally only for rows whose `keep` flag is set (`residual=`, `keep=`)

Why one kernel for decoding and verification alike: a decode step multiplies one row, a tree verification 8..64
rows. cuBLAS picks a different algorithm (GEMV, split-K GEMM, tensor-core tiles) per row count, so the same token
gets different rounding in the two passes, and bf16 greedy outputs of SWIFT and vanilla decoding part after a
near-tie. Here every row is computed by the same instructions in the same order, and everything that shapes that
order -- the `Config` -- is chosen from the weight shape (N, K) alone, never from M:

* every block of 16 rows is multiplied by its own `tl.dot` of shape [16, BLOCK_K] x [BLOCK_K, BLOCK_N]: the
  tensor-core instruction and its accumulation order along K never change. Above 16 rows, a program takes two row
  blocks (`row_blocks`, for weights large enough to be bound by their reads) and loads each weight tile once for
  both: a 17..32-row verification then reads the weights once, as a decode step does (with one row block per
  program, the LLaMA-2-7B products took 26-48% longer at 32 rows than at 16). The programs of one weight tile are
  neighbours in the launch order, so beyond 32 rows the tile's later reads hit L2 when they can;
* `split`: K is cut into `split` fixed ranges (from K and BLOCK_K only); each range's partial sum goes to a float32
  workspace, and the last program of a tile to arrive (an atomic counter) adds the partials in range order
  0, 1, .., split-1 and applies the epilogue. More programs for a long K, the same bits for every M;
* the RMSNorm's sum of squares is a short pass over the row before the weight loop, in the same BLOCK_K slices,
  for rows under ROW_KERNEL_MIN_K columns; wider rows get it once per row from a kernel of their own before the
  product (`norm_mode`). Other passes, by SWIFT_GEMM_NORM: wider slices (`norm_block`); row by row, `rows`;
  `one-pass`, which accumulates the squares in the K loop and scales the sums by rstd, as
  norm(x) @ w.T = rstd * ((x * norm_w) @ w.T) (measured slower).

The SiLU gating is an epilogue of the gate/up product, not a prologue of the down product: a prologue is recomputed
by every program of the down product at every K step, in the loop that should only stream weights, and it made that
product several times slower than cuBLAS (outputs/reference/h200-selftest).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass

import torch

from model.kernels import ROW_KERNEL_MIN_K, enter, interpreting, launch, tl, triton

ROWS = 16  # rows per tensor-core block: fixed, so a row's arithmetic never depends on the call's row count
LOCKS = 1 << 18  # arrival counters of split products: (row blocks x column tiles) of one call at most


@dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split: int = 1  # fixed K ranges, reduced in order by the last program of a tile

    def __post_init__(self):
        if self.block_n < 16 or self.block_k < 16:
            raise ValueError("tensor-core blocks need block_n, block_k >= 16")
        if self.split < 1:
            raise ValueError("split must be >= 1")

    @property
    def name(self) -> str:
        return f"{self.block_n}x{self.block_k}w{self.num_warps}s{self.num_stages}k{self.split}"


# Block shapes per (N, K) measured on an H200 (scripts/gpu_selftest.py --tune, M = 1/16/32); others: `heuristic`.
TUNED: dict[tuple[int, int], Config] = {  # SmolLM2-135M and LLaMA-2-7B shapes (outputs/reference/h200-selftest-tuned)
    (960, 576): Config(16, 256, 4, 3, 1),
    (576, 576): Config(16, 128, 4, 3, 1),
    (3072, 576): Config(32, 64, 4, 4, 1),
    (576, 1536): Config(16, 256, 4, 3, 8),
    (49152, 576): Config(64, 64, 4, 3, 1),
    (12288, 4096): Config(32, 64, 4, 4, 1),
    (4096, 4096): Config(32, 64, 4, 4, 4),
    (22016, 4096): Config(32, 64, 4, 4, 1),
    (4096, 11008): Config(32, 64, 4, 4, 4),
    (32000, 4096): Config(64, 64, 4, 3, 1),
}


def heuristic(n: int, k: int) -> Config:
    """A block shape for an (N, K) weight that keeps enough programs in flight for a memory-bound product."""
    if interpreting():
        return Config(16, 32, 1, 1)
    if n >= 16384:  # LM heads: wide tiles (measured best for both tuned heads)
        return Config(64, 64, 4, 3)
    return Config(32 if n >= 2048 else 16, 64, 4, 4, split=4 if k >= 4 * n and k >= 2048 else 1)


@functools.lru_cache(maxsize=1)
def _tuned_file() -> dict[tuple[int, int], Config]:
    """Block shapes from a tuning run on this GPU (SWIFT_GEMM_TUNED=path to scripts/gpu_selftest.py's tuned.json),
    read once per process."""
    path = os.environ.get("SWIFT_GEMM_TUNED")
    if not path:
        return {}
    with open(path) as f:
        return {tuple(int(v) for v in key.split(",")): Config(*fields) for key, fields in json.load(f).items()}


def config(n: int, k: int) -> Config:
    """The block shape of an (N, K) weight: a tuned file, then TUNED, then `heuristic`. Never depends on M."""
    return _tuned_file().get((n, k)) or TUNED.get((n, k)) or heuristic(n, k)


NORM_MODES = ("two-pass", "rows", "one-pass", "row-kernel")


def norm_mode(k: int = 0) -> str:
    """How a product with the RMSNorm prologue over rows of k columns gets each row's rstd: SWIFT_GEMM_NORM when set,
    else `row-kernel` for k >= ROW_KERNEL_MIN_K and `two-pass` below (a choice by the weight's shape, never by the row
    count). The bits differ between modes, another summation order, but in every mode a row's bits are the same for
    every row count:

    * `two-pass` (the default for narrow rows): a pass over the 16-row tile of x before the weights, BLOCK_K columns
      per step (`norm_block`). At k = 4096 (the LLaMA-2-7B shape, 64 steps of dependent loads in every program) it
      made the q/k/v product 7.5 µs slower than the same product without the norm on an H100 (46.6 against 39.1 µs);
    * `rows`: the same pass one present row at a time, up to 4096 columns per load (`_row_rstd_by_row`): a decode
      step reads its one row of x in one load instead of K / BLOCK_K dependent ones (64 for K = 4096), but a
      program of 16 rows reads them one after another;
    * `row-kernel` (the default for wide rows): the sums of `rows` in the same order (the bits can still differ from
      `rows` on a GPU where the warps differ), computed once per row by a kernel of its own before the product (one
      program per row, `_rstd_kernel`); the product's programs read each row's rstd instead of summing the row again.
      One more launch per normed product, and no pass over x in any program of the product: the 7B shape decodes
      3.8% faster than with `two-pass` on an H100 (179.7 against 173.1 tok/s, twice; docs/RESULTS.md). Not
      measured on narrow rows, where the pass is short and the launch would weigh more;
    * `one-pass`: the squares summed in the product's own K loop and rstd applied to the sums. Measured slower on an
      H200 (docs/RESULTS.md): the loop that should only stream weights then also converts and reduces x, and its
      loads are no longer pipelined as well."""
    mode = os.environ.get("SWIFT_GEMM_NORM") or ("row-kernel" if k >= ROW_KERNEL_MIN_K else "two-pass")
    if mode not in NORM_MODES:
        raise ValueError(f"SWIFT_GEMM_NORM must be one of {', '.join(NORM_MODES)}, got {mode!r}")
    return mode


def norm_block(k: int, block_k: int, by_row: bool = False) -> int:
    """The slice width of the RMSNorm's pass over x: the product's BLOCK_K by default (`two-pass`), the whole row up
    to 4096 columns with `rows`; SWIFT_GEMM_NORM_BLOCK=W (a power of two) sums W columns per step instead. The
    two-pass norm is a loop of dependent small loads that every program runs before its weights stream (64 steps for
    K = 4096 at BLOCK_K = 64; measured to cost the 7B q/k/v product 7.5 µs on an H100, `norm_mode`); a wider slice
    makes it 8 steps. The bits change with W (another summation order) but stay the same for every
    row count. Measured on the H200: 512 made the 7B shape slower with `two-pass` (49.9% of the memory roofline
    against 70.7%, a [16, 512] tile per step; docs/RESULTS.md), so it stays opt-in."""
    w = _norm_block_setting()
    if w == 0:
        return min(4096, max(16, triton.next_power_of_2(k))) if by_row else block_k
    return min(w, max(16, triton.next_power_of_2(k)))


def _norm_block_setting() -> int:
    """SWIFT_GEMM_NORM_BLOCK: a power of two, or 0 (unset: the mode's own width); ValueError otherwise."""
    block = os.environ.get("SWIFT_GEMM_NORM_BLOCK", "0") or "0"
    try:
        w = max(0, int(block))
    except ValueError:
        raise ValueError(f"SWIFT_GEMM_NORM_BLOCK must be a power of two (or 0), got {block!r}") from None
    if w & (w - 1):
        raise ValueError(f"SWIFT_GEMM_NORM_BLOCK must be a power of two, got {w}")
    return w


def check_settings() -> None:
    """Raise ValueError for a SWIFT_GEMM_NORM or SWIFT_GEMM_NORM_BLOCK this module cannot use (the engine checks
    this before its kernels' self-check, which would take the error for a kernel failure and quietly fall back)."""
    norm_mode()
    _norm_block_setting()


_locks: dict[torch.device, torch.Tensor] = {}


def _lock_buffer(device: torch.device) -> torch.Tensor:
    """Zeroed arrival counters, one buffer per device; every split call leaves them zero again."""
    buf = _locks.get(device)
    if buf is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("split products need their counters allocated before a CUDA-graph capture: "
                               "run the pass once eagerly first (model.graphs.capture does)")
        buf = _locks[device] = torch.zeros(LOCKS, dtype=torch.int32, device=device)
    return buf


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
    def _one_row_rstd(X, row, K, stride_xm, eps, CHUNK: tl.constexpr):
        """1 / sqrt(mean(x[row]^2) + eps), the row read in CHUNK-wide slices (one slice when K <= CHUNK), the squares
        summed per column and then across."""
        rc = tl.arange(0, CHUNK)
        ss = tl.zeros([CHUNK], tl.float32)
        for k0 in range(0, K, CHUNK):
            x = tl.load(X + row * stride_xm + k0 + rc, mask=k0 + rc < K, other=0.0).to(tl.float32)
            ss += x * x
        return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)

    @triton.jit
    def _row_rstd_by_row(X, row0, M, K, stride_xm, eps, CHUNK: tl.constexpr):
        """`_row_rstd` one row at a time (SWIFT_GEMM_NORM=rows): each present row of the block [row0, row0 + 16) by
        `_one_row_rstd`, so a decode step's single row costs one load of x instead of K / BLOCK_K dependent loads of
        a 16-row tile. The same instructions for a row wherever it sits."""
        ri = tl.arange(0, 16)
        rstd = tl.full([16], 1.0, tl.float32)
        for r in range(0, tl.minimum(M - row0, 16)):
            rstd = tl.where(ri == r, _one_row_rstd(X, row0 + r, K, stride_xm, eps, CHUNK), rstd)
        return rstd

    @triton.jit
    def _rstd_kernel(X, RS, K, stride_xm, eps, CHUNK: tl.constexpr, PDL: tl.constexpr):
        """RS[row] = `_one_row_rstd` of row = the program's id (SWIFT_GEMM_NORM=row-kernel)."""
        enter(PDL)
        row = tl.program_id(0)
        tl.store(RS + row, _one_row_rstd(X, row, K, stride_xm, eps, CHUNK))

    @triton.jit
    def _x_tile(X, NW, rows, rk, rstd, M, K, stride_xm, NORM: tl.constexpr):
        """The prologue-applied input tile [16, BLOCK_K], rounded to the input dtype as eager PyTorch would."""
        x = tl.load(X + rows[:, None] * stride_xm + rk[None, :], mask=(rows < M)[:, None] & (rk < K)[None, :],
                    other=0.0)
        if NORM:
            nw = tl.load(NW + rk, mask=rk < K, other=0.0)
            xn = (x.to(tl.float32) * rstd[:, None]).to(nw.dtype)
            x = (xn.to(tl.float32) * nw.to(tl.float32)[None, :]).to(nw.dtype)
        return x

    @triton.jit
    def _x_tile_scaled(X, NW, rows, rk, ss, M, K, stride_xm):
        """The input tile times the norm weight [16, BLOCK_K], rounded to the input dtype, and the rows' sum of
        squares `ss` carried on by this slice (one-pass RMSNorm: rstd is applied to the products' sums)."""
        x = tl.load(X + rows[:, None] * stride_xm + rk[None, :], mask=(rows < M)[:, None] & (rk < K)[None, :],
                    other=0.0)
        nw = tl.load(NW + rk, mask=rk < K, other=0.0)
        xf = x.to(tl.float32)
        return (xf * nw.to(tl.float32)[None, :]).to(nw.dtype), ss + tl.sum(xf * xf, axis=1)

    @triton.jit
    def _w_tile(W, rn, rk, N, K, stride_wn, EVEN: tl.constexpr):
        """The transposed weight tile [BLOCK_K, BLOCK_N] of rows `rn`."""
        wp = W + rn[:, None] * stride_wn + rk[None, :]
        if EVEN:
            return tl.trans(tl.load(wp))
        return tl.trans(tl.load(wp, mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0))

    @triton.jit
    def _dot(x, wt, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(x.to(wt.dtype), wt, acc, input_precision="ieee")
        return tl.dot(x.to(wt.dtype), wt, acc)

    @triton.jit
    def _put_partial(acc, WS, pid_s, half, rows, rn, M_PAD, N, HALVES: tl.constexpr):
        """Partial sum of K range `pid_s` (of product `half`: gate 0, up 1), into the float32 workspace
        [split, HALVES, M_PAD, N]."""
        tl.store(WS + ((pid_s * HALVES + half) * M_PAD + rows[:, None]) * N + rn[None, :], acc, mask=(rn < N)[None, :])

    @triton.jit
    def _sum_partials(WS, half, rows, rn, M_PAD, N, HALVES: tl.constexpr, BLOCK_N: tl.constexpr,
                      SPLIT: tl.constexpr):
        """The tile's partial sums added in range order 0, 1, .., SPLIT-1 (read through L2, not L1)."""
        acc = tl.zeros([16, BLOCK_N], tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(WS + ((s * HALVES + half) * M_PAD + rows[:, None]) * N + rn[None, :], mask=(rn < N)[None, :],
                           other=0.0, cache_modifier=".cg")
        return acc

    @triton.jit
    def _arrive(LOCK, tile, SPLIT: tl.constexpr):
        """True for the last of the tile's SPLIT programs to arrive (it sets the counter back to 0)."""
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        old = tl.atomic_add(LOCK + tile, 1, sem="acq_rel")
        last = old == SPLIT - 1
        if last:
            tl.atomic_xchg(LOCK + tile, 0)
        return last

    @triton.jit
    def _epilogue(acc, up, Y, B, R, KEEP, rows, rn, M, N, stride_ym, stride_rm, HAS_BIAS: tl.constexpr,
                  GLU: tl.constexpr, RESID: tl.constexpr, GATED: tl.constexpr):
        m = (rows < M)[:, None] & (rn < N)[None, :]
        if HAS_BIAS:
            acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            if GLU:
                up += tl.load(B + N + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if GLU:  # silu(gate) * up, each rounded to the output dtype first as the unfused product would be
            g = acc.to(Y.dtype.element_ty).to(tl.float32)
            u = up.to(Y.dtype.element_ty)
            a = (g * tl.sigmoid(g)).to(u.dtype)
            acc = a.to(tl.float32) * u.to(tl.float32)
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
    def _finish(acc, up, WS, pid_s, rows, rn, M_PAD, N, GLU: tl.constexpr, SPLIT: tl.constexpr):
        """A row block's partial sums of K range `pid_s` into the workspace (split products)."""
        if SPLIT > 1:
            _put_partial(acc, WS, pid_s, 0, rows, rn, M_PAD, N, 1 + GLU)
            if GLU:
                _put_partial(up, WS, pid_s, 1, rows, rn, M_PAD, N, 1 + GLU)

    @triton.jit
    def _store(acc, up, Y, B, R, KEEP, WS, rows, rn, M, N, M_PAD, stride_ym, stride_rm, HAS_BIAS: tl.constexpr,
               GLU: tl.constexpr, RESID: tl.constexpr, GATED: tl.constexpr, SPLIT: tl.constexpr,
               BLOCK_N: tl.constexpr):
        """A row block's result: its K ranges summed in order (split products), then the epilogue."""
        if SPLIT > 1:
            acc = _sum_partials(WS, 0, rows, rn, M_PAD, N, 1 + GLU, BLOCK_N, SPLIT)
            if GLU:
                up = _sum_partials(WS, 1, rows, rn, M_PAD, N, 1 + GLU, BLOCK_N, SPLIT)
        _epilogue(acc, up, Y, B, R, KEEP, rows, rn, M, N, stride_ym, stride_rm, HAS_BIAS, GLU, RESID, GATED)

    @triton.jit
    def _gemm_kernel(X, NW, W, B, R, KEEP, Y, WS, LOCK, RS, M, N, K, eps, stride_xm, stride_wn, stride_rm,
                     stride_ym, M_PAD, NORM: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr,
                     RESID: tl.constexpr, GATED: tl.constexpr, IEEE: tl.constexpr, EVEN: tl.constexpr,
                     SPLIT: tl.constexpr, ONE_PASS: tl.constexpr, BY_ROW: tl.constexpr, PRE: tl.constexpr,
                     RB: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, NORM_BK: tl.constexpr, PDL: tl.constexpr):
        """RB (1 or 2) blocks of 16 rows x BLOCK_N output columns x one K range. Each weight tile is loaded once and
        multiplied into every row block by that block's own [16, BLOCK_K] x [BLOCK_K, BLOCK_N] `tl.dot`, so a row's
        arithmetic is the same whatever RB is. N is the output width (half of w's rows when GLU: the gate rows
        [0, N) and the up rows [N, 2N) are multiplied side by side)."""
        tl.static_assert(not (ONE_PASS and RB == 2), "the one-pass norm takes one row block per program")
        enter(PDL)
        pid_m = tl.program_id(0)  # the programs of one weight tile are neighbours: its later reads hit L2
        pid_n = tl.program_id(1)
        pid_s = tl.program_id(2)
        rows = pid_m * (16 * RB) + tl.arange(0, 16)
        rows2 = rows + 16  # the second row block (RB == 2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # ONE_PASS (NORM, SPLIT == 1 and RB == 1): the RMSNorm in one pass. rstd is one scalar per row, so
        # norm(x) @ w.T = rstd * ((x * nw) @ w.T): the sum of squares accumulates in the product's own K loop and
        # rstd scales the sums at the end. With K ranges, each range needs the whole row's rstd first (`_row_rstd`,
        # a pass over x before the weights); so does float16, whose x * nw could overflow where norm(x) * nw does not
        rstd = tl.full([16], 1.0, tl.float32)
        rstd2 = rstd
        if NORM and PRE:  # each row's rstd from `_rstd_kernel`, which ran before this kernel
            rstd = tl.load(RS + rows, mask=rows < M, other=1.0)
            if RB == 2:
                rstd2 = tl.load(RS + rows2, mask=rows2 < M, other=1.0)
        elif NORM and BY_ROW:
            rstd = _row_rstd_by_row(X, pid_m * (16 * RB), M, K, stride_xm, eps, NORM_BK)
            if RB == 2:
                rstd2 = _row_rstd_by_row(X, pid_m * (16 * RB) + 16, M, K, stride_xm, eps, NORM_BK)
        elif NORM and not ONE_PASS:
            rstd = _row_rstd(X, rows, M, K, stride_xm, eps, NORM_BK)
            if RB == 2:
                rstd2 = _row_rstd(X, rows2, M, K, stride_xm, eps, NORM_BK)
        ss = tl.zeros([16], tl.float32)
        acc = tl.zeros([16, BLOCK_N], tl.float32)
        up = acc
        acc2 = acc
        up2 = acc
        per = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT) * BLOCK_K  # K range pid_s: whole BLOCK_K slices
        for k0 in range(pid_s * per, tl.minimum(K, (pid_s + 1) * per), BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            if ONE_PASS:
                x, ss = _x_tile_scaled(X, NW, rows, rk, ss, M, K, stride_xm)
            else:
                x = _x_tile(X, NW, rows, rk, rstd, M, K, stride_xm, NORM)
            wt = _w_tile(W, rn, rk, N, K, stride_wn, EVEN)
            acc = _dot(x, wt, acc, IEEE)
            if RB == 2:
                x2 = _x_tile(X, NW, rows2, rk, rstd2, M, K, stride_xm, NORM)
                acc2 = _dot(x2, wt, acc2, IEEE)
            if GLU:
                wu = _w_tile(W + N * stride_wn, rn, rk, N, K, stride_wn, EVEN)
                up = _dot(x, wu, up, IEEE)
                if RB == 2:
                    up2 = _dot(x2, wu, up2, IEEE)
        if ONE_PASS:
            rstd = 1.0 / tl.sqrt(ss / K + eps)
            acc = acc * rstd[:, None]
            up = up * rstd[:, None]
        last = True
        if SPLIT > 1:
            _finish(acc, up, WS, pid_s, rows, rn, M_PAD, N, GLU, SPLIT)
            if RB == 2:
                _finish(acc2, up2, WS, pid_s, rows2, rn, M_PAD, N, GLU, SPLIT)
            last = _arrive(LOCK, pid_n * tl.num_programs(0) + pid_m, SPLIT)
        if last:
            _store(acc, up, Y, B, R, KEEP, WS, rows, rn, M, N, M_PAD, stride_ym, stride_rm, HAS_BIAS, GLU, RESID,
                   GATED, SPLIT, BLOCK_N)
            if RB == 2:
                _store(acc2, up2, Y, B, R, KEEP, WS, rows2, rn, M, N, M_PAD, stride_ym, stride_rm, HAS_BIAS, GLU,
                       RESID, GATED, SPLIT, BLOCK_N)


def row_blocks(m: int, n: int, k: int) -> int:
    """Row blocks per program for m rows of an [n, k] weight (n: all its rows, both halves of a gate/up weight): two
    when there are more than 16 rows and the weight is large enough (>= 4M elements) that reading it once instead of
    once per row block pays more than the halved number of programs costs (measured on an H200: faster for every
    LLaMA-2-7B product at 64 rows and for all but q/k/v at 32, whose RMSNorm prologue then ran twice per program;
    `scripts/gpu_selftest.py`). With the norm's row kernel (rows of ROW_KERNEL_MIN_K columns or more) that reason is
    gone, and on an H100 two blocks made the 7B q/k/v faster at 32 rows and slower at 64 (62.8 against 72.2 µs, 113.4
    against 103.7 µs); not re-tuned. Any choice gives the same bits (each row block has its own dot); only speed
    changes."""
    return 2 if m > ROWS and n * k >= 1 << 22 else 1


def gemm(x: torch.Tensor, w: torch.Tensor, *, bias: torch.Tensor | None = None, norm: torch.Tensor | None = None,
         eps: float = 1e-6, glu: bool = False, residual: torch.Tensor | None = None, keep: torch.Tensor | None = None,
         out_dtype: torch.dtype | None = None, cfg: Config | None = None, rb: int | None = None) -> torch.Tensor | None:
    """epilogue(prologue(x) @ w.T + bias), for x [M, K], w [N, K] (K contiguous).

    `norm`: RMSNorm weight [K] applied to x first (eps). `glu`: w holds [w_gate; w_up] (2H rows) and the result is
    SiLU(x @ w_gate.T) * (x @ w_up.T), [M, H]. With `residual` [M, N] the result is added to it in place (rows with
    `keep` [M] == 0 keep their value) and nothing is returned; else a new [M, N] tensor of `out_dtype` (default x's
    dtype) is returned. `cfg` overrides the weight shape's block shape (tuning only: it must not vary with M); `rb`
    the row blocks per program (`row_blocks`; tests and tuning)."""
    M, K = x.shape
    assert x.stride(-1) == 1 and w.stride(1) == 1, "rows must be contiguous"
    assert w.shape[1] == K, (x.shape, w.shape)
    cfg = cfg or config(*w.shape)
    N = w.shape[0] // 2 if glu else w.shape[0]
    assert not glu or w.shape[0] == 2 * N, "glu needs an even number of weight rows"
    if residual is None:
        y = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
        stride_ym, r, stride_rm = y.stride(0), y, 0
    else:
        assert residual.shape == (M, N) and residual.stride(-1) == 1
        y, stride_ym, r, stride_rm = residual, 0, residual, residual.stride(0)
    even = N % cfg.block_n == 0 and K % cfg.block_k == 0
    mode = norm_mode(K) if norm is not None else "two-pass"
    one_pass = mode == "one-pass" and cfg.split == 1 and x.dtype != torch.float16
    by_row = mode == "rows"
    pre = mode == "row-kernel"
    rb = 1 if one_pass else (rb or row_blocks(M, w.shape[0], K))
    assert rb in (1, 2), rb
    grid = (triton.cdiv(M, ROWS * rb), triton.cdiv(N, cfg.block_n), cfg.split)
    m_pad = grid[0] * ROWS * rb
    ws = lock = w
    if cfg.split > 1:
        lock = _lock_buffer(x.device)
        assert grid[0] * grid[1] <= LOCKS, "more tiles than arrival counters"
        ws = torch.empty(cfg.split, 2 if glu else 1, m_pad, N, dtype=torch.float32, device=x.device)
    rs = ws
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if pre:
            rs = torch.empty(M, dtype=torch.float32, device=x.device)
            _rstd_kernel[(M,)](x, rs, K, x.stride(0), float(eps), CHUNK=norm_block(K, cfg.block_k, by_row=True),
                               num_warps=4, **launch(x.device))
        _gemm_kernel[grid](x, norm if norm is not None else w, w, bias if bias is not None else w, r,
                           keep if keep is not None else x, y, ws, lock, rs, M, N, K, float(eps), x.stride(0),
                           w.stride(0), stride_rm, stride_ym, m_pad,
                           NORM=norm is not None, GLU=glu, HAS_BIAS=bias is not None, RESID=residual is not None,
                           GATED=keep is not None, IEEE=w.dtype == torch.float32, EVEN=even, SPLIT=cfg.split,
                           ONE_PASS=one_pass, BY_ROW=by_row, PRE=pre, RB=rb, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                           NORM_BK=norm_block(K, cfg.block_k, by_row), num_warps=cfg.num_warps,
                           num_stages=1 if w.dtype == torch.float32 else cfg.num_stages,  # fp32 tiles: no room
                           **launch(x.device))
    return None if residual is not None else y
