#!/usr/bin/env python3
"""SWIFT at the paper's scale, on synthetic weights: LLaMA-2-7B- and 13B-shaped models with planted layer redundancy.

No 7B-70B checkpoint is needed to measure how SWIFT's costs scale: a model of the real shape reads the same bytes per
step. `model/planted.py` writes its weights so that a share `--ratio` of the sub-layers of layers 1..L-2 (the paper's
r = 0.45) are near no-ops, every other sub-layer matters for some tokens, the model's greedy text is a fixed walk
decided with a wide margin, and `--flips` tokens are redirected by the planted sub-layers (there a draft without
them disagrees with the full model: acceptance about 100%, 97% and 90% for 0, 1 and 3 flips).

For each shape x level, in one run:
1. search: SWIFT with its on-the-fly search at r = `--ratio` over `--search-prompts` texts (carried across them, as the
   runner carries it over a task's instances) until it stops; its time share, steps, the set it found, that set's
   overlap with the planted set and the matchness of both;
2. timed: our vanilla decoding and SWIFT with the found set (its own draft graphs, `Accelerator.settle`) on
   `--prompts` other texts: the speedup, M and acceptance, the draft step's cost relative to a full step, the
   verification cost by tree size, and the analytic ceiling that these costs and the acceptance allow
   (`model/swift/planner.py`) with the share of it reached.

These runs measure the system's cost structure, not a model's quality: the weights are synthetic.

Example: python3 scripts/bench_scale.py --shapes llama-2-7b,llama-2-13b --out outputs/bench_scale
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.kernels import settings as kernel_settings  # noqa: E402
from model.backends import TAILS, Backends  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, LLAMA2_13B_SHAPE, ModelArgs  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.generate import cache_capacity, vanilla_generate  # noqa: E402
from model.graphs import gpu_ms  # noqa: E402
from model.llama import LayerSkip  # noqa: E402
from model.planted import build_planted  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402
from model.swift.config import SwiftConfig  # noqa: E402
from model.swift.decoding import Accelerator, accelerator, swift_generate  # noqa: E402
from model.swift.layer_search import LayerSearch, score_candidates  # noqa: E402
from model.swift.planner import DRAFT_LENGTHS, DraftPlanner, expected_speedup  # noqa: E402

SHAPES = {"llama-2-7b": LLAMA2_7B_SHAPE, "llama-2-13b": LLAMA2_13B_SHAPE}
DEFAULTS = dict(ratio=0.45, search_prompts=12, prompts=4, prompt_len=128, max_new_tokens=256)  # of the flags below


def overlap(found: LayerSkip, planted: LayerSkip) -> int:
    """Sub-layers in both sets (attention and MLP counted apart)."""
    return len(found.attn & planted.attn) + len(found.mlp & planted.mlp)


def matchness(engine: Engine, skip: LayerSkip, text: list[int], gamma: int = 32) -> float:
    """`skip`'s matchness on the last `gamma` tokens of `text` (the model's own greedy text)."""
    engine.start(text[:-1])
    return score_candidates(engine, [skip], gamma, plain_launches=SwiftConfig().plain_multirow)[0]


def draft_bytes(args: ModelArgs, skip: LayerSkip) -> float:
    """Weight bytes a draft step with `skip` reads, relative to a full step (every layer's projections, the LM head;
    norms, the embedding row and the cache are left out: about 1% of a step at these shapes and prompt lengths, 1.5%
    at the longest). At batch 1 a 7B-13B step is bound by these bytes, so this is what a draft step's cost c(r)
    tends to."""
    attn = args.dim * args.head_dim * (2 * args.n_heads + 2 * args.n_kv_heads)  # q, k, v, o
    mlp = 3 * args.dim * args.intermediate_size
    head = args.vocab_size * args.dim
    full = args.n_layers * (attn + mlp) + head
    return (full - len(skip.attn) * attn - len(skip.mlp) * mlp) / full


def byte_bound(row: dict) -> tuple[float, float] | None:
    """(draft bytes, ceiling): the found set's draft bytes relative to a full step, and the best expected speedup at
    the measured acceptance if a draft step cost exactly those bytes and a verification exactly one step (a tree's
    rows read the same weights as one row), by the planner's model with one acceptance rate for every depth: an
    estimate of what the memory bound allows with this skip set and acceptance. None for a row without its shape or
    found set."""
    settled = row.get("costs", {}).get("settled") or [None]
    found = row.get("found_skip") or settled[0]
    if row.get("shape") not in SHAPES or found is None:
        return None
    args = ModelArgs.from_hf_config(SHAPES[row["shape"]])
    c = draft_bytes(args, LayerSkip.of(attn=found["attn"], mlp=found["mlp"]))
    lengths = tuple(k for k in DRAFT_LENGTHS if k <= 25)
    return c, expected_speedup(float(row["alpha"]), c, 1.0, lengths)[0]


def verify_costs(engine: Engine, sizes=(8, 16, 32, 64)) -> dict:
    """GPU ms of one verification per tree size (a chain of size - 1 tokens)."""
    out = {}
    for size in sizes:
        cfg = SwiftConfig(max_tree_nodes=size, max_draft_len=min(25, size - 2), guard=False)
        acc = Accelerator(engine, cfg)
        acc.warm_up(SamplingConfig())
        at = cfg.context_window + 1
        out[size] = round(gpu_ms(lambda: acc.verifier.verify(cfg.max_draft_len, SamplingConfig(), size=size),
                                 before=lambda: acc._at(at)), 3)
    engine.length = 0
    return out


def run_level(engine, args, a, task, env) -> dict:
    """Search, then time vanilla and SWIFT with the found set, for one planted model (module docstring)."""
    cfg = SwiftConfig(skip_ratio=a.ratio, guard=False, max_score=a.max_score)
    acc = accelerator(engine, cfg)
    acc.warm_up(SamplingConfig())
    planner = DraftPlanner(acc.costs, acc.drafter.chunks())
    search = LayerSearch(args.n_layers, cfg, value=planner.value)
    starts = task.start_tokens()
    texts = [task.text(starts[(7 * i) % len(starts)], a.prompt_len + a.max_new_tokens)
             for i in range(a.search_prompts + a.prompts)]
    t0, search_runs = time.perf_counter(), []
    for text in texts[:a.search_prompts]:  # the search, carried across texts until it stops
        search_runs.append(swift_generate(engine, text[:a.prompt_len], a.max_new_tokens, cfg=cfg, search=search,
                                          planner=planner))
        if not search.active:
            break
    search_s = time.perf_counter() - t0
    found = search.best or LayerSkip()
    acc.settle(found)
    v_runs, s_runs, captures = [], [], 0
    for text in texts[a.search_prompts:]:
        v_runs.append(vanilla_generate(engine, text[:a.prompt_len], a.max_new_tokens))
        before = engine.graph_captures
        s_runs.append(swift_generate(engine, text[:a.prompt_len], a.max_new_tokens, cfg=cfg, skip=found,
                                     planner=planner))
        captures += engine.graph_captures - before
    v_tps = sum(r.num_new_tokens / r.wall_time_s for r in v_runs) / len(v_runs)
    s_tps = sum(r.num_new_tokens / r.wall_time_s for r in s_runs) / len(s_runs)
    steps = [x for r in s_runs for x in r.accept_lengths]
    alpha = (sum(steps) - len(steps)) / max(1, sum(r.num_drafted for r in s_runs))
    costs = acc.costs
    c = costs.draft_for(found)
    ceiling = expected_speedup(alpha, c, costs.verify_chain(), acc.drafter.chunks())
    probe = texts[-1][:a.prompt_len + 64]
    return dict(env, n_flips=len(task.flipped), expected_acceptance=task.expected_acceptance(),
                n_planted=len(task.planted), search_steps=search.state.n_iter, search_stop=search.state.stop_reason,
                search_s=search_s, search_share=search_s / (search_s + sum(r.wall_time_s for r in s_runs)),
                search_tokens=sum(r.num_new_tokens for r in search_runs),
                found_planted=found == task.planted, planted_overlap=overlap(found, task.planted),
                found_skip=found.to_dict(),
                found_matchness=matchness(engine, found, probe), planted_matchness=matchness(engine, task.planted,
                                                                                              probe),
                vanilla_tps=v_tps, swift_tps=s_tps, speedup=s_tps / v_tps,
                identical=sum(x.tokens == y.tokens for x, y in zip(s_runs, v_runs)) / len(v_runs),
                M=sum(steps) / len(steps), alpha=alpha, draft_cost=c, costs=costs.to_dict(),
                ceiling=ceiling[0], ceiling_draft_len=ceiling[1], share_of_ceiling=(s_tps / v_tps) / ceiling[0],
                captures_in_timed_runs=captures)


def write_report(rows: list[dict], out: Path) -> None:
    """bench_scale.md in `out` from result rows (of one run, or merged from several: each row names its command)."""
    if not rows:
        return
    st = rows[0].get("settings", DEFAULTS)
    cmds = list(dict.fromkeys(r["command"] for r in rows))
    lines = [f"Synthetic weights (`model/planted.py`: {st['ratio']:.0%} of the sub-layers of layers 1..L-2 planted as "
             f"near no-ops, the rest each needed for two tokens of the text); they measure the system's cost "
             f"structure, not a model's quality. GPU {rows[0]['gpu']}, torch {rows[0]['torch']}, bf16, batch 1, "
             f"greedy, "
             f"prompts of {st['prompt_len']} tokens, {st['max_new_tokens']} new tokens, SWIFT at r = {st['ratio']}: "
             f"the search over at most {st['search_prompts']} texts, then {st['prompts']} timed texts with the found "
             f"set. Commands: " + "; ".join(f"`{c}`" for c in cmds), "",
             "| shape | flips | acceptance (design / measured) | vanilla tok/s | SWIFT tok/s | speedup | M | draft "
             "cost c(r) | ceiling | share of ceiling | draft bytes | byte-bound ceiling | search: steps, share of "
             "time | found / planted | matchness found (planted) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        found = "the planted set" if r["found_planted"] else f"{r['planted_overlap']}/{r['n_planted']}"
        bound = byte_bound(r)
        bytes_cols = f"{bound[0]:.3f} | {bound[1]:.2f}x" if bound else "- | -"
        lines.append(f"| {r['shape']} | {r['n_flips']} | {r['expected_acceptance']:.3f} / {r['alpha']:.3f} | "
                     f"{r['vanilla_tps']:.1f} | {r['swift_tps']:.1f} | {r['speedup']:.2f}x | {r['M']:.2f} | "
                     f"{r['draft_cost']:.3f} | {r['ceiling']:.2f}x | {r['share_of_ceiling']:.0%} | {bytes_cols} | "
                     f"{r['search_steps']}, {r['search_share']:.1%} | {found} | "
                     f"{r['found_matchness']:.3f} ({r['planted_matchness']:.3f}) |")
    first = {}
    for r in rows:
        first.setdefault(r["shape"], r)
    lines += ["", "Verification cost (GPU ms) by tree size: " + "; ".join(
        f"{shape}: {r['verify_ms_by_tree_size']}" for shape, r in first.items()),
              "", "Draft bytes: the weight bytes a draft step with the found set reads, relative to a full step; "
              "byte-bound ceiling: the best expected speedup at the measured acceptance if a draft step cost exactly "
              "those bytes and a verification one step (`byte_bound`; projections and LM head, without norms, the "
              "embedding row and the cache)."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-2-7b,llama-2-13b", help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--ratio", type=float, default=DEFAULTS["ratio"],
                    help="share of sub-layers planted as near no-ops (and r)")
    ap.add_argument("--flips", default="0,1,3", help="redirected tokens per level (acceptance ~100%%, 97%%, 90%%)")
    ap.add_argument("--max-score", type=float, default=1.0,
                    help="the search stops once a set's matchness reaches this (paper: 0.95; 1.0 lets it look for "
                         "the planted set itself)")
    ap.add_argument("--search-prompts", type=int, default=DEFAULTS["search_prompts"],
                    help="most texts the search may use")
    ap.add_argument("--prompts", type=int, default=DEFAULTS["prompts"], help="timed texts per level")
    ap.add_argument("--prompt-len", type=int, default=DEFAULTS["prompt_len"], help="tokens per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"], help="tokens per answer")
    ap.add_argument("--seed", type=int, default=0, help="seed of the planted model")
    ap.add_argument("--tails", default="auto", choices=TAILS,
                    help="the work around the cycle's passes: Triton kernels, PyTorch ops, or auto = the kernels "
                         "where they pass their check (model/backends.py; the runners' flag of that name)")
    ap.add_argument("--out", default="outputs/bench_scale", help="output folder (bench_scale.jsonl / .md)")
    ap.add_argument("--report", nargs="+", metavar="JSONL",
                    help="no run: merge these bench_scale.jsonl files (in order) into --out's bench_scale.jsonl "
                         "and .md")
    a = ap.parse_args()
    out = Path(a.out)
    if a.report:
        rows = [json.loads(line) for f in a.report for line in Path(f).read_text().splitlines() if line.strip()]
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_scale.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_report(rows, out)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a GPU")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(settings={k: getattr(a, k) for k in DEFAULTS}, tails=a.tails, gpu=torch.cuda.get_device_name(),
               torch=torch.__version__, dtype="bfloat16", kernel_settings=kernel_settings(),
               python=platform.python_version(), command=" ".join(["scripts/bench_scale.py", *sys.argv[1:]]),
               weights="synthetic (planted redundancy, model/planted.py)")
    print(json.dumps(env), flush=True)
    rows = []
    with open(out / "bench_scale.jsonl", "w") as raw:
        for shape in a.shapes.split(","):
            args = ModelArgs.from_hf_config(SHAPES[shape])
            vcost = None
            for flips in (int(x) for x in a.flips.split(",")):
                model, task = build_planted(args, a.ratio, flips, seed=a.seed, device="cuda", dtype=torch.bfloat16)
                capacity = cache_capacity(a.prompt_len + 64, a.max_new_tokens)
                engine = Engine(model, capacity, Backends("triton", tails=a.tails))
                engine.warm_up_decode()
                vcost = vcost or verify_costs(engine)
                row = dict(run_level(engine, args, a, task, env), shape=shape, verify_ms_by_tree_size=vcost)
                rows.append(row)
                raw.write(json.dumps(row) + "\n")
                raw.flush()
                print(f"{shape}, {flips} flips (acceptance ~{row['expected_acceptance']:.3f}): vanilla "
                      f"{row['vanilla_tps']:.1f} tok/s, SWIFT {row['swift_tps']:.1f} = {row['speedup']:.2f}x, M "
                      f"{row['M']:.2f}, alpha {row['alpha']:.3f}, c {row['draft_cost']:.3f}, ceiling "
                      f"{row['ceiling']:.2f}x ({row['share_of_ceiling']:.0%}); search: {row['search_steps']} steps, "
                      f"{row['planted_overlap']}/{row['n_planted']} planted, matchness {row['found_matchness']:.3f} "
                      f"(planted {row['planted_matchness']:.3f})", flush=True)
                del engine, model
                torch.cuda.empty_cache()
    write_report(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
