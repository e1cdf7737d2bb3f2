"""Attention over the KV cache for few query rows: a split-KV ("flash-decoding") Triton kernel on GPU, SDPA elsewhere.

Decode, draft and tree-verify passes attend with a handful of query rows (grouped-query heads are folded onto the
query axis: g*T rows per KV head) over a few hundred cache slots. A fused attention kernel built for long queries
(cuDNN / flash SDPA) gives each KV head one thread block that walks every key: a decode step of SmolLM2-135M spent
a third of its GPU time there (22 us per layer, outputs/profile/kernels_decode_step.txt). Here the keys are split
into chunks, one program per (batch x KV head, 16-row query block, chunk), each keeping an online softmax; a second
small kernel merges the chunks. Both are plain Triton (no hand-written CUDA) and capture into CUDA graphs.

`attention(q, k, v, bias)` computes softmax(q k^T / sqrt(d) + bias) v for q `[B, H, M, D]`, k/v `[B, H, N, D]` and
an additive bias `[B, 1, M, N]` shared by all heads; it uses the kernel when `BACKEND` allows and the inputs suit it
(CUDA, head size a power of two, at most MAX_ROWS rows), else `F.scaled_dot_product_attention`. The first kernel
call in a process checks itself against SDPA and, on any error or mismatch, warns and turns the kernel off.

`BACKEND` ("auto", "triton", "sdpa") comes from the SWIFT_ATTENTION environment variable or `set_backend`.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

BACKENDS = ("auto", "triton", "sdpa")
BACKEND = os.environ.get("SWIFT_ATTENTION", "auto")
BLOCK_M, BLOCK_N = 16, 64
MAX_ROWS = 1024  # query rows per KV head handled by the kernel (decode: g, verify: g * tree nodes)
TARGET_PROGRAMS = 256  # split the keys until about this many programs run (two per SM on an H100)
_status = {"checked": False, "ok": True, "reason": ""}


def set_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    global BACKEND
    BACKEND = name


def interpreting() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors: how the tests check them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:
    @triton.jit
    def _split_kernel(Q, K, V, Bias, O, Op, Mp, Lp,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbm, sbn, sob, soh, som,
                      n_kv, M, N, chunk, scale,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      IEEE: tl.constexpr, DIRECT: tl.constexpr):
        bh = tl.program_id(0)
        mb = tl.program_id(1)
        sp = tl.program_id(2)
        n_split = tl.num_programs(2)
        b = bh // n_kv
        h = bh % n_kv
        rm = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, HEAD_DIM)
        row_ok = rm < M
        q = tl.load(Q + b * sqb + h * sqh + rm[:, None] * sqm + rd[None, :], mask=row_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        lo = sp * chunk
        for off in range(0, chunk, BLOCK_N):  # chunk is a whole number of blocks
            rn = lo + off + tl.arange(0, BLOCK_N)
            col_ok = rn < N
            k = tl.load(K + b * skb + h * skh + rn[None, :] * skn + rd[:, None], mask=col_ok[None, :], other=0.0)
            if IEEE:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            bias = tl.load(Bias + b * sbb + rm[:, None] * sbm + rn[None, :] * sbn,
                           mask=row_ok[:, None] & col_ok[None, :], other=float("-inf"))
            s = s * scale + bias.to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing visible adds nothing
            p = tl.exp(s - m_use[:, None])
            alpha = tl.exp(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + rn[:, None] * svn + rd[None, :], mask=col_ok[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        if DIRECT:  # one chunk: normalise and write the output
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i = 0 only on padding rows
            tl.store(O + b * sob + h * soh + rm[:, None] * som + rd[None, :], out.to(O.dtype.element_ty),
                     mask=row_ok[:, None])
        else:  # partial results, merged by _combine_kernel
            idx = (bh * n_split + sp) * M + rm
            tl.store(Op + idx[:, None] * HEAD_DIM + rd[None, :], acc, mask=row_ok[:, None])
            tl.store(Mp + idx, m_i, mask=row_ok)
            tl.store(Lp + idx, l_i, mask=row_ok)

    @triton.jit
    def _combine_kernel(O, Op, Mp, Lp, sob, soh, som, n_kv, M, n_split,
                        HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        bh = tl.program_id(0)
        r = tl.program_id(1)
        b = bh // n_kv
        h = bh % n_kv
        rs = tl.arange(0, SPLITS)
        rd = tl.arange(0, HEAD_DIM)
        ok = rs < n_split
        idx = (bh * n_split + rs) * M + r
        m = tl.load(Mp + idx, mask=ok, other=float("-inf"))
        l_ = tl.load(Lp + idx, mask=ok, other=0.0)
        mx = tl.max(m, 0)
        w = tl.exp(m - tl.where(mx == float("-inf"), 0.0, mx))
        o = tl.load(Op + idx[:, None] * HEAD_DIM + rd[None, :], mask=ok[:, None], other=0.0)
        out = tl.sum(o * w[:, None], 0) / tl.sum(l_ * w, 0)
        tl.store(O + b * sob + h * soh + r * som + rd, out.to(O.dtype.element_ty))


def split_plan(batch_heads: int, rows: int, keys: int) -> tuple[int, int]:
    """(number of key chunks, keys per chunk): enough chunks for about TARGET_PROGRAMS programs, chunks a whole
    number of BLOCK_N key blocks."""
    n_blocks = -(-keys // BLOCK_N)
    base = batch_heads * -(-rows // BLOCK_M)
    want = max(1, min(n_blocks, -(-TARGET_PROGRAMS // base)))
    chunk = -(-n_blocks // want) * BLOCK_N
    return -(-keys // chunk), chunk


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The split-KV kernel. q [B, H, M, D], k/v [B, H, N, D] (last dim contiguous), bias [B or 1, 1, M, N]."""
    B, H, M, D = q.shape
    N = k.shape[2]
    q = q if q.stride(-1) == 1 else q.contiguous()
    o = torch.empty(B, H, M, D, dtype=q.dtype, device=q.device)
    n_split, chunk = split_plan(B * H, M, N)
    bb = bias.stride(0) if bias.shape[0] > 1 else 0
    direct = n_split == 1
    if direct:
        op = mp = lp = o  # unused
    else:
        op = torch.empty(B * H * n_split * M, D, dtype=torch.float32, device=q.device)
        mp = torch.empty(B * H * n_split * M, dtype=torch.float32, device=q.device)
        lp = torch.empty_like(mp)
    grid = (B * H, triton.cdiv(M, BLOCK_M), n_split)
    # Triton launches on the *current* CUDA device and stream: a layer placed on another GPU (model/placement.py)
    # must make its own device current, or the kernel runs on the wrong GPU, unordered with its stream
    other_gpu = q.is_cuda and q.device.index is not None and q.device.index != torch.cuda.current_device()
    with torch.cuda.device(q.device) if other_gpu else contextlib.nullcontext():
        _split_kernel[grid](q, k, v, bias, o, op, mp, lp,
                            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                            v.stride(0), v.stride(1), v.stride(2), bb, bias.stride(2), bias.stride(3),
                            o.stride(0), o.stride(1), o.stride(2),
                            H, M, N, chunk, 1.0 / math.sqrt(D),
                            HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                            IEEE=q.dtype == torch.float32, DIRECT=direct)
        if not direct:
            _combine_kernel[(B * H, M)](o, op, mp, lp, o.stride(0), o.stride(1), o.stride(2), H, M, n_split,
                                        HEAD_DIM=D, SPLITS=triton.next_power_of_2(n_split))
    return o


def kernel_suits(q: torch.Tensor, k: torch.Tensor) -> bool:
    D = q.shape[-1]
    on_device = q.is_cuda or (interpreting() and BACKEND == "triton")  # CPU only for the interpreter tests
    return (triton is not None and on_device and D >= 16 and D & (D - 1) == 0
            and q.shape[2] <= MAX_ROWS and k.stride(-1) == 1 and q.dtype in (torch.float16, torch.bfloat16,
                                                                              torch.float32))


def _self_check(q, k, v, bias) -> None:
    """Compare the kernel with SDPA on this call's inputs once per process; turn the kernel off if they disagree."""
    _status["checked"] = True
    try:
        got = triton_attention(q, k, v, bias).float()
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).float()
        # relative to the output's scale: large activations (big logits) make absolute differences large too
        scale = max(1.0, ref.abs().max().item())
        err = (got - ref).abs().max().item()
        tol = (1e-4 if q.dtype == torch.float32 else 3e-2) * scale
        if not math.isfinite(err) or err > tol:
            raise RuntimeError(f"max abs difference {err:.3g} from SDPA (tolerance {tol:.3g})")
    except Exception as e:  # noqa: BLE001 - any failure means: do not use the kernel
        _status.update(ok=False, reason=f"{type(e).__name__}: {e}")
        warnings.warn(f"split-KV attention kernel disabled, using SDPA: {_status['reason']}", RuntimeWarning)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if BACKEND != "sdpa" and kernel_suits(q, k):
        if BACKEND == "triton":
            return triton_attention(q, k, v, bias)
        if not _status["checked"] and not (q.is_cuda and torch.cuda.is_current_stream_capturing()):
            _self_check(q, k, v, bias)
        if _status["checked"] and _status["ok"]:
            return triton_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def kernel_status() -> dict:
    """For run records: which attention ran and why."""
    return {"backend": BACKEND, "triton": triton is not None, **_status}
