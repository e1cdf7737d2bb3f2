"""The paper-table report on a tiny synthetic outputs tree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation_llama.report import build_report, main

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


def rec(qid, task, method, tokens, seconds, accepts, drafted, stats=None):
    r = {"question_id": qid, "model_id": MODEL, "task": task, "method": method, "tstamp": 0.0,
         "token_ids": [[1] * tokens], "config": {"temperature": 0.0, "max_new_tokens": 16},
         "choices": [{"index": 0, "turns": ["x"], "new_tokens": [tokens], "wall_time": [seconds],
                      "accept_lengths": accepts, "num_drafted": [drafted]}]}
    if stats is not None:
        r["stats"] = stats
    return r


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def tree(tmp_path):
    out = tmp_path / "outputs"
    skip = {"final_skip": {"attn": [1, 3], "mlp": [2]}, "num_layers": 6}
    # gsm8k: swift at 20 and 30 tok/s, vanilla at 10 -> speedup 2.5; steps 3,1,4,2 | 2,2
    write(out / MODEL / "gsm8k" / "swift.jsonl",
          [rec("1", "gsm8k", "swift", 10, 0.5, [3, 1, 4, 2], 8),
           rec("2", "gsm8k", "swift", 4, 4 / 30, [2, 2], 4, stats=skip)])
    write(out / MODEL / "gsm8k" / "vanilla.jsonl",
          [rec("1", "gsm8k", "vanilla", 10, 1.0, [1] * 10, 0),
           rec("2", "gsm8k", "vanilla", 4, 0.4, [1] * 4, 0)])
    # cnndm: swift only (no baseline, no stats), speedup unknown
    write(out / MODEL / "cnndm" / "swift.jsonl", [rec("1", "cnndm", "swift", 6, 0.3, [3, 3], 4)])
    # humaneval: vanilla only; and an unreadable file of another model
    write(out / MODEL / "humaneval" / "vanilla.jsonl",
          [rec("1", "humaneval", "vanilla", 2, 0.2, [1, 1], 0)])
    bad = out / "other-model" / "gsm8k" / "swift.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"question_id": 1}\n{"oops"\n{"x": 1}\n')
    (out / MODEL / "gsm8k" / "swift.shard0.jsonl").write_text("")
    return tmp_path


def test_report_table_numbers_and_plots(tree):
    out, assets = tree / "outputs", tree / "assets"
    report = build_report(out, assets)
    cells = report.rows[(MODEL, "swift")]
    assert cells["gsm8k"].speedup == pytest.approx(2.5)
    assert cells["gsm8k"].mean_accept_length == pytest.approx(14 / 6)
    # (2+0+3+1 + 1+1) / (8 + 4)
    assert cells["gsm8k"].acceptance_rate == pytest.approx(8 / 12)
    assert cells["gsm8k"].identical_fraction == 1.0
    assert cells["cnndm"].speedup is None and cells["cnndm"].acceptance_rate == 1.0
    assert cells["overall"].speedup == pytest.approx(2.5)  # only gsm8k has a baseline
    md = report.markdown
    header = "| model | method | cnndm α | cnndm M | cnndm speedup | gsm8k α | gsm8k M | " \
             "gsm8k speedup | humaneval α | humaneval M | humaneval speedup | overall α | " \
             "overall M | overall speedup |"
    assert header in md
    assert f"| {MODEL} | swift | 100.0% | 3.00 | - | 66.7% | 2.33 | 2.50x | - | - | - | " \
           f"66.7% | 2.33 | 2.50x |" in md
    names = {p.name for p in report.files}
    assert names == {"speedup_per_task.png", f"accept_lengths_{MODEL}_gsm8k_swift.png",
                     f"accept_lengths_{MODEL}_cnndm_swift.png",
                     f"skip_layers_{MODEL}_gsm8k_swift.png"}
    for p in report.files:
        assert p.parent == assets and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    notes = "\n".join(report.notes)
    assert f"{MODEL}/cnndm: no vanilla.jsonl" in notes
    assert f"{MODEL}/cnndm/swift: no stats.final_skip" in notes
    assert "other-model" in notes and "swift.shard0.jsonl" in notes
    assert "(../assets/speedup_per_task.png)" in md


def test_report_cli_writes_markdown(tree):
    res = subprocess.run([sys.executable, "-m", "evaluation_llama.report", "--outputs",
                          str(tree / "outputs"), "--assets", str(tree / "assets")],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    written = (tree / "outputs" / "report.md").read_text()
    assert written.strip() in res.stdout and "2.50x" in written
    assert (tree / "assets" / f"skip_layers_{MODEL}_gsm8k_swift.png").exists()


def test_report_on_empty_or_missing_tree(tmp_path, capsys):
    (tmp_path / "outputs").mkdir()
    assert main(["--outputs", str(tmp_path / "outputs"), "--assets", str(tmp_path / "a")]) == 0
    assert "No answer files" in (tmp_path / "outputs" / "report.md").read_text()
    assert not (tmp_path / "a").exists()
    res = subprocess.run([sys.executable, "evaluation_llama/report.py", "--outputs",
                          str(tmp_path / "missing")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: outputs directory")


def test_report_skips_folders_without_answers_silently(tree):
    """Benchmark rows, logs and whole reference trees under --outputs are not answer folders: not read, no note."""
    out = tree / "outputs"
    write(out / "bench_engine" / "bench_engine.jsonl", [{"model": "x", "tokens_per_s": 1.0}])
    write(out / "multi-gpu" / "dp1" / "vanilla.jsonl", [rec("1", "gsm8k", "vanilla", 2, 0.2, [1, 1], 0)])
    write(out / "bench_peers" / "part_cnndm_gsm8k" / "bench_peers.jsonl", [{"question_id": "1"}])
    write(out / "reference" / "gsm8k" / "swift.jsonl", [rec("1", "gsm8k", "swift", 2, 0.1, [2], 1)])
    (out / "plots").mkdir()
    report = build_report(out, tree / "assets")
    assert set(report.rows) == {(MODEL, "swift")}
    notes = "\n".join(report.notes)
    for name in ("bench_engine", "multi-gpu", "dp1", "part_cnndm_gsm8k", "reference"):
        assert name not in notes and name not in report.markdown, name


def test_report_plots_go_beside_the_report_not_into_committed_folders(tree):
    """Without --assets the plots go to <outputs>/plots; the committed reference folders are never written."""
    out = tree / "outputs"
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "assets").rglob("*.png")}
    assert main(["--outputs", str(out)]) == 0
    assert (out / "plots" / "speedup_per_task.png").is_file()
    assert "(plots/speedup_per_task.png)" in (out / "report.md").read_text()
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "assets").rglob("*.png")} == before
    for argv in (["--outputs", str(ROOT / "outputs" / "reference" / "h100-bf16")],
                 ["--outputs", str(out), "--assets", str(ROOT / "assets" / "reference")]):
        res = subprocess.run([sys.executable, "-m", "evaluation_llama.report", *argv], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 2 and "committed reference results" in res.stderr, res.stderr
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "assets").rglob("*.png")} == before


def test_a_method_run_with_a_setting_is_compared_with_the_baseline_of_that_setting(tmp_path):
    """eval_codellama.sh writes {vanilla,swift}.jsonl (greedy) and {vanilla,swift}-t0.6.jsonl (sampling): swift-t0.6
    is compared with vanilla-t0.6, which is not a row of its own, and the greedy pair stays as it was."""
    from evaluation_llama.report import base_of
    out = tmp_path / "outputs"
    he = out / MODEL / "humaneval"
    write(he / "vanilla.jsonl", [rec("1", "humaneval", "vanilla", 10, 1.0, [1] * 10, 0)])
    write(he / "swift.jsonl", [rec("1", "humaneval", "swift", 10, 0.5, [5, 5], 8)])
    sampled = [rec("1", "humaneval", "vanilla", 8, 2.0, [1] * 8, 0)]
    for r in sampled:
        r["config"]["temperature"] = 0.6
    write(he / "vanilla-t0.6.jsonl", sampled)
    swift_sampled = [dict(rec("1", "humaneval", "swift", 8, 0.5, [4, 4], 6))]
    swift_sampled[0]["config"] = dict(swift_sampled[0]["config"], temperature=0.6)
    write(he / "swift-t0.6.jsonl", swift_sampled)
    report = build_report(out, tmp_path / "assets")
    assert report.rows[(MODEL, "swift")]["humaneval"].speedup == pytest.approx(2.0)
    assert report.rows[(MODEL, "swift-t0.6")]["humaneval"].speedup == pytest.approx(4.0)  # 16 / 4 tok/s
    assert (MODEL, "vanilla-t0.6") not in report.rows
    assert not [n for n in report.notes if "no speedup" in n]
    methods = {"vanilla", "swift", "vanilla-t0.6", "swift-t0.6", "swift-cached-t0.6", "pld-x"}
    assert [base_of(m, methods) for m in ("swift-t0.6", "swift-cached-t0.6", "pld-x", "vanilla-t0.6", "swift")] == \
        ["vanilla-t0.6", "vanilla-t0.6", "vanilla", "vanilla", "vanilla"]


def test_a_report_of_cpu_answers_says_what_to_expect_there(tmp_path):
    from evaluation_llama.speed import CPU_NOTE
    out = tmp_path / "outputs"
    header = {"header": True, "config": {"device": "cpu", "temperature": 0.0, "max_new_tokens": 16}}
    for method, seconds in (("vanilla", 1.0), ("swift", 2.0)):
        path = out / MODEL / "gsm8k" / f"{method}.jsonl"
        write(path, [header, rec("1", "gsm8k", method, 10, seconds, [1] * 10, 0)])
    assert CPU_NOTE in build_report(out, tmp_path / "assets").markdown
    header["config"]["device"] = "cuda"
    write(out / MODEL / "gsm8k" / "vanilla.jsonl", [header, rec("1", "gsm8k", "vanilla", 10, 1.0, [1] * 10, 0)])
    write(out / MODEL / "gsm8k" / "swift.jsonl", [header, rec("1", "gsm8k", "swift", 10, 2.0, [1] * 10, 0)])
    assert CPU_NOTE not in build_report(out, tmp_path / "assets").markdown
