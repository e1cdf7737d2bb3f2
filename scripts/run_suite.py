#!/usr/bin/env python3
"""Run the paper's tasks with both runners in ONE process (the model is loaded once; CUDA graphs and compiled kernels
are reused), then write the speed report of every task and the paper-table report.

Same answers as running `eval_llama.sh` + `eval_codellama.sh` (the runners are called with the same flags), only
without the per-run start-up cost. Extra flags after `--` go to both runners.

Example: python3 scripts/run_suite.py --num-samples 50 -- --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluation_llama import report, runner, speed  # noqa: E402
from evaluation_llama.cli import run_cli  # noqa: E402
from model.loading import model_name  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="cnndm,gsm8k,tinystories,humaneval", help="comma-separated tasks")
    ap.add_argument("--num-samples", type=int, default=None, help="instances per task (runner default if unset)")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="new tokens per answer")
    ap.add_argument("--model-path", default="models/smollm2-135m/hf", help="model folder, .gguf or hub id")
    ap.add_argument("--outputs", default="outputs", help="root of the answer files")
    ap.add_argument("--assets", default="assets", help="folder for the report's plots")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags passed to both runners")
    a = ap.parse_args()
    extra = [x for x in a.rest if x != "--"]
    common = ["--model-path", a.model_path, "--max-new-tokens", str(a.max_new_tokens)] + extra
    if a.num_samples:
        common += ["--num-samples", str(a.num_samples)]
    results = {}
    for task in a.tasks.split(","):
        files = {}
        for method in ("vanilla", "swift"):
            out = Path(a.outputs) / model_name(a.model_path) / task / f"{method}.jsonl"
            argv = common + ["--task", task, "--answer-file", str(out)]
            if method == "swift":
                argv += ["--layer-cache", str(out.parent / "layer_config.json")]
            rc = runner.main(method, argv)
            if rc:
                return rc
            files[method] = out
        res = speed.compare_files(str(files["swift"]), str(files["vanilla"]))
        results[task] = res
        print(speed.to_markdown(res), flush=True)
    rep = report.build_report(Path(a.outputs), Path(a.assets))
    (Path(a.outputs) / "report.md").write_text(rep.markdown)
    print(rep.markdown)
    (Path(a.outputs) / "suite_speed.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)
