"""Compile the decoding kernels (model/kernels/) for an sm_90 GPU (H100/H200) without one: Triton's code generator
rejects what its CPU interpreter accepts (a kernel reading a non-constexpr global, say), so the interpreter tests
alone cannot show that the kernels build. Each kernel is built twice: without programmatic dependent launch, where
its code must hold no grid dependency control, and with it (`SWIFT_PDL`, model/kernels/__init__.py), where its
first global memory access must come after `griddepcontrol.wait`, and `launch_dependents` after the wait too (so at
most two kernels are resident). Run by tests/test_tree_kernels.py in a process without TRITON_INTERPRET; prints one
line per kernel and setting, "ok NAME" or "FAIL NAME: error"."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from model.kernels import attention, gemm, rope, topk, tree  # noqa: E402


def signature(names: str, kind: str, **special) -> dict:
    return {**{n: kind for n in names.split()}, **special, "PDL": "constexpr"}


GEMM = signature("X NW W B R Y", "*bf16", KEEP="*i1", WS="*fp32", LOCK="*i32", RS="*fp32", M="i32", N="i32",
                 K="i32", eps="fp32", stride_xm="i32", stride_wn="i32", stride_rm="i32", stride_ym="i32", M_PAD="i32",
                 **{c: "constexpr" for c in "NORM GLU HAS_BIAS RESID GATED IEEE EVEN SPLIT ONE_PASS BY_ROW PRE RB "
                                            "BLOCK_N BLOCK_K NORM_BK".split()})
GEMM_FLAGS = dict(NORM=False, GLU=False, HAS_BIAS=False, RESID=False, GATED=False, IEEE=False, EVEN=True, SPLIT=1,
                  ONE_PASS=False, BY_ROW=False, PRE=False, RB=1, BLOCK_N=32, BLOCK_K=64, NORM_BK=64)
ATTN = dict(Q="*bf16", K="*bf16", V="*bf16", PREFIX="*i64", POS="*i64", Op="*fp32", Mp="*fp32", Lp="*fp32", R="i32",
            g="i32", n_chunks="i32", window="i32", scale="fp32", sk_h="i32", sk_s="i32", sv_h="i32", sv_s="i32",
            HEAD_DIM="constexpr", CHUNK="constexpr")


KERNELS = {
    "product + norm + SiLU gating": (gemm._gemm_kernel, GEMM, dict(GEMM_FLAGS, NORM=True, GLU=True)),
    "product + norm, row by row": (gemm._gemm_kernel, GEMM, dict(GEMM_FLAGS, NORM=True, BY_ROW=True, NORM_BK=4096)),
    "product + norm from the row kernel": (gemm._gemm_kernel, GEMM, dict(GEMM_FLAGS, NORM=True, GLU=True, PRE=True,
                                                                        SPLIT=4, RB=2)),
    "row rstd": (gemm._rstd_kernel, signature("X", "*bf16", RS="*fp32", K="i32", stride_xm="i32", eps="fp32",
                                              CHUNK="constexpr"), dict(CHUNK=4096)),
    "product in K ranges + gated residual": (gemm._gemm_kernel, GEMM, dict(GEMM_FLAGS, RESID=True, GATED=True,
                                                                             SPLIT=4, RB=2)),
    "attention chunks": (attention._split_kernel, signature("", "", **ATTN, BLOCK_M="constexpr", BLOCK_N="constexpr",
                                                            IEEE="constexpr"),
                         dict(HEAD_DIM=64, CHUNK=attention.CHUNK, BLOCK_M=attention.BLOCK_M,
                              BLOCK_N=attention.BLOCK_N, IEEE=False)),
    "attention merge": (attention._combine_kernel, signature("RUN_LO SLOT", "*i64", **ATTN, O="*bf16", so_t="i32"),
                        dict(HEAD_DIM=64, CHUNK=attention.CHUNK)),
    "rope + cache write": (rope._rope_kernel, signature("QKV Q K V", "*bf16", POS="*i64", SLOTS="*i64", INV="*fp32",
                                                        **{n: "i32" for n in "stride_t n_q n_kv g T sk_h sk_s sv_h "
                                                                             "sv_s".split()}, HALF="constexpr"),
                           dict(HALF=32)),
    "tree build": (tree._build_kernel,
                   signature("TABLE CHAIN CTX CLEN SEQ CURSOR CNT TOKENS DEPTH PREFIX RUN_LO EXT CAND CTOK BNODE META",
                             "*i64", TOP1="*fp32", THR="*fp32", D="i32", K="i32", B="i32", N_RULE="i32",
                             max_nodes="i32", n="i32", D_P="constexpr", K_P="constexpr", B_P="constexpr",
                             N_P="constexpr", R_P="constexpr"),
                   dict(D_P=32, K_P=8, B_P=16, N_P=32, R_P=4)),
    "tree accept": (tree._accept_kernel,
                    signature("PRED TOKENS TABLE CAND CTOK BNODE BLEN CHAIN CURSOR SEQ REPORT MOVES", "*i64", D="i32",
                              K="i32", B="i32", n="i32", D_P="constexpr", K_P="constexpr", B_P="constexpr",
                              O_P="constexpr"),
                    dict(D_P=32, K_P=8, B_P=16, O_P=64)),
    "top-k blocks": (topk._block_kernel,
                     dict(LOGITS="*fp32", V="i32", PV="*fp32", PI="*i64", PM="*fp32", PS="*fp32", K="constexpr",
                          K_P="constexpr", BLOCK="constexpr", PDL="constexpr"),
                     dict(K=8, K_P=8, BLOCK=topk.BLOCK_V)),
}
for has_map in (False, True):
    KERNELS[f"top-k merge (map: {has_map})"] = (
        topk._merge_kernel,
        dict(PV="*fp32", PI="*i64", PM="*fp32", PS="*fp32", P="i32", V="i32", MAP="*i64", TABLE="*i64", TOP1="*fp32",
             TOK="*i64", OFFSET="*i64", d="i32", stride_t="i32", HAS_MAP="constexpr", K="constexpr", K_P="constexpr",
             P_P="constexpr", PDL="constexpr"),
        dict(HAS_MAP=has_map, K=8, K_P=8, P_P=128))

MEMORY = re.compile(r"^(@!?%p\d+\s+)?(ld|ldu|st|atom|red|prefetch|cp\.async|cp\.reduce)\.")
COPY = re.compile(r"^(@!?%p\d+\s+)?cp\.")  # copies (cp.async, TMA) read or write global memory on one side
PRIVATE = (".param", ".shared", ".local", ".const")


def global_access(line: str) -> bool:
    return bool(MEMORY.match(line)) and (bool(COPY.match(line)) or not any(p in line for p in PRIVATE))


def dependency_problem(ptx: str, pdl: bool) -> str | None:
    """What is wrong with the grid dependency control of a kernel's PTX, or None."""
    lines = [line.strip() for line in ptx.splitlines()]
    wait = [i for i, line in enumerate(lines) if line.startswith("griddepcontrol.wait")]
    trigger = [i for i, line in enumerate(lines) if line.startswith("griddepcontrol.launch_dependents")]
    if not pdl:
        return "grid dependency control without PDL" if wait or trigger else None
    if not wait or not trigger:
        return "no griddepcontrol.wait or launch_dependents"
    early = [line for line in lines[:wait[0]] if global_access(line)]
    if early:
        return f"memory accessed before the wait: {early[0]}"
    if trigger[0] < wait[0]:
        return "launch_dependents before the wait"
    return None


if __name__ == "__main__":
    target = GPUTarget("cuda", 90, 32)
    for name, (fn, sig, consts) in KERNELS.items():
        for pdl in (False, True):
            label = f"{name} (pdl: {pdl})"
            try:
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={**consts, "PDL": pdl}),
                                   target=target, options=dict(launch_pdl=pdl))
                problem = dependency_problem(k.asm["ptx"], pdl) or (
                    None if k.metadata.launch_pdl == pdl else "launch_pdl not in the kernel's metadata")
                print(f"FAIL {label}: {problem}" if problem else f"ok {label}", flush=True)
            except Exception as e:  # noqa: BLE001 - reported per kernel
                print(f"FAIL {label}: {type(e).__name__}: {str(e)[:400]}", flush=True)
