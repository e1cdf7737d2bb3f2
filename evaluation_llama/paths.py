"""Where things live: the model default, the outputs layout and the committed reference results.

Every command that reads or writes answer files asks this module instead of spelling the layout
itself::

    outputs/<model-id>/<task>/<method>[-t<temperature>].jsonl   answer file of one run
    outputs/<model-id>/<task>/<method>.shard<i>.jsonl           one shard of a split run
    outputs/<model-id>/<task>/layer_config.json                 SWIFT's cached skip set
    outputs/reference/..., assets/reference/...                 committed reference results

Runs write under ``outputs/`` (ignored by git); nothing writes under the reference folders by
default, so a user's run can never overwrite the results the documentation quotes.

    python3 -m evaluation_llama.paths task-dir MODEL_ID TASK   (for the shell scripts)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterator

from model.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_PATH = "models/smollm2-135m/hf"
OUTPUTS = Path("outputs")
REFERENCE = "reference"  # outputs/reference and assets/reference: committed results
REFERENCE_DIRS = (REPO_ROOT / "outputs" / REFERENCE, REPO_ROOT / "assets" / REFERENCE)
PLOTS = "plots"
SHARD_RE = re.compile(r"\.shard(\d+)$")


# ----------------------------------------------------------------------------------------------
# the model


def resolve_model_path(text: str) -> tuple[str, str]:
    """(path as recorded, path to load from) for a --model-path value.

    The recorded path is normalised ("./m/" and "m" are one model). The default model lives in
    the repository, so it is found from any working directory.
    """
    if not text.strip():
        raise UserError("--model-path is empty; pass a model folder, a .gguf file or a hub id.")
    recorded = os.path.normpath(text.strip())
    load = recorded
    if recorded == DEFAULT_MODEL_PATH and not Path(recorded).exists() \
            and (REPO_ROOT / recorded).exists():
        load = str(REPO_ROOT / recorded)
    return recorded, load


# ----------------------------------------------------------------------------------------------
# the outputs layout


def task_dir(model_id: str, task: str, root: os.PathLike | str = OUTPUTS) -> Path:
    """<root>/<model-id>/<task>: the folder of one model's runs on one task."""
    return Path(root) / model_id / task


def answer_name(method: str, temperature: float = 0.0) -> str:
    """<method>.jsonl for greedy runs, <method>-t<temperature>.jsonl for sampling runs."""
    return method + (f"-t{temperature:g}" if temperature > 0 else "") + ".jsonl"


def answer_file(model_id: str, task: str, method: str, temperature: float = 0.0,
                root: os.PathLike | str = OUTPUTS) -> Path:
    """The default answer file of a run."""
    return task_dir(model_id, task, root) / answer_name(method, temperature)


def shard_path(path: Path, shard: int) -> Path:
    """<dir>/<stem>.shard<shard><suffix>, e.g. swift.jsonl -> swift.shard0.jsonl."""
    return path.with_name(f"{path.stem}.shard{shard}{path.suffix}")


def is_shard(path: Path) -> bool:
    return SHARD_RE.search(path.stem) is not None


def existing_shards(path: Path) -> list[Path]:
    """The shard files of ``path`` that exist (of any number of shards)."""
    pattern = re.compile(re.escape(path.stem) + r"\.shard\d+" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def answer_folders(root: os.PathLike | str) -> Iterator[tuple[str, str, Path]]:
    """(model id, task, folder) of every <root>/<model-id>/<task>/ folder a run can have written.

    A folder counts only when its name is a task; the reference results, scratch and hidden
    folders are not answer folders. Everything else under ``root`` (benchmark rows, logs, plots)
    is left alone without a word.
    """
    from data import TASKS

    root = Path(root)
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        if model.name in (REFERENCE, "tmp", PLOTS) or model.name.startswith("."):
            continue
        for task in sorted(p for p in model.iterdir() if p.is_dir()):
            if task.name in TASKS:
                yield model.name, task.name, task


def plots_dir(report_dir: os.PathLike | str) -> Path:
    """Where a report's plots go by default: beside the report, in the user's own folder."""
    return Path(report_dir) / PLOTS


def refuse_reference(path: os.PathLike | str, hint: str) -> None:
    """UserError when ``path`` lies inside the committed reference results (``hint``: how to
    write elsewhere)."""
    target = Path(path).resolve()
    for ref in REFERENCE_DIRS:
        if target == ref or ref in target.parents:
            raise UserError(f"{path} lies inside {os.path.relpath(ref, REPO_ROOT)}, which holds "
                            f"the committed reference results, so nothing is written there; "
                            f"{hint}.")


def data_source(source: str) -> str:
    """The evaluated data file as recorded in a run config: relative to the repository (no
    machine-specific prefix), ``<data-dir>/<name>`` outside the project, or ``hub:...``."""
    if source.startswith("hub:"):
        return source
    try:
        rel = os.path.relpath(os.path.abspath(source), REPO_ROOT)
    except ValueError:  # another drive on Windows
        rel = source
    if rel.startswith("..") and not rel.startswith(os.path.join("..", "shared", "")):
        return "<data-dir>/" + os.path.basename(source)
    return rel


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "task-dir":
        print(task_dir(argv[1], argv[2]).as_posix())
        return 0
    print("usage: python3 -m evaluation_llama.paths task-dir MODEL_ID TASK", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
