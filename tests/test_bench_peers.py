"""CPU smoke test of scripts/bench_peers.py on the real SmolLM2-135M (fp32, so every greedy method is exact).

One gsm8k instance, 16 new tokens, every method, the prompt cut to its last 32 tokens and no warm-up (the 600-token
few-shot prompt's prefill and the warm-up calls would otherwise dominate on 2 CPU cores), without the speed guard (its
8-token plain probe would leave nothing to draft), so that every drafting method accepts drafted tokens; then one
--lengths 8,16 run (at 16 tokens SWIFT's layer search runs after its 8-token plain probe).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "bench_peers.jsonl").read_text().splitlines() if line.strip()]


def _common(model, data, out) -> list[str]:
    return ["--model-path", str(model), "--data-dir", str(data), "--tasks", "gsm8k", "--num-samples", "1",
            "--max-prompt-tokens", "32", "--warmup", "0", "--device", "cpu", "--out", str(out)]


def _check_outputs(out: Path) -> None:
    assert (out / "bench_peers.md").is_file() and "| method |" in (out / "bench_peers.md").read_text()
    png = (out / "bench_peers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_methods_match_vanilla(bench, smollm2_path, shared_data_dir, tmp_path):
    out = tmp_path / "methods"
    assert bench.main(_common(smollm2_path, shared_data_dir, out) + ["--max-new-tokens", "16", "--no-guard"]) == 0
    rows = _rows(out)
    by = {r["method"]: r for r in rows}
    assert len(rows) == len(bench.METHODS) and set(by) == set(bench.METHODS)
    for r in rows:
        assert not r.get("skipped"), r.get("note")
        assert r["task"] == "gsm8k" and r["dtype"] == "float32" and r["model"] == str(smollm2_path)
        for key in ("gpu", "torch", "transformers", "command"):
            assert r[key]
        assert 1 <= r["new_tokens"] <= 16 and r["wall_time_s"] > 0 and r["prompt_tokens"] == 32
    ref = by["vanilla"]["token_ids"][0]
    assert len(ref) == by["vanilla"]["new_tokens"]
    for m in ("hf-generate", "hf-prompt-lookup", "hf-early-exit", "swift", "swift-cached", "pld", "early-exit",
              "hybrid"):  # fp32: every greedy method gives vanilla's tokens
        assert by[m]["token_ids"][0] == ref, m
        assert by[m]["same_as_vanilla"] is True
    for m in ("swift", "swift-cached", "pld", "early-exit", "hybrid"):  # each accepted drafted tokens
        assert max(by[m]["choices"][0]["accept_lengths"]) > 1, m
        assert by[m]["guard"] is False
    assert by["swift"]["choices"][0]["accept_lengths"] and "accept_lengths" not in by["hf-generate"]["choices"][0]
    assert "static cache" in by["hf-generate"]["note"]
    assert "assistant_early_exit=15" in by["hf-early-exit"]["note"]  # default: half of SmolLM2's 30 layers
    assert by["pld"]["context_retry"] == by["hybrid"]["context_retry"] == 64  # recorded with the rows
    assert by["swift"]["draft_rest"] == by["early-exit"]["draft_rest"] == 3
    _check_outputs(out)


def test_lengths_mode(bench, smollm2_path, shared_data_dir, tmp_path):
    out = tmp_path / "lengths"
    assert bench.main(_common(smollm2_path, shared_data_dir, out) + ["--lengths", "8,16"]) == 0
    rows = _rows(out)
    assert {(r["method"], r["max_new_tokens"]) for r in rows} == {
        (m, n) for m in ("vanilla", "swift", "swift-cached") for n in (8, 16)}
    for r in rows:
        assert r["mode"] == "lengths" and not r.get("skipped")
        if r["method"] != "vanilla":
            assert r["same_as_vanilla"] is True
            assert "optimize" in r["times"]
    md = (out / "bench_peers.md").read_text()
    assert "max new tokens" in md and "not run: hf-early-exit" in md
    _check_outputs(out)


def test_speedups_pair_instances_when_peers_ran_on_fewer(bench):
    """--peer-samples: a peer answered q0, q1 only; its speedup compares it with vanilla on q0, q1, not on all four."""
    def row(method, qid, tps):
        return {"task": "gsm8k", "method": method, "question_id": qid, "token_ids": [[1, 2]],
                "choices": [{"index": 0, "turns": ["x"], "new_tokens": [int(tps)], "wall_time": [1.0]}]}
    rows = [row("vanilla", q, t) for q, t in (("q0", 100), ("q1", 100), ("q2", 400), ("q3", 400))]
    rows += [row("hf-generate", "q0", 10), row("hf-generate", "q1", 30)]
    rows += [row("swift", q, t) for q, t in (("q0", 120), ("q1", 120), ("q2", 480), ("q3", 480))]
    by = {s["method"]: s for s in bench.summarize(rows, "task")}
    assert by["hf-generate"]["n"] == 2
    assert by["hf-generate"]["speedup_vs_vanilla"] == pytest.approx(20 / 100)
    assert by["swift"]["speedup_vs_vanilla"] == pytest.approx(1.2)
    assert by["swift"]["speedup_vs_hf_generate"] == pytest.approx(120 / 20)  # on q0, q1


def test_peer_samples_flag_all_or_per_method(bench):
    """--peer-samples N limits every transformers method; METHOD=N,... only those named; bad names/values fail."""
    parse = bench.build_parser().parse_args
    assert parse(["--peer-samples", "3"]).peer_samples == {m: 3 for m in bench.HF_METHODS}
    assert parse(["--peer-samples", "hf-early-exit=1, hf-prompt-lookup=5"]).peer_samples == {
        "hf-early-exit": 1, "hf-prompt-lookup": 5}
    assert parse([]).peer_samples is None
    for bad in ("swift=3", "hf-early-exit=0", "hf-generate=x", "0"):
        with pytest.raises(SystemExit):
            parse(["--peer-samples", bad])
    assert bench._peer_note({"hf-early-exit": 1}) == "; hf-early-exit on the first 1"


def test_context_retry_flag_reaches_the_context_methods(bench):
    a = bench.build_parser().parse_args(["--context-retry", "0"])
    assert a.context_retry == 0 and bench.Bench.knobs(type("B", (), {"a": a})(), "pld") == {"context_retry": 0}
    default = bench.build_parser().parse_args([])
    assert bench.Bench.knobs(type("B", (), {"a": default})(), "pld") == {}
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--context-retry", "-1"])
    a = bench.build_parser().parse_args(["--draft-rest", "0"])
    assert bench.Bench.knobs(type("B", (), {"a": a})(), "swift") == {"draft_rest": 0}
    assert bench.Bench.knobs(type("B", (), {"a": default})(), "swift") == {}


def test_variant_flag_parses_and_overrides_the_command_line(bench):
    """--variant LABEL=METHOD:FLAG=VALUE,...: the label runs METHOD with its own settings in place of the command
    line's; labels, methods and flags that cannot work are refused with the reason."""
    parse = bench.build_parser().parse_args
    a = parse(["--draft-rest", "5", "--variant", "s0=swift:draft-rest=0,--draft-vocab=64",
               "--variant", "p0=pld:context-retry=0"])
    assert [(v.label, v.method, v.knobs) for v in a.variant] == [
        ("s0", "swift", (("draft_rest", 0), ("draft_vocab", 64))), ("p0", "pld", (("context_retry", 0),))]
    b = type("B", (), {"a": a})()
    assert bench.Bench.knobs(b, "s0") == {"draft_rest": 0, "draft_vocab": 64}
    assert bench.Bench.knobs(b, "swift") == {"draft_rest": 5}
    assert bench.Bench.knobs(b, "p0") == {"context_retry": 0} and bench.Bench.base(b, "p0") == "pld"
    assert bench.method_order({"s0": 1, "vanilla": 1, "swift": 1}) == ["vanilla", "swift", "s0"]
    a = parse(["--multirow-launches", "dependent", "--variant", "p1=pld:multirow-launches=plain"])
    b = type("B", (), {"a": a})()
    assert bench.Bench.knobs(b, "hybrid") == {"multirow_launches": "dependent"}
    assert bench.Bench.knobs(b, "p1") == {"multirow_launches": "plain"}
    assert bench.Bench.knobs(b, "vanilla") == {}
    a = parse(["--sync-cycles", "8", "--variant", "s1=swift:sync-cycles=1"])
    b = type("B", (), {"a": a})()
    assert bench.Bench.knobs(b, "swift") == {"sync_cycles": 8} and bench.Bench.knobs(b, "s1") == {"sync_cycles": 1}
    assert bench.Bench.knobs(b, "early-exit") == {"sync_cycles": 8} and bench.Bench.knobs(b, "pld") == {}
    for bad, why in (("s0=swift", "expected LABEL"), ("swift=swift:draft-rest=0", "other than a method"),
                     ("S 0=swift:draft-rest=0", "lower-case"), ("v=vanilla:draft-rest=0", "not one of"),
                     ("c=swift-cached:draft-rest=0", "not one of"), ("p=pld:draft-rest=0", "has no setting"),
                     ("s=swift:draft-rest=-1", ""), ("s=swift:multirow-launches=pdl", "plain or dependent"),
                     ("p=pld:sync-cycles=2", "has no setting")):
        with pytest.raises(SystemExit):
            parse(["--variant", bad])
        if why:
            with pytest.raises(bench.argparse.ArgumentTypeError, match=why):
                bench._variant(bad)
    for argv in (["--variant", "x=swift:draft-rest=0", "--variant", "x=pld:context-retry=0"],
                 ["--variant", "x=swift:draft-rest=0", "--lengths", "8"]):
        with pytest.raises(SystemExit):
            bench.main(argv)


def test_a_variant_runs_beside_its_method_against_the_same_vanilla(bench, smollm2_path, shared_data_dir, tmp_path):
    out = tmp_path / "variant"
    argv = _common(smollm2_path, shared_data_dir, out) + ["--max-new-tokens", "8", "--methods", "vanilla,pld",
                                                           "--variant", "swift-v=swift:draft-vocab=4096,draft-rest=0"]
    assert bench.main(argv) == 0
    by = {r["method"]: r for r in _rows(out)}
    assert list(by) == ["vanilla", "pld", "swift", "swift-v"]  # the variant's method runs too, the variant last
    assert by["swift-v"]["variant"] == {"of": "swift", "draft_vocab": 4096, "draft_rest": 0}
    assert "variant" not in by["swift"] and by["swift"]["draft_vocab"] == 0 and by["swift"]["draft_rest"] == 3
    assert by["swift"]["draft_rest_doubles"] is True
    assert by["swift-v"]["same_as_vanilla"] is True and by["swift-v"]["token_ids"] == by["vanilla"]["token_ids"]
    assert "[swift-v: --draft-rest 0, --draft-vocab 4096]" in by["swift-v"]["note"]
    md = (out / "bench_peers.md").read_text()
    assert "| gsm8k | swift-v | 1 |" in md and md.index("| gsm8k | swift |") < md.index("| gsm8k | swift-v |")
    _check_outputs(out)


def _env_row(task, method, qid, tps, times=None, command="run-a"):
    r = {"gpu": "G", "torch": "t", "transformers": "x", "dtype": "bfloat16", "model": "m", "our_compile": True,
         "command": command, "max_new_tokens": 8, "mode": "methods", "task": task, "method": method,
         "question_id": qid, "token_ids": [[1, 2]],
         "choices": [{"index": 0, "turns": ["x"], "new_tokens": [int(tps)], "wall_time": [1.0]}]}
    if times:
        r["times"] = times
    return r


def _write(folder: Path, rows):
    folder.mkdir(parents=True)
    (folder / "bench_peers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_merge_runs_into_one_table_with_time_breakdown(bench, tmp_path):
    """--merge: the tasks of two runs in one table, both commands listed, SWIFT's time shares summed per task;
    a row present in two runs is refused."""
    t = {"prefill": 0.1, "optimize": 0.2, "draft": 0.1, "verify": 0.1, "plain": 0.4}
    _write(tmp_path / "a", [_env_row("gsm8k", "vanilla", "q0", 100), _env_row("gsm8k", "swift", "q0", 150, t)])
    _write(tmp_path / "b", [_env_row("cnndm", "vanilla", "q0", 100, command="run-b"),
                            _env_row("cnndm", "swift", "q0", 50, t, command="run-b")])
    assert bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    md = (tmp_path / "m" / "bench_peers.md").read_text()
    assert "`run-a`" in md and "`run-b`" in md and "merged from 2 runs" in md
    assert "| gsm8k | swift | 1 | 150.0 | 1.50x |" in md and "| cnndm | swift | 1 | 50.0 | 0.50x |" in md
    # shares of the 1.0 s wall: 10/20/10/10/40 %, other 10 %
    assert "| gsm8k | swift | 10.0% | 20.0% | 10.0% | 10.0% | 40.0% | 10.0% | 1.00 |" in md
    assert not (tmp_path / "m" / "bench_peers.jsonl").exists()
    _write(tmp_path / "c", [_env_row("gsm8k", "vanilla", "q0", 100)])
    with pytest.raises(SystemExit, match="more than one run"):
        bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "m2")])
    # context drafts run with different retry settings are not one comparison (rows without the key: 0)
    _write(tmp_path / "d", [_env_row("tinystories", "vanilla", "q0", 100),
                            dict(_env_row("tinystories", "pld", "q0", 300), context_retry=64)])
    _write(tmp_path / "e", [_env_row("humaneval", "vanilla", "q0", 100), _env_row("humaneval", "pld", "q0", 300)])
    with pytest.raises(SystemExit, match="context-retry"):
        bench.main(["--merge", str(tmp_path / "d"), str(tmp_path / "e"), "--out", str(tmp_path / "m3")])
    assert bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "e"), "--out", str(tmp_path / "m4")]) == 0
    # a run whose rows were gzipped (as the committed reference runs are) merges alike
    import gzip
    raw = tmp_path / "e" / "bench_peers.jsonl"
    (tmp_path / "e" / "bench_peers.jsonl.gz").write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    assert bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "e"), "--out", str(tmp_path / "m5")]) == 0
    assert (tmp_path / "m5" / "bench_peers.md").read_text().replace("m5", "m4") == \
        (tmp_path / "m4" / "bench_peers.md").read_text()
    # a --variant label merges where its settings agree, and is refused where they differ
    v = dict(_env_row("gsm8k", "swift-v", "q1", 120), variant={"of": "swift", "draft_rest": 0}, draft_rest=3)
    _write(tmp_path / "f", [_env_row("gsm8k", "vanilla", "q1", 100), v])
    _write(tmp_path / "g", [_env_row("cnndm", "vanilla", "q1", 100), dict(v, task="cnndm")])
    assert bench.main(["--merge", str(tmp_path / "f"), str(tmp_path / "g"), "--out", str(tmp_path / "m6")]) == 0
    assert "| cnndm | swift-v | 1 | 120.0 | 1.20x |" in (tmp_path / "m6" / "bench_peers.md").read_text()
    _write(tmp_path / "h", [_env_row("humaneval", "vanilla", "q1", 100),
                            dict(v, task="humaneval", variant={"of": "swift", "draft_rest": 1})])
    with pytest.raises(SystemExit, match="swift-v rows ran with different settings"):
        bench.main(["--merge", str(tmp_path / "f"), str(tmp_path / "h"), "--out", str(tmp_path / "m7")])
    # the same --draft-rest before and after its rest began to double is not one setting; a variant's own value
    # of a setting stands for the command line's
    old_rule = dict(_env_row("gsm8k", "swift", "q2", 110), draft_rest=3)
    new_rule = dict(_env_row("cnndm", "swift", "q2", 110), draft_rest=3, draft_rest_doubles=True)
    _write(tmp_path / "i", [_env_row("gsm8k", "vanilla", "q2", 100), old_rule])
    _write(tmp_path / "j", [_env_row("cnndm", "vanilla", "q2", 100), new_rule])
    with pytest.raises(SystemExit, match="differ in --draft-rest"):
        bench.main(["--merge", str(tmp_path / "i"), str(tmp_path / "j"), "--out", str(tmp_path / "m8")])
    _write(tmp_path / "k", [_env_row("tinystories", "vanilla", "q1", 100),
                            dict(v, task="tinystories", draft_rest=5)])  # run with --draft-rest 5 beside it
    assert bench.main(["--merge", str(tmp_path / "f"), str(tmp_path / "k"), "--out", str(tmp_path / "m9")]) == 0
    # runs with other kernel settings (rows without them: none) or with the guard off are not one comparison
    pdl = [dict(r, kernel_settings={"SWIFT_PDL": "1"}) for r in (_env_row("cnndm", "vanilla", "q3", 100),
                                                                  _env_row("cnndm", "swift", "q3", 150))]
    _write(tmp_path / "l", pdl)
    with pytest.raises(SystemExit, match="differ in"):
        bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "l"), "--out", str(tmp_path / "m10")])
    _write(tmp_path / "n", [_env_row("cnndm", "vanilla", "q3", 100),
                            dict(_env_row("cnndm", "swift", "q3", 150), guard=False)])
    with pytest.raises(SystemExit, match="differ in --guard"):
        bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "n"), "--out", str(tmp_path / "m11")])
    # the launch mode of the multi-row graphs: rows without it ran them dependently
    _write(tmp_path / "o", [_env_row("humaneval", "vanilla", "q4", 100),
                            dict(_env_row("humaneval", "swift", "q4", 150), multirow_launches="plain")])
    with pytest.raises(SystemExit, match=r"differ in --multirow-launches: \['dependent', 'plain'\]"):
        bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "o"), "--out", str(tmp_path / "m12")])
    _write(tmp_path / "p", [_env_row("humaneval", "vanilla", "q4", 100),
                            dict(_env_row("humaneval", "swift", "q4", 150), multirow_launches="dependent")])
    assert bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "p"), "--out", str(tmp_path / "m13")]) == 0
    # cycles per read: rows without it read after every cycle
    _write(tmp_path / "q", [_env_row("humaneval", "vanilla", "q4", 100),
                            dict(_env_row("humaneval", "swift", "q4", 150), sync_cycles=4)])
    with pytest.raises(SystemExit, match=r"differ in --sync-cycles: \[1, 4\]"):
        bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "q"), "--out", str(tmp_path / "m14")])


def test_instances_flag_answers_only_the_named_ids(bench, smollm2_path, shared_data_dir, tmp_path):
    common = ["--model-path", str(smollm2_path), "--data-dir", str(shared_data_dir), "--tasks", "gsm8k",
              "--num-samples", "3", "--max-prompt-tokens", "32", "--warmup", "0", "--device", "cpu",
              "--methods", "vanilla", "--max-new-tokens", "4"]
    out = tmp_path / "all"
    assert bench.main(common + ["--out", str(out)]) == 0
    ids = [r["question_id"] for r in _rows(out)]
    assert len(ids) == 3
    one = tmp_path / "one"
    assert bench.main(common + ["--instances", ids[1], "--out", str(one)]) == 0
    assert [r["question_id"] for r in _rows(one)] == [ids[1]]
    assert f"instances {ids[1]} of 3 instances per task" in (one / "bench_peers.md").read_text()
    with pytest.raises(SystemExit, match="not among the 3 instances"):
        bench.main(common + ["--instances", f"{ids[0]},no-such-id", "--out", str(tmp_path / "bad")])

