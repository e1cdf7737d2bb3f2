"""Reading raw task records, from a local folder of JSON Lines files or from the Hugging Face hub.

Both sources produce the same thing: a list of plain dicts with the field names of the local files
(see the table in ``data/README.md``), in the source's original order, each with an ``id``.
Everything a user can get wrong (missing folder, missing file, broken line, missing field, no
``datasets`` package) is reported as a :class:`model.errors.UserError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from model.errors import UserError

ENV_DATA_DIR = "SWIFT_DATA_DIR"
# the project's shared data folder, when it sits beside the repository
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class FileSpec:
    """One raw file a task reads: its local name, the fields every record needs, and its hub origin."""

    key: str  # name used inside this package ("test", "train", ...)
    filename: str  # file name inside the data folder
    text_fields: tuple[str, ...]  # required, must be non-empty strings
    list_fields: tuple[str, ...] = ()  # required, must be non-empty lists of non-empty strings
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, split); None: not on the hub


# The raw files of each task. "test" is the evaluated file; "train" (gsm8k) holds the exemplars.
TASK_FILES: dict[str, dict[str, FileSpec]] = {
    "cnndm": {
        "test": FileSpec("test", "cnndm_test.jsonl", ("article", "highlights"),
                         hub=("cnn_dailymail", "3.0.0", "test")),
    },
    "gsm8k": {
        "test": FileSpec("test", "gsm8k_test.jsonl", ("question", "answer"),
                         hub=("openai/gsm8k", "main", "test")),
        "train": FileSpec("train", "gsm8k_train.jsonl", ("question", "answer"),
                          hub=("openai/gsm8k", "main", "train")),
    },
    "tinystories": {
        "test": FileSpec("test", "tinystories_valid.jsonl", ("text",),
                         hub=("roneneldan/TinyStories", None, "validation")),
    },
    "humaneval": {
        "test": FileSpec("test", "humaneval.jsonl",
                         ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
                         hub=("openai/openai_humaneval", None, "test")),
    },
    "specbench": {
        "test": FileSpec("test", "specbench_question.jsonl", ("category",), list_fields=("turns",)),
    },
}


def resolve_data_dir(data_dir: str | None) -> str | None:
    """Where to read task data from: the explicit argument, else ``$SWIFT_DATA_DIR``, else None.

    None means "use the Hugging Face hub". Empty strings count as not given. ``~`` is expanded.
    Existence is checked later, by the loader, so that the error can name the task.
    """
    for value in (data_dir, os.environ.get(ENV_DATA_DIR)):
        if value is not None and str(value).strip():
            return os.path.expanduser(str(value).strip())
    return None


def default_data_dir() -> str | None:
    """The data folder every command uses when --data-dir is not given: ``$SWIFT_DATA_DIR``, else
    ``../shared/data`` beside the repository when it exists, else None (the Hugging Face hub).

    Defined once so that the runners, the quality scorer and the benchmarks read the same files.
    """
    chosen = resolve_data_dir(None)
    if chosen is not None:
        return chosen
    return str(SHARED_DATA_DIR) if SHARED_DATA_DIR.is_dir() else None


def _check_record(record: dict, spec: FileSpec, where: str) -> None:
    """Raise UserError when ``record`` lacks a required field; ``where`` names file and line."""
    expected = ", ".join(("id",) + spec.text_fields + spec.list_fields)
    if "id" not in record or record["id"] is None or isinstance(record["id"], (bool, list, dict)) \
            or str(record["id"]).strip() == "":
        raise UserError(
            f"{where}: required field 'id' is missing or empty. Every record of {spec.filename} needs "
            f"the fields {expected}; fix or regenerate the file (see data/README.md).")
    for name in spec.text_fields:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            raise UserError(
                f"{where}: required field '{name}' is missing or not a non-empty string. Every record "
                f"of {spec.filename} needs the fields {expected}; fix or regenerate the file "
                f"(see data/README.md).")
    for name in spec.list_fields:
        value = record.get(name)
        if (not isinstance(value, list) or not value
                or not all(isinstance(item, str) and item.strip() for item in value)):
            raise UserError(
                f"{where}: required field '{name}' is missing or not a non-empty list of strings. Every "
                f"record of {spec.filename} needs the fields {expected}; fix or regenerate the file "
                f"(see data/README.md).")


def _check_unique_ids(records: list[dict], spec: FileSpec, origin: str) -> None:
    seen: set[str] = set()
    for line_no, record in records_with_lines(records):
        key = str(record["id"])
        if key in seen:
            raise UserError(
                f"{origin}, line {line_no}: id {key!r} appears more than once; ids must be unique "
                f"within {spec.filename}. Fix or regenerate the file (see data/README.md).")
        seen.add(key)


def records_with_lines(records: list[dict]):
    """Yield (1-based line number, record); local records remember their line, hub rows use position."""
    for position, record in enumerate(records):
        yield record.get("_line", position + 1), record


def read_jsonl(path: Path, spec: FileSpec) -> list[dict]:
    """Parse and validate one local JSON Lines file (blank lines are skipped)."""
    records: list[dict] = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot read data file {path}: {exc.strerror or exc}. Check its permissions.") from exc
    with handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"Malformed JSON in {path}, line {line_no}: {exc.msg} (column {exc.colno}). Each "
                        f"line must be one JSON object; fix the line or regenerate the file.") from exc
                if not isinstance(record, dict):
                    raise UserError(
                        f"Malformed record in {path}, line {line_no}: expected a JSON object, got "
                        f"{type(record).__name__}. Each line must be one JSON object; fix the line or "
                        f"regenerate the file.")
                _check_record(record, spec, f"{path}, line {line_no}")
                record["_line"] = line_no
                records.append(record)
        except UnicodeDecodeError as exc:
            raise UserError(f"Data file {path} is not valid UTF-8 ({exc.reason}); re-save it as UTF-8.") from exc
    _check_unique_ids(records, spec, str(path))
    return records


def load_local(task: str, data_dir: str) -> tuple[dict[str, list[dict]], str]:
    """Read every raw file of ``task`` from ``data_dir``. Returns ({key: records}, source description)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise UserError(
            f"Data directory {folder} {what}. Pass --data-dir (or set {ENV_DATA_DIR}) to a folder holding "
            f"the task's JSON Lines files (for {task}: "
            f"{', '.join(s.filename for s in TASK_FILES[task].values())}), or leave both unset to "
            f"download from the Hugging Face hub.")
    out: dict[str, list[dict]] = {}
    for key, spec in TASK_FILES[task].items():
        path = folder / spec.filename
        if not path.is_file():
            raise UserError(
                f"Data file {path} is missing: task {task} expects a file named {spec.filename} in the data "
                f"directory {folder}. Put it there (layout described in data/README.md) or point "
                f"--data-dir / {ENV_DATA_DIR} at the right folder.")
        out[key] = read_jsonl(path, spec)
    return out, str(folder / TASK_FILES[task]["test"].filename)


# ---------------------------------------------------------------------------------------------------
# Hugging Face hub


def _hub_rows_to_records(task: str, rows) -> list[dict]:
    """Map hub rows to the field names of the local files; ``id`` is the row position (or task_id)."""
    records = []
    for index, row in enumerate(rows):
        row = dict(row)
        if task == "cnndm":
            rec = {"id": index, "article": row.get("article"), "highlights": row.get("highlights"),
                   "hub_id": row.get("id")}
        elif task == "gsm8k":
            rec = {"id": index, "question": row.get("question"), "answer": row.get("answer")}
        elif task == "tinystories":
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                continue  # the hub split has a few empty rows; they are not stories
            rec = {"id": index, "text": text.strip()}
        elif task == "humaneval":
            rec = {"id": row.get("task_id")}
            rec.update({k: row.get(k) for k in TASK_FILES["humaneval"]["test"].text_fields})
        else:  # pragma: no cover - guarded by the caller
            raise AssertionError(task)
        records.append(rec)
    return records


def load_hub(task: str) -> tuple[dict[str, list[dict]], str]:
    """Download ``task`` from the Hugging Face hub through the optional ``datasets`` package."""
    specs = TASK_FILES[task]
    if any(spec.hub is None for spec in specs.values()):
        raise UserError(
            f"Task {task} has no Hugging Face hub dataset to download. Pass --data-dir (or set "
            f"{ENV_DATA_DIR}) to a folder holding {', '.join(s.filename for s in specs.values())}.")
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported only when the hub is used
    except ImportError as exc:
        raise UserError(
            f"Loading {task} from the Hugging Face hub needs the 'datasets' package, which is not "
            f"installed. Run `pip install datasets`, or pass --data-dir (or set {ENV_DATA_DIR}) to a "
            f"folder of local JSON Lines files.") from exc
    out: dict[str, list[dict]] = {}
    origin = ""
    for key, spec in specs.items():
        name, config, split = spec.hub
        label = f"hub:{name}" + (f"/{config}" if config else "") + f"/{split}"
        try:
            rows = datasets.load_dataset(name, config, split=split)
        except Exception as exc:  # network, auth, missing dataset: all fixable by the user
            raise UserError(
                f"Could not load {task} from the Hugging Face hub ({label}): {exc}. Check the network "
                f"connection, or pass --data-dir (or set {ENV_DATA_DIR}) to a folder of local JSON "
                f"Lines files.") from exc
        records = _hub_rows_to_records(task, rows)
        for line_no, record in records_with_lines(records):
            _check_record(record, spec, f"{label}, row {line_no}")
        _check_unique_ids(records, spec, label)
        out[key] = records
        if key == "test":
            origin = label
    return out, origin
