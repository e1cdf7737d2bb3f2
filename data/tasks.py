"""Task loading: pick the evaluated records of a task, build their prompts, keep their references.

``load_task(task, data_dir, num_samples, seed)`` is the entry point; see ``data/README.md`` for the
source rules (folder / ``$SWIFT_DATA_DIR`` / hub), the sampling rule and prompt examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from model.errors import UserError

from . import prompts
from .sources import TASK_FILES, load_hub, load_local, resolve_data_dir

TASKS: tuple[str, ...] = ("cnndm", "gsm8k", "tinystories", "humaneval", "specbench")
PAPER_TASKS: tuple[str, ...] = ("cnndm", "gsm8k", "tinystories", "humaneval")
DEFAULT_NUM_SAMPLES = 1000


@dataclass(frozen=True)
class Instance:
    """One evaluated example: a ready prompt and what the scorer needs (gold answer, tests, ...)."""

    question_id: str
    task: str
    prompt: str
    reference: dict


@dataclass
class TaskData:
    """The evaluated instances of one task, in source order, and how they were chosen."""

    task: str
    instances: list[Instance]
    seed: int
    source: str  # path of the evaluated local file, or "hub:<dataset>[/<config>]/<split>"
    note: str | None = None  # set when fewer than the default number of records exist
    exemplars: tuple[dict, ...] = field(default_factory=tuple)  # the few-shot records used (if any)


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"Unknown task {task!r}. Known tasks: {', '.join(TASKS)}.")


def _check_num_samples(num_samples) -> None:
    if num_samples is None:
        return
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise UserError(f"num_samples must be a positive whole number, got {num_samples!r}.")
    if num_samples <= 0:
        raise UserError(
            f"num_samples must be a positive whole number, got {num_samples}. Leave it unset for the "
            f"default ({DEFAULT_NUM_SAMPLES} per task, all 164 for humaneval).")


def sample_indices(available: int, k: int, seed: int) -> list[int]:
    """``k`` distinct positions out of ``range(available)``, uniformly at random, sorted ascending."""
    if k >= available:
        return list(range(available))
    return sorted(random.Random(seed).sample(range(available), k))


def _choose(task: str, available: int, num_samples: int | None, seed: int,
            pool_note: str = "") -> tuple[list[int], str | None]:
    """Positions of the evaluated records in the pool, and a note when the default cannot be met."""
    if num_samples is None:
        if task == "humaneval":
            return list(range(available)), None
        if available < DEFAULT_NUM_SAMPLES:
            return list(range(available)), (
                f"{task}: {available} records available{pool_note}, fewer than the default "
                f"{DEFAULT_NUM_SAMPLES}; using all")
        return sample_indices(available, DEFAULT_NUM_SAMPLES, seed), None
    if num_samples > available:
        raise UserError(
            f"Task {task}: {num_samples} samples were asked for but only {available} records are "
            f"available{pool_note}. Ask for at most {available}, or leave num_samples unset to use "
            f"the default.")
    return sample_indices(available, num_samples, seed), None


def _cnndm(raw: dict, task: str, num_samples, seed):
    records = raw["test"]
    exemplar = next((r for r in records if str(r["id"]) == str(prompts.CNNDM_EXEMPLAR_ID)), None)
    if exemplar is None:
        raise UserError(
            f"The CNN/DM data has no record with id {prompts.CNNDM_EXEMPLAR_ID}, the fixed 1-shot "
            f"exemplar. Use the full file (ids 0-999 of the 3.0.0 test split, see data/README.md).")
    pool = [r for r in records if r is not exemplar]
    note = f" (record {prompts.CNNDM_EXEMPLAR_ID} is kept out as the 1-shot exemplar)"
    chosen, msg = _choose(task, len(pool), num_samples, seed, note)
    instances = [
        Instance(str(r["id"]), task, prompts.cnndm_prompt(r["article"], exemplar),
                 {"highlights": r["highlights"], "summary": prompts.clean_highlights(r["highlights"])})
        for r in (pool[i] for i in chosen)
    ]
    return instances, msg, (_strip(exemplar),)


def _gsm8k(raw: dict, task: str, num_samples, seed):
    train = raw["train"]
    if len(train) < prompts.GSM8K_NUM_SHOTS:
        raise UserError(
            f"The GSM8K exemplar file {TASK_FILES['gsm8k']['train'].filename} holds {len(train)} "
            f"records; the 5-shot prompt needs at least {prompts.GSM8K_NUM_SHOTS}.")
    exemplars = train[:prompts.GSM8K_NUM_SHOTS]
    shot_questions = {ex["question"].strip() for ex in exemplars}
    # Exemplars come from the train split; also drop any test record that repeats one of them.
    pool = [r for r in raw["test"] if r["question"].strip() not in shot_questions]
    chosen, msg = _choose(task, len(pool), num_samples, seed)
    instances = [
        Instance(str(r["id"]), task, prompts.gsm8k_prompt(r["question"], exemplars),
                 {"question": r["question"], "answer": r["answer"],
                  "final": prompts.gsm8k_final_answer(r["answer"])})
        for r in (pool[i] for i in chosen)
    ]
    return instances, msg, tuple(_strip(ex) for ex in exemplars)


def _tinystories(raw: dict, task: str, num_samples, seed):
    pool = raw["test"]
    chosen, msg = _choose(task, len(pool), num_samples, seed)
    instances = []
    for r in (pool[i] for i in chosen):
        beginning, continuation = prompts.split_story(r["text"])
        instances.append(Instance(
            str(r["id"]), task, prompts.tinystories_prompt(beginning),
            {"text": r["text"], "beginning": beginning, "continuation": continuation}))
    exemplar = {"id": "builtin", "text": prompts.TINYSTORIES_EXEMPLAR}
    return instances, msg, (exemplar,)


def _humaneval(raw: dict, task: str, num_samples, seed):
    pool = raw["test"]
    chosen, msg = _choose(task, len(pool), num_samples, seed)
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    instances = [Instance(str(r["id"]), task, prompts.humaneval_prompt(r), {k: r[k] for k in keys})
                 for r in (pool[i] for i in chosen)]
    return instances, msg, ()


def _specbench(raw: dict, task: str, num_samples, seed):
    pool = raw["test"]
    chosen, msg = _choose(task, len(pool), num_samples, seed)
    instances = [
        Instance(str(r["id"]), task, prompts.specbench_prompt(r),
                 {"category": r["category"], "turns": list(r["turns"]),
                  "question_id": r.get("question_id", r["id"])})
        for r in (pool[i] for i in chosen)
    ]
    return instances, msg, ()


_BUILDERS = {"cnndm": _cnndm, "gsm8k": _gsm8k, "tinystories": _tinystories,
             "humaneval": _humaneval, "specbench": _specbench}


def load_task(task: str, data_dir: str | None = None, num_samples: int | None = None,
              seed: int = 0) -> TaskData:
    """Load the evaluated instances of ``task``.

    Data comes from ``data_dir`` (else ``$SWIFT_DATA_DIR``, else the Hugging Face hub). Without
    ``num_samples``, 1000 records are sampled (all records when fewer exist, with ``note`` set;
    all 164 for humaneval). Sampling is uniform with ``random.Random(seed)`` and the chosen records
    keep their source order. Few-shot exemplars are never among the evaluated records.
    """
    _check_task(task)
    _check_num_samples(num_samples)
    folder = resolve_data_dir(data_dir)
    raw, source = load_local(task, folder) if folder is not None else load_hub(task)
    instances, note, exemplars = _BUILDERS[task](raw, task, num_samples, seed)
    return TaskData(task=task, instances=instances, seed=seed, source=source, note=note,
                    exemplars=exemplars)
