#!/usr/bin/env python3
"""SWIFT at the paper's scale, on synthetic weights: LLaMA-2-7B- and 13B-shaped models with planted layer redundancy.

No 7B-70B checkpoint is needed to measure how SWIFT's costs scale: a random-weight model of the real shape reads the
same bytes per step. A share `--ratio` of the sub-layers of layers 1..L-2 (the paper's r = 0.45) is made a near
no-op by scaling its output projection by eps; the LM head is scaled so that the logits are confident (drafting is
not cut short by the confidence of a near-uniform distribution). eps is chosen per shape from a grid so that the
planted set's matchness on the model's own greedy text lands near each `--levels` target (acceptance about 100%, 95%,
90%). For each shape x level, in one run: our vanilla decoding and SWIFT with its on-the-fly search (carried over
`--prompts` random prompts), reporting the speedup, the draft cost relative to a full step, verification cost
against tree size, the search's share of SWIFT's time, whether the search found the planted set, and the analytic
ceiling from the measured costs and acceptance (`model/swift/planner.py`).

These runs measure the system's cost structure, not a model's quality: the weights are synthetic.

Example: python3 scripts/bench_scale.py --shapes llama-2-7b,llama-2-13b --out outputs/bench_scale
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.backends import Backends  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, LLAMA2_13B_SHAPE, ModelArgs  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.generate import cache_capacity, vanilla_generate  # noqa: E402
from model.graphs import gpu_ms  # noqa: E402
from model.llama import LayerSkip  # noqa: E402
from model.loading import build_model  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402
from model.swift.config import SwiftConfig  # noqa: E402
from model.swift.decoding import Accelerator, accelerator, swift_generate  # noqa: E402
from model.swift.layer_search import LayerSearch, score_candidates  # noqa: E402
from model.swift.planner import DraftPlanner, expected_speedup  # noqa: E402

SHAPES = {"llama-2-7b": LLAMA2_7B_SHAPE, "llama-2-13b": LLAMA2_13B_SHAPE}
EPS_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8)


def planted_set(n_layers: int, ratio: float, seed: int) -> LayerSkip:
    """round(ratio * 2(L-2)) sub-layers of layers 1..L-2, drawn at random."""
    g = torch.Generator().manual_seed(seed)
    dims = 2 * (n_layers - 2)
    pick = torch.randperm(dims, generator=g)[:round(ratio * dims)].tolist()
    h = n_layers - 2
    return LayerSkip.of(attn=[1 + i for i in pick if i < h], mlp=[1 + i - h for i in pick if i >= h])


class Planted:
    """A random-weight model whose planted sub-layers' output projections are scaled by eps (kept originals)."""

    def __init__(self, args: ModelArgs, skip: LayerSkip, head_scale: float, seed: int = 0):
        torch.manual_seed(seed)
        self.model = build_model(args, None, device="cuda", dtype=torch.bfloat16)
        self.model.output.weight.mul_(head_scale)
        self.skip = skip
        self.orig = {("attn", i): self.model.layers[i].attention.wo.weight.clone() for i in skip.attn}
        self.orig.update({("mlp", i): self.model.layers[i].feed_forward.w2.weight.clone() for i in skip.mlp})

    def set_eps(self, eps: float) -> None:
        for (kind, i), w in self.orig.items():
            layer = self.model.layers[i]
            (layer.attention.wo if kind == "attn" else layer.feed_forward.w2).weight.copy_(w * eps)


def matchness(engine: Engine, skip: LayerSkip, prompt: list[int], n: int = 64, gamma: int = 32) -> float:
    """The planted set's matchness on the model's own greedy continuation of `prompt`."""
    text = prompt + vanilla_generate(engine, prompt, n).tokens
    engine.start(text[:-1])
    return score_candidates(engine, [skip], gamma)[0]


def verify_costs(engine: Engine, sizes=(8, 16, 32, 64)) -> dict:
    """ms of one verification pass per tree size (a chain of size - 1 tokens)."""
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama-2-7b,llama-2-13b", help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--ratio", type=float, default=0.45, help="share of sub-layers planted as near no-ops")
    ap.add_argument("--levels", default="1.0,0.95,0.9", help="target matchness (acceptance) levels")
    ap.add_argument("--head-scale", type=float, default=16.0, help="LM-head scale (confident logits)")
    ap.add_argument("--prompts", type=int, default=4, help="random prompts per level (the search is carried)")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer")
    ap.add_argument("--out", default="outputs/bench_scale", help="output folder (bench_scale.jsonl / .md)")
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
               python=platform.python_version(), command=" ".join(["scripts/bench_scale.py", *sys.argv[1:]]),
               weights="synthetic (random, planted redundancy)")
    print(json.dumps(env), flush=True)
    raw = open(out / "bench_scale.jsonl", "w")
    rows = []
    for shape in a.shapes.split(","):
        args = ModelArgs.from_hf_config(SHAPES[shape])
        skip = planted_set(args.n_layers, a.ratio, seed=1)
        planted = Planted(args, skip, a.head_scale)
        g = torch.Generator().manual_seed(2)
        prompts = [torch.randint(0, args.vocab_size, (a.prompt_len,), generator=g).tolist() for _ in range(a.prompts)]
        engine = Engine(planted.model, cache_capacity(a.prompt_len + 64, a.max_new_tokens), Backends("triton"))
        engine.warm_up_decode()
        grid = []
        for eps in EPS_GRID:  # matchness of the planted set against eps
            planted.set_eps(eps)
            grid.append((eps, matchness(engine, skip, prompts[0])))
            print(f"{shape} eps {eps}: planted-set matchness {grid[-1][1]:.3f}", flush=True)
        vcost = verify_costs(engine)
        for level in (float(x) for x in a.levels.split(",")):
            eps, m = min(grid, key=lambda em: (abs(em[1] - level), em[0]))
            planted.set_eps(eps)
            cfg = SwiftConfig(skip_ratio=a.ratio, guard=False)
            acc = accelerator(engine, cfg)
            acc.warm_up(SamplingConfig())
            search = LayerSearch(args.n_layers, cfg)
            planner = DraftPlanner(acc.costs, acc.drafter.chunks())
            search.value = planner.value
            v_runs, s_runs = [], []
            for p in prompts:
                v_runs.append(vanilla_generate(engine, p, a.max_new_tokens))
                captures = engine.graph_captures
                s_runs.append(swift_generate(engine, p, a.max_new_tokens, cfg=cfg, search=search, planner=planner))
                s_runs[-1].stats["captures"] = engine.graph_captures - captures
            v_tps = sum(r.num_new_tokens / r.wall_time_s for r in v_runs) / len(v_runs)
            s_tps = sum(r.num_new_tokens / r.wall_time_s for r in s_runs) / len(s_runs)
            steps = [x for r in s_runs for x in r.accept_lengths]
            drafted = sum(r.num_drafted for r in s_runs)
            alpha = (sum(steps) - len(steps)) / max(1, drafted)
            wall = sum(r.wall_time_s for r in s_runs)
            found = search.best or LayerSkip()
            overlap = len((found.attn & skip.attn) | (found.mlp & skip.mlp)) if found else 0
            costs = acc.costs
            c = costs.draft(len(skip.attn), len(skip.mlp))
            ceiling = expected_speedup(planner.rates(), c, costs.verify_chain(), acc.drafter.chunks())[0]
            ceiling_m = expected_speedup(float(m), c, costs.verify_chain(), acc.drafter.chunks())[0]
            row = dict(env, shape=shape, level=level, eps=eps, planted_matchness=m, n_planted=len(skip),
                       vanilla_tps=v_tps, swift_tps=s_tps, speedup=s_tps / v_tps,
                       identical=sum(x.tokens == y.tokens for x, y in zip(s_runs, v_runs)) / len(v_runs),
                       mean_accept=sum(steps) / len(steps), alpha=alpha, draft_cost=c, costs=costs.to_dict(),
                       verify_ms_by_tree_size=vcost, optimize_share=sum(r.stats["times"]["optimize"]
                                                                         for r in s_runs) / wall,
                       search=search.summary(), found_planted=found == skip, planted_overlap=overlap / len(skip),
                       ceiling_observed_rates=ceiling, ceiling_planted_matchness=ceiling_m,
                       share_of_ceiling=(s_tps / v_tps) / ceiling if ceiling else None,
                       captures_in_timed_runs=sum(r.stats["captures"] for r in s_runs))
            rows.append(row)
            raw.write(json.dumps(row) + "\n")
            raw.flush()
            print(f"{shape} level {level} (eps {eps}, matchness {m:.3f}): vanilla {v_tps:.1f} tok/s, SWIFT "
                  f"{s_tps:.1f} tok/s = {s_tps / v_tps:.2f}x; M {row['mean_accept']:.2f}, alpha {alpha:.3f}; draft "
                  f"cost {c:.3f}; ceiling {ceiling:.2f}x; search found planted: {row['found_planted']} "
                  f"({overlap}/{len(skip)})", flush=True)
        del engine, planted
        torch.cuda.empty_cache()
    raw.close()
    lines = [f"Synthetic weights (random, planted redundancy: {a.ratio:.0%} of the sub-layers of layers 1..L-2 scaled "
             f"by eps); they measure the system's cost structure, not a model's quality. GPU {env['gpu']}, torch "
             f"{env['torch']}, bf16, batch 1, greedy, {a.prompts} random prompts of {a.prompt_len} tokens, "
             f"{a.max_new_tokens} new tokens, SWIFT at r = {a.ratio} with its on-the-fly search carried over the "
             f"prompts. Command: `{env['command']}`", "",
             "| shape | target | eps | planted matchness | vanilla tok/s | SWIFT tok/s | speedup | M | alpha | draft "
             "cost c(r) | ceiling | share of ceiling | search found the planted set | optimize share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['level']:.2f} | {r['eps']} | {r['planted_matchness']:.3f} | "
                     f"{r['vanilla_tps']:.1f} | {r['swift_tps']:.1f} | {r['speedup']:.2f}x | {r['mean_accept']:.2f} | "
                     f"{r['alpha']:.3f} | {r['draft_cost']:.3f} | {r['ceiling_observed_rates']:.2f}x | "
                     f"{r['share_of_ceiling']:.0%} | {'yes' if r['found_planted'] else 'no'} "
                     f"({r['planted_overlap']:.0%} overlap) | {r['optimize_share']:.1%} |")
    if rows:
        lines += ["", "Verification cost (ms) by tree size: " + "; ".join(
            f"{r['shape']}: {r['verify_ms_by_tree_size']}" for r in rows[::len(a.levels.split(','))])]
    (out / "bench_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
