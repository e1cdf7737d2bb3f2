"""Speed report: compare an answer file (e.g. SWIFT) with a baseline answer file (vanilla).

    python -m evaluation_llama.speed --file-path swift.jsonl --base-path vanilla.jsonl [--json]

For every task in the files and overall: number of answers, speedup, tokens/s of each file, mean
accepted tokens per step, acceptance rate, the share of answers whose output is identical to
the baseline's, and the pooled speedup (total tokens over total seconds, then the ratio). The metric
definitions live in evaluation_llama/metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script: python evaluation_llama/speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation_llama import metrics  # noqa: E402
from evaluation_llama.answers import file_config, natural_key, read_answer_file  # noqa: E402
from model.errors import UserError  # noqa: E402

# configuration keys that must agree between the two files for a fair comparison (where both record them): the
# generation settings and where they ran (the model is compared by model_id, the questions by their ids; the
# kernels are not: a SWIFT-only ablation such as --tails torch is compared with the shared vanilla run)
MATCHING_CONFIG_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "chat_template", "dtype", "device")
OVERALL = "overall"
CPU_NOTE = ("Measured on a CPU. A small model on a CPU is dominated by per-step overhead (Python, "
            "kernel launches), not by reading weights, so a draft step costs almost as much as a "
            "full one and SWIFT is not expected to be faster there: speedups below 1x are normal. "
            "Speed is measured on a GPU (README, \"What to expect\"); on a CPU these runs check "
            "that the pipeline works and that greedy SWIFT matches vanilla (identical outputs).")


def devices(header: Optional[dict], records: list[dict]) -> list[str]:
    """The device types (cpu, cuda) a file's answers were generated on, where recorded."""
    found = (json.loads(v) for v in _config_values(header, records, "device"))
    return sorted(d for d in found if isinstance(d, str))


def _few(ids: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _key(record: dict) -> tuple[str, str]:
    return (str(record.get("task")), str(record["question_id"]))


def _keyed(records: list[dict], name: str) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for record in records:
        key = _key(record)
        if key in out:
            raise UserError(f"{name} holds question {key[1]} of task {key[0]} more than once; "
                            f"merge shards with answers.merge_answer_files or remove duplicates")
        out[key] = record
    return out


def _config_values(header: Optional[dict], records: list[dict], key: str) -> set[str]:
    values = set()
    configs = [file_config(header, [])] if header is not None else []
    configs += [r.get("config") for r in records]
    for config in configs:
        if isinstance(config, dict) and key in config:
            values.add(json.dumps(config[key], sort_keys=True))
    return values


def check_compatible(name: str, header: Optional[dict], records: list[dict],
                     base_name: str, base_header: Optional[dict], base_records: list[dict]) -> None:
    """Raise UserError unless both files are non-empty, of one model, and generated with the same settings
    (`MATCHING_CONFIG_KEYS`, where recorded)."""
    for label, recs in ((name, records), (base_name, base_records)):
        if not recs:
            raise UserError(f"{label} holds no answers")
    models = {str(r.get("model_id")) for r in records}
    base_models = {str(r.get("model_id")) for r in base_records}
    for label, found in ((name, models), (base_name, base_models)):
        if len(found) > 1:
            raise UserError(f"{label} mixes answers of several models ({_few(sorted(found))})")
    if models != base_models:
        raise UserError(f"the files are of different models: {name} has {_few(sorted(models))}, "
                        f"{base_name} has {_few(sorted(base_models))}")
    for key in MATCHING_CONFIG_KEYS:
        mine = _config_values(header, records, key)
        base = _config_values(base_header, base_records, key)
        for label, found in ((name, mine), (base_name, base)):
            if len(found) > 1:
                raise UserError(f"{label} mixes runs with different {key} ({_few(sorted(found))})")
        if mine and base and mine != base:
            raise UserError(f"the files were generated with different {key}: "
                            f"{next(iter(mine))} in {name}, {next(iter(base))} in {base_name}")


def _summary(records: list[dict], base_records: list[dict]) -> dict:
    """Metrics of one group of paired answers (records[i] and base_records[i] answer one
    question)."""
    return {
        "answers": len(records),
        "speedup": metrics.speedup(records, base_records),
        "pooled_speedup": metrics.pooled_speedup(records, base_records),
        "tokens_per_second": metrics.mean_tokens_per_second(records),
        "base_tokens_per_second": metrics.mean_tokens_per_second(base_records),
        "mean_accept_length": metrics.mean_accept_length(records),
        "base_mean_accept_length": metrics.mean_accept_length(base_records),
        "acceptance_rate": metrics.acceptance_rate(records),
        "identical_fraction": metrics.identical_fraction(records, base_records),
    }


def compare(records: list[dict], base_records: list[dict], *, allow_partial: bool = False,
            name: str = "the answer file", base_name: str = "the baseline file",
            header: Optional[dict] = None, base_header: Optional[dict] = None) -> dict:
    """Compare two lists of answer records; return a JSON-ready dict (see module docstring).

    Raises UserError for empty inputs, different models, different max_new_tokens/temperature,
    duplicated questions, or different question sets (unless ``allow_partial``, which compares
    the questions both lists answer and reports how many were left out).
    """
    check_compatible(name, header, records, base_name, base_header, base_records)
    mine, base = _keyed(records, name), _keyed(base_records, base_name)
    only_mine = sorted((k for k in mine if k not in base), key=lambda k: (k[0], natural_key(k[1])))
    only_base = sorted((k for k in base if k not in mine), key=lambda k: (k[0], natural_key(k[1])))
    if only_mine or only_base:
        detail = []
        if only_mine:
            detail.append(f"{len(only_mine)} only in {name} (e.g. "
                          f"{_few([f'{t}/{q}' for t, q in only_mine])})")
        if only_base:
            detail.append(f"{len(only_base)} only in {base_name} (e.g. "
                          f"{_few([f'{t}/{q}' for t, q in only_base])})")
        if not allow_partial:
            raise UserError("the files answer different questions: " + "; ".join(detail)
                            + ". Finish the runs, or pass --allow-partial to compare the "
                              "questions both files answer")
    common = [k for k in mine if k in base]
    if not common:
        raise UserError(f"{name} and {base_name} have no question in common")
    tasks: dict[str, list[tuple[str, str]]] = {}
    for key in common:
        tasks.setdefault(key[0], []).append(key)
    result: dict[str, Any] = {
        "devices": sorted(set(devices(header, records)) | set(devices(base_header, base_records))),
        "model_id": str(records[0].get("model_id")),
        "method": str(records[0].get("method")),
        "base_method": str(base_records[0].get("method")),
        "partial": bool(only_mine or only_base),
        "only_in_file": len(only_mine),
        "only_in_base": len(only_base),
        "tasks": {},
    }
    for task in sorted(tasks):
        keys = tasks[task]
        result["tasks"][task] = _summary([mine[k] for k in keys], [base[k] for k in keys])
    overall = _summary([mine[k] for k in common], [base[k] for k in common])
    # question ids may repeat across tasks, so pool the identical share from the task groups
    per_task = [(t["identical_fraction"], t["answers"]) for t in result["tasks"].values()]
    overall["identical_fraction"] = sum(f * n for f, n in per_task) / sum(n for _, n in per_task)
    result[OVERALL] = overall
    return result


def compare_files(file_path: str, base_path: str, *, allow_partial: bool = False) -> dict:
    """Read two answer files and `compare` them; the result also names the files."""
    header, records = read_answer_file(file_path)
    base_header, base_records = read_answer_file(base_path)
    result = compare(records, base_records, allow_partial=allow_partial, name=str(file_path),
                     base_name=str(base_path), header=header, base_header=base_header)
    result["file_path"] = str(file_path)
    result["base_path"] = str(base_path)
    return result


# ----------------------------------------------------------------------------------------------
# formatting


def fmt(value: Optional[float], kind: str) -> str:
    if value is None:
        return "-"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "%":
        return f"{100 * value:.1f}%"
    if kind == "tps":
        return f"{value:.1f}"
    return f"{value:.2f}"


def to_markdown(result: dict) -> str:
    method, base = result["method"], result["base_method"]
    lines = [f"Speed of {method} against {base} — model {result['model_id']}", ""]
    if "file_path" in result:
        lines += [f"- file: `{result['file_path']}`", f"- baseline: `{result['base_path']}`"]
    if result["partial"]:
        lines.append(f"- partial comparison (--allow-partial): {result['only_in_file']} answers "
                     f"only in the file and {result['only_in_base']} only in the baseline "
                     f"were left out")
    if "cpu" in result.get("devices", []):
        lines += ["", CPU_NOTE]
    lines += ["", f"| task | answers | speedup | {method} tok/s | {base} tok/s | "
                  f"mean accepted tokens | acceptance rate | identical outputs | pooled speedup |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = list(result["tasks"].items()) + [(OVERALL, result[OVERALL])]
    for task, s in rows:
        label = f"**{task}**" if task == OVERALL else task
        lines.append(f"| {label} | {s['answers']} | {fmt(s['speedup'], 'x')} | "
                     f"{fmt(s['tokens_per_second'], 'tps')} | "
                     f"{fmt(s['base_tokens_per_second'], 'tps')} | "
                     f"{fmt(s['mean_accept_length'], 'f')} | {fmt(s['acceptance_rate'], '%')} | "
                     f"{fmt(s['identical_fraction'], '%')} | {fmt(s['pooled_speedup'], 'x')} |")
    notes = caveats(result)
    return "\n".join(lines + ([""] + [f"Note: {n}" for n in notes] if notes else []))


FEW_ANSWERS = 10


def caveats(result: dict) -> list[str]:
    """What makes this comparison's speedup say little: too few answers, or a method that never drafted."""
    out, overall = [], result[OVERALL]
    if overall["answers"] < FEW_ANSWERS:
        out.append(f"{overall['answers']} answer{'s' if overall['answers'] != 1 else ''} only: an answer's rate "
                   f"varies by tens of percent from run to run, so a speedup from so few is mostly noise.")
    if result["method"] != result["base_method"] and overall["acceptance_rate"] is None \
            and overall["mean_accept_length"] in (None, 1.0):
        out.append(f"{result['method']} drafted no token in these answers (too short for a layer search, no "
                   f"context match, or a guard that stopped every draft): it decoded plainly, so its speedup over "
                   f"{result['base_method']} is noise around 1x.")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation_llama.speed",
        description="Compare the speed of an answer file (e.g. SWIFT) with a baseline answer file "
                    "(e.g. vanilla decoding) of the same model and questions: speedup (mean "
                    "per-answer tokens/s over the baseline's), tokens/s, mean accepted tokens "
                    "per step, acceptance rate, the share of identical outputs and the pooled "
                    "speedup (all tokens over all seconds, then the ratio: each answer weighs by its "
                    "time), per task and overall.")
    parser.add_argument("--file-path", required=True,
                        help="answer file (.jsonl) of the method to measure, e.g. swift.jsonl")
    parser.add_argument("--base-path", required=True,
                        help="answer file (.jsonl) of the baseline, e.g. vanilla.jsonl")
    parser.add_argument("--allow-partial", action="store_true",
                        help="compare only the questions both files answer instead of refusing "
                             "files with different question sets (the report says how many "
                             "were left out)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a markdown table")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line error messages")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    result = compare_files(args.file_path, args.base_path, allow_partial=args.allow_partial)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(to_markdown(result))
    return 0


if __name__ == "__main__":
    from evaluation_llama.cli import run_cli

    run_cli(main)
