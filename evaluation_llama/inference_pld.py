"""Answer the instances of one task with prompt lookup decoding.

    python -m evaluation_llama.inference_pld --task gsm8k --num-samples 50
    python evaluation_llama/inference_pld.py --task humaneval --temperature 0.6 --top-p 0.95

Every flag is explained by ``--help``; the method is `evaluation_llama.methods`' "pld", the
run itself `evaluation_llama/runner.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: python evaluation_llama/inference_pld.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation_llama import runner  # noqa: E402

METHOD = "pld"


def build_parser():
    return runner.build_parser(METHOD)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(METHOD, argv)


if __name__ == "__main__":
    from evaluation_llama.cli import run_cli

    run_cli(main)
