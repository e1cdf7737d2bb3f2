#!/usr/bin/env python3
"""The pass costs SWIFT's warm-up measures, relative to one plain decoding step: a draft step (its fixed part and
each kept attention / MLP sub-layer), a verification of each tree size, and a step of the layer search (scoring
every candidate on the last gamma tokens, and reading the scores). Random weights of a model shape (the same
numbers the planner works with on a real checkpoint of that shape; the costs do not depend on the values).

Needs a CUDA GPU: the costs come from CUDA graph replays timed with CUDA events (`Accelerator.measure`).

Example: python3 scripts/pass_costs.py --shapes smollm2-135m,qwen2.5-0.5b --out outputs/pass_costs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import LLAMA2_7B_SHAPE, QWEN25_05B_SHAPE, SMOLLM2_135M_SHAPE, ModelArgs  # noqa: E402

SHAPES = {"smollm2-135m": SMOLLM2_135M_SHAPE, "qwen2.5-0.5b": QWEN25_05B_SHAPE, "llama-2-7b": LLAMA2_7B_SHAPE}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b",
                    help=f"comma-separated, from {', '.join(SHAPES)} (default: the two small models)")
    ap.add_argument("--out", default=None, help="folder for pass_costs.jsonl (default: print only)")
    args = ap.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes or unknown:
        ap.error(f"--shapes: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(SHAPES)}")
    import torch
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the costs are timed with CUDA events on captured graphs)")

    from model.engine import Engine
    from model.loading import build_model
    from model.sampling import SamplingConfig
    from model.swift.config import SwiftConfig
    from model.swift.decoding import accelerator

    rows = []
    for shape in shapes:
        torch.manual_seed(0)
        margs = ModelArgs.from_hf_config(SHAPES[shape])
        engine = Engine(build_model(margs, None, device="cuda", dtype=torch.bfloat16), 1024)
        engine.warm_up_decode()
        cfg = SwiftConfig()
        acc = accelerator(engine, cfg)
        acc.warm_up(SamplingConfig())
        row = dict(shape=shape, gpu=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
                   full_step_ms=round(acc.full_ms, 4), candidates=cfg.num_candidates, gamma=cfg.context_window,
                   costs=acc.costs.to_dict())
        rows.append(row)
        c = acc.costs
        print(f"{shape}: plain step {acc.full_ms:.3f} ms; draft step with nothing skipped "
              f"{c.fixed + (c.attn + c.mlp) * (margs.n_layers - 2):.3f}, verification "
              f"{ {n: round(v, 3) for n, v in c.verify} }, search step ({cfg.num_candidates} x "
              f"{cfg.context_window} tokens) {c.search:.3f} of a plain step", flush=True)
        del engine, acc
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pass_costs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
