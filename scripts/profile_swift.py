#!/usr/bin/env python3
"""Quick side-by-side profile of SWIFT vs our vanilla decoding on a few prompts of one task, with a time breakdown
(prefill, optimization, drafting, verification, plain steps) and the measured per-pass costs that bound the speedup.

Example: python3 scripts/profile_swift.py --task gsm8k --num-samples 8 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import load_task  # noqa: E402
from model.backends import Backends  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.generate import cache_capacity, sync, vanilla_generate  # noqa: E402
from model.llama import NO_SKIP  # noqa: E402
from model.loading import default_eos_ids, load_model, load_tokenizer  # noqa: E402
from model.swift.config import SwiftConfig  # noqa: E402
from model.swift.decoding import swift_generate  # noqa: E402
from model.swift.layer_search import LayerSearch  # noqa: E402


def pass_costs(engine: Engine, skip, reps=50) -> dict:
    """Milliseconds of one full decode step, one draft step with `skip`, and one verify pass per tree bucket."""
    def timeit(fn):
        fn()
        sync(engine.device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(engine.device)
        return (time.perf_counter() - t) / reps * 1e3
    tok = torch.zeros(1, dtype=torch.long, device=engine.device)
    out = {"full_step_ms": timeit(lambda: engine.decode(tok, 10)),
           "draft_step_ms": timeit(lambda: engine.decode(tok, 10, skip=skip))}
    for T in (8, 16, 32, 64):
        intra = torch.ones(T, T, dtype=torch.bool, device=engine.device).tril()
        toks = torch.zeros(T, dtype=torch.long, device=engine.device)
        out[f"verify{T}_ms"] = timeit(lambda: engine.block(T, toks, 10, 10, engine.arange[:T] + 10, intra,
                                                         head_name="argmax", head=lambda x, st: x.argmax(-1)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default="models/smollm2-135m/hf", help="model folder, .gguf or hub id")
    ap.add_argument("--task", default="gsm8k", help="task name (see data.TASKS)")
    ap.add_argument("--data-dir", default=None, help="folder with the task jsonl files")
    ap.add_argument("--num-samples", type=int, default=8, help="prompts to run")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per prompt")
    ap.add_argument("--skip-ratio", type=float, default=None, help="fixed skip ratio (default: automatic)")
    ap.add_argument("--no-guard", action="store_true", help="disable the speed guard")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--compile", action="store_true", help="torch.compile the sub-layer functions (GPU)")
    ap.add_argument("--out", default=None, help="write a json summary here")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tok = load_tokenizer(a.model_path)
    model, margs = load_model(a.model_path, device=dev, dtype=dtype)
    eos = default_eos_ids(margs, tok)
    insts = load_task(a.task, a.data_dir, num_samples=a.num_samples, seed=0).instances
    prompts = [tok(i.prompt).input_ids for i in insts]
    eng = Engine(model, cache_capacity(max(map(len, prompts)), a.max_new_tokens), Backends(kernels="torch", compile="on" if a.compile else "off"))
    cfg = SwiftConfig(skip_ratio=a.skip_ratio, guard=not a.no_guard)
    search = LayerSearch(margs.n_layers, cfg)
    vanilla_generate(eng, prompts[0], 16)
    swift_generate(eng, prompts[0], 16, cfg=cfg, search=LayerSearch(margs.n_layers, cfg))
    rows = []
    for i, p in enumerate(prompts):
        v = vanilla_generate(eng, p, a.max_new_tokens, eos_ids=eos)
        s = swift_generate(eng, p, a.max_new_tokens, eos_ids=eos, cfg=cfg, search=search)
        st = s.stats
        rows.append(dict(i=i, same=s.tokens == v.tokens, v_tps=v.num_new_tokens / v.wall_time_s,
                         s_tps=s.num_new_tokens / s.wall_time_s, n=s.num_new_tokens,
                         mean_accept=sum(s.accept_lengths) / len(s.accept_lengths), times=st["times"],
                         fallback=st["fallback_at"], search=st["search"]))
        r = rows[-1]
        print(f"[{i}] vanilla {r['v_tps']:.0f} tok/s  swift {r['s_tps']:.0f} tok/s  x{r['s_tps'] / r['v_tps']:.2f}  "
              f"accept {r['mean_accept']:.2f}  same={r['same']}  fallback={r['fallback']}  "
              f"ratio={st['search']['ratio']} score={st['search']['best_score']:.3f} active={st['search']['active']} "
              f"times={ {k: round(v, 3) for k, v in st['times'].items()} }", flush=True)
    costs = pass_costs(eng, search.best or NO_SKIP)
    print("pass costs (ms):", json.dumps({k: round(v, 3) for k, v in costs.items()}))
    mv = sum(r["v_tps"] for r in rows) / len(rows)
    ms = sum(r["s_tps"] for r in rows) / len(rows)
    summary = dict(model=a.model_path, task=a.task, n=len(rows), speedup=ms / mv, vanilla_tps=mv, swift_tps=ms,
                   identical=sum(r["same"] for r in rows) / len(rows), costs=costs, rows=rows,
                   device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    print(f"speedup {ms / mv:.3f}x  identical {summary['identical']:.2f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
