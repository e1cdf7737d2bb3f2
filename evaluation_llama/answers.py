"""Answer files: one JSON object per line, optionally preceded by a header line.

Record layout (written by the runners, read by speed/quality/report)::

    {"question_id": "12", "model_id": "smollm2-135m", "task": "gsm8k", "method": "swift",
     "tstamp": 1700000000.0,
     "choices": [{"index": 0, "turns": ["..."], "new_tokens": [57], "wall_time": [0.41],
                  "accept_lengths": [3, 1, 5], "num_drafted": [60]}],
     "token_ids": [[...]], "prompt_tokens": 812, "config": {...},
     "backends": {"kernels": "triton", "compile": "off", "tails": "kernels"}, "stats": {...}}

``backends`` is what the engine chose for the run (model/backends.py); where a tail kernel failed its check and the
PyTorch code ran instead, a SWIFT record's ``stats.tail_kernels`` says which tails ran.

Header line (optional, first line only)::

    {"header": true, "config": {...}, "config_hash": "...", "seed": 0, "created": 1700000000.0}

Question ids are compared as strings everywhere (`read_answers` normalises them to `str`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from model.errors import UserError

# Configuration keys that do not change what a run produces (which GPU, which shard, where the
# output goes). They are left out of `config_hash` at any nesting depth, so that shards of one run
# share a hash and a run may be resumed on another GPU index.
VOLATILE_KEYS = frozenset({
    "layer_devices",  # where layers live does not change the answers
    "device_index",
    "shard",
    "shard_index",
    "num_shards",
    "question_begin",
    "question_end",
    "answer_file",
    "overwrite",
    "debug",
    "verbose",
    "log_level",
})

REQUIRED_KEYS = ("question_id", "model_id", "task", "method", "choices")
REQUIRED_CHOICE_KEYS = ("turns", "new_tokens", "wall_time")

Warn = Callable[[str], None]


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# configuration hashing


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _strip_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_volatile(v) for v in value]
    return value


def config_hash(config: dict) -> str:
    """Stable 16-hex-digit hash of a run configuration.

    sha256 of the sorted-key, compact JSON of ``config`` with `VOLATILE_KEYS` removed at every
    depth; values JSON cannot encode are hashed through ``str()``.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, not {type(config).__name__}")
    text = json.dumps(_strip_volatile(config), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if key in VOLATILE_KEYS:
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(_flatten(value, name))
            else:
                out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    """Dotted names of the (non-volatile) keys whose values differ between two configurations."""
    fa, fb = _flatten(a or {}), _flatten(b or {})
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _describe_differences(old: dict, new: dict, limit: int = 8) -> str:
    keys = config_differences(old, new)
    fa, fb = _flatten(old or {}), _flatten(new or {})
    parts = [f"{k} ({fa.get(k, '<absent>')} vs {fb.get(k, '<absent>')})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts) if parts else "(none outside the hash; the hashes come from elsewhere)"


# ----------------------------------------------------------------------------------------------
# ordering


def natural_key(question_id: Any) -> tuple:
    """Sort key that orders digit runs numerically: "q2" < "q10", "HumanEval/9" < "HumanEval/10"."""
    parts = re.split(r"(\d+)", str(question_id))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


# ----------------------------------------------------------------------------------------------
# reading


def validate_record(record: Any) -> Optional[str]:
    """Return a description of what is wrong with an answer record, or None when it is usable."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    choices = record["choices"]
    if not isinstance(choices, list) or not choices:
        return "'choices' must be a non-empty list"
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            return f"choices[{i}] is not an object"
        missing = [k for k in REQUIRED_CHOICE_KEYS if k not in choice]
        if missing:
            return f"choices[{i}] is missing key(s) {', '.join(missing)}"
        for key in REQUIRED_CHOICE_KEYS:
            if not isinstance(choice[key], list):
                return f"choices[{i}].{key} must be a list"
    return None


def _split_lines(text: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _parse(path: Path, warn: Optional[Warn]) -> tuple[Optional[dict], list[dict], bool, bool]:
    """Parse an answer file.

    Returns (header, records, dropped_truncated_last_line, needs_rewrite). ``needs_rewrite`` is
    true when the file does not end in a clean newline-terminated record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"answer file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"answer file {path} is a directory, not a .jsonl file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"answer file {path} is not UTF-8 text ({exc})") from None
    lines = _split_lines(text)
    header: Optional[dict] = None
    records: list[dict] = []
    truncated = False
    for pos, (lineno, line) in enumerate(lines):
        is_last = pos == len(lines) - 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if is_last:
                truncated = True
                (warn or _warn_stderr)(
                    f"{path}, line {lineno}: ignoring an incomplete last line "
                    f"(an interrupted write?)")
                break
            raise UserError(f"{path}, line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
                            ) from None
        if isinstance(obj, dict) and obj.get("header") is True:
            if pos != 0:
                raise UserError(f"{path}, line {lineno}: a header line may only be the first line")
            if not isinstance(obj.get("config", {}), dict):
                raise UserError(f"{path}, line {lineno}: the header's 'config' must be an object")
            header = obj
            continue
        problem = validate_record(obj)
        if problem:
            raise UserError(f"{path}, line {lineno}: not an answer record: {problem}")
        records.append(obj)
    needs_rewrite = truncated or (bool(text) and not text.endswith("\n"))
    return header, records, truncated, needs_rewrite


def read_answer_file(path: str | os.PathLike, *, warn: Optional[Warn] = None
                     ) -> tuple[Optional[dict], list[dict]]:
    """Read an answer file; return (header or None, records in file order).

    The records' question ids are normalised to strings."""
    header, records, _, _ = _parse(Path(path), warn)
    for record in records:
        record["question_id"] = str(record["question_id"])
    return header, records


def read_answers(path: str | os.PathLike, *, warn: Optional[Warn] = None) -> list[dict]:
    """Read the answer records of a file (the header, if any, is skipped).

    Raises UserError naming the file and 1-based line for malformed JSON or missing keys. An
    unparsable LAST line (an interrupted write) is skipped with a warning (printed to stderr
    unless ``warn`` is given).
    """
    return read_answer_file(path, warn=warn)[1]


def file_config(header: Optional[dict], records: list[dict]) -> Optional[dict]:
    """The run configuration of a file: the header's, else the first record's, else None."""
    if header is not None and isinstance(header.get("config"), dict):
        return header["config"]
    for record in records:
        if isinstance(record.get("config"), dict):
            return record["config"]
    return None


def make_header(config: dict) -> dict:
    return {"header": True, "config": config, "config_hash": config_hash(config),
            "seed": config.get("seed"), "created": time.time()}


def _dump(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)


def _file_mode(path: Path) -> int:
    """The mode a rewritten file gets: the old file's, else what the umask gives a new file
    (normally 0644; a temporary file alone would be 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write lines to a temporary file next to ``path``, fsync it, then os.replace it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------------------------------------
# writing with resume


class AnswerWriter:
    """Append answer records to a .jsonl file, resuming an earlier run of the same configuration.

    * new file (or ``overwrite=True``): the file is (re)created with a header line;
    * existing file: its configuration (header, else the records' ``config``) must hash like
      ``config``; otherwise UserError (unless overwrite). A truncated last line is removed by
      rewriting the file atomically. ``done_ids`` holds the question ids already answered.
    * ``write(record)`` appends one line, flushes and fsyncs; writing an id that is already
      done raises UserError.
    """

    def __init__(self, path: str | os.PathLike, config: dict, overwrite: bool = False,
                 *, warn: Optional[Warn] = None):
        self.path = Path(path)
        self.config = dict(config)
        self.config_hash = config_hash(self.config)
        self.done_ids: set[str] = set()
        self.records: list[dict] = []  # the answers already in a resumed file
        self.resumed = False
        warn = warn or _warn_stderr
        if self.path.is_dir():
            raise UserError(f"answer file {self.path} is a directory")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not overwrite:
            header, records, _, needs_rewrite = _parse(self.path, warn)
            old_config = file_config(header, records)
            if old_config is None:
                if records:
                    raise UserError(
                        f"answer file {self.path} has answers but no header or configuration, so "
                        f"it cannot be resumed safely; pass --overwrite or use another "
                        f"--answer-file")
                needs_rewrite = True  # header only or empty: start it cleanly
                old_hash = self.config_hash
            else:
                old_hash = config_hash(old_config)
            if old_hash != self.config_hash:
                raise UserError(
                    f"answer file {self.path} was made with another configuration: differing "
                    f"keys {_describe_differences(old_config or {}, self.config)}; pass "
                    f"--overwrite or use another --answer-file")
            seen: set[str] = set()
            for record in records:
                qid = str(record["question_id"])
                if qid in seen:
                    raise UserError(f"answer file {self.path} holds question {qid} twice; "
                                    f"fix or remove the file")
                seen.add(qid)
            self.done_ids = seen
            self.records = records
            self.resumed = True
            if header is None:
                header = make_header(self.config)
                needs_rewrite = True
            if needs_rewrite:
                _write_atomically(self.path, [_dump(header)] + [_dump(r) for r in records])
        else:
            _write_atomically(self.path, [_dump(make_header(self.config))])
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one record (validated; its id must not be done yet), flush and fsync."""
        problem = validate_record(record)
        if problem:
            raise ValueError(f"refusing to write a malformed answer record: {problem}")
        qid = str(record["question_id"])
        if qid in self.done_ids:
            raise UserError(f"question {qid} is already answered in {self.path}; "
                            f"question ids must be unique")
        if self._fh is None:
            raise ValueError(f"AnswerWriter for {self.path} is closed")
        self._fh.write(_dump(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done_ids.add(qid)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def open_writer(path: Path, config: dict, overwrite: bool = False) -> AnswerWriter:
    """AnswerWriter with file-system problems (permissions, a full disk) as UserErrors."""
    try:
        return AnswerWriter(path, config, overwrite=overwrite)
    except OSError as exc:
        raise UserError(f"cannot write the answer file {path} ({exc.strerror or exc}); choose a "
                        f"writable place with --answer-file.") from exc


class DeferredWriter:
    """Writes answers into ``path``: through ``writer`` when an existing file is resumed, else
    through a new file created with the first answer, so that a run that fails before its first
    answer leaves neither a file nor an empty folder behind."""

    def __init__(self, path: Path, config: dict, writer: Optional[AnswerWriter] = None):
        self.path, self.config, self.writer = path, config, writer

    @property
    def done(self) -> int:
        return len(self.writer.done_ids) if self.writer is not None else 0

    def write(self, record: dict) -> None:
        """Append one answer (creating the file first when needed); UserError when the disk
        refuses it, keeping the answers already there."""
        try:
            if self.writer is None:
                self.writer = AnswerWriter(self.path, self.config, overwrite=True)
            self.writer.write(record)
        except OSError as exc:
            raise UserError(
                f"could not write to the answer file {self.path} ({exc.strerror or exc}); the "
                f"{self.done} answers already there are kept. Fix the cause (disk space, "
                f"permissions) and re-run the same command to resume.") from exc

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def has_records(path: Path) -> bool:
    """Whether ``path`` holds at least one answer (quietly: the writer that resumes it reports a cut last line)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    return bool(read_answer_file(path, warn=lambda m: None)[1])


def existing_ids(path: Path, config: dict) -> set[str]:
    """Question ids already answered in ``path`` under the same configuration (else nothing)."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    header, records = read_answer_file(path, warn=lambda m: None)
    cfg = file_config(header, records)
    if cfg is None or config_hash(cfg) != config_hash(config):
        return set()
    return {str(r["question_id"]) for r in records}


# ----------------------------------------------------------------------------------------------
# building records


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by None and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def build_record(*, question_id: str, model_id: str, task: str, method: str, text: str, result,
                 prompt_tokens: int, config: dict, stats: dict, backends: dict) -> dict:
    """The answer record of one generation (``result``: a model.generate.GenerationResult), in
    the layout of this module's docstring; ``backends``: the kernels the engine chose."""
    return {
        "question_id": question_id,
        "model_id": model_id,
        "task": task,
        "method": method,
        "tstamp": time.time(),
        "choices": [{"index": 0, "turns": [text], "new_tokens": [result.num_new_tokens],
                     "wall_time": [result.wall_time_s],
                     "accept_lengths": list(result.accept_lengths),
                     "num_drafted": [result.num_drafted]}],
        "token_ids": [list(result.tokens)],
        "prompt_tokens": prompt_tokens,
        "config": config,
        "backends": backends,
        "stats": stats,
    }


# ----------------------------------------------------------------------------------------------
# merging shards


def _content(record: dict) -> str:
    """What must agree between two answers to one question for them to count as the same."""
    return json.dumps({"token_ids": record.get("token_ids"),
                       "turns": [c.get("turns") for c in record["choices"]],
                       "model_id": record.get("model_id"), "task": record.get("task"),
                       "method": record.get("method")}, sort_keys=True)


def merge_answer_files(paths: Iterable[str | os.PathLike], out_path: str | os.PathLike,
                       *, warn: Optional[Warn] = None) -> int:
    """Merge shard answer files of one run into ``out_path``; return the number of records.

    All inputs must share one configuration hash (volatile keys such as the shard index are
    ignored). Duplicated question ids are kept once if their outputs agree and are an error if
    they conflict. Records are sorted by question id in natural order, under one header.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("no answer files to merge")
    merged: dict[str, dict] = {}
    source: dict[str, Path] = {}
    ref_hash: Optional[str] = None
    ref_config: Optional[dict] = None
    ref_path: Optional[Path] = None
    for path in paths:
        header, records = read_answer_file(path, warn=warn)
        config = file_config(header, records)
        h = config_hash(config) if config is not None else None
        if ref_path is None:
            ref_hash, ref_config, ref_path = h, config, path
        elif h != ref_hash:
            raise UserError(
                f"cannot merge {path} with {ref_path}: they were made with different "
                f"configurations (differing keys "
                f"{_describe_differences(ref_config or {}, config or {})})")
        for record in records:
            qid = record["question_id"]
            if qid in merged:
                if _content(merged[qid]) != _content(record):
                    raise UserError(f"question {qid} has different answers in {source[qid]} "
                                    f"and {path}; cannot merge")
                continue
            merged[qid] = record
            source[qid] = path
    lines = []
    if ref_config is not None:
        lines.append(_dump(make_header(_strip_volatile(ref_config))))
    lines += [_dump(merged[q]) for q in sorted(merged, key=natural_key)]
    _write_atomically(Path(out_path), lines)
    return len(merged)
