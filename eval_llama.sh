#!/usr/bin/env bash
# SWIFT evaluation on the paper's text tasks: CNN/DailyMail (1-shot summarization), GSM8K (5-shot
# chain of thought) and TinyStories (1-shot continuation), greedy decoding.
#
# For every task it runs the baseline (plain autoregressive decoding), then SWIFT, into
# OUTPUTS/<model-id>/<task>/{vanilla,swift}.jsonl (OUTPUTS: outputs), and prints the speed report
# (python3 -m evaluation_llama.speed). On a CPU this checks the pipeline, not the speed: a small
# model there is dominated by per-step overhead and SWIFT is not expected to be faster (the speed
# report says so); speed is measured on a GPU. Paths are relative to the current directory (run it
# from the repository root). Re-running resumes: answers already written are kept.
#
# Usage:
#   ./eval_llama.sh [MODEL_PATH]
#
#   MODEL_PATH       first argument or environment variable: a Hugging Face model folder, a .gguf
#                    file or a hub id (default models/smollm2-135m/hf, fetched with
#                    scripts/fetch_models.py when missing)
# Environment overrides (all optional):
#   NUM_SAMPLES      instances per task (default: the runners' default, 1000 or all available)
#   MAX_NEW_TOKENS   tokens generated per answer (default 512)
#   DATA_DIR         folder with the task files (default: $SWIFT_DATA_DIR, ../shared/data, hub)
#   EXTRA_ARGS       extra flags for both runners, e.g. "--num-gpus 4" or "--dtype float32"
#   SWIFT_ARGS       extra flags for the SWIFT runner only, e.g. "--skip-ratio 0.45"
#   OUTPUTS          root of the answer files (default outputs): OUTPUTS/<model-id>/<task>/. A run whose
#                    settings (NUM_SAMPLES, MAX_NEW_TOKENS, EXTRA_ARGS, ...) differ from the answers already
#                    there is refused: give it another OUTPUTS, or EXTRA_ARGS="--overwrite" to replace them
#   TASKS            tasks to run (default "cnndm gsm8k tinystories")
#
# Examples:
#   NUM_SAMPLES=50 MAX_NEW_TOKENS=128 ./eval_llama.sh
#   EXTRA_ARGS="--num-gpus 8" ./eval_llama.sh meta-llama/Llama-2-13b-hf
set -euo pipefail

TASKS="${TASKS:-cnndm gsm8k tinystories}"
source "$(dirname "${BASH_SOURCE[0]}")/scripts/eval_common.sh"

for task in $TASKS; do
    out="$(task_dir "$task")"
    echo "== $task: baseline, then SWIFT -> $out" >&2
    run_pair "$out" "" --task "$task"
done
