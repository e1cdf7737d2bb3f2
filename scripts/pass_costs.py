#!/usr/bin/env python3
"""The pass costs SWIFT's warm-up measures, relative to one plain decoding step: a draft step (its fixed part and
each kept attention / MLP sub-layer), a verification of each tree size, and a step of the layer search (scoring
every candidate on the last gamma tokens, and reading the scores). Random weights of a model shape: the costs are
those of a real checkpoint of that shape (only the kernels' self-check at engine start reads the values).

With dependent launches (`SWIFT_PDL`, on by default where the GPU has them) the plain step's graph launches each
kernel while the one before it runs. `--accelerator-launches` chooses how the warm-up captures SWIFT's multi-row
graphs (verification, search scoring: `SwiftConfig.multirow_launches`; the draft graph shared by every skip set is
always captured with plain launches): `dependent` as plain decoding (the runners' default), `plain` with each
kernel launched after the one before it, or `both`, side by side in one process on engines of their own. The plain
step is the same dependent-launch graph in every row. These are the graphs replayed alone: inside a stream the
comparison can come out the other way (docs/RESULTS.md), so a change of mode is judged by `bench_peers.py`.

Needs a CUDA GPU: the costs come from CUDA graph replays timed with CUDA events (`Accelerator.measure`).

Example: python3 scripts/pass_costs.py --shapes smollm2-135m,qwen2.5-0.5b --out outputs/pass_costs
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_selftest import SHAPES  # noqa: E402  (the shapes the self-test checks, by the same names)
from model.config import ModelArgs  # noqa: E402

LAUNCHES = {"dependent": ("dependent",), "plain": ("plain",), "both": ("dependent", "plain")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b",
                    help=f"comma-separated, from {', '.join(SHAPES)} (default: the two small models)")
    ap.add_argument("--accelerator-launches", choices=sorted(LAUNCHES), default="both",
                    help="how SWIFT's verification and search graphs are captured: with dependent launches (as "
                         "plain decoding, the runners' default), with plain launches, or both side by side "
                         "(default)")
    ap.add_argument("--max-tree-nodes", type=int, default=None,
                    help="most nodes of a verified tree (SwiftConfig.max_tree_nodes): the tree sizes measured are "
                         "the buckets (8, 16, 32, ...) up to the one holding it; needs --max-draft-len at most 2 "
                         "below it (default: the runners' default)")
    ap.add_argument("--max-draft-len", type=int, default=None,
                    help="most tokens drafted per cycle (SwiftConfig.max_draft_len; default: the runners' default)")
    ap.add_argument("--out", default=None, help="folder for pass_costs.jsonl, one row per shape and launch mode, "
                                                "written as each is measured (default: print only)")
    args = ap.parse_args(argv)
    from model.errors import UserError
    from model.swift.config import SwiftConfig
    sizes = {k: v for k, v in (("max_tree_nodes", args.max_tree_nodes), ("max_draft_len", args.max_draft_len))
             if v is not None}
    try:
        SwiftConfig(**sizes)
    except UserError as e:
        ap.error(str(e))
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes:
        ap.error(f"--shapes: no shape given; known: {', '.join(SHAPES)}")
    if unknown:
        ap.error(f"--shapes: unknown {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    out = None
    if args.out:
        out = Path(args.out) / "pass_costs.jsonl"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")
        except OSError as e:
            ap.error(f"--out {args.out}: cannot write there ({e})")
    import torch
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the costs are timed with CUDA events on captured graphs)")

    from model import kernels
    from model.engine import Engine
    from model.loading import build_model
    from model.sampling import SamplingConfig
    from model.swift.decoding import accelerator

    for shape in shapes:
        margs = ModelArgs.from_hf_config(SHAPES[shape])
        torch.manual_seed(0)
        model = build_model(margs, None, device="cuda", dtype=torch.bfloat16)
        for launches in LAUNCHES[args.accelerator_launches]:
            engine = Engine(model, 1024)
            engine.warm_up_decode()  # the plain step: as every stream decodes
            cfg = SwiftConfig(multirow_launches=launches, **sizes)
            acc = accelerator(engine, cfg)
            acc.warm_up(SamplingConfig())
            c = acc.costs
            row = dict(shape=shape, accelerator_launches=launches, gpu=torch.cuda.get_device_name(),
                       torch=torch.__version__, dtype="bfloat16", kernel_settings=kernels.settings(),
                       backends=engine.backends.to_dict(), kernel_note=engine.kernel_note,
                       full_step_ms=round(acc.full_ms, 4), tree_sizes=list(acc.verifier.sizes),
                       candidates=cfg.num_candidates, gamma=cfg.context_window,
                       costs=c.to_dict())
            print(f"{shape} [{launches} accelerator launches]: plain step {acc.full_ms:.3f} ms; draft step with "
                  f"nothing skipped {c.draft(0, 0):.3f}, verification "
                  f"{ {n: round(v, 3) for n, v in c.verify} }, search step ({cfg.num_candidates} x "
                  f"{cfg.context_window} tokens) {c.search:.3f} of a plain step", flush=True)
            if out:
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            del engine, acc
            gc.collect()  # the engine and its accelerator refer to each other
            torch.cuda.empty_cache()
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
