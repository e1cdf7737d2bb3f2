#!/usr/bin/env python3
"""Multi-device check and report in one command (greedy, one task, the evaluation runners in subprocesses):

1. data parallel: the task on the first device alone, then sharded over all devices (`--num-gpus N` on CUDA,
   `--num-shards N` on CPU); are the merged answers token-identical to the one-device run, and how long did each
   take end to end (process start to exit) and generating (sum of the answers' wall times per process)?
2. layer placement: vanilla and SWIFT with the model's layers split over the devices (`--layer-devices`); is placed
   vanilla identical to the one-device run, is SWIFT identical to placed vanilla, and SWIFT's speedup
   (evaluation_llama/speed.py).

Writes <out>/dp1/, <out>/dp<N>/, <out>/placed/ (answer files), <out>/summary.md and <out>/summary.json.
Exit status 0, or 1 with --strict when an identity check fails (use float32 for strict checks of SWIFT: in bfloat16
a tree pass and a one-token pass can round a near-tie differently).

Example (2 GPUs): python3 scripts/multi_gpu.py --data-dir ../shared/data --devices cuda:0,cuda:1 --out outputs/multi-gpu
Extra runner flags after `--`, e.g. `-- --compile off --kernels triton`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluation_llama import methods, paths, speed  # noqa: E402
from evaluation_llama.answers import read_answer_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=paths.DEFAULT_MODEL_PATH, help="model folder, .gguf or hub id")
    ap.add_argument("--data-dir", default=None, help="task data folder (default: the runners' default)")
    ap.add_argument("--task", default="gsm8k", help="one task (default: %(default)s)")
    ap.add_argument("--num-samples", type=int, default=16, help="instances (default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per answer (default: %(default)s)")
    ap.add_argument("--devices", default="cuda:0,cuda:1",
                    help="comma-separated devices, all cuda or all cpu (cpu,cpu exercises the same code paths "
                         "without GPUs) (default: %(default)s)")
    ap.add_argument("--out", default=str(paths.OUTPUTS / "multi-gpu"), help="output folder (default: %(default)s)")
    ap.add_argument("--swift-args", default="",
                    help="extra flags for the SWIFT runner only, as one string, e.g. \"--skip-ratio 0.3\"")
    ap.add_argument("--strict", action="store_true", help="exit 1 when an identity check fails")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags passed to every runner call")
    return ap


def run(method: str, argv: list[str], log: Path) -> float:
    """Run one runner in a subprocess (output to `log`); return its end-to-end seconds."""
    module = methods.get(method).entry_module
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{module} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t


def answers(path: Path) -> dict[str, dict]:
    _, records = read_answer_file(path)
    return {str(r["question_id"]): r for r in records}


def identical(a: dict[str, dict], b: dict[str, dict]) -> tuple[int, int]:
    common = sorted(set(a) & set(b))
    return sum(a[q]["token_ids"] == b[q]["token_ids"] for q in common), len(common)


def generation_seconds(records: dict[str, dict]) -> float:
    return sum(sum(c["wall_time"]) for r in records.values() for c in r["choices"])


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    devices = [d.strip() for d in a.devices.split(",") if d.strip()]
    kinds = {d.split(":")[0] for d in devices}
    if len(devices) < 2 or len(kinds) != 1 or not kinds <= {"cuda", "cpu"}:
        raise SystemExit(f"--devices needs two or more devices of one kind (cuda or cpu), got {a.devices!r}")
    cuda = kinds == {"cuda"}
    n = len(devices)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [x for x in a.rest if x != "--"]
    common = ["--model-path", a.model_path, "--task", a.task, "--num-samples", str(a.num_samples),
              "--max-new-tokens", str(a.max_new_tokens), *(["--data-dir", a.data_dir] if a.data_dir else []), *extra]
    files = {"dp1": out / "dp1" / "vanilla.jsonl", f"dp{n}": out / f"dp{n}" / "vanilla.jsonl",
             "placed_vanilla": out / "placed" / "vanilla.jsonl", "placed_swift": out / "placed" / "swift.jsonl"}
    wall = {}
    wall["dp1"] = run("vanilla", common + ["--device", devices[0], "--answer-file", str(files["dp1"])],
                      out / "dp1.log")
    parallel = ["--num-gpus", str(n)] if cuda else ["--num-shards", str(n), "--device", "cpu"]
    wall[f"dp{n}"] = run("vanilla", common + parallel + ["--answer-file", str(files[f"dp{n}"])], out / f"dp{n}.log")
    placed = ["--layer-devices", ",".join(devices)]
    wall["placed_vanilla"] = run("vanilla", common + placed + ["--answer-file", str(files["placed_vanilla"])],
                                 out / "placed_vanilla.log")
    wall["placed_swift"] = run("swift", common + placed + ["--answer-file", str(files["placed_swift"]),
                                                          "--layer-cache", str(out / "placed" / "layer_config.json"),
                                                          *shlex.split(a.swift_args)],
                               out / "placed_swift.log")

    got = {k: answers(p) for k, p in files.items()}
    checks = {
        f"dp{n} merged == dp1": identical(got[f"dp{n}"], got["dp1"]),
        "placed vanilla == dp1": identical(got["placed_vanilla"], got["dp1"]),
        "placed swift == placed vanilla": identical(got["placed_swift"], got["placed_vanilla"]),
    }
    sp = speed.compare_files(str(files["placed_swift"]), str(files["placed_vanilla"]))
    summary = {"devices": devices, "task": a.task, "num_samples": a.num_samples, "max_new_tokens": a.max_new_tokens,
               "runner_flags": extra, "end_to_end_s": wall,
               "generation_s": {k: generation_seconds(got[k]) for k in files},
               "identical": {k: {"same": s, "of": t} for k, (s, t) in checks.items()},
               "placed_speed": sp}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    lines = [f"# Multi-device check: {', '.join(devices)}", "",
             f"Command: `{shlex.join(['scripts/multi_gpu.py'] + list(sys.argv[1:] if argv is None else argv))}`", "",
             f"Task {a.task}, {a.num_samples} instances, {a.max_new_tokens} max new tokens, greedy; runner flags: "
             f"`{' '.join(extra) or '(none)'}`.", "",
             "| run | end to end (s) | generating (s, summed over answers) |", "|---|---:|---:|"]
    for k in files:
        lines.append(f"| {k} | {wall[k]:.1f} | {summary['generation_s'][k]:.2f} |")
    lines += ["", "| check | identical answers |", "|---|---:|"]
    lines += [f"| {k} | {s} / {t} |" for k, (s, t) in checks.items()]
    lines += ["", "Placed SWIFT vs placed vanilla:", "", speed.to_markdown(sp)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [k for k, (s, t) in checks.items() if s != t or t == 0]
    if failed:
        print(f"identity check(s) not met: {', '.join(failed)}", file=sys.stderr)
    return 1 if (failed and a.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
