#!/usr/bin/env bash
# SWIFT evaluation on HumanEval (all 164 problems by default), as in the paper's CodeLLaMA runs:
# greedy decoding, then sampling with temperature 0.6 and top-p 0.95.
#
# For each setting it runs the baseline (plain autoregressive decoding), then SWIFT, into
# OUTPUTS/<model-id>/humaneval/{vanilla,swift}.jsonl (greedy; OUTPUTS: outputs) and
# OUTPUTS/<model-id>/humaneval/{vanilla,swift}-t0.6.jsonl (sampling), and prints the speed report
# (python3 -m evaluation_llama.speed). Paths are relative to the current directory (run it
# from the repository root). Re-running resumes: answers already written are kept.
# Correctness (pass@1): python3 -m evaluation_llama.quality --task humaneval --file-path ...
#
# Usage:
#   ./eval_codellama.sh [MODEL_PATH]
#
#   MODEL_PATH       first argument or environment variable: a Hugging Face model folder, a .gguf
#                    file or a hub id (default models/smollm2-135m/hf, fetched with
#                    scripts/fetch_models.py when missing)
# Environment overrides (all optional):
#   NUM_SAMPLES      problems to run (default: all 164)
#   MAX_NEW_TOKENS   tokens generated per answer (default 512)
#   DATA_DIR         folder with humaneval.jsonl (default: $SWIFT_DATA_DIR, ../shared/data, hub)
#   EXTRA_ARGS       extra flags for both runners, e.g. "--num-gpus 4"
#   SWIFT_ARGS       extra flags for the SWIFT runner only, e.g. "--skip-ratio 0.5"
#   OUTPUTS          root of the answer files (default outputs): OUTPUTS/<model-id>/<task>/. A run whose
#                    settings (NUM_SAMPLES, MAX_NEW_TOKENS, EXTRA_ARGS, ...) differ from the answers already
#                    there is refused: give it another OUTPUTS, or EXTRA_ARGS="--overwrite" to replace them
#
# Example:
#   EXTRA_ARGS="--num-gpus 4" ./eval_codellama.sh codellama/CodeLlama-34b-hf
set -euo pipefail

TASK="humaneval"
source "$(dirname "${BASH_SOURCE[0]}")/scripts/eval_common.sh"
out="$(task_dir "$TASK")"

# setting name (answer-file suffix) -> sampling flags
run_setting() {
    local suffix="$1"
    shift
    echo "== $TASK${suffix:+ ($suffix)}: baseline, then SWIFT -> $out" >&2
    run_pair "$out" "$suffix" --task "$TASK" "$@"
}

run_setting ""                                      # greedy
run_setting "-t0.6" --temperature 0.6 --top-p 0.95  # sampling (the same distribution as vanilla; with the speed
                                                    # guard on, which draws depend on timings: SWIFT_ARGS=--no-guard
                                                    # makes the samples reproducible bit for bit)
