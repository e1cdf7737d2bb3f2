#!/usr/bin/env bash
# SWIFT evaluation on HumanEval (all 164 problems by default), as in the paper's CodeLLaMA runs:
# greedy decoding, then sampling with temperature 0.6 and top-p 0.95.
#
# For each setting it runs the baseline (plain autoregressive decoding), then SWIFT, into
# outputs/<model-id>/humaneval/{vanilla,swift}.jsonl (greedy) and
# outputs/<model-id>/humaneval/{vanilla,swift}-t0.6.jsonl (sampling), and prints the speed report
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
#
# Example:
#   EXTRA_ARGS="--num-gpus 4" ./eval_codellama.sh codellama/CodeLlama-34b-hf
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
DEFAULT_MODEL="models/smollm2-135m/hf"
MODEL_PATH="${1:-${MODEL_PATH:-$DEFAULT_MODEL}}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-512}"
PYTHON="${PYTHON:-python3}"

# first run on a fresh machine: install what is missing and fetch the default model
"$PYTHON" -c "import torch, transformers, safetensors, gguf, bayes_opt, tqdm" 2>/dev/null \
    || PYTHON="$PYTHON" bash "$REPO/scripts/setup.sh"
TASK="humaneval"

# the default model lives in the repository (the runners look there too); fetch it on first use
if [[ "$MODEL_PATH" == "$DEFAULT_MODEL" && ! -f "$MODEL_PATH/config.json" \
      && ! -f "$REPO/$DEFAULT_MODEL/config.json" ]]; then
    echo "fetching the default model into $REPO/models ..." >&2
    "$PYTHON" "$REPO/scripts/fetch_models.py"
fi
MODEL_ID="$("$PYTHON" -c 'import sys; from model.loading import model_name; print(model_name(sys.argv[1]))' "$MODEL_PATH")"
out="outputs/$MODEL_ID/$TASK"

# flags shared by both runners and both settings
COMMON=(--model-path "$MODEL_PATH" --model-id "$MODEL_ID" --task "$TASK"
        --max-new-tokens "$MAX_NEW_TOKENS")
if [[ -n "${NUM_SAMPLES:-}" ]]; then COMMON+=(--num-samples "$NUM_SAMPLES"); fi
if [[ -n "${DATA_DIR:-}" ]]; then COMMON+=(--data-dir "$DATA_DIR"); fi
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
read -r -a SWIFT_EXTRA <<< "${SWIFT_ARGS:-}"
COMMON+=(${EXTRA[@]+"${EXTRA[@]}"})

# setting name (answer-file suffix) -> sampling flags
run_setting() {
    local suffix="$1"
    shift
    echo "== $TASK${suffix:+ ($suffix)}: baseline, then SWIFT -> $out" >&2
    "$PYTHON" -m evaluation_llama.inference_baseline "${COMMON[@]}" "$@" \
        --answer-file "$out/vanilla$suffix.jsonl"
    "$PYTHON" -m evaluation_llama.inference_swift "${COMMON[@]}" "$@" \
        --answer-file "$out/swift$suffix.jsonl" --layer-cache "$out/layer_config$suffix.json" \
        ${SWIFT_EXTRA[@]+"${SWIFT_EXTRA[@]}"}
    "$PYTHON" -m evaluation_llama.speed --file-path "$out/swift$suffix.jsonl" \
        --base-path "$out/vanilla$suffix.jsonl"
}

run_setting ""                                      # greedy
run_setting "-t0.6" --temperature 0.6 --top-p 0.95  # sampling
