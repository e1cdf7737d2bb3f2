#!/usr/bin/env python3
"""Peak host memory and time of loading a checkpoint with model.loading.load_model.

Writes a random-weight LLaMA checkpoint of a given shape (default: the LLaMA-2-13B shape) to a local folder as bf16
sharded safetensors with an index, the way Hugging Face saves large models (about 5 GB shards by default), then loads
it with our loader onto `--device` in a fresh subprocess, so that the numbers belong to the loading alone. Prints one
JSON object: the shape, the number of shards and the largest one's size, the load time, the subprocess's resident
memory before loading and at its peak during loading (VmRSS / VmHWM from /proc, the peak reset before loading;
imports, the CUDA context and the fixed cost of building a first model happen before), and `peak_extra_bytes`: the
peak minus
the memory before loading minus the loaded weights that live in host memory (zero for a GPU device). A streaming
loader keeps that extra at about one shard; reading the whole state dict first would make it the whole checkpoint.

    python3 scripts/measure_loading.py --device cuda --folder /local/disk/llama13b-random     # GPU machine
    python3 scripts/measure_loading.py --shape tiny --shard-size 20MB                        # any machine, seconds
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import LLAMA2_7B_SHAPE, LLAMA2_13B_SHAPE  # noqa: E402
from model.errors import UserError  # noqa: E402

SHAPES = {
    "13b": LLAMA2_13B_SHAPE,
    "7b": LLAMA2_7B_SHAPE,
    # small enough for a CPU test in seconds, large enough (about 100 MB in bf16) that shards dominate the noise
    "tiny": dict(LLAMA2_7B_SHAPE, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8),
}
DIMS = {"hidden": "hidden_size", "intermediate": "intermediate_size", "layers": "num_hidden_layers",
        "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "vocab": "vocab_size"}
MARKER = ".measure-loading.json"  # what was written, so that a folder is reused only for the same checkpoint


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise UserError(f"--shard-size '{text}' is not a size like 5GB, 500MB or 1000000.")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    return int(float(m.group(1)) * unit)


def hf_tensor_shapes(cfg: dict):
    """(name, shape) of every tensor of a LlamaForCausalLM checkpoint of this config, in the order HF saves them."""
    d, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (inter, d)
        yield p + "mlp.up_proj.weight", (inter, d)
        yield p + "mlp.down_proj.weight", (d, inter)
    yield "model.norm.weight", (d,)
    if not cfg.get("tie_word_embeddings", False):
        yield "lm_head.weight", (v, d)


POOL = 1 << 24  # values in the random pool (32 MB in bf16)


def write_checkpoint(folder: Path, cfg: dict, shard_bytes: int, seed: int = 0) -> dict:
    """Random bf16 weights (normal, std 0.02; norms 1) as HF sharded safetensors + index; one shard in memory at a
    time. A shard is closed when the next tensor would take it past `shard_bytes` (as transformers shards)."""
    import torch
    from safetensors.torch import save_file
    marker = {"config": cfg, "shard_bytes": shard_bytes, "seed": seed, "values": f"pool of {POOL}"}
    if (folder / MARKER).is_file() and json.loads((folder / MARKER).read_text()) == marker:
        return marker
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # a pool of normal values, each tensor a rotated run of it: drawing 13B values one by one takes minutes, and what
    # is measured (reading, converting, placing bytes) does not depend on the values
    gen = torch.Generator().manual_seed(seed)
    pool = torch.empty(POOL, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)
    shards, current, size = [], {}, 0

    def close():
        nonlocal current, size
        if current:
            name = f"part-{len(shards):05d}.safetensors"
            save_file(current, str(folder / name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    for name, shape in hf_tensor_shapes(cfg):
        nbytes = 2 * int(torch.tensor(shape).prod())
        if size and size + nbytes > shard_bytes:
            close()
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            n = nbytes // 2  # bf16 elements
            start = int(torch.randint(POOL, (), generator=gen))
            t = pool.roll(-start).repeat(-(-n // POOL))[:n].view(shape).clone()
        current[name], size = t, size + nbytes
    close()
    weight_map, total = {}, 0
    for i, (tmp, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / tmp).rename(folder / final)
        total += (folder / final).stat().st_size
        weight_map.update({n: final for n in names})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="llama", torch_dtype="bfloat16"), indent=1))
    (folder / MARKER).write_text(json.dumps(marker))
    return marker


def _proc_status(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs), so the peak is the loading's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_child(folder: str, device: str, dtype_name: str) -> dict:
    """Run in the fresh subprocess: import everything the loader needs, then load once and report."""
    import resource

    import safetensors.torch  # noqa: F401 - imported before the baseline (transformers comes with the warm-up)
    import torch

    from model.config import ModelArgs
    from model.llama import Transformer
    from model.loading import load_model
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the CUDA context's host memory is not the loader's
    before_warm_up = _proc_status("VmRSS")
    with torch.device("meta"):  # the first model built in a process costs a fixed ~30 MB (lazy initialisation)
        Transformer(ModelArgs.from_hf_config(dict(SHAPES["tiny"], num_hidden_layers=1)))
    baseline = _proc_status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    model, _ = load_model(folder, device=device, dtype=getattr(torch, dtype_name))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    peak = _proc_status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = list(model.parameters())  # each shared (tied) parameter once
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    host_bytes = sum(p.numel() * p.element_size() for p in params if p.device.type == "cpu")
    return dict(load_s=round(load_s, 3), warm_up_rss_bytes=baseline - before_warm_up,
                baseline_rss_bytes=baseline, peak_rss_bytes=peak,
                peak_reset=reset, model_bytes=model_bytes, host_model_bytes=host_bytes,
                peak_extra_bytes=peak - baseline - host_bytes, params=sum(p.numel() for p in params),
                device=str(params[0].device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="13b", help="base shape (default: LLaMA-2-13B)")
    for flag, key in DIMS.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", type=int, help=f"override {key}")
    ap.add_argument("--shard-size", default="5GB", help="largest shard (default 5GB, like HF)")
    ap.add_argument("--folder", help="where to write the checkpoint (kept and reused when it already holds it); "
                                     "default: a temporary folder, removed afterwards")
    ap.add_argument("--device", default="cpu", help="device to load onto (cuda on a GPU machine)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: the measuring subprocess
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure_child(a.child, a.device, a.dtype)))
        return 0
    cfg = dict(SHAPES[a.shape])
    for flag, key in DIMS.items():
        if getattr(a, flag) is not None:
            cfg[key] = getattr(a, flag)
    if a.heads is not None and a.kv_heads is None:  # --heads alone: plain multi-head attention
        cfg["num_key_value_heads"] = a.heads
    shard_bytes = parse_size(a.shard_size)
    folder = Path(a.folder) if a.folder else Path(tempfile.mkdtemp(prefix="measure-loading-"))
    try:
        t0 = time.perf_counter()
        write_checkpoint(folder, cfg, shard_bytes)
        write_s = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), "--device", a.device,
                               "--dtype", a.dtype], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"the loading subprocess failed (exit {proc.returncode}): "
                            f"{' '.join(proc.stderr.strip().splitlines()[-3:])[:500]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        shard_sizes = [p.stat().st_size for p in sorted(folder.glob("model-*.safetensors"))]
    finally:
        if not a.folder:
            shutil.rmtree(folder, ignore_errors=True)
    result = dict(shape={k: cfg[k] for k in DIMS.values()}, dtype=a.dtype, requested_device=a.device,
                  checkpoint_bytes=sum(shard_sizes), n_shards=len(shard_sizes), max_shard_bytes=max(shard_sizes),
                  write_s=round(write_s, 1), **child)
    result["peak_extra_over_max_shard"] = round(result["peak_extra_bytes"] / result["max_shard_bytes"], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
