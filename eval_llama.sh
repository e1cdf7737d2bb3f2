#!/usr/bin/env bash
# SWIFT evaluation on the paper's text tasks: CNN/DailyMail (1-shot summarization), GSM8K (5-shot
# chain of thought) and TinyStories (1-shot continuation), greedy decoding.
#
# For every task it runs the baseline (plain autoregressive decoding), then SWIFT, into
# outputs/<model-id>/<task>/{vanilla,swift}.jsonl, and prints the speed report
# (python3 -m evaluation_llama.speed). Paths are relative to the current directory (run it
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
#   TASKS            tasks to run (default "cnndm gsm8k tinystories")
#
# Examples:
#   NUM_SAMPLES=50 MAX_NEW_TOKENS=128 ./eval_llama.sh
#   EXTRA_ARGS="--num-gpus 8" ./eval_llama.sh meta-llama/Llama-2-13b-hf
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
DEFAULT_MODEL="models/smollm2-135m/hf"
MODEL_PATH="${1:-${MODEL_PATH:-$DEFAULT_MODEL}}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-512}"
TASKS="${TASKS:-cnndm gsm8k tinystories}"
PYTHON="${PYTHON:-python3}"

# first run on a fresh machine: install what is missing and fetch the default model
"$PYTHON" -c "import torch, transformers, safetensors, gguf, bayes_opt, tqdm" 2>/dev/null \
    || PYTHON="$PYTHON" bash "$REPO/scripts/setup.sh"

# the default model lives in the repository (the runners look there too); fetch it on first use
if [[ "$MODEL_PATH" == "$DEFAULT_MODEL" && ! -f "$MODEL_PATH/config.json" \
      && ! -f "$REPO/$DEFAULT_MODEL/config.json" ]]; then
    echo "fetching the default model into $REPO/models ..." >&2
    "$PYTHON" "$REPO/scripts/fetch_models.py"
fi
MODEL_ID="$("$PYTHON" -c 'import sys; from model.loading import model_name; print(model_name(sys.argv[1]))' "$MODEL_PATH")"

# flags shared by both runners
COMMON=(--model-path "$MODEL_PATH" --model-id "$MODEL_ID" --max-new-tokens "$MAX_NEW_TOKENS")
if [[ -n "${NUM_SAMPLES:-}" ]]; then COMMON+=(--num-samples "$NUM_SAMPLES"); fi
if [[ -n "${DATA_DIR:-}" ]]; then COMMON+=(--data-dir "$DATA_DIR"); fi
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
read -r -a SWIFT_EXTRA <<< "${SWIFT_ARGS:-}"
COMMON+=(${EXTRA[@]+"${EXTRA[@]}"})

for task in $TASKS; do
    out="outputs/$MODEL_ID/$task"
    echo "== $task: baseline, then SWIFT -> $out" >&2
    "$PYTHON" -m evaluation_llama.inference_baseline "${COMMON[@]}" --task "$task" \
        --answer-file "$out/vanilla.jsonl"
    "$PYTHON" -m evaluation_llama.inference_swift "${COMMON[@]}" --task "$task" \
        --answer-file "$out/swift.jsonl" --layer-cache "$out/layer_config.json" \
        ${SWIFT_EXTRA[@]+"${SWIFT_EXTRA[@]}"}
    "$PYTHON" -m evaluation_llama.speed --file-path "$out/swift.jsonl" \
        --base-path "$out/vanilla.jsonl"
done
