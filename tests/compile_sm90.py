"""Compile the SWIFT cycle's kernels (model/kernels/tree.py, topk.py) for an sm_90 GPU (H100/H200) without one:
Triton's code generator rejects what its CPU interpreter accepts (a kernel reading a non-constexpr global, say), so
the interpreter tests alone cannot show that the kernels build. Run by tests/test_tree_kernels.py in a process
without TRITON_INTERPRET; prints one line per kernel, "ok NAME" or "FAIL NAME: error"."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from model.kernels import topk, tree  # noqa: E402


def signature(names: str, kind: str, **special) -> dict:
    return {**{n: kind for n in names.split()}, **special}


KERNELS = {
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
                          K_P="constexpr", BLOCK="constexpr"),
                     dict(K=8, K_P=8, BLOCK=topk.BLOCK_V)),
}
for has_map in (False, True):
    KERNELS[f"top-k merge (map: {has_map})"] = (
        topk._merge_kernel,
        dict(PV="*fp32", PI="*i64", PM="*fp32", PS="*fp32", P="i32", V="i32", MAP="*i64", TABLE="*i64", TOP1="*fp32",
             TOK="*i64", OFFSET="*i64", d="i32", stride_t="i32", HAS_MAP="constexpr", K="constexpr", K_P="constexpr",
             P_P="constexpr"),
        dict(HAS_MAP=has_map, K=8, K_P=8, P_P=128))

if __name__ == "__main__":
    target = GPUTarget("cuda", 90, 32)
    for name, (fn, sig, consts) in KERNELS.items():
        try:
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
            print(f"ok {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported per kernel
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}", flush=True)
