#!/usr/bin/env python3
"""Plain decoding speed of our engine, side by side in one run (GPU, bf16, batch 1, greedy):

1. real checkpoints (`--model-path`, several allowed): tokens/s with each `--kernels` choice (the fused
   batch-invariant Triton kernels; the PyTorch ops with torch.compile), and `transformers` `generate` unless
   `--skip-hf`;
2. random-weight models of the LLaMA-2-7B / 13B shapes (`--shapes`): tokens/s against the memory roofline (weight
   bytes / the device-to-device copy bandwidth measured in the same run).

Writes bench_engine.jsonl and bench_engine.md to --out.

Example: python3 scripts/bench_engine.py --model-path models/smollm2-135m/hf --shapes llama-2-7b --out outputs/bench
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
from model.backends import Backends  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, LLAMA2_13B_SHAPE, ModelArgs  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.generate import cache_capacity, vanilla_generate  # noqa: E402
from model.loading import build_model, load_model, load_tokenizer  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
SHAPES = {"llama-2-7b": LLAMA2_7B_SHAPE, "llama-2-13b": LLAMA2_13B_SHAPE}
KERNELS = {"triton": Backends("triton"), "torch+compile": Backends("torch", "on")}


def copy_bandwidth(device, nbytes=2 << 30, reps=20) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * reps / (start.elapsed_time(end) / 1e3)


def time_ours(model, prompt_ids, n_new, reps, backends) -> tuple[float, list, Engine, float]:
    """(median tokens/s, tokens, engine, set-up seconds): warm-up and graph capture first, then `reps` timed runs."""
    t0 = time.perf_counter()
    engine = Engine(model, cache_capacity(len(prompt_ids), n_new), backends)
    vanilla_generate(engine, prompt_ids, 32)
    engine.warm_up_decode()
    setup = time.perf_counter() - t0
    runs = [vanilla_generate(engine, prompt_ids, n_new) for _ in range(reps)]
    tps = sorted(r.num_new_tokens / r.wall_time_s for r in runs)[len(runs) // 2]
    return tps, runs[0].tokens, engine, setup


def time_hf(path, prompt_ids, n_new, device, dtype):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ids = torch.tensor([prompt_ids], device=device)
    kw = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)
    hf.generate(ids, **{**kw, "max_new_tokens": 16, "min_new_tokens": 16})
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = hf.generate(ids, **kw)
    torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", nargs="*", default=["models/smollm2-135m/hf"], help="real checkpoints to time")
    ap.add_argument("--shapes", default="llama-2-7b", help=f"random-weight shapes, comma-separated, from "
                                                           f"{', '.join(SHAPES)} ('' for none)")
    ap.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, from {', '.join(KERNELS)}")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="tokens per timed generation")
    ap.add_argument("--reps", type=int, default=3, help="timed generations per row (the median is reported)")
    ap.add_argument("--skip-hf", action="store_true", help="do not time transformers' generate")
    ap.add_argument("--out", default="outputs/bench_engine", help="output folder")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    dev, dtype = torch.device("cuda"), torch.bfloat16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
               kernel_settings=kernel_settings(),
               python=platform.python_version(), command=" ".join(["scripts/bench_engine.py", *sys.argv[1:]]))
    print(json.dumps(env), flush=True)
    bw = copy_bandwidth(dev)
    print(f"device-to-device copy bandwidth: {bw / 1e12:.2f} TB/s", flush=True)
    kernels = [k for k in args.kernels.split(",") if k]
    rows = []
    raw = open(out / "bench_engine.jsonl", "w")

    def emit(row):
        rows.append(row)
        raw.write(json.dumps({k: v for k, v in row.items() if k != "tokens"}) + "\n")
        raw.flush()

    for path in args.model_path:
        tok = load_tokenizer(path)
        ids = list(tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_dict=True)["input_ids"])
        model, _ = load_model(path, device=dev, dtype=dtype)
        wbytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
        first = None
        for name in kernels:
            tps, tokens, eng, setup = time_ours(model, ids, args.max_new_tokens, args.reps, KERNELS[name])
            first = first or tokens
            same = sum(a == b for a, b in zip(tokens, first)) / max(1, len(first))
            emit(dict(env, model=path, impl=f"ours, {name}", tokens_per_s=tps, weight_bytes=wbytes,
                      roofline_tokens_per_s=bw / wbytes, setup_s=setup, backends=eng.backends.to_dict(),
                      same_token_share_vs_first=same, new_tokens=len(tokens)))
            print(f"{path} [{name}]: {tps:.1f} tok/s (set-up {setup:.1f} s)", flush=True)
            del eng
        if not args.skip_hf:
            hf = time_hf(path, ids, args.max_new_tokens, dev, dtype)
            emit(dict(env, model=path, impl="transformers generate", tokens_per_s=hf))
            print(f"{path} [transformers generate]: {hf:.1f} tok/s", flush=True)
        del model
        torch.cuda.empty_cache()
    for shape in [s for s in args.shapes.split(",") if s]:
        margs = ModelArgs.from_hf_config(SHAPES[shape])
        torch.manual_seed(0)
        model = build_model(margs, None, device=dev, dtype=dtype)
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        ids = [i % margs.vocab_size for i in range(1000, 1040)]
        for name in kernels:
            tps, tokens, eng, setup = time_ours(model, ids, args.max_new_tokens, args.reps, KERNELS[name])
            emit(dict(env, model=f"{shape} shape (random weights)", impl=f"ours, {name}", tokens_per_s=tps,
                      weight_bytes=wbytes, copy_bw=bw, roofline_tokens_per_s=bw / wbytes,
                      roofline_share=tps * wbytes / bw, setup_s=setup, backends=eng.backends.to_dict()))
            print(f"{shape} [{name}]: {tps:.1f} tok/s = {tps * wbytes / bw:.1%} of the {bw / wbytes:.1f} tok/s "
                  f"roofline", flush=True)
            del eng
        del model
        torch.cuda.empty_cache()
    raw.close()
    lines = [f"GPU: {env['gpu']}; torch {env['torch']}; bfloat16; batch 1; greedy; {args.max_new_tokens} new tokens; "
             f"median of {args.reps}; device-to-device copy {bw / 1e12:.2f} TB/s; command: `{env['command']}`", "",
             "| model | implementation | tokens/s | share of the memory roofline | same tokens as the first row |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        share = f"{r['tokens_per_s'] / r['roofline_tokens_per_s']:.1%}" if "roofline_tokens_per_s" in r else ""
        same = f"{r['same_token_share_vs_first']:.0%}" if "same_token_share_vs_first" in r else ""
        lines.append(f"| {r['model']} | {r['impl']} | {r['tokens_per_s']:.1f} | {share} | {same} |")
    (out / "bench_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
