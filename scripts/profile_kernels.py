#!/usr/bin/env python3
"""Kernel-level profile of one decode step (eager, batch 1) and graph-replay step times for both attention
implementations (SDPA, the split-KV Triton kernel), eager and compiled sub-layers.
Example: python3 scripts/profile_kernels.py --model-path models/smollm2-135m/hf"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import attention  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.loading import load_model  # noqa: E402


def step_ms(eng, pos, reps=200):
    tok = torch.zeros(1, dtype=torch.long, device=eng.device)
    for _ in range(5):
        eng.decode(tok, pos)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        eng.decode(tok, pos)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-path", default="models/smollm2-135m/hf", help="model folder")
    ap.add_argument("--seq", type=int, default=1200, help="KV-cache slots (attention length)")
    a = ap.parse_args()
    model, args = load_model(a.model_path, device="cuda", dtype=torch.bfloat16)
    backends = ("sdpa", "triton")
    for impl in backends:
        attention.set_backend(impl)
        eng = Engine(model, a.seq)
        print(f"{impl}: graph step {step_ms(eng, a.seq // 2):.3f} ms", flush=True)
        eager = Engine(model, a.seq, cuda_graphs=False)
        step_ms(eager, a.seq // 2, reps=3)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                eager.decode(torch.zeros(1, dtype=torch.long, device="cuda"), a.seq // 2)
            torch.cuda.synchronize()
        ev = [e for e in prof.key_averages()]
        n = sum(e.count for e in ev) / 3
        print(f"{impl}: {n:.0f} kernels per step ({n / args.n_layers:.1f} per layer)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    for impl in backends:  # compiled sub-layers (compilation is process-wide, so after the eager ones)
        attention.set_backend(impl)
        eng = Engine(model, a.seq, compile=True)
        print(f"{impl}+compile: graph step {step_ms(eng, a.seq // 2):.3f} ms", flush=True)
    print(f"attention kernel status: {attention.kernel_status()}")


if __name__ == "__main__":
    main()
