#!/usr/bin/env python3
"""The cycle profile: where a SWIFT draft/verify cycle's time goes on a real model, one row per cycle.

Cycles launched together and read with one sync (`--sync-cycles`, once the search has stopped) share their group's
host wall time and read time evenly; each keeps its own launch times and GPU times.

Runs vanilla decoding and SWIFT (search carried over the task's instances, as the runner does, after the same
warm-up) on `--num-samples` instances of each task, and records for every cycle (`model.swift.decoding.CycleProfile`):
its host wall time, the GPU time of the draft replay and of the verification replay (CUDA events), the host time
spent launching each and reading the result, the host syncs, and the CUDA-graph captures that happened inside it
(the target is 0 after warm-up). It also measures, outside the timed runs, what the verification graph spends
besides the model pass (tree building, acceptance, KV commit: the verify graph against a graph of the pass alone),
and reports the analytic ceiling that the measured step costs and the observed acceptance allow
(`model/swift/planner.py`) next to the speedup reached.

On the GPU it ends with a kernel table (`kernel_table`): per plain step and per draft step (on the shared graph with
the skipped kernels switched off, and on the final skip set's own graphs), the GPU time against the busy time of the
kernels they ran, by kernel.

Writes profile_swift.json (every cycle) and profile_swift.md (the summary table) to --out.

Example: python3 scripts/profile_swift.py --model-path models/smollm2-135m/hf --tasks gsm8k,humaneval --out outputs/profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import default_data_dir, load_task  # noqa: E402
from evaluation_llama.prompting import tokenize_all  # noqa: E402
from model.kernels import settings as kernel_settings  # noqa: E402
from model.backends import KERNELS, TAILS, Backends  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.generate import cache_capacity, vanilla_generate  # noqa: E402
from model.llama import Pass  # noqa: E402
from model.loading import default_eos_ids, load_model, load_tokenizer  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402
from model.swift.config import SwiftConfig  # noqa: E402
from model.swift.decoding import CycleProfile, accelerator, swift_generate  # noqa: E402
from model.swift.layer_search import LayerSearch  # noqa: E402
from model.swift.planner import DraftPlanner, expected_speedup  # noqa: E402


def tree_overhead_ms(engine: Engine, acc, reps: int = 10) -> dict:
    """GPU ms of the verification graph of the largest tree size and of a graph of its model pass alone (same tree
    size and positions)."""
    if not engine.cuda_graphs:
        return {}
    from model import graphs
    n = acc.verifier.sizes[-1]
    at = acc.cfg.context_window + 1
    acc._at(at)
    slot = engine.cursor + engine.arange[:n]
    tokens = engine.seq.index_select(0, slot.clamp_max(engine.max_seq_len - 1))
    g = graphs.capture(lambda: engine.logits(engine.forward(Pass(tokens, engine.ext(slot, slot, slot, slot)))))

    def ms(fn):
        return graphs.gpu_ms(fn, reps, before=lambda: acc._at(at))

    verify = ms(lambda: acc.verifier.verify(acc.verifier.chain_for(n), SamplingConfig(), size=n))
    model_pass = ms(g.replay)
    engine.length = 0
    return dict(verify_graph_ms=verify, model_pass_ms=model_pass, tree_accept_commit_ms=verify - model_pass)


def kernel_table(engine: Engine, acc, skip, steps: int = 8, reps: int = 3) -> list[dict]:
    """Where a step's GPU time goes: for a plain step, a draft step on the shared graph with `skip`'s kernels switched
    off, a draft step on `skip`'s own graphs (`Accelerator.settle`), and a verification of the smallest tree size
    (a chain of one token: the draft length on the small models), the GPU time per step of the replays (CUDA events)
    next to the kernels they ran (torch.profiler: count and busy time per step, by kernel name). The difference
    between the two draft steps is what the graph spends between and around its kernels."""
    from model import graphs
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    at = acc.cfg.context_window + 1
    dr = acc.drafter

    def put_back():
        acc._at(at)

    def measure(name, fn, steps=steps):
        ms = graphs.gpu_ms(fn, reps, before=put_back) / steps
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                put_back()
                fn()
            torch.cuda.synchronize()
        by_name: dict = {}
        for ev in prof.events():
            if getattr(ev, "device_type", None) == DeviceType.CUDA:
                n, us = by_name.get(ev.name, (0, 0.0))
                by_name[ev.name] = (n + 1, us + ev.time_range.elapsed_us())
        per = reps * steps
        kernels = sorted(((k, n / per, us / per) for k, (n, us) in by_name.items()), key=lambda r: -r[2])
        busy = sum(us for _, _, us in kernels)
        return dict(step=name, gpu_us_per_step=ms * 1e3, kernels_per_step=sum(n for _, n, _ in kernels),
                    kernel_busy_us_per_step=busy, between_kernels_us_per_step=ms * 1e3 - busy,
                    kernels=[dict(name=k[:80], per_step=round(n, 2), us_per_step=round(us, 2)) for k, n, us in kernels])

    rows = [measure("plain step", lambda: engine.decode(steps, SamplingConfig()))]
    if skip is not None and len(skip):
        dr.set_skip(skip)
        own = set(dr.settled)
        dr.settled.discard(skip)  # the shared graph with the skipped kernels off
        rows.append(measure(f"draft step, shared graph ({len(skip)} sub-layers off)", lambda: dr.draft(steps)))
        dr.settled = own
        acc.settle(skip)
        rows.append(measure(f"draft step, own graph ({len(skip)} sub-layers skipped)", lambda: dr.draft(steps)))
    n = acc.verifier.sizes[0]
    rows.append(measure(f"verification, {n}-node tree, chain of 1",
                        lambda: acc.verifier.verify(1, SamplingConfig(), size=n), steps=1))
    engine.length = 0
    return rows


def kernel_lines(rows: list[dict]) -> list[str]:
    out = ["| step | GPU µs / step | kernels / step | kernel busy µs | between kernels µs |",
           "|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['step']} | {r['gpu_us_per_step']:.1f} | {r['kernels_per_step']:.1f} | "
                   f"{r['kernel_busy_us_per_step']:.1f} | {r['between_kernels_us_per_step']:.1f} |")
    for r in rows:
        out += ["", f"{r['step']}: kernels by busy time", "", "| kernel | per step | µs per step |", "|---|---:|---:|"]
        out += [f"| `{k['name']}` | {k['per_step']:.2f} | {k['us_per_step']:.2f} |" for k in r["kernels"][:25]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default="models/smollm2-135m/hf", help="model folder, .gguf or hub id")
    ap.add_argument("--tasks", default="gsm8k,humaneval", help="comma-separated tasks")
    ap.add_argument("--data-dir", default=None, help="task data folder (default: as the runners find it)")
    ap.add_argument("--num-samples", type=int, default=8, help="instances per task")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="new tokens per answer")
    ap.add_argument("--kernels", default="auto", choices=KERNELS, help="engine kernels (the passes)")
    ap.add_argument("--tails", default="auto", choices=TAILS,
                    help="the work around the cycle's passes: Triton kernels, PyTorch ops, or auto (model/backends.py)")
    ap.add_argument("--sync-cycles", type=int, default=SwiftConfig().sync_cycles,
                    help="draft/verify cycles launched before one read once the search has stopped "
                         "(SwiftConfig.sync_cycles), in [1, 32] (default %(default)s)")
    ap.add_argument("--out", default="outputs/profile", help="output folder")
    a = ap.parse_args()
    try:
        backends = Backends(a.kernels, tails=a.tails)
        cfg = SwiftConfig(sync_cycles=a.sync_cycles)
    except UserError as e:
        ap.error(str(e))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tok = load_tokenizer(a.model_path)
    model, margs = load_model(a.model_path, device=dev, dtype=dtype)
    eos = default_eos_ids(margs, tok)
    data_dir = a.data_dir or default_data_dir()
    tasks = {t: load_task(t, data_dir, num_samples=a.num_samples, seed=0).instances for t in a.tasks.split(",")}
    prompts = {t: list(tokenize_all(list(enumerate(insts)), tok, margs, max_new_tokens=a.max_new_tokens,
                                    task=t).values()) for t, insts in tasks.items()}
    longest = max(len(p) for ps in prompts.values() for p in ps)
    engine = Engine(model, cache_capacity(longest, a.max_new_tokens), backends)
    acc = accelerator(engine, cfg)
    first = next(iter(prompts.values()))[0]
    vanilla_generate(engine, first, 32, eos_ids=eos)
    swift_generate(engine, first, 32, eos_ids=eos, cfg=cfg, search=LayerSearch(margs.n_layers, cfg))
    engine.warm_up_decode()
    acc.warm_up(SamplingConfig())
    engine.warm_up_prefill([ids for task_prompts in prompts.values() for ids in task_prompts])
    static = tree_overhead_ms(engine, acc)
    env = dict(gpu=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch=torch.__version__,
               model=a.model_path, backends=engine.backends.to_dict(), kernel_settings=kernel_settings(),
               tracked_draft_graph=acc.drafter.tracked,
               command=" ".join(["scripts/profile_swift.py", *sys.argv[1:]]), costs=acc.costs.to_dict(), **static)
    print(json.dumps(env), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary, every = [], []
    for task, ps in prompts.items():
        search = LayerSearch(margs.n_layers, cfg)
        planner = DraftPlanner(acc.costs, acc.drafter.chunks())
        prof = CycleProfile(dev.type == "cuda")
        v, s = [], []
        for i, p in enumerate(ps):
            torch.manual_seed(i)
            v.append(vanilla_generate(engine, p, a.max_new_tokens, eos_ids=eos))
            if not search.active and search.best is not None:
                acc.settle(search.best)  # as the runner does before an answer: the final set's own graphs
            torch.manual_seed(i)
            s.append(swift_generate(engine, p, a.max_new_tokens, eos_ids=eos, cfg=cfg, search=search,
                                    planner=planner, profile=prof))
        cyc = [c for c in prof.cycles if not c["searching"]] or prof.cycles
        gpu = [c.get("gpu_draft_ms", 0.0) + c.get("gpu_verify_ms", 0.0) for c in cyc]
        wall = [c["wall_ms"] for c in cyc]
        v_tps = statistics.mean(r.num_new_tokens / r.wall_time_s for r in v)
        s_tps = statistics.mean(r.num_new_tokens / r.wall_time_s for r in s)
        skip = search.best
        c_r = acc.costs.draft_for(skip) if skip else None
        ceiling = expected_speedup(planner.rates(), c_r, acc.costs.verify_chain(), acc.drafter.chunks())[0] \
            if skip else None
        steps = [x for r in s for x in r.accept_lengths]
        times = {k: sum(r.stats["times"][k] for r in s) for k in s[0].stats["times"]}
        total = sum(r.wall_time_s for r in s)
        row = dict(task=task, answers=len(s), cycles=len(prof.cycles), cycles_after_search=len(cyc),
                   wall_ms=statistics.mean(wall) if wall else None, gpu_ms=statistics.mean(gpu) if gpu else None,
                   wall_over_gpu=(sum(wall) / sum(gpu)) if gpu and sum(gpu) else None,
                   gpu_draft_ms=statistics.mean(c.get("gpu_draft_ms", 0) for c in cyc) if cyc else None,
                   gpu_verify_ms=statistics.mean(c.get("gpu_verify_ms", 0) for c in cyc) if cyc else None,
                   host_launch_ms=statistics.mean(c["draft_launch_ms"] + c["verify_launch_ms"] for c in cyc)
                   if cyc else None, syncs_per_cycle=statistics.mean(c["syncs"] for c in prof.cycles)
                   if prof.cycles else None, cycles_per_read=len(cyc) / sum(1 / c["group"] for c in cyc) if cyc else None,
                   captures_in_timed_runs=sum(c["captures"] for c in prof.cycles),
                   draft_len=statistics.mean(c["C"] for c in cyc) if cyc else None,
                   M=sum(steps) / len(steps), c_r=c_r, v=acc.costs.to_dict()["verify"], ceiling=ceiling,
                   speedup=s_tps / v_tps, vanilla_tps=v_tps, swift_tps=s_tps,
                   share_of_ceiling=(s_tps / v_tps) / ceiling if ceiling else None,
                   identical=sum(x.tokens == y.tokens for x, y in zip(s, v)) / len(s),
                   time_shares={k: round(t / total, 4) for k, t in times.items()}, search=search.summary())
        summary.append(row)
        every += [dict(c, task=task) for c in prof.cycles]
        print(json.dumps({k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items()}), flush=True)
    kernels = []
    if engine.cuda_graphs:
        try:
            kernels = kernel_table(engine, acc, search.best)
        except Exception as exc:  # noqa: BLE001 - the cycle table above stands without it
            print(f"kernel table failed: {type(exc).__name__}: {exc}", flush=True)
    (out / "profile_swift.json").write_text(json.dumps(dict(env=env, summary=summary, cycles=every, kernels=kernels),
                                                       indent=1))
    f = lambda x, spec=".3f": "" if x is None else format(x, spec)  # noqa: E731
    lines = [f"Model `{a.model_path}` on {env['gpu']}, torch {env['torch']}, kernels {env['backends']['kernels']}, "
             f"{a.num_samples} instances per task, {a.max_new_tokens} new tokens; draft graph with switchable "
             f"kernels: {env['tracked_draft_graph']}; measured costs (relative to a full step): "
             f"{env['costs']}; verification graph {f(static.get('verify_graph_ms'))} ms of which the model pass "
             f"{f(static.get('model_pass_ms'))} ms and tree + acceptance + commit "
             f"{f(static.get('tree_accept_commit_ms'))} ms. Command: `{env['command']}`", "",
             "| task | cycles | wall ms / cycle | GPU ms / cycle | wall / GPU | draft GPU ms | verify GPU ms | host "
             "launch ms | syncs / cycle | cycles per read | captures in timed runs | draft length | M | c(r) | "
             "v (tree size: cost) | ceiling | speedup | "
             "share of ceiling | identical |", "|---" * 19 + "|"]
    for r in summary:
        lines.append(f"| {r['task']} | {r['cycles']} | {f(r['wall_ms'])} | {f(r['gpu_ms'])} | "
                     f"{f(r['wall_over_gpu'], '.2f')} | {f(r['gpu_draft_ms'])} | {f(r['gpu_verify_ms'])} | "
                     f"{f(r['host_launch_ms'])} | {f(r['syncs_per_cycle'], '.2f')} | "
                     f"{f(r['cycles_per_read'], '.2f')} | "
                     f"{r['captures_in_timed_runs']} | "
                     f"{f(r['draft_len'], '.1f')} | {r['M']:.2f} | {f(r['c_r'])} | "
                     f"{', '.join(f'{n}: {c:.2f}' for n, c in r['v'].items())} | "
                     f"{f(r['ceiling'], '.2f')} | {r['speedup']:.2f}x | {f(r['share_of_ceiling'], '.0%')} | "
                     f"{r['identical']:.0%} |")
    if kernels:
        lines += ["", f"Kernels of one step (skip set of the last task; `kernel_table`, {len(kernels)} kinds of step):",
                  ""] + kernel_lines(kernels)
    (out / "profile_swift.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
