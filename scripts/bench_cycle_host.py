#!/usr/bin/env python3
"""Host time of a SWIFT cycle's decisions, without any GPU work: what the decoding loop spends in Python per cycle
besides launching and reading its passes. Three cases, each the best of `--repeat` timings of `--number` calls:

* a hybrid context cycle: the choice between the context continuation and the layer-skip draft (`choose_source`);
* a draft cycle: that choice, the planned draft length, and the acceptance observed afterwards;
* the two speed guards' checks that every cycle makes.

The state is a planner that has seen 50 cycles, a 30-layer cost model and a full guard window. Only the host's own
speed matters, so any machine answers; compare numbers from one machine. `--repo` times another checkout (e.g. an
older commit in a `git worktree`) with this script.

Example: OMP_NUM_THREADS=1 python3 scripts/bench_cycle_host.py
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout whose code is timed (default: this one)")
    ap.add_argument("--number", type=int, default=20000, help="calls per timing (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="timings per case; the best is reported (default 5)")
    args = ap.parse_args()
    if args.number < 1 or args.repeat < 1:
        ap.error("--number and --repeat must be >= 1")
    if not (args.repo / "model" / "swift" / "planner.py").is_file():
        ap.error(f"--repo {args.repo} is not a checkout of this project (no model/swift/planner.py)")
    sys.path.insert(0, str(args.repo.resolve()))

    from model.llama import LayerSkip
    from model.swift.config import SwiftConfig
    from model.swift.decoding import SpeedGuard, choose_source
    from model.swift.planner import DRAFT_LENGTHS, ContextRate, CostModel, DraftPlanner

    cfg = SwiftConfig(context_drafts=True)
    costs = CostModel.default(30)
    costs.verify = ((8, 1.05), (16, 1.07), (32, 1.13))
    planner = DraftPlanner(costs, DRAFT_LENGTHS)
    skip = LayerSkip.of(range(1, 11), range(1, 11))
    planner.use(skip)
    for _ in range(50):
        planner.observe(5, 3)
    rate, context = ContextRate(), [1, 2, 3, 4, 5, 6]
    guards = [SpeedGuard(cfg), SpeedGuard(cfg, cfg.context_retry)]
    for g in guards:
        g.plain_tps = 1000.0
        for _ in range(cfg.guard_min_cycles):
            g.observe(3, 0.002)

    def context_cycle():
        choose_source(cfg, True, context, planner, skip, 25, rate, costs)

    def draft_cycle():
        choose_source(cfg, True, context, planner, skip, 25, rate, costs)
        planner.length(25, skip, 0)
        planner.observe(5, 3)

    def guard_checks():
        for g in guards:
            g.check(100)

    print(f"host time per call, best of {args.repeat} x {args.number} ({args.repo}):")
    for name, fn in (("hybrid context cycle: source choice", context_cycle),
                     ("draft cycle: choice + length + observation", draft_cycle),
                     ("two guard checks", guard_checks)):
        us = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number * 1e6
        print(f"  {name}: {us:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
