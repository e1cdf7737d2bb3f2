#!/usr/bin/env python3
"""Engine benchmark (batch 1, greedy decode, bf16), side by side in one run:

1. a real checkpoint (default SmolLM2-135M): our vanilla decoding vs `transformers` `generate`, same prompt and length;
2. a random-weight model with a given HF config shape (default LLaMA-2-7B): our tokens/s vs the memory roofline
   (weight bytes / device-to-device copy bandwidth measured in the same run).

Writes `<out>/bench_engine.jsonl` (raw rows) and `<out>/bench_engine.md` (summary table).
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

from model import attention, linear  # noqa: E402
from model.config import LLAMA2_7B_SHAPE, ModelArgs  # noqa: E402
from model.backends import Backends  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.generate import cache_capacity, sampling_head, vanilla_generate  # noqa: E402
from model.loading import build_model, load_model, load_tokenizer  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


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


def time_ours(engine, prompt_ids, n_new, reps):
    vanilla_generate(engine, prompt_ids, 32)  # warm-up + graph capture
    engine.warm_up_decode(*sampling_head(SamplingConfig()))  # graphs of every KV-length bucket, before timing
    best = []
    for _ in range(reps):
        r = vanilla_generate(engine, prompt_ids, n_new)
        best.append(r.num_new_tokens / r.wall_time_s)
    return sorted(best)[len(best) // 2], r


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
    dt = time.perf_counter() - t
    n = out.shape[1] - ids.shape[1]
    return n / dt, out[0, ids.shape[1]:].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default="models/smollm2-135m/hf", help="real checkpoint for part 1")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="tokens decoded per timed generation")
    ap.add_argument("--reps", type=int, default=3, help="timed generations per variant (median reported)")
    ap.add_argument("--skip-hf", action="store_true", help="do not time transformers generate")
    ap.add_argument("--skip-7b", action="store_true", help="do not run the random-weight 7B-shaped model")
    ap.add_argument("--attention", nargs="+", default=["sdpa", "triton"], choices=["sdpa", "triton", "auto"],
                    help="attention implementations to time side by side (model/attention.py)")
    ap.add_argument("--blas", nargs="+", default=["default"], choices=["default", "cublas", "cublaslt"],
                    help="BLAS libraries for the 7B-shaped model's matrix-vector products, timed side by side "
                         "(torch.backends.cuda.preferred_blas_library; 'default' leaves torch's choice)")
    ap.add_argument("--linear", nargs="+", default=["auto"], choices=list(linear.BACKENDS),
                    help="matrix-vector product implementations, timed side by side "
                         "(model/linear.py: torch = F.linear/cuBLAS, triton = the GEMV kernel, auto = the faster per "
                         "weight shape)")
    ap.add_argument("--skip-real", action="store_true", help="do not run part 1 (the real checkpoint)")
    ap.add_argument("--out", default="outputs/bench_engine", help="folder for the jsonl rows and markdown table")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_engine.py needs a CUDA GPU")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, dtype="bfloat16",
               python=platform.python_version(), command=" ".join(sys.argv))
    print(json.dumps(env))
    rows = []
    bw = copy_bandwidth(dev)
    print(f"device-to-device copy bandwidth: {bw / 1e12:.2f} TB/s")

    ids = list(range(1000, 1040))  # the 7B part's prompt when part 1 is skipped
    if not args.skip_real:
        tok = load_tokenizer(args.model_path)
        ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        ids = list(ids)
        model, margs = load_model(args.model_path, device=dev, dtype=dtype)
        for compiled in (False, True):  # compilation is process-wide: the eager-sub-layer variants run first
            for backend, lin in [(b, li) for b in args.attention for li in args.linear]:
                attention.set_backend(backend)
                linear.set_backend(lin)
                eng = Engine(model, cache_capacity(len(ids), args.max_new_tokens), Backends(kernels="torch" if lin == "torch" else "triton", compile="on" if compiled else "off"))
                t0 = time.perf_counter()
                tps, res = time_ours(eng, ids, args.max_new_tokens, args.reps)
                impl = f"ours-vanilla[{backend}, linear={lin}]" + ("+compile" if compiled else "")
                rows.append(dict(env, part="real", model=args.model_path, impl=impl, tokens_per_s=tps,
                                 new_tokens=res.num_new_tokens, prompt_tokens=len(ids), tokens=res.tokens,
                                 setup_and_timing_s=time.perf_counter() - t0, attention=attention.kernel_status(),
                                 linear=lin, linear_choices=linear.choices()))
                print(f"{impl} {args.model_path}: {tps:.1f} tok/s", flush=True)
                del eng
        for r in rows:  # bf16 kernels may round differently: share of positions equal to the first variant's tokens
            r["same_token_share_vs_first"] = sum(a == b for a, b in zip(r["tokens"], rows[0]["tokens"])) / max(
                1, len(rows[0]["tokens"]))
        print("same-token share vs the first variant:", [round(r["same_token_share_vs_first"], 3) for r in rows])
        tps = max(r["tokens_per_s"] for r in rows)
        if not args.skip_hf:
            hf_tps, hf_tokens = time_hf(args.model_path, ids, args.max_new_tokens, dev, dtype)
            same = sum(a == b for a, b in zip(hf_tokens, res.tokens)) / max(1, len(res.tokens))
            rows.append(dict(env, part="real", model=args.model_path, impl="hf-generate", tokens_per_s=hf_tps,
                             new_tokens=len(hf_tokens), prompt_tokens=len(ids), same_token_share_vs_ours=same))
            print(f"transformers generate: {hf_tps:.1f} tok/s; ours / generate = {tps / hf_tps:.1f}x; "
                  f"same tokens {same:.3f}")
        del model
        torch.cuda.empty_cache()
    if not args.skip_7b:
        a7 = ModelArgs.from_hf_config(LLAMA2_7B_SHAPE)
        torch.manual_seed(0)
        m7 = build_model(a7, None, device=dev, dtype=dtype)
        wbytes = sum(p.numel() * p.element_size() for p in m7.parameters())
        ids7 = [i % a7.vocab_size for i in ids]
        roof = bw / wbytes
        default_blas = torch.backends.cuda.preferred_blas_library()
        for blas in args.blas:
            torch.backends.cuda.preferred_blas_library(default_blas if blas == "default" else blas)
            for lin in args.linear:
                linear.set_backend(lin)
                for backend in args.attention:
                    attention.set_backend(backend)
                    e7 = Engine(m7, cache_capacity(len(ids), args.max_new_tokens), Backends(kernels="torch" if lin == "torch" else "triton", compile="on"))
                    tps7, r7 = time_ours(e7, ids7, args.max_new_tokens, args.reps)
                    impl = f"ours-vanilla[{backend}, linear={lin}]+compile" + (
                        "" if blas == "default" else f" blas={blas}")
                    rows.append(dict(env, part="7b-random", model="llama-2-7b-shape (random weights)", impl=impl,
                                     tokens_per_s=tps7, weight_bytes=wbytes, copy_bw=bw,
                                     roofline_tokens_per_s=roof, roofline_share=tps7 / roof,
                                     new_tokens=r7.num_new_tokens, blas=blas, linear=lin,
                                     linear_choices=linear.choices(), attention=attention.kernel_status()))
                    print(f"7B-shaped [{backend}, linear {lin}, blas {blas}]: {tps7:.1f} tok/s, roofline "
                          f"{roof:.1f} tok/s ({tps7 / roof:.1%})", flush=True)
                    del e7
        torch.backends.cuda.preferred_blas_library(default_blas)
        print("GEMV decisions (auto):", json.dumps(linear.choices()))
    with open(out / "bench_engine.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k != "tokens"}) + "\n")
    lines = [f"GPU: {env['gpu']}; torch {env['torch']}; dtype bfloat16; batch 1; greedy; "
             f"{args.max_new_tokens} new tokens; command: `{env['command']}`", "",
             "| model | implementation | tokens/s | note |", "|---|---|---:|---|"]
    for r in rows:
        note = ""
        if "roofline_share" in r:
            note = f"roofline {r['roofline_tokens_per_s']:.1f} tok/s ({r['copy_bw'] / 1e12:.2f} TB/s copy), " \
                   f"{r['roofline_share']:.1%} of it"
        elif r["impl"] == "hf-generate":
            note = f"ours (best) is {tps / r['tokens_per_s']:.1f}x faster"
        lines.append(f"| {r['model']} | {r['impl']} | {r['tokens_per_s']:.1f} | {note} |")
    (out / "bench_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
