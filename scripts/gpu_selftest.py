#!/usr/bin/env python3
"""GPU self-test of the batch-invariant kernels and the SWIFT graphs, on random-weight models of the SmolLM2-135M,
Qwen2.5-0.5B and LLaMA-2-7B shapes (bf16). Exits non-zero on any failed check. It checks and measures:

0. once: every kernel builds for sm_90 with this machine's Triton, and with dependent launches none touches global
   memory before its wait (tests/compile_sm90.py);
1. every weight product of each shape (q/k/v, output, gate/up, down, LM head): each row's result for one row equals,
   bit for bit, its result among 2..64 rows with other neighbours; error against a float32 reference;
2. attention: each node of a token tree equals the same query decoded alone, bit for bit; error against SDPA;
3. GPU time of each product per block shape (`--tune`, first: 1, 16 and 32 rows, CUDA-graph replay with the
   weights cycled beyond the L2 cache) next to cuBLAS: the table `model/kernels/gemm.py` TUNED comes from; the
   checks of 1. and 4. then run with the chosen shapes, which go to `tuned.json` in --out (use it with
   SWIFT_GEMM_TUNED=path/tuned.json before the table is in the code); with `--norm-modes`, the products with the
   RMSNorm per norm pass (SWIFT_GEMM_NORM: two-pass, rows, row-kernel), without the norm, and cuBLAS's bare one;
4. the engine: decode tokens/s with the Triton kernels vs the PyTorch ops (+ torch.compile), and on Hopper with
   the Triton kernels launched dependently (SWIFT_PDL=1, the default) between two runs without: the same tokens, the draft graphs
   of a skip set equal to an eager draft, and greedy SWIFT equal to vanilla with the same acceptances. (The engine
   check chooses the launches itself; parts 1-3 run with SWIFT_PDL's setting.) With the plain launches: greedy SWIFT with a fixed skip set equal to
   vanilla token for token; the prefill graph of the prompt's length bucket against the eager prefill (the same
   next token, and the wall time of each); the draft graph with skipped sub-layers switched off equal to an eager
   draft, and its time next to a graph captured for that skip set; the measured draft / verify costs; the draft
   step's tail and the tree's bookkeeping as kernels equal to the PyTorch ops, and the pass costs with each; the
   pass costs with the draft's LM head restricted to 4096 and 16384 token ids (`--draft-vocab`) beside the whole.

Example: python3 scripts/gpu_selftest.py --out outputs/selftest --tune
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model import graphs, kernels  # noqa: E402
from model.backends import Backends  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, QWEN25_05B_SHAPE, SMOLLM2_135M_SHAPE, ModelArgs  # noqa: E402
from model.engine import Engine, prefill_len  # noqa: E402
from model.generate import vanilla_generate  # noqa: E402
from model.kernels import gemm as G  # noqa: E402
from model.kernels.attention import Extents, attention, reference_mask  # noqa: E402
from model.llama import LayerSkip  # noqa: E402
from model.loading import build_model  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402
from model.swift.config import SwiftConfig  # noqa: E402
from model.swift.decoding import accelerator, swift_generate  # noqa: E402

SHAPES = {"smollm2-135m": SMOLLM2_135M_SHAPE, "qwen2.5-0.5b": QWEN25_05B_SHAPE, "llama-2-7b": LLAMA2_7B_SHAPE}
C = G.Config
# block_n, block_k, warps, stages, K ranges (split)
CANDIDATES = [C(16, 256, 4, 3), C(16, 128, 4, 3), C(16, 64, 4, 4), C(32, 64, 4, 4), C(32, 128, 4, 3), C(64, 64, 4, 3),
              C(32, 64, 8, 4), C(16, 64, 4, 4, 2), C(16, 64, 4, 4, 4), C(32, 64, 4, 4, 4), C(16, 128, 4, 3, 4),
              C(16, 256, 4, 3, 8),
              # wider K slices per step: fewer, longer loads per weight row (the one-row kernel before the
              # batch-invariant products, whose autotuner tried slices of up to 1024, reached 84% of the 7B
              # shape's roofline on an H100); all of them compile for sm_90 with dependent launches
              C(16, 512, 4, 3), C(16, 512, 8, 3), C(32, 256, 8, 3), C(32, 256, 4, 3, 4),
              # and in 2 K ranges, or 1024 wide (8 warps, 2 stages: 130 KB of shared memory for gate/up on sm_90)
              C(16, 256, 4, 3, 2), C(16, 512, 4, 3, 2), C(32, 128, 4, 3, 2), C(16, 1024, 8, 2)]
TUNE_ROWS = (1, 16, 32)  # a decode or draft step, and verification trees


def tune_score(t: dict) -> float:
    """Decode and draft steps (one row) dominate a SWIFT cycle; one verification of 16..32 rows follows them."""
    return t[1] + 0.1 * t[16] + 0.1 * t[32]


RESULTS: dict = {"checks": [], "gemm_timing": [], "engine": []}
FAILURES: list[str] = []


def check(name: str, ok: bool, **info) -> None:
    RESULTS["checks"].append(dict(name=name, ok=bool(ok), **info))
    print(f"{'ok  ' if ok else 'FAIL'} {name} {json.dumps(info)}", flush=True)
    if not ok:
        FAILURES.append(name)


def products(args: ModelArgs) -> list[tuple[str, int, int, dict]]:
    """(name, N, K, gemm keyword flags) of every weight product of a layer and of the head."""
    q = args.n_heads * args.head_dim
    kv = args.n_kv_heads * args.head_dim
    return [("qkv", q + 2 * kv, args.dim, dict(norm=True, bias=args.qkv_bias)), ("o", args.dim, q, dict(resid=True)),
            ("gate_up", 2 * args.intermediate_size, args.dim, dict(norm=True, glu=True)),
            ("down", args.dim, args.intermediate_size, dict(resid=True)),
            ("head", args.vocab_size, args.dim, dict(norm=True, f32=True))]


def make_call(N, K, flags, M, w, cfg=None, dtype=torch.bfloat16):
    """A closure running the product on fresh random inputs of M rows, and those inputs."""
    dev = w.device
    x = torch.randn(M, K, device=dev, dtype=dtype)
    nw = torch.randn(K, device=dev, dtype=dtype) if flags.get("norm") else None
    b = torch.randn(N, device=dev, dtype=dtype) if flags.get("bias") else None
    r = torch.randn(M, N, device=dev, dtype=dtype) if flags.get("resid") else None  # (no product has glu + resid)

    def call(xx=x, rr=r):
        out = G.gemm(xx, w, bias=b, norm=nw, eps=1e-6, glu=bool(flags.get("glu")), residual=rr,
                     out_dtype=torch.float32 if flags.get("f32") else None, cfg=cfg)
        return rr if out is None else out
    return call, x, r, nw, b


def reference(x, w, flags, nw, b, r):
    xf = x.float()
    K = w.shape[1]
    if nw is not None:
        xf = (F.rms_norm(xf, (K,), eps=1e-6).to(x.dtype).float() * nw.float()).to(x.dtype).float()
    y = F.linear(xf, w.float(), None if b is None else b.float())
    if flags.get("glu"):
        g, u = y.to(x.dtype).float().chunk(2, dim=1)
        y = F.silu(g).to(x.dtype).float() * u
    return y if r is None else r.float() + y


def gemm_checks(shape: str, args: ModelArgs) -> None:
    for name, N, K, flags in products(args):
        w = (torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5)
        call, x, r, nw, b = make_call(N, K, flags, 16, w)
        r0 = None if r is None else r.clone()
        got = call(x, r).float()
        ref = reference(x, w, flags, nw, b, r0)
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
        check(f"{shape} {name} {N}x{K} vs fp32", err <= 2e-2, max_rel_err=round(err, 5))
        row = x[3:4].clone()
        rrow = None if r0 is None else r0[3:4].clone()
        alone = call(row.clone(), None if rrow is None else rrow.clone())[0].clone()
        same = True
        for M in (2, 7, 16, 17, 32, 33, 64):
            for at in (0, M - 1):
                xb = torch.randn(M, x.shape[1], device="cuda", dtype=x.dtype)
                xb[at] = row[0]
                rb = None
                if rrow is not None:
                    rb = torch.randn(M, N, device="cuda", dtype=x.dtype)
                    rb[at] = rrow[0]
                same &= torch.equal(call(xb, rb)[at], alone)
        check(f"{shape} {name} rows bit-identical for M=1..64", same)


def graph_time(fns, reps=20) -> float:
    """GPU ms per call of a graph replaying `fns` in a row."""
    g = graphs.capture(lambda: [f() for f in fns])
    return graphs.gpu_ms(g.replay, reps) / len(fns)


def beyond_l2(w: torch.Tensor) -> list[torch.Tensor]:
    """`w` and copies of it, about 256 MB in all (at most 32): timing a product over them reads its weight from memory,
    not from the L2 cache."""
    return [w] + [w.clone() for _ in range(max(0, min(32, (256 << 20) // (w.numel() * 2)) - 1))]


def gemm_tuning(shape: str, args: ModelArgs) -> None:
    """Time every candidate per product and rows in TUNE_ROWS; the best (`tune_score`) goes into G.TUNED for the
    checks that follow, and is printed as the line to put in model/kernels/gemm.py."""
    for name, N, K, flags in products(args):
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
        copies = beyond_l2(w)
        row = dict(shape=shape, product=name, N=N, K=K, MB=w.numel() * 2 / 1e6)
        for M in TUNE_ROWS:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            row[f"cublas_us_{M}"] = round(graph_time([lambda v=v: F.linear(x, v) for v in copies]) * 1e3, 2)
        best = None
        for cfg in CANDIDATES:
            try:
                t = {M: graph_time([make_call(N, K, flags, M, v, cfg)[0] for v in copies]) for M in TUNE_ROWS}
            except Exception as e:  # noqa: BLE001 - a shape the block does not fit (shared memory): not a candidate
                row[cfg.name] = f"{type(e).__name__}"
                continue
            row[cfg.name] = [round(t[M] * 1e3, 2) for M in TUNE_ROWS]
            if best is None or tune_score(t) < tune_score(best[1]):
                best = (cfg, t)
        cfg, t = best
        G.TUNED[(N, K)] = cfg
        row["best"] = cfg.name
        row["best_us"] = [round(t[M] * 1e3, 2) for M in TUNE_ROWS]
        row["best_TBps_M1"] = round(w.numel() * 2 / (t[1] * 1e-3) / 1e12, 2)
        row["line"] = f"({N}, {K}): {cfg!r},"
        RESULTS["gemm_timing"].append(row)
        print(f"tune {shape} {name} {N}x{K}: best {cfg.name} {row['best_us']} us at M={TUNE_ROWS} "
              f"({row['best_TBps_M1']} TB/s at M=1); cuBLAS {[row[f'cublas_us_{M}'] for M in TUNE_ROWS]} us",
              flush=True)
        print(f"TUNED {row['line']}", flush=True)


def norm_timing(shape: str, args: ModelArgs, rows=(1, 16, 32)) -> None:
    """GPU time of each product with the RMSNorm (q/k/v, gate/up, head) per norm pass (SWIFT_GEMM_NORM: two-pass,
    rows, row-kernel; the row kernel's launch included), without the norm, and cuBLAS's bare product at one row: what
    the norm's pass costs. Weights cycled beyond the L2 cache; the shapes of `config`."""
    saved = {k: os.environ.pop(k, None) for k in ("SWIFT_GEMM_NORM", "SWIFT_GEMM_NORM_BLOCK")}
    try:
        for name, N, K, flags in products(args):
            if not flags.get("norm"):
                continue
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
            copies = beyond_l2(w)
            x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
            row = dict(shape=shape, product=name, N=N, K=K, MB=w.numel() * 2 / 1e6, cfg=G.config(N, K).name,
                       cublas_us_1=round(graph_time([lambda v=v: F.linear(x, v) for v in copies]) * 1e3, 2))
            for label, fl in (("two-pass", flags), ("rows", flags), ("row-kernel", flags),
                              ("no-norm", dict(flags, norm=False))):
                os.environ["SWIFT_GEMM_NORM"] = label if fl.get("norm") else "two-pass"
                for M in rows:
                    row[f"{label}_us_{M}"] = round(
                        graph_time([make_call(N, K, fl, M, v)[0] for v in copies]) * 1e3, 2)
            RESULTS.setdefault("norm_timing", []).append(row)
            print(f"norm {shape} {name} {N}x{K} ({row['cfg']}): " + ", ".join(
                f"{label} {[row[f'{label}_us_{M}'] for M in rows]}" for label in
                ("two-pass", "rows", "row-kernel", "no-norm")) + f" us at M={rows}; cuBLAS {row['cublas_us_1']} us "
                f"at M=1", flush=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def row_block_timing(shape: str, args: ModelArgs, rows=(16, 32, 64)) -> None:
    """GPU time of each product at 16/32/64 rows with one and with two row blocks per program (`gemm.row_blocks`),
    weights cycled beyond the L2 cache, and the two results compared bit for bit (they must be equal)."""
    for name, N, K, flags in products(args):
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
        copies = beyond_l2(w)
        row = dict(shape=shape, product=name, N=N, K=K, MB=w.numel() * 2 / 1e6, default_rb={})
        same = True
        for M in rows:
            _, x, r, nw, b = make_call(N, K, flags, M, w)  # one set of inputs for both variants
            run = {rb: functools.partial(G.gemm, bias=b, norm=nw, eps=1e-6, glu=bool(flags.get("glu")),
                                         out_dtype=torch.float32 if flags.get("f32") else None, rb=rb)
                   for rb in (1, 2)}
            for rb in (1, 2):
                row[f"us_M{M}_rb{rb}"] = round(graph_time(
                    [lambda v=v, rb=rb: run[rb](x, v, residual=None if r is None else r.clone()) for v in copies])
                    * 1e3, 2)
            outs = {}
            for rb in (1, 2):
                rr = None if r is None else r.clone()
                y = run[rb](x, w, residual=rr)
                outs[rb] = rr if y is None else y
            same &= torch.equal(outs[1], outs[2])
            row["default_rb"][M] = G.row_blocks(M, N, K)
        RESULTS.setdefault("row_blocks", []).append(row)
        print(f"rows {shape} {name} {N}x{K}: " + ", ".join(
            f"M={M} {row[f'us_M{M}_rb1']} -> {row[f'us_M{M}_rb2']} us" for M in rows), flush=True)
        check(f"{shape} {name} one and two row blocks bit-identical", same)


def attention_checks(shape: str, args: ModelArgs) -> None:
    n_kv, g, D = args.n_kv_heads, args.n_heads // args.n_kv_heads, args.head_dim
    S, R = 1280, 777
    k = torch.randn(n_kv, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n_kv, S, D, device="cuda", dtype=torch.bfloat16)
    n = 24
    depth = torch.cat([torch.arange(18), torch.tensor([1, 2, 2, 5, 9, 12])]).cuda()
    slot = R + torch.arange(n, device="cuda")
    q = torch.randn(n_kv, n * g, D, device="cuda", dtype=torch.bfloat16)
    ext = Extents(R + depth, slot, slot, R + depth)
    tree = attention(q, k, v, ext)
    mask = reference_mask(ext, S)
    qr = q.view(n_kv, n, g, D).permute(0, 2, 1, 3).float()
    ref = F.scaled_dot_product_attention(qr, k[:, None].float().expand(-1, g, -1, -1),
                                         v[:, None].float().expand(-1, g, -1, -1),
                                         attn_mask=mask[None, None].expand(n_kv, g, -1, -1))
    err = (tree.float() - ref.permute(2, 0, 1, 3).reshape(n, -1)).abs().max().item()
    check(f"{shape} attention vs SDPA (bf16)", err <= 2e-2, max_abs_err=round(err, 5))
    same = True
    for i in range(n):
        kk, vv = k.clone(), v.clone()
        p = R + int(depth[i])
        kk[:, p], vv[:, p] = k[:, slot[i]], v[:, slot[i]]
        one = torch.tensor([p], device="cuda")
        alone = attention(q.view(n_kv, n, g, D)[:, i].contiguous(), kk, vv, Extents(one, one, one, one))
        same &= torch.equal(alone[0], tree[i])
    check(f"{shape} tree-node attention bit-identical to sequential decoding", same)


def engine_checks(shape: str, args: ModelArgs, n_new: int, compare_torch: bool) -> None:
    torch.manual_seed(0)
    model = build_model(args, None, device="cuda", dtype=torch.bfloat16)
    prompt = torch.randint(0, args.vocab_size, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    row = dict(shape=shape)
    variants = [("triton", Backends("triton"), False)]
    if kernels.pdl_supported(f"cuda:{torch.cuda.current_device()}"):  # the same kernels, launched dependently
        variants += [("triton+pdl", Backends("triton"), True), ("triton-again", Backends("triton"), False)]
    variants += [("torch+compile", Backends("torch", "on"), False)] if compare_torch else []
    RESULTS["engine"].append(row)  # filled in as the variants run: a failing variant keeps the others' numbers
    want, accepted = None, None
    for label, backends, pdl in variants:
        try:
            with kernels.dependent_launches(pdl):  # read at every launch, so captured into this engine's graphs
                eng, tokens = engine_variant(shape, model, prompt, n_new, label, backends, row)
                if label == "torch+compile":
                    continue
                if want is not None:  # the dependent launches: the same kernels, the same bits
                    check(f"{shape} vanilla [{label}] == vanilla [triton]", tokens == want)
                want = want or tokens
                if label != "triton-again":
                    accepted = swift_checks(shape, eng, args, prompt, n_new, want, row, label, accepted)
        except Exception as e:  # noqa: BLE001 - report and go on with the next variant
            import traceback
            traceback.print_exc()
            check(f"{shape} engine [{label}] raised", False, error=f"{type(e).__name__}: {e}")
    print(json.dumps(row), flush=True)


def engine_variant(shape, model, prompt, n_new, label, backends, row) -> tuple[Engine, list[int]]:
    """An engine of `backends` with its decode graphs captured, its vanilla decode speed (median of 3) in `row`,
    and the tokens it decoded."""
    t0 = time.perf_counter()
    eng = Engine(model, len(prompt) + n_new + 200, backends)
    vanilla_generate(eng, prompt, 32)
    eng.warm_up_decode()
    setup = time.perf_counter() - t0
    runs = [vanilla_generate(eng, prompt, n_new) for _ in range(3)]
    tps = sorted(r.num_new_tokens / r.wall_time_s for r in runs)[1]
    row[f"decode_tps_{label}"] = round(tps, 1)
    row[f"setup_s_{label}"] = round(setup, 1)
    print(f"{shape} vanilla [{label}]: {tps:.1f} tok/s (setup {setup:.1f} s)", flush=True)
    return eng, runs[0].tokens


def swift_checks(shape, eng, args, prompt, n_new, want, row, label, accepted=None) -> list[int]:
    """Greedy SWIFT with a fixed skip set against vanilla, and (for the plain launches) the draft graph, prefill,
    tail and vocabulary checks and costs. With dependent launches: the draft graphs captured for the skip set alone
    (`settle`; the shared graph with switched-off kernels is captured without them) against an eager draft, then
    the same SWIFT run, whose acceptances must equal those of the plain launches (`accepted`). Returns the
    acceptances."""
    pdl = label == "triton+pdl"
    key = "_pdl" if pdl else ""
    if not pdl:
        prefill_checks(shape, eng, prompt, row)
    n_skip = round(0.4 * 2 * (args.n_layers - 2))
    skip = LayerSkip.of(attn=range(2, 2 + n_skip // 2), mlp=range(3, 3 + n_skip - n_skip // 2))
    cfg = SwiftConfig(guard=False, multirow_launches="dependent" if pdl else "plain")  # every graph the same way
    acc = accelerator(eng, cfg)
    acc.warm_up(SamplingConfig())
    row["costs" + key] = acc.costs.to_dict()
    if pdl:  # graphs of the skip set alone (settled, or one per set without node switching): dependent launches
        acc.drafter.settle(skip)
        check(f"{shape} draft graph of the skip set (dependent launches) == eager draft", same_draft(eng, acc, skip))
    captures = eng.graph_captures
    res = swift_generate(eng, prompt, n_new, cfg=cfg, skip=skip)
    check(f"{shape} greedy SWIFT (bf16, fixed skip set{', dependent launches' if pdl else ''}) == vanilla",
          res.tokens == want,
          same_prefix=next((i for i, (a, b) in enumerate(zip(res.tokens, want)) if a != b), len(want)),
          mean_accept=round(sum(res.accept_lengths) / len(res.accept_lengths), 3),
          captures_in_timed_run=eng.graph_captures - captures)
    row["swift_tps_fixed_skip" + key] = round(res.num_new_tokens / res.wall_time_s, 1)
    if pdl:
        if accepted is not None:
            check(f"{shape} SWIFT's acceptances with dependent launches == without", res.accept_lengths == accepted)
        return res.accept_lengths
    dr = acc.drafter
    row["draft_tracked"] = dr.tracked
    if dr.tracked:
        check(f"{shape} draft graph with skipped kernels switched off == eager draft", same_draft(eng, acc, skip))
        g_set = graphs.capture(lambda: dr._steps(8, skip))
        t_set = _time(lambda: (acc._at(300), g_set.replay()))
        t_tog = _time(lambda: (acc._at(300), dr.draft(8)))
        row["draft8_ms_tracked_vs_per_set_graph"] = (round(t_tog, 4), round(t_set, 4))
        print(f"{shape} draft of 8 with {len(skip)} sub-layers skipped: switched-off graph {t_tog:.3f} ms, "
              f"graph captured for the set {t_set:.3f} ms", flush=True)
    tail_checks(shape, eng, acc, skip, row)
    vocabulary_costs(shape, eng, row)
    return res.accept_lengths


def same_draft(eng, acc, skip) -> bool:
    """A draft of 8 tokens with `skip` from the drafter's graphs equals the same draft run eagerly, bit for bit."""
    dr = acc.drafter
    dr.set_skip(skip)
    acc._at(300)
    dr.draft(8)
    graphed = dr.table[:8].clone()
    with_graphs, eng.cuda_graphs = eng.cuda_graphs, False
    acc._at(300)
    dr.draft(8)
    eng.cuda_graphs = with_graphs
    return torch.equal(graphed, dr.table[:8])


def prefill_checks(shape: str, eng: Engine, prompt: list[int], row: dict) -> None:
    """The prefill graph of the prompt's length bucket (`Engine.pad_prefill`) against the eager prefill: the same
    next token and logits within bf16 rounding (the padded products may round otherwise), and the wall time of
    each (host launches included: what an answer pays)."""
    def wall_ms(reps=7):
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            eng.start(prompt)
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - t0))
        return sorted(times)[reps // 2]
    got, t_graph = eng.start(prompt).float(), wall_ms()
    eng.pad_prefill = False
    try:
        ref, t_eager = eng.start(prompt).float(), wall_ms()
    finally:
        eng.pad_prefill = True
    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
    check(f"{shape} prefill graph (prompt of {len(prompt)} padded to {prefill_len(len(prompt))}) == eager prefill",
          int(got.argmax()) == int(ref.argmax()) and err <= 5e-2, max_rel_err=round(err, 5))
    row["prefill_ms_graph_vs_eager"] = (round(t_graph, 3), round(t_eager, 3))
    print(f"{shape} prefill of {len(prompt)} tokens: graph {t_graph:.2f} ms, eager {t_eager:.2f} ms", flush=True)
    other = prompt[: len(prompt) // 2 + 7]  # another bucket: warm-up captures it, the timed answer captures nothing
    eng.warm_up_prefill([other])
    captures = eng.graph_captures
    vanilla_generate(eng, other, 16)
    check(f"{shape} no prefill capture in an answer after warm_up_prefill", eng.graph_captures == captures,
          bucket=prefill_len(len(other)), captures=eng.graph_captures - captures)
    eng.length = 0
    eng.cursor.zero_()


def tail_checks(shape: str, eng: Engine, acc, skip: LayerSkip, row: dict) -> None:
    """The work around the passes as kernels (model/kernels/topk.py, tree.py) against the PyTorch ops: the top-k of a
    real step's logits (the same values; equal logits may come in another order), and from the same draft table the
    same tree, report and committed tokens (eagerly); then the pass costs relative to a full step with each (CUDA
    graphs, `Accelerator.measure`)."""
    from model.kernels.topk import draft_topk
    dr, vf, sampling = acc.drafter, acc.verifier, SamplingConfig()
    K = dr.table.shape[1]
    acc._at(300)
    logits = eng.logits(eng.forward(eng.one_step(eng.cursor)))  # [1, V] float32
    dev = logits.device
    table, top1 = torch.zeros(1, K, dtype=torch.long, device=dev), torch.zeros(1, device=dev)
    draft_topk(logits, K, table, top1, torch.zeros(1, dtype=torch.long, device=dev), 0)
    vals, _ = logits.topk(K, dim=-1)
    p = torch.softmax(logits, dim=-1).max()
    check(f"{shape} draft top-k kernel == torch.topk (values)", torch.equal(logits[0, table[0]], vals[0]),
          ties=int((vals[0, 1:] == vals[0, :-1]).sum()))
    check(f"{shape} draft top-1 probability kernel ~ softmax", torch.allclose(top1[0], p, rtol=1e-4),
          rel=float((top1[0] - p).abs() / p))
    got = {}
    eng.cuda_graphs = False
    dr.fused = True
    dr.set_skip(skip)
    acc._at(300)
    dr.draft(8)
    branch = dr.table[:2, 0].tolist() + [dr.table[2, 1].item(), 5, 6]  # shares the chain's start, then parts
    for fused in (False, True):
        vf.fused = fused
        acc._at(300)
        seq = eng.seq.clone()
        vf.verify(8, sampling, context=branch)
        got[fused] = (vf.report.clone(), eng.seq.clone(), eng.cursor.clone())
        eng.seq.copy_(seq)
    eng.cuda_graphs = True
    (r0, s0, c0), (r1, s1, c1) = got[False], got[True]
    check(f"{shape} tree / acceptance / commit kernels == PyTorch", torch.equal(r0, r1) and torch.equal(s0, s1)
          and torch.equal(c0, c1), report=r1[:4].tolist())
    for fused in (False, True):
        dr.fused = vf.fused = fused
        costs = acc.measure(300, sampling)
        row[f"costs_{'kernel' if fused else 'torch'}_tails"] = costs.to_dict()
        print(f"{shape} {'kernel' if fused else 'PyTorch'} tails: draft step (nothing skipped) "
              f"{costs.draft(0, 0):.3f}, "
              f"verify {dict((n, round(v, 3)) for n, v in costs.verify)}, a search step {costs.search:.3f} "
              f"of a full step", flush=True)
    eng.length = 0


def vocabulary_costs(shape: str, eng: Engine, row: dict, sizes=(4096, 16384)) -> None:
    """The pass costs with the draft's LM head restricted to `sizes` token ids (`--draft-vocab`) against the whole
    vocabulary, side by side: the head is a large share of a small model's weights (Qwen2.5-0.5B: 152k x 896 of
    0.5B parameters), and the draft step pays it on every token."""
    for n in (0,) + tuple(s for s in sizes if s < eng.args.vocab_size):
        acc = accelerator(eng, SwiftConfig(guard=False, draft_vocab=n))
        acc.warm_up(SamplingConfig())
        c = acc.costs
        row[f"costs_draft_vocab_{n}"] = c.to_dict()
        print(f"{shape} draft vocabulary {n or eng.args.vocab_size}: draft step (nothing skipped) "
              f"{c.draft(0, 0):.3f}, its fixed part {c.fixed:.3f} of a full step", flush=True)


def compile_checks() -> None:
    """tests/compile_sm90.py with this machine's Triton: every kernel builds for sm_90 and, with dependent launches,
    none touches global memory before its wait (the generated code depends on the Triton version)."""
    script = Path(__file__).resolve().parents[1] / "tests" / "compile_sm90.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    lines = out.stdout.splitlines()
    bad = [line for line in lines if not line.startswith("ok ")]
    check("every kernel builds for sm_90, and none touches global memory before its dependent-launch wait",
          out.returncode == 0 and bool(lines) and not bad, kernels=len(lines), failed=bad[:5],
          stderr=out.stderr[-500:] if bad or not lines else "")


def _time(fn, reps=20) -> float:
    return graphs.gpu_ms(fn, reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--tune", action="store_true", help="time every candidate block shape per product (slow)")
    ap.add_argument("--skip-engine", action="store_true", help="kernel checks only")
    ap.add_argument("--norm-modes", action="store_true",
                    help="time the products with the RMSNorm per norm pass (SWIFT_GEMM_NORM), without it, and cuBLAS")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens per timed generation in the engine check")
    ap.add_argument("--compare-torch", action="store_true",
                    help="also time decoding with the PyTorch ops + torch.compile (slow to compile)")
    ap.add_argument("--out", default=None, help="folder for selftest.json")
    a = ap.parse_args()
    if a.new_tokens < 1:
        ap.error(f"--new-tokens must be >= 1, got {a.new_tokens}")
    assert torch.cuda.is_available(), "needs a GPU"
    RESULTS["env"] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                          triton=__import__("triton").__version__, python=platform.python_version(),
                          graph_node_switching=graphs.tracking_works(), kernel_settings=kernels.settings())
    print(json.dumps(RESULTS["env"]), flush=True)
    compile_checks()
    for shape in a.shapes.split(","):
        args = ModelArgs.from_hf_config(SHAPES[shape])
        for part in (([gemm_tuning] if a.tune else []) + ([norm_timing] if a.norm_modes else [])
                     + [gemm_checks, row_block_timing, attention_checks]
                     + ([] if a.skip_engine else [lambda s, ar: engine_checks(s, ar, a.new_tokens, a.compare_torch)])):
            try:
                part(shape, args)
            except Exception as e:  # noqa: BLE001 - report and go on with the next part
                import traceback
                traceback.print_exc()
                check(f"{shape} {getattr(part, '__name__', 'engine')} raised", False, error=f"{type(e).__name__}: {e}")
            if a.out:
                Path(a.out).mkdir(parents=True, exist_ok=True)
                (Path(a.out) / "selftest.json").write_text(json.dumps(RESULTS, indent=1))
                tuned = {f"{r['N']},{r['K']}": astuple(G.TUNED[(r["N"], r["K"])]) for r in RESULTS["gemm_timing"]}
                if tuned:  # the format SWIFT_GEMM_TUNED reads
                    (Path(a.out) / "tuned.json").write_text(json.dumps(tuned, indent=1))
    print(f"{len(FAILURES)} failed: {FAILURES}" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
