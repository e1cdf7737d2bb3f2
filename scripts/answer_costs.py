#!/usr/bin/env python3
"""Fixed and per-token cost of the answers in an outputs folder: a least-squares fit wall = a + b * new tokens per
(model, task, method), from the answer files' own wall times. A method whose per-token cost b equals vanilla's
but whose fixed cost a differs gains or loses outside decoding (prefill, warm-up effects, search).

Example: python3 scripts/answer_costs.py outputs/reference/h200-exact-smollm2-50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fit(points: list[tuple[int, float]]) -> tuple[float | None, float]:
    """(a, b) of wall = a + b * tokens; (None, mean wall per token) when every answer has the same length: the
    answers then cannot tell a fixed cost from a per-token one (the table prints '-' and says so)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None, my / mx
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outputs", help="folder with <model>/<task>/<method>.jsonl answer files")
    a = ap.parse_args()
    files = sorted(Path(a.outputs).glob("*/*/*.jsonl"))
    if not files:
        print(f"no answer files under {a.outputs}", file=sys.stderr)
        return 1
    print("| model | task | method | answers | fixed ms (a) | ms per token (b) | mean tokens |")
    print("|---|---|---|---:|---:|---:|---:|")
    same_length = False
    for f in files:
        pts = []
        for line in f.open():
            r = json.loads(line)
            if r.get("header"):
                continue
            c = r["choices"][0]
            pts.append((sum(c["new_tokens"]), 1e3 * sum(c["wall_time"])))
        if pts:
            fa, fb = fit(pts)
            same_length |= fa is None
            print(f"| {f.parts[-3]} | {f.parts[-2]} | {f.stem} | {len(pts)} | {'-' if fa is None else f'{fa:.1f}'} | "
                  f"{fb:.3f} | {sum(x for x, _ in pts) / len(pts):.0f} |")
    if same_length:
        print("\n-: every answer of that file has the same length, so the fit cannot separate a fixed cost from a "
              "per-token one; its ms per token is the mean wall time per token, fixed cost included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
