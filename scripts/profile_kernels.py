#!/usr/bin/env python3
"""Kernel-level profile of one decode step (eager, batch 1) and graph-replay step times for both attention
implementations (SDPA, the split-KV Triton kernel), eager and compiled sub-layers.
Example: python3 scripts/profile_kernels.py --model-path models/smollm2-135m/hf
         python3 scripts/profile_kernels.py --shape llama-2-7b   (random weights: where a 7B step's time goes)"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import attention  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, ModelArgs  # noqa: E402
from model.backends import Backends  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.loading import build_model, load_model  # noqa: E402


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
    ap.add_argument("--shape", choices=["llama-2-7b"], default=None,
                    help="profile a random-weight model of this shape instead of --model-path")
    ap.add_argument("--backends", nargs="+", default=["sdpa", "triton"], choices=["sdpa", "triton"],
                    help="attention implementations to profile")
    a = ap.parse_args()
    if a.shape:
        args = ModelArgs.from_hf_config(LLAMA2_7B_SHAPE)
        torch.manual_seed(0)
        model = build_model(args, None, device="cuda", dtype=torch.bfloat16)
    else:
        model, args = load_model(a.model_path, device="cuda", dtype=torch.bfloat16)
    print(f"GPU {torch.cuda.get_device_name()}; torch {torch.__version__}; bfloat16; "
          f"model {a.shape or a.model_path}; {a.seq} KV slots, decode at position {a.seq // 2}")
    for compiled in (False, True):  # compilation is process-wide: the eager sub-layers first
        for impl in a.backends:
            attention.set_backend(impl)
            tag = impl + ("+compile" if compiled else "")
            eng = Engine(model, a.seq, Backends(kernels="torch", compile="on" if compiled else "off"))
            print(f"{tag}: graph step {step_ms(eng, a.seq // 2):.3f} ms", flush=True)
            del eng
            plain = Engine(model, a.seq, Backends(kernels="torch", compile="on" if compiled else "off"), cuda_graphs=False)  # no graph: kernels visible
            step_ms(plain, a.seq // 2, reps=3)
            profile_step(plain, a.seq // 2, args.n_layers, tag)
    print(f"attention kernel status: {attention.kernel_status()}")


def profile_step(eng, pos, n_layers, tag, steps=3):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            eng.decode(torch.zeros(1, dtype=torch.long, device="cuda"), pos)
        torch.cuda.synchronize()
    ev = list(prof.key_averages())
    # kernels only: the CUDA activity also lists the host-side launch calls, which take no device time
    n = sum(e.count for e in ev if (getattr(e, "self_device_time_total", 0) or 0) > 0) / steps
    gpu_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in ev) / steps
    print(f"{tag}: {n:.0f} kernels per step ({n / n_layers:.1f} per layer), {gpu_us / 1e3:.3f} ms of kernel time "
          f"per step (without launch gaps)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))


if __name__ == "__main__":
    main()
