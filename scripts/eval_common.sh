# Shared part of eval_llama.sh and eval_codellama.sh (sourced, not run): set-up on a fresh machine, the model and
# its id, the flags both runners get, and run_pair, which runs the baseline, then SWIFT, then the speed report.
# Expects "$@" of the calling script (MODEL_PATH as first argument); reads the environment overrides they document.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
DEFAULT_MODEL="models/smollm2-135m/hf"
MODEL_PATH="${1:-${MODEL_PATH:-$DEFAULT_MODEL}}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-512}"
OUTPUTS="${OUTPUTS:-outputs}"
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

# task_dir TASK: the folder of this model's answers on TASK under OUTPUTS (evaluation_llama/paths.py knows the layout)
task_dir() {
    "$PYTHON" -c 'import sys; from evaluation_llama.paths import task_dir; print(task_dir(*sys.argv[1:]).as_posix())' \
        "$MODEL_ID" "$1" "$OUTPUTS"
}

# flags shared by both runners
COMMON=(--model-path "$MODEL_PATH" --model-id "$MODEL_ID" --max-new-tokens "$MAX_NEW_TOKENS" --outputs "$OUTPUTS")
if [[ -n "${NUM_SAMPLES:-}" ]]; then COMMON+=(--num-samples "$NUM_SAMPLES"); fi
if [[ -n "${DATA_DIR:-}" ]]; then COMMON+=(--data-dir "$DATA_DIR"); fi
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
read -r -a SWIFT_EXTRA <<< "${SWIFT_ARGS:-}"
COMMON+=(${EXTRA[@]+"${EXTRA[@]}"})

# run_pair OUT SUFFIX [FLAGS...]: OUT/vanilla<SUFFIX>.jsonl, then OUT/swift<SUFFIX>.jsonl (layer cache
# OUT/layer_config<SUFFIX>.json), then the speed report of the two; FLAGS go to both runners
run_pair() {
    local out="$1" suffix="$2"
    shift 2
    "$PYTHON" -m evaluation_llama.inference_baseline "${COMMON[@]}" "$@" \
        --answer-file "$out/vanilla$suffix.jsonl"
    "$PYTHON" -m evaluation_llama.inference_swift "${COMMON[@]}" "$@" \
        --answer-file "$out/swift$suffix.jsonl" --layer-cache "$out/layer_config$suffix.json" \
        ${SWIFT_EXTRA[@]+"${SWIFT_EXTRA[@]}"}
    "$PYTHON" -m evaluation_llama.speed --file-path "$out/swift$suffix.jsonl" \
        --base-path "$out/vanilla$suffix.jsonl"
}
