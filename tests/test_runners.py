"""End-to-end runs of the evaluation runners on the real SmolLM2-135M (CPU).

Both runners answer 2 instances of every paper task with a small budget; then: the records'
layout, greedy SWIFT == vanilla token for token, the speed report on the result, resuming (a second
run writes nothing), a sharded run in 2 CPU processes (same answers as 1 process) and the
layer-configuration cache (written by the search, read with --cache-hit).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data import PAPER_TASKS
from evaluation_llama import inference_baseline, inference_swift, methods, paths, prompting, runner, settings
from evaluation_llama.answers import read_answer_file
from model.loading import model_name
from model.swift.config import SwiftConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

MAX_NEW = 12
NUM = 2
# no speed guard: its 8-token plain probe would leave the 12 new tokens almost nothing to draft
SWIFT_SMALL = ["--context-window", "8", "--num-candidates", "2", "--max-opt-iter", "6", "--no-guard"]
CONFIG_KEYS = {"model_path", "model_id", "task", "method", "dtype", "device", "temperature",
               "top_p", "top_k", "max_new_tokens", "num_samples", "seed", "chat_template",
               "data_source", "swift", "cache_hit"}
RECORD_KEYS = {"question_id", "model_id", "task", "method", "tstamp", "choices", "token_ids",
               "prompt_tokens", "config", "stats"}
CHOICE_KEYS = {"index", "turns", "new_tokens", "wall_time", "accept_lengths", "num_drafted"}


def base_args(model, data, task, answer, num=NUM, max_new=MAX_NEW):
    return ["--model-path", str(model), "--data-dir", str(data), "--task", task,
            "--num-samples", str(num), "--max-new-tokens", str(max_new), "--warmup", "0",
            "--device", "cpu", "--answer-file", str(answer)]


def by_id(path):
    header, records = read_answer_file(path)
    return header, {r["question_id"]: r for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_path, shared_data_dir):
    """{task: {"vanilla": path, "swift": path, "layer_cache": path}} after one run of each."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in PAPER_TASKS:
        d = root / task
        paths = {"vanilla": d / "vanilla.jsonl", "swift": d / "swift.jsonl",
                 "layer_cache": d / "layer_config.json"}
        assert inference_baseline.main(
            base_args(smollm2_path, shared_data_dir, task, paths["vanilla"])) == 0
        assert inference_swift.main(
            base_args(smollm2_path, shared_data_dir, task, paths["swift"]) + SWIFT_SMALL
            + ["--layer-cache", str(paths["layer_cache"])]) == 0
        out[task] = paths
    return out


def test_records_have_the_documented_layout(runs):
    for task, paths in runs.items():
        for method in ("vanilla", "swift"):
            header, records = by_id(paths[method])
            assert header is not None and header["config"]["method"] == method
            assert len(records) == NUM
            for qid, r in records.items():
                assert RECORD_KEYS <= set(r), (task, method, set(r))
                assert r["task"] == task and r["method"] == method
                assert CONFIG_KEYS <= set(r["config"])
                (choice,) = r["choices"]
                assert CHOICE_KEYS <= set(choice)
                n = choice["new_tokens"][0]
                assert 1 <= n <= MAX_NEW and len(r["token_ids"][0]) == n
                assert sum(choice["accept_lengths"]) == n and choice["wall_time"][0] > 0
                assert r["prompt_tokens"] > 0 and isinstance(choice["turns"][0], str)
                assert r["stats"]["method"] == method
            cfg = header["config"]
            assert cfg["task"] == task and cfg["temperature"] == 0.0 and cfg["num_samples"] == NUM
            assert not os.path.isabs(cfg["data_source"])
            if method == "vanilla":
                assert cfg["swift"] is None
                assert all(r["choices"][0]["num_drafted"] == [0] for r in records.values())
            else:
                expected = methods.swift_record(SwiftConfig(context_window=8, num_candidates=2, max_opt_iter=6,
                                                            guard=False))
                assert cfg["swift"] == expected and cfg["cache_hit"] is False
                for r in records.values():
                    assert r["stats"]["num_layers"] == 30
                    assert "search" in r["stats"] and "final_skip" in r["stats"]


def test_greedy_swift_equals_vanilla(runs):
    for task, paths in runs.items():
        _, vanilla = by_id(paths["vanilla"])
        _, swift = by_id(paths["swift"])
        assert set(vanilla) == set(swift)
        for qid in vanilla:
            assert swift[qid]["token_ids"] == vanilla[qid]["token_ids"], (task, qid)
            assert swift[qid]["choices"][0]["turns"] == vanilla[qid]["choices"][0]["turns"]
        # drafted tokens were accepted and committed, not only plain steps
        assert max(a for r in swift.values() for a in r["choices"][0]["accept_lengths"]) > 1, task


def test_speed_report_on_the_results(runs):
    paths = runs["humaneval"]
    proc = subprocess.run([sys.executable, "-m", "evaluation_llama.speed", "--file-path",
                           str(paths["swift"]), "--base-path", str(paths["vanilla"]), "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["overall"]["answers"] == NUM
    assert result["overall"]["identical_fraction"] == 1.0
    assert result["method"] == "swift" and result["base_method"] == "vanilla"


def test_layer_config_written_by_the_search(runs, smollm2_path):
    for task, paths in runs.items():
        data = json.loads(paths["layer_cache"].read_text())
        assert data["model_id"] == model_name(str(smollm2_path)) and data["num_layers"] == 30
        assert data["task"] == task and (data["skip"]["attn"] or data["skip"]["mlp"])
        _, swift = by_id(paths["swift"])
        # one search carried over the task: the saved set is the search's final choice
        last = list(swift.values())[-1]["stats"]["search"]
        assert data["skip"] == last["best_skip"]
        assert data["matchness"] == pytest.approx(last["best_score"])


def test_resume_writes_nothing_new(runs, smollm2_path, shared_data_dir, capsys):
    for method, mod in (("vanilla", inference_baseline), ("swift", inference_swift)):
        path = runs["tinystories"][method]
        before = path.read_bytes()
        extra = SWIFT_SMALL + ["--layer-cache", str(runs["tinystories"]["layer_cache"])] \
            if method == "swift" else []
        assert mod.main(base_args(smollm2_path, shared_data_dir, "tinystories", path) + extra) == 0
        assert "nothing to do" in capsys.readouterr().out
        assert path.read_bytes() == before


def test_cache_hit_reads_the_layer_config(runs, smollm2_path, shared_data_dir, tmp_path):
    paths = runs["humaneval"]
    answer = tmp_path / "swift-cache-hit.jsonl"
    cache = tmp_path / "layer_config.json"  # a copy of the search run's cache: this test changes it below
    cache.write_text(paths["layer_cache"].read_text())
    argv = base_args(smollm2_path, shared_data_dir, "humaneval", answer) + SWIFT_SMALL \
        + ["--layer-cache", str(cache), "--cache-hit"]
    assert inference_swift.main(argv) == 0
    header, records = by_id(answer)
    _, vanilla = by_id(paths["vanilla"])
    skip = json.loads(cache.read_text())["skip"]
    assert header["config"]["cache_hit"] is True
    for qid, r in records.items():
        assert r["stats"]["cache_hit"] is True and r["stats"]["search"] is None
        assert r["stats"]["final_skip"] == skip
        assert r["token_ids"] == vanilla[qid]["token_ids"]
    # the finished file resumes (nothing to do) while the cache gives the same set; once the cache gives another set
    # (the configuration names the cache, not its set) the run is refused and the answers stay as they were
    before = answer.read_bytes()
    assert inference_swift.main(argv) == 0 and answer.read_bytes() == before
    from model.errors import UserError

    moved = json.loads(cache.read_text())
    free = sorted(set(range(1, 29)) - set(moved["skip"]["mlp"]))
    moved["skip"]["mlp"] = sorted(moved["skip"]["mlp"])[:-1] + free[:1]
    cache.write_text(json.dumps(moved))
    with pytest.raises(UserError, match="holds answers made with the skip set .* now gives .* --overwrite"):
        inference_swift.main(argv)
    assert answer.read_bytes() == before


def test_sharded_run_matches_single_process(runs, smollm2_path, shared_data_dir, tmp_path):
    task = "humaneval"
    answer = tmp_path / "swift.jsonl"
    cache = tmp_path / "layer_config.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation_llama.inference_swift",
         *base_args(smollm2_path, shared_data_dir, task, answer), *SWIFT_SMALL,
         "--layer-cache", str(cache), "--num-shards", "2", "--warmup", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, sharded = by_id(answer)
    _, single = by_id(runs[task]["swift"])
    assert set(sharded) == set(single)
    for qid in single:
        assert sharded[qid]["token_ids"] == single[qid]["token_ids"]
    assert "shard" not in header["config"]  # merged: the per-shard keys are gone
    # the shards were merged and removed; the best shard layer cache became the run's cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer_config.json", "swift.jsonl"]
    assert json.loads(cache.read_text())["num_layers"] == 30


def test_sharded_parent_folds_in_stale_shards_and_skips_done_work(runs, smollm2_path,
                                                                 shared_data_dir, tmp_path):
    """A re-run after an interrupted sharded run: the shard files left behind are merged into the
    answer file first; when that completes the run, no shard process is started at all."""
    single = runs["tinystories"]["vanilla"]
    header_line, first, second = single.read_text().splitlines()
    answer = tmp_path / "vanilla.jsonl"
    answer.write_text(header_line + "\n" + first + "\n")
    paths.shard_path(answer, 1).write_text(header_line + "\n" + second + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation_llama.inference_baseline",
         *base_args(smollm2_path, shared_data_dir, "tinystories", answer), "--num-shards", "2"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stdout and "merging 1 shard file" in proc.stderr
    _, merged = by_id(answer)
    _, reference = by_id(single)
    assert {q: r["token_ids"] for q, r in merged.items()} == \
        {q: r["token_ids"] for q, r in reference.items()}
    assert [p.name for p in tmp_path.iterdir()] == ["vanilla.jsonl"]


def test_search_reset_per_instance(runs, smollm2_path, shared_data_dir, tmp_path):
    answer = tmp_path / "swift.jsonl"
    cache = tmp_path / "layer_config.json"
    assert inference_swift.main(
        base_args(smollm2_path, shared_data_dir, "humaneval", answer) + SWIFT_SMALL
        + ["--layer-cache", str(cache), "--reset-search-per-instance"]) == 0
    header, records = by_id(answer)
    _, vanilla = by_id(runs["humaneval"]["vanilla"])
    assert header["config"]["reset_search_per_instance"] is True
    searches = [r["stats"]["search"] for r in records.values()]
    # every instance started from scratch: the step counts do not accumulate
    assert all(0 < sm["n_iter"] <= MAX_NEW for sm in searches)
    best = max(searches, key=lambda sm: sm["best_score"])
    assert json.loads(cache.read_text())["matchness"] == pytest.approx(best["best_score"])
    for qid, r in records.items():
        assert r["token_ids"] == vanilla[qid]["token_ids"]


def test_chat_template_wraps_the_prompts(smollm2_path, shared_data_dir):
    from model.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_path))
    _, margs = load_model(str(smollm2_path))
    td = runner.load_task("humaneval", str(shared_data_dir), 1, 0)
    ids = {}
    for chat in (False, True):
        ids[chat] = prompting.tokenize_all(list(enumerate(td.instances)), tokenizer, margs,
                                           max_new_tokens=8, chat_template=chat,
                                           model_path=str(smollm2_path), task="humaneval")[0]
    plain, chat = ids[False], ids[True]
    assert len(chat) > len(plain)
    text = tokenizer.decode(chat)
    assert td.instances[0].prompt.strip()[:40] in text and text != tokenizer.decode(plain)


def test_both_ways_of_starting_the_runners_show_help():
    for cmd in ([sys.executable, "-m", "evaluation_llama.inference_swift", "--help"],
                [sys.executable, str(ROOT / "evaluation_llama" / "inference_baseline.py"),
                 "--help"]):
        proc = subprocess.run(cmd, cwd=ROOT if "-m" in cmd else ROOT.parent, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        assert "--max-new-tokens" in proc.stdout and "--num-gpus" in proc.stdout


def test_every_flag_has_help_and_both_runners_share_the_common_flags():
    parsers = {m: runner.build_parser(m) for m in ("swift", "vanilla")}
    flags = {}
    for method, parser in parsers.items():
        flags[method] = set()
        for action in parser._actions:
            assert action.help, f"{method}: {action.option_strings} has no help"
            flags[method].update(action.option_strings)
    swift_only = flags["swift"] - flags["vanilla"]
    assert flags["vanilla"] <= flags["swift"]
    expected = {"--skip-ratio", "--context-window", "--bayes-interval", "--max-opt-iter",
                "--max-tolerance-iter", "--max-score", "--num-candidates",
                "--draft-stop-threshold", "--max-draft-len", "--max-tree-nodes", "--no-guard",
                "--guard-margin", "--layer-cache", "--cache-hit", "--reset-search-per-instance",
                "--draft-chunk", "--draft-vocab", "--ratio-objective", "--context-drafts", "--context-tree",
                "--search-proposals", "--search-tiebreak", "--context-retry", "--draft-rest", "--draft-stop", "--multirow-launches",
                "--sync-cycles"}
    assert swift_only == expected


def test_swift_flags_map_one_to_one_onto_swift_config():
    values = {"skip_ratio": 0.3, "context_window": 12, "bayes_interval": 7, "max_opt_iter": 50,
              "max_tolerance_iter": 9, "max_score": 0.9, "num_candidates": 3,
              "draft_stop_threshold": 0.7, "max_draft_len": 10, "max_tree_nodes": 40,
              "guard_margin": 1.2, "context_retry": 32, "draft_rest": 2, "draft_stop": "confidence",
              "sync_cycles": 3, "search_tiebreak": "none"}
    argv = ["--task", "gsm8k", "--seed", "5", "--no-guard", "--context-drafts"]  # (--context-retry acts on them)
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    args = runner.build_parser("swift").parse_args(argv)
    cfg = settings.check_flags(args, methods.get("swift")).swift
    for name, value in values.items():
        assert getattr(cfg, name) == value, name
    assert cfg.guard is False and cfg.seed == 5
    default = settings.check_flags(runner.build_parser("swift").parse_args(["--task", "gsm8k"]),
                                   methods.get("swift")).swift
    assert dataclasses.asdict(default) == dataclasses.asdict(SwiftConfig())
    assert settings.check_flags(runner.build_parser("vanilla").parse_args(["--task", "gsm8k"]),
                                methods.get("vanilla")) is None


def test_tails_flag_is_checked_and_recorded(smollm2_path):
    """--tails kernels beside --kernels torch is refused before anything loads; the run configuration records
    --tails only when it is given (the configurations of earlier answer files keep their hashes)."""
    from model.errors import UserError
    parser, cls = runner.build_parser("swift"), methods.get("swift")
    bad = parser.parse_args(["--task", "gsm8k", "--tails", "kernels", "--kernels", "torch"])
    with pytest.raises(UserError, match="--tails kernels needs the Triton passes"):
        settings.check_flags(bad, cls)
    placed = parser.parse_args(["--task", "gsm8k", "--tails", "kernels", "--layer-devices", "cpu,cpu"])
    with pytest.raises(UserError, match="--tails kernels runs on one device"):
        settings.check_flags(placed, cls)
    recorded = []
    for extra in ([], ["--tails", "torch"]):
        args = parser.parse_args(["--task", "gsm8k", "--model-path", str(smollm2_path), "--device", "cpu"] + extra)
        s = settings.resolve(args, cls, settings.check_flags(args, cls))
        assert s.backends.tails == (extra[1] if extra else "auto")
        recorded.append(settings.run_config(s, "local")["backends"])
    auto = {"kernels": "auto", "compile": "auto"}
    assert recorded == [auto, dict(auto, tails="torch")]


def test_default_answer_file_and_layer_cache(smollm2_path):
    mid = model_name(str(smollm2_path))
    for method, argv, expected in (
            ("vanilla", ["--task", "gsm8k"], f"outputs/{mid}/gsm8k/vanilla.jsonl"),
            ("swift", ["--task", "humaneval", "--temperature", "0.6", "--top-p", "0.95"],
             f"outputs/{mid}/humaneval/swift-t0.6.jsonl")):
        args = runner.build_parser(method).parse_args(
            ["--model-path", str(smollm2_path), "--device", "cpu"] + argv)
        cls = methods.get(method)
        s = settings.resolve(args, cls, settings.check_flags(args, cls))
        assert s.answer_file.as_posix() == expected
        assert s.dtype_name == "float32" and s.device.type == "cpu"
        if method == "swift":
            assert Path(s.method_config.layer_cache).as_posix() == f"outputs/{mid}/humaneval/layer_config.json"

    # the runs of one task keep apart by default: a --cache-hit run after the search run (as the README shows it)
    # reads the search's layer cache and writes its own answers; the hybrid searches into a cache of its own
    for argv, answers, cache in ((["--cache-hit"], "swift-cached", "layer_config.json"),
                                 (["--context-drafts"], "hybrid", "layer_config-hybrid.json"),
                                 (["--context-drafts", "--cache-hit"], "hybrid-cached", "layer_config-hybrid.json")):
        args = runner.build_parser("swift").parse_args(
            ["--model-path", str(smollm2_path), "--device", "cpu", "--task", "gsm8k"] + argv)
        s = settings.resolve(args, methods.get("swift"), settings.check_flags(args, methods.get("swift")))
        assert s.answer_file.as_posix() == f"outputs/{mid}/gsm8k/{answers}.jsonl"
        assert Path(s.method_config.layer_cache).as_posix() == f"outputs/{mid}/gsm8k/{cache}"


# ----------------------------------------------------------------------------------------------
# the bash evaluation scripts (run with a stand-in python that records the commands)

FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == "-c" ]]; then exec "$REAL_PYTHON" "$@"; fi
"$REAL_PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$COMMAND_LOG"
"""


def run_script(name, tmp_path, smollm2_path, env_extra):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "commands.jsonl"
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, COMMAND_LOG=str(log),
               **env_extra)
    proc = subprocess.run(["bash", str(ROOT / name), str(smollm2_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def check_commands(commands, tasks, suffixes=("",)):
    """baseline, SWIFT, speed per (task, setting); every runner command parses and validates."""
    from evaluation_llama import speed

    expected = [(t, s) for t in tasks for s in suffixes]
    assert len(commands) == 3 * len(expected)
    parsed = []
    for k, (task, suffix) in enumerate(expected):
        base, swift, report = commands[3 * k:3 * k + 3]
        assert base[:2] == ["-m", "evaluation_llama.inference_baseline"]
        assert swift[:2] == ["-m", "evaluation_llama.inference_swift"]
        assert report[:2] == ["-m", "evaluation_llama.speed"]
        b = runner.build_parser("vanilla").parse_args(base[2:])
        s = runner.build_parser("swift").parse_args(swift[2:])
        settings.check_flags(b, methods.get("vanilla"))
        settings.check_flags(s, methods.get("swift"))
        r = speed.build_parser().parse_args(report[2:])
        assert b.task == s.task == task
        assert b.answer_file.endswith(f"/{task}/vanilla{suffix}.jsonl")
        assert s.answer_file.endswith(f"/{task}/swift{suffix}.jsonl")
        assert (r.file_path, r.base_path) == (s.answer_file, b.answer_file)
        parsed.append((b, s))
    return parsed


def test_eval_llama_script(tmp_path, smollm2_path):
    commands = run_script("eval_llama.sh", tmp_path, smollm2_path, {
        "NUM_SAMPLES": "3", "MAX_NEW_TOKENS": "16", "DATA_DIR": "/data/here",
        "EXTRA_ARGS": "--dtype float32 --warmup 0", "SWIFT_ARGS": "--skip-ratio 0.45"})
    for b, s in check_commands(commands, ["cnndm", "gsm8k", "tinystories"]):
        for a in (b, s):
            assert (a.num_samples, a.max_new_tokens, a.data_dir) == (3, 16, "/data/here")
            assert a.dtype == "float32" and a.warmup == 0 and a.temperature == 0.0
            assert a.model_path == str(smollm2_path)
        assert s.skip_ratio == 0.45
        assert s.layer_cache == str(Path(s.answer_file).parent / "layer_config.json")


def test_eval_scripts_write_under_outputs(tmp_path, smollm2_path):
    """OUTPUTS moves every answer file and layer cache (EXTRA_ARGS="--outputs ..." could not: the scripts name
    their files)."""
    commands = run_script("eval_codellama.sh", tmp_path, smollm2_path, {"OUTPUTS": str(tmp_path / "elsewhere")})
    for b, s in check_commands(commands, ["humaneval"], suffixes=("", "-t0.6")):
        for path in (b.answer_file, s.answer_file, s.layer_cache):
            assert Path(path).is_relative_to(tmp_path / "elsewhere" / model_name(str(smollm2_path)) / "humaneval")


def test_eval_codellama_script(tmp_path, smollm2_path):
    commands = run_script("eval_codellama.sh", tmp_path, smollm2_path, {"MAX_NEW_TOKENS": "32"})
    (gb, gs), (sb, ss) = check_commands(commands, ["humaneval"], suffixes=("", "-t0.6"))
    for a in (gb, gs):
        assert a.temperature == 0.0 and a.top_p == 1.0 and a.num_samples is None
    for a in (sb, ss):
        assert a.temperature == 0.6 and a.top_p == 0.95 and a.max_new_tokens == 32


def test_runs_from_before_the_launch_and_read_settings_resume_as_they_ran():
    """An answer file written before `multirow_launches`, `sync_cycles` and `search_tiebreak` existed records none of
    these keys; its graphs launched dependently, it read after every cycle and its search ranked by matchness alone:
    the configuration with those values matches it, so the run resumes; plain launches, several cycles per read or the
    closeness tie-break (the defaults now) do not, except that a run without a layer search records no tie-break;
    reading such a record back gives those values."""
    old = dataclasses.asdict(SwiftConfig())
    del old["multirow_launches"], old["sync_cycles"], old["search_tiebreak"]
    old["tree_rule"] = [list(r) for r in old["tree_rule"]]
    assert SwiftConfig().sync_cycles > 1 and SwiftConfig().search_tiebreak != "none"
    for method, wrap in ((methods.Swift, lambda c: methods.SwiftRun(c)), (methods.PromptLookup, lambda c: c),
                         (methods.EarlyExit, lambda c: methods.EarlyExitRun(c, 2))):
        rec = method.record_config(wrap(SwiftConfig(sync_cycles=1, search_tiebreak="none")))["swift"]
        assert {k: v for k, v in rec.items() if k != "exit_layer"} == old, method.name
        rec = method.record_config(wrap(SwiftConfig(sync_cycles=1)))["swift"]
        assert rec.get("search_tiebreak") == ("margin" if method is methods.Swift else None), method.name
        plain = method.record_config(wrap(SwiftConfig(multirow_launches="plain", sync_cycles=1)))["swift"]
        assert plain["multirow_launches"] == "plain"
        now = method.record_config(wrap(SwiftConfig()))["swift"]
        assert now["sync_cycles"] == SwiftConfig().sync_cycles and "multirow_launches" not in now
    # cycles read one by one whatever sync_cycles says (prompt lookup's context drafts, the paper's confidence rule):
    # nothing recorded, so such runs resume as before
    for cfg in (methods.PromptLookup.build_config(runner.build_parser("pld").parse_args(["--task", "gsm8k"])),
                SwiftConfig(draft_stop="confidence", sync_cycles=1), SwiftConfig(draft_stop="confidence")):
        assert "sync_cycles" not in methods.swift_record(cfg), cfg
    cached = methods.Swift.record_config(methods.SwiftRun(SwiftConfig(), cache_hit=True))["swift"]
    assert "search_tiebreak" not in cached  # cached layers: no search
    back = methods.SwiftRun.from_dict({"swift": old}).swift
    assert back.multirow_launches == "dependent" and back.sync_cycles == 1 and back.search_tiebreak == "none"
    plain = methods.SwiftRun.from_dict({"swift": SwiftConfig(multirow_launches="plain").to_dict()}).swift
    assert plain.multirow_launches == "plain" and plain.sync_cycles == SwiftConfig().sync_cycles
