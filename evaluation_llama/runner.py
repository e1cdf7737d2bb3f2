"""The evaluation runner: one method on one task, one answer per instance.

`inference_swift.py` and `inference_baseline.py` name their method and call `main`. One run
loads the task's instances, the model and its tokenizer, then generates an answer per instance
with the method (`evaluation_llama/methods.py`) and appends it to a JSON Lines answer file
(`evaluation_llama/answers.py`):

* every flag is checked before anything heavy is loaded (`settings.py`), with one-paragraph
  errors (`UserError`);
* answer files resume: answers already there are skipped, each new one is flushed and fsynced as
  soon as it is done, a file of another configuration is refused unless ``--overwrite``, and two
  runs on one file at the same time are refused (`guards.py`);
* SIGINT/SIGTERM end the run cleanly (exit 130) without half an answer in the file;
* generation is deterministic: ``torch.manual_seed(seed * 100003 + index)`` before each
  instance, where ``index`` is its position in the task's list (independent of sharding);
* untimed warm-up generations come first (the method decides how it warms up);
* ``--num-gpus N`` / ``--num-shards N`` split the instances over N processes (`shards.py`);
  ``--layer-devices cuda:0,cuda:1`` splits one model's layers over devices (model/placement.py);
* CUDA out-of-memory becomes a message with the memory the weights and the KV cache need.

``python -m evaluation_llama.runner`` runs one shard process of a split run; its parent hands
it the settings (`shards.SETTINGS_ENV`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import TaskData, load_task  # noqa: E402
from evaluation_llama import (flags, guards, methods, metrics, model_cache, paths,  # noqa: E402
                              prompting, settings, shards)
from evaluation_llama.answers import (DeferredWriter, build_record, existing_ids,  # noqa: E402
                                      has_records, open_writer)
from evaluation_llama.cli import note  # noqa: E402
from evaluation_llama.settings import Settings  # noqa: E402
from model.errors import UserError  # noqa: E402

# torch and the model code are imported only once the flags and the data have been checked, so
# that a typo is reported in a fraction of a second instead of after a two-second torch import.


def build_parser(method: str):
    """The command-line parser of the runner of ``method`` (a registered method name)."""
    return flags.build_parser(methods.get(method))


def load_instances(s_or_args) -> TaskData:
    """The task's evaluated instances (data errors are reported before torch is imported)."""
    td = load_task(s_or_args.task, data_dir=s_or_args.data_dir,
                   num_samples=s_or_args.num_samples, seed=s_or_args.seed)
    if not td.instances:
        raise UserError(f"task {s_or_args.task} has no instances to evaluate in {td.source}.")
    return td


def main(method: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run ``method``; returns the exit status."""
    cls = methods.get(method)
    args = flags.build_parser(cls).parse_args(list(sys.argv[1:] if argv is None else argv))
    config = settings.check_flags(args, cls)
    args.data_dir = settings.data_dir(args)
    td = load_instances(args)
    s = settings.resolve(args, cls, config)
    if s.parent:
        return shards.run_parent(s, td)
    return run_one(s, td)


# ----------------------------------------------------------------------------------------------
# one process


def run_one(s: Settings, td: TaskData) -> int:
    """Answer the instances of this process (all, or one shard) into the answer file."""
    config = settings.run_config(s, paths.data_source(td.source))
    if td.note:
        note(f"note: {td.note}")
    out = s.answer_file if s.shard is None else paths.shard_path(s.answer_file, s.shard)
    mine = [(i, inst) for i, inst in enumerate(td.instances)
            if s.shard is None or i % s.num_shards == s.shard]
    model_cache.check_checkpoint(s)
    guards.check_writable(out)
    with guards.exclusive(out):
        writer = None
        if not s.overwrite and has_records(out):
            writer = open_writer(out, config)  # refuses another configuration, early
            methods.get(s.method).check_resume(s.method_config, out, writer.records)
        sink = DeferredWriter(out, config, writer)
        try:
            done = set(writer.done_ids) if writer is not None else set()
            if s.shard is not None:  # a parent's merged file may already hold some answers
                done |= existing_ids(s.answer_file, config)
            pending = [(i, inst) for i, inst in mine if inst.question_id not in done]
            if not pending:
                print(f"nothing to do: all {len(mine)} answers of {s.task} are already in {out}")
                return 0
            if done:
                note(f"resuming {out}: {len(mine) - len(pending)} of {len(mine)} answers already "
                     f"there, {len(pending)} to go")
            return _answer(s, td, mine, pending, sink)
        finally:
            sink.close()


def _answer(s: Settings, td: TaskData, mine: list, pending: list, sink: DeferredWriter) -> int:
    """Load the model, build the engine, warm the method up and answer every pending instance."""
    import torch
    from model.engine import Engine
    from model.generate import cache_capacity
    from model.loading import default_eos_ids

    margs = capacity = longest = model = None
    try:
        model, margs, tokenizer = model_cache.load(s)
    except torch.OutOfMemoryError as exc:
        raise guards.oom_error(s, model_cache.model_args_for_oom(s), None, None) from exc
    prompt_ids = prompting.tokenize_all(list(enumerate(td.instances)), tokenizer, margs,
                                        max_new_tokens=s.max_new_tokens,
                                        chat_template=s.chat_template, model_path=s.model_path,
                                        task=s.task)
    longest = max(len(t) for t in prompt_ids.values())
    capacity = cache_capacity(longest, s.max_new_tokens)
    run = methods.TaskRun(s.model_id, s.task, margs, s.sampling, default_eos_ids(margs, tokenizer),
                          s.shard, s.num_shards)
    method = methods.get(s.method)(s.method_config, run)
    try:
        engine = Engine(model, capacity, backends=s.backends)
    except torch.OutOfMemoryError as exc:
        raise guards.oom_error(s, margs, capacity, longest, model) from exc
    _note_backends(s, engine)

    written: list[dict] = []
    bar = None
    lines: list[str] = []
    try:
        with guards.Interrupts() as interrupts:
            method.warm_up(engine, [prompt_ids[pending[0][0]]] * s.warmup, s.max_new_tokens,
                           [prompt_ids[index] for index, _ in pending])
            bar = _progress_bar(s, len(mine), len(mine) - len(pending))
            for n, (index, inst) in enumerate(pending):
                method.start_instance(first=n == 0)
                torch.manual_seed(methods.instance_seed(s.seed, index))
                res = method.generate(prompt_ids[index], s.max_new_tokens)
                record = build_record(
                    question_id=inst.question_id, model_id=s.model_id, task=s.task,
                    method=s.method, text=tokenizer.decode(res.tokens, skip_special_tokens=True),
                    result=res, prompt_tokens=len(prompt_ids[index]), config=sink.config,
                    stats=method.answer_stats(res), backends=engine.backends.to_dict())
                with interrupts.deferred():  # a signal waits until the answer is on disk
                    sink.write(record)
                    written.append(record)
                    method.answer_written()
                bar.set_postfix_str(_rates(written), refresh=False)
                bar.update(1)
    except torch.OutOfMemoryError as exc:
        raise guards.oom_error(s, margs, capacity, longest, model) from exc
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        kept = len(mine) - len(pending) + len(written)
        if shards.SETTINGS_ENV in os.environ:  # a shard its parent started: the parent says it for all of them
            pass
        elif kept:
            note(f"interrupted: {kept} of {len(mine)} answers are kept in {sink.path}; run the same command "
                 f"again to continue")
        else:
            note("interrupted before the first answer; run the same command again to start")
        raise
    finally:
        if bar is not None:
            bar.close()
        lines = method.end_task()
    _print_summary(s, sink.path, written, len(mine), lines)
    return 0


def _note_backends(s: Settings, engine) -> None:
    """Say so when the engine runs other kernels than this device would get by default (a
    kernel that failed its self-check on this GPU)."""
    expected = s.backends.resolve(s.device)
    if engine.multi_device and s.tails == "auto":  # the tail kernels run on one device only: expected
        expected = dataclasses.replace(expected, tails="torch")
    if engine.backends != expected:
        note(f"note: the engine runs kernels={engine.backends.kernels}, "
             f"compile={engine.backends.compile}, tails={engine.backends.tails} (asked: "
             f"kernels={s.kernels}, compile={s.compile}, tails={s.tails})")


def _progress_bar(s: Settings, total: int, initial: int):
    from tqdm import tqdm

    where = f" shard {s.shard}" if s.shard is not None else ""
    return tqdm(total=total, initial=initial, unit="answer", desc=f"{s.method} {s.task}{where}",
                position=s.shard, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


def _rates(records: list[dict]) -> str:
    """Mean tokens/s per answer and mean accepted tokens per step (`metrics`' definitions)."""
    try:
        tps = metrics.mean_tokens_per_second(records)
    except UserError:  # an answer without measurable time
        tps = 0.0
    accepted = metrics.mean_accept_length(records) or 0.0
    return f"{tps:.1f} tok/s, accepted {accepted:.2f}/step"


def _print_summary(s: Settings, out: Path, records: list[dict], total: int,
                   method_lines: list[str]) -> None:
    tokens = sum(metrics.new_tokens(r) for r in records)
    seconds = sum(metrics.wall_time(r) for r in records)
    scope = "shard" if s.shard is not None else "run"
    lines = [f"{s.method} on {s.task}: {len(records)} new answer(s) written to {out} ({total} "
             f"instance(s) in this {scope}); {tokens:.0f} tokens in {seconds:.2f} s; "
             f"{_rates(records).replace('tok/s', 'tokens/s per answer (mean)')}"]
    print("\n".join(lines + method_lines), flush=True)


def _shard_child(text: Optional[str]) -> int:
    """One shard process: the parent's settings, with this process's shard number."""
    if not text:
        raise UserError("python -m evaluation_llama.runner runs one shard of a split run and is "
                        "started by its parent; start a run with python -m "
                        "evaluation_llama.inference_swift or inference_baseline.")
    s = Settings.from_json(text)
    return run_one(s, load_instances(s))


if __name__ == "__main__":
    import json

    from evaluation_llama.cli import run_cli

    shard_settings = os.environ.get(shards.SETTINGS_ENV)
    run_cli(lambda: _shard_child(shard_settings),
            debug=bool(shard_settings) and bool(json.loads(shard_settings).get("debug")))
