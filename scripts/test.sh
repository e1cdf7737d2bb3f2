#!/usr/bin/env bash
# The test command: set up what is missing (scripts/setup.sh), then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # tests load local folders only
exec "${PYTHON:-python3}" -m pytest -q "$@"
