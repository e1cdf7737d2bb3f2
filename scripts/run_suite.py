#!/usr/bin/env python3
"""Run the paper's tasks with the baseline and the compared methods in ONE process (the model is loaded once; CUDA
graphs and compiled kernels are reused), then write the speed report of every task and the paper-table report.

`--methods` picks the rows, from: vanilla (always run first, the baseline), swift, pld (prompt lookup), early-exit
(LayerSkip-style), hybrid (SWIFT with --context-drafts: answers in hybrid.jsonl, layer cache layer_config-hybrid.json).

Same answers as running `eval_llama.sh` + `eval_codellama.sh` (the same runner with the same flags), only without the
per-run start-up cost. Answer files go to <outputs>/<model-id>/<task>/<method>.jsonl; report.md, suite_speed.json and
the plots (plots/) to <outputs>. Extra flags after `--` go to every method's runner.

Example: python3 scripts/run_suite.py --num-samples 50 --outputs outputs/suite -- --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import TASKS  # noqa: E402
from evaluation_llama import paths, report, runner, speed  # noqa: E402
from evaluation_llama.flags import POS_INT, task_list  # noqa: E402
from evaluation_llama.cli import run_cli  # noqa: E402
from model.loading import model_name  # noqa: E402

BASELINE = "vanilla"
# suite row -> (method, extra flags for its runner)
VARIANTS = {"vanilla": ("vanilla", []), "swift": ("swift", []), "pld": ("pld", []),
            "early-exit": ("early-exit", []), "hybrid": ("swift", ["--context-drafts"])}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=task_list, default="cnndm,gsm8k,tinystories,humaneval",
                    help=f"comma-separated tasks, from {', '.join(TASKS)} (default: %(default)s)")
    ap.add_argument("--num-samples", type=POS_INT, default=None,
                    help="instances per task (default: the runners' default, the paper's 1000, or all of HumanEval)")
    ap.add_argument("--max-new-tokens", type=POS_INT, default=512, help="new tokens per answer (default: %(default)s)")
    ap.add_argument("--model-path", default=paths.DEFAULT_MODEL_PATH, help="model folder, .gguf or hub id")
    ap.add_argument("--outputs", default=str(paths.OUTPUTS),
                    help="root of the answer files; report.md and suite_speed.json are written there")
    ap.add_argument("--assets", default=None, help="folder for the report's plots (default: <outputs>/plots)")
    ap.add_argument("--methods", default="vanilla,swift",
                    help=f"comma-separated rows, from {', '.join(VARIANTS)} (vanilla is always run first)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags passed to every runner")
    return ap


def main() -> int:
    a = build_parser().parse_args()
    outputs = Path(a.outputs)
    paths.refuse_reference(outputs, "pass --outputs with a folder of your own")
    if a.assets is not None:
        paths.refuse_reference(a.assets, "pass --assets with a folder of your own")
    extra = [x for x in a.rest if x != "--"]
    common = ["--model-path", a.model_path, "--max-new-tokens", str(a.max_new_tokens),
              "--outputs", str(outputs)] + extra
    if a.num_samples is not None:
        common += ["--num-samples", str(a.num_samples)]
    rows = [BASELINE] + [m for m in a.methods.split(",") if m and m != BASELINE]
    unknown = [m for m in rows if m not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {', '.join(VARIANTS)}")
    model_id = model_name(paths.resolve_model_path(a.model_path)[0])
    results = {}
    for task in a.tasks:
        files = {}
        for row in rows:
            method, flags = VARIANTS[row]
            files[row] = paths.answer_file(model_id, task, row, root=outputs)
            if row != method:  # a variant keeps its own layer cache
                flags = flags + ["--layer-cache", str(files[row].parent / f"layer_config-{row}.json")]
            rc = runner.main(method, common + flags + ["--task", task, "--answer-file", str(files[row])])
            if rc:
                return rc
        for row in rows[1:]:
            res = speed.compare_files(str(files[row]), str(files[BASELINE]))
            results.setdefault(task, {})[row] = res
            print(speed.to_markdown(res), flush=True)
    rep = report.build_report(outputs, a.assets)
    (outputs / "report.md").write_text(rep.markdown)
    print(rep.markdown)
    (outputs / "suite_speed.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)
