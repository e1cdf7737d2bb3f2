"""Data parallelism: the parent of several shard processes, and the merge of their answers.

``--num-gpus N`` (or ``--num-shards N``) starts N processes (one per GPU, or N CPU processes);
process i answers the instances k with k % N == i into ``<answer>.shard<i>.jsonl``, and the
parent then merges them into the answer file. Each child receives the parent's frozen settings
whole (as JSON in `SETTINGS_ENV`, with its shard number), so that parent and children can never
read the command line differently. Shard files left by an interrupted run are folded in first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from data import TaskData
from evaluation_llama import guards, methods, metrics, model_cache, paths
from evaluation_llama.answers import (existing_ids, has_records, merge_answer_files, open_writer,
                                      read_answer_file)
from evaluation_llama.cli import note
from evaluation_llama.settings import Settings, run_config
from model.errors import UserError

SETTINGS_ENV = "SWIFT_SHARD_SETTINGS"
CHILD_MODULE = "evaluation_llama.runner"  # runs one shard from SETTINGS_ENV


def merge_into(main: Path, shards: list[Path]) -> int:
    """Merge shard files (and what ``main`` already holds) into ``main``; remove the shards."""
    inputs = ([main] if main.exists() and main.stat().st_size > 0 else []) + shards
    n = merge_answer_files(inputs, main)
    for p in shards:
        p.unlink()
    return n


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the parent dies (even of kill -9)."""
    with contextlib.suppress(Exception):
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_envs(s: Settings) -> list[dict]:
    """The environment of each shard process: its settings, its GPU, a fair share of threads."""
    import torch

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(paths.REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    visible = None
    if s.device.type == "cuda":
        listed = env.get("CUDA_VISIBLE_DEVICES")
        visible = ([v.strip() for v in listed.split(",") if v.strip()] if listed
                   else [str(i) for i in range(torch.cuda.device_count())])
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // s.num_shards))
    envs = []
    for i in range(s.num_shards):
        child = dict(env, **{SETTINGS_ENV: s.for_shard(i).to_json()})
        if visible is not None:
            child["CUDA_VISIBLE_DEVICES"] = visible[i]
        envs.append(child)
    return envs


def _run_children(s: Settings) -> list[int]:
    """Start the shard processes and wait for them; on an interrupt, stop them cleanly."""
    procs = []
    try:
        with guards.Interrupts():
            for env in _child_envs(s):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", CHILD_MODULE], env=env,
                    preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux")
                    else None))
            return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        files = ", ".join(str(paths.shard_path(s.answer_file, i)) for i in range(s.num_shards))
        note(f"interrupted: the answers written so far are kept in {files}; re-run the same "
             f"command to resume")
        raise


def _check_codes(s: Settings, codes: list[int]) -> int:
    """0 when every shard succeeded; else the exit status (2: one stopped with a user error)."""
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if not failed:
        return 0
    desc = ", ".join(f"shard {i} exit {c}" for i, c in failed)
    if any(c == 2 for _, c in failed):
        raise UserError(f"{len(failed)} of {s.num_shards} shard process(es) stopped with an error "
                        f"({desc}; its message is above). The answers written so far are kept in "
                        f"the shard files; fix the problem and re-run the same command to resume.")
    note(f"error: {len(failed)} of {s.num_shards} shard process(es) failed ({desc}); the answers "
         f"written so far are kept in the shard files; re-run the same command to resume.")
    return 1


def run_parent(s: Settings, td: TaskData) -> int:
    """Start one process per shard, wait for them, merge their answer files."""
    config = run_config(s, paths.data_source(td.source))
    if td.note:
        note(f"note: {td.note}")
    main = s.answer_file
    model_cache.check_checkpoint(s)
    guards.check_writable(main)
    method = methods.get(s.method)
    with guards.exclusive(main):
        if s.overwrite:
            for p in [main, *paths.existing_shards(main)]:
                p.unlink(missing_ok=True)
        if main.exists() and main.stat().st_size > 0:
            # refuses a file of another configuration; a file without answers starts afresh
            open_writer(main, config, overwrite=not has_records(main)).close()
        stale = paths.existing_shards(main)
        if stale:
            note(f"merging {len(stale)} shard file(s) into {main} (run with --shard, or left by an interrupted "
                 f"run)")
            merge_into(main, stale)
        done = existing_ids(main, config)
        if all(inst.question_id in done for inst in td.instances):
            print(f"nothing to do: all {len(td.instances)} answers of {s.task} are already in "
                  f"{main}")
            return 0
        status = _check_codes(s, _run_children(s))
        if status:
            return status
        shards = [paths.shard_path(main, i) for i in range(s.num_shards)]
        n = merge_into(main, [p for p in shards if p.exists()])
        lines = method.merge_shards(s.method_config)
    _, records = read_answer_file(main)
    records = [r for r in records if r.get("task") == s.task]
    tps = metrics.mean_tokens_per_second(records) if records else 0.0
    mal = metrics.mean_accept_length(records) if records else None
    print(f"{s.method} on {s.task}: {n} answer(s) merged from {s.num_shards} shards into {main}; "
          f"mean {tps:.1f} tokens/s per answer"
          + (f", mean accepted length {mal:.2f} tokens/step" if mal is not None else ""))
    for line in lines:
        print(line)
    return 0
