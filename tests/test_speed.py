"""Metrics and the speed CLI on hand-made answer files with hand-computed numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation_llama import metrics
from evaluation_llama.answers import config_hash
from evaluation_llama.speed import compare, compare_files, main
from model.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"model_path": "models/m", "temperature": 0.0, "max_new_tokens": 32, "seed": 0}


def rec(qid, task, tokens, seconds, accepts, drafted, ids, method="swift", model="m"):
    return {"question_id": qid, "model_id": model, "task": task, "method": method, "tstamp": 0.0,
            "token_ids": [ids],
            "choices": [{"index": 0, "turns": ["text"], "new_tokens": [tokens],
                         "wall_time": [seconds], "accept_lengths": accepts,
                         "num_drafted": [drafted]}]}


def swift_records():
    # gsm8k q1: 10 tok / 0.5 s = 20 tok/s; q2: 6 tok / 0.2 s = 30 tok/s; cnndm q1: 8 / 0.4 = 20
    return [rec("1", "gsm8k", 10, 0.5, [3, 1, 4, 2], 8, [1, 2, 3]),
            rec("2", "gsm8k", 6, 0.2, [2, 2, 2], 6, [9, 9]),
            rec("1", "cnndm", 8, 0.4, [4, 4], 6, [7])]


def vanilla_records():
    # every answer runs at 10 tok/s; gsm8k q2 differs from the SWIFT output
    return [rec("1", "gsm8k", 10, 1.0, [1] * 10, 0, [1, 2, 3], method="vanilla"),
            rec("2", "gsm8k", 6, 0.6, [1] * 6, 0, [9, 8], method="vanilla"),
            rec("1", "cnndm", 8, 0.8, [1] * 8, 0, [7], method="vanilla")]


def write(path, records, config=CONFIG):
    lines = []
    if config is not None:
        lines.append(json.dumps({"header": True, "config": config,
                                 "config_hash": config_hash(config), "seed": 0, "created": 0}))
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


# ------------------------------------------------------------------ metrics


def test_tokens_per_second_and_speedup():
    s, v = swift_records(), vanilla_records()
    assert metrics.tokens_per_second(s[0]) == pytest.approx(20.0)
    assert metrics.tokens_per_second(s[1]) == pytest.approx(30.0)
    # per-answer rates averaged, then the ratio: mean(20, 30) / mean(10, 10) = 2.5
    assert metrics.speedup(s[:2], v[:2]) == pytest.approx(2.5)
    # not the ratio of pooled rates: (16 / 0.7) / (16 / 1.6) = 2.2857...
    assert metrics.speedup(s[:2], v[:2]) != pytest.approx(16 / 0.7 / 10)
    assert metrics.speedup(s, v) == pytest.approx((70 / 3) / 10)
    # pooled: all tokens over all seconds, then the ratio: (16 / 0.7) / (16 / 1.6) = 1.6 / 0.7
    assert metrics.pooled_speedup(s[:2], v[:2]) == pytest.approx(1.6 / 0.7)
    assert metrics.pooled_speedup(s, v) == pytest.approx((24 / 1.1) / (24 / 2.4))
    fast_short = [rec("3", "gsm8k", 2, 0.01, [2], 1, [1])]  # one short, fast answer: it moves the mean, not the pool
    slow = [rec("3", "gsm8k", 2, 0.2, [1, 1], 0, [1], method="vanilla")]
    assert metrics.speedup(s[:2] + fast_short, v[:2] + slow) > 5 > metrics.pooled_speedup(s[:2] + fast_short,
                                                                                           v[:2] + slow)
    with pytest.raises(UserError, match="pooled rate is undefined"):
        metrics.pooled_speedup([rec("1", "gsm8k", 0, 0.0, [], 0, [])], v)


def test_tokens_per_second_sums_turns():
    r = rec("1", "t", 0, 0, [1], 0, [])
    r["choices"][0]["new_tokens"] = [4, 6]
    r["choices"][0]["wall_time"] = [0.25, 0.25]
    assert metrics.tokens_per_second(r) == pytest.approx(20.0)
    r["choices"][0]["wall_time"] = [0, 0]
    with pytest.raises(UserError, match="wall_time"):
        metrics.tokens_per_second(r)


def test_mean_accept_length_and_acceptance_rate():
    s, v = swift_records(), vanilla_records()
    # steps: 3,1,4,2,2,2,2 -> 16 / 7
    assert metrics.mean_accept_length(s[:2]) == pytest.approx(16 / 7)
    # accepted drafted tokens (a - 1): 2+0+3+1 + 1+1+1 = 9, drafted 8 + 6 = 14
    assert metrics.acceptance_rate(s[:2]) == pytest.approx(9 / 14)
    assert metrics.mean_accept_length(s) == pytest.approx(24 / 9)
    assert metrics.acceptance_rate(s) == pytest.approx(15 / 20)
    assert metrics.mean_accept_length(v) == pytest.approx(1.0)
    assert metrics.acceptance_rate(v) is None  # nothing drafted
    assert metrics.mean_accept_length([]) is None


def test_identical_fraction():
    s, v = swift_records(), vanilla_records()
    assert metrics.identical_fraction(s[:2], v[:2]) == pytest.approx(0.5)
    assert metrics.identical_fraction(s[2:], v[2:]) == pytest.approx(1.0)
    no_ids = [dict(r, token_ids=None) for r in s[:2]]
    assert metrics.identical_fraction(no_ids, v[:2]) == pytest.approx(1.0)  # same text
    assert metrics.identical_fraction(s[:1], v[1:2]) is None  # no common id


# ------------------------------------------------------------------ compare


def test_compare_per_task_and_overall():
    result = compare(swift_records(), vanilla_records())
    g, c, o = result["tasks"]["gsm8k"], result["tasks"]["cnndm"], result["overall"]
    assert (g["answers"], c["answers"], o["answers"]) == (2, 1, 3)
    assert g["speedup"] == pytest.approx(2.5) and c["speedup"] == pytest.approx(2.0)
    assert o["speedup"] == pytest.approx(7 / 3)
    assert g["pooled_speedup"] == pytest.approx(1.6 / 0.7) and o["pooled_speedup"] == pytest.approx(2.4 / 1.1)
    assert g["tokens_per_second"] == pytest.approx(25) and g["base_tokens_per_second"] == 10
    assert g["mean_accept_length"] == pytest.approx(16 / 7)
    assert c["acceptance_rate"] == pytest.approx(1.0)
    assert o["acceptance_rate"] == pytest.approx(0.75)
    assert g["identical_fraction"] == 0.5 and c["identical_fraction"] == 1.0
    assert o["identical_fraction"] == pytest.approx(2 / 3)
    assert o["base_mean_accept_length"] == 1.0
    assert result["partial"] is False
    assert (result["method"], result["base_method"], result["model_id"]) == ("swift", "vanilla",
                                                                             "m")


def test_compare_refuses_mismatches():
    s, v = swift_records(), vanilla_records()
    with pytest.raises(UserError, match=r"different questions: 1 only in .*gsm8k/2"):
        compare(s, v[:1] + v[2:])
    part = compare(s, v[:1] + v[2:], allow_partial=True)
    assert part["partial"] and part["only_in_file"] == 1 and part["overall"]["answers"] == 2
    with pytest.raises(UserError, match="different models"):
        compare(s, [dict(r, model_id="other") for r in v])
    with pytest.raises(UserError, match="holds no answers"):
        compare([], v)
    with pytest.raises(UserError, match="more than once"):
        compare(s + s[:1], v)


def test_compare_files_refuses_other_generation_settings(tmp_path):
    a = write(tmp_path / "swift.jsonl", swift_records())
    b = write(tmp_path / "vanilla.jsonl", vanilla_records(), {**CONFIG, "max_new_tokens": 64})
    with pytest.raises(UserError, match="different max_new_tokens"):
        compare_files(a, b)
    b = write(tmp_path / "vanilla.jsonl", vanilla_records(), {**CONFIG, "temperature": 0.7})
    with pytest.raises(UserError, match="different temperature"):
        compare_files(a, b)
    b = write(tmp_path / "vanilla.jsonl", vanilla_records(), {**CONFIG, "seed": 7})
    assert compare_files(a, b)["overall"]["speedup"] == pytest.approx(7 / 3)


@pytest.mark.parametrize("key,mine,base", [("chat_template", True, False), ("dtype", "bfloat16", "float32"),
                                           ("top_p", 0.95, 1.0), ("top_k", 0, 20), ("device", "cuda", "cpu")])
def test_compare_files_refuses_files_that_ran_otherwise(key, mine, base, tmp_path):
    """A chat-template baseline against plain prompts once gave '0.10x, identical 0%' without a word; each setting
    that changes the answers or what computes them must agree where both files record it."""
    a = write(tmp_path / "swift.jsonl", swift_records(), {**CONFIG, key: mine})
    b = write(tmp_path / "vanilla.jsonl", vanilla_records(), {**CONFIG, key: base})
    with pytest.raises(UserError, match=f"different {key}"):
        compare_files(a, b)
    b = write(tmp_path / "vanilla.jsonl", vanilla_records())  # not recorded on one side: compared as before
    assert compare_files(a, b)["overall"]["speedup"] == pytest.approx(7 / 3)


# ------------------------------------------------------------------ CLI


def run_cli(*args, script=False):
    cmd = [sys.executable] + (["evaluation_llama/speed.py"] if script
                              else ["-m", "evaluation_llama.speed"]) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_cli_json_output_parses(tmp_path):
    a = write(tmp_path / "swift.jsonl", swift_records())
    b = write(tmp_path / "vanilla.jsonl", vanilla_records(), config=None)
    res = run_cli("--file-path", a, "--base-path", b, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["tasks"]["gsm8k"]["speedup"] == pytest.approx(2.5)
    assert data["overall"]["acceptance_rate"] == pytest.approx(0.75)
    assert data["file_path"] == str(a)


def test_cli_markdown_and_script_mode(tmp_path):
    a = write(tmp_path / "swift.jsonl", swift_records())
    b = write(tmp_path / "vanilla.jsonl", vanilla_records())
    res = run_cli("--file-path", a, "--base-path", b, script=True)
    assert res.returncode == 0, res.stderr
    assert "| gsm8k | 2 | 2.50x | 25.0 | 10.0 | 2.29 | 64.3% | 50.0% |" in res.stdout
    assert "| **overall** | 3 | 2.33x |" in res.stdout
    assert "| gsm8k | 2 | 2.50x | 25.0 | 10.0 | 2.29 | 64.3% | 50.0% | 2.29x |" in res.stdout
    assert res.stdout.count("pooled speedup") == 1 and "| 66.7% | 2.18x |" in res.stdout
    res = run_cli("--help")
    assert res.returncode == 0
    for flag in ("--file-path", "--base-path", "--allow-partial", "--json", "--debug"):
        assert flag in res.stdout


def test_cli_refusals_exit_2_without_traceback(tmp_path):
    a = write(tmp_path / "swift.jsonl", swift_records())
    b = write(tmp_path / "vanilla.jsonl", vanilla_records()[:2])
    res = run_cli("--file-path", a, "--base-path", b)
    assert res.returncode == 2
    assert res.stderr.startswith("error: the files answer different questions: 1 only in")
    assert "cnndm/1" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("--file-path", a, "--base-path", b, "--allow-partial", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["partial"] is True
    empty = write(tmp_path / "empty.jsonl", [])
    res = run_cli("--file-path", a, "--base-path", empty)
    assert res.returncode == 2 and "holds no answers" in res.stderr
    other = write(tmp_path / "other.jsonl", [dict(r, model_id="x") for r in vanilla_records()])
    res = run_cli("--file-path", a, "--base-path", other)
    assert res.returncode == 2 and "different models" in res.stderr
    res = run_cli("--file-path", a, "--base-path", other, "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_main_in_process(tmp_path, capsys):
    a = write(tmp_path / "swift.jsonl", swift_records())
    b = write(tmp_path / "vanilla.jsonl", vanilla_records())
    assert main(["--file-path", str(a), "--base-path", str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["cnndm"]["speedup"] == pytest.approx(2.0)


def test_a_cpu_report_says_what_to_expect_there():
    """Speed on a CPU is not SWIFT's speed: the report says so (and says nothing of the kind for GPU runs)."""
    from evaluation_llama.speed import to_markdown

    def recs(method, device, seconds):
        return [{"question_id": str(q), "model_id": "m", "task": "gsm8k", "method": method,
                 "config": {"device": device, "max_new_tokens": 8, "temperature": 0.0},
                 "choices": [{"turns": ["x"], "new_tokens": [8], "wall_time": [seconds],
                              "accept_lengths": [1] * 8, "num_drafted": [0]}]} for q in range(2)]

    cpu = compare(recs("swift", "cpu", 2.0), recs("vanilla", "cpu", 1.0))
    assert cpu["devices"] == ["cpu"]
    assert "not expected to be faster" in to_markdown(cpu)
    gpu = compare(recs("swift", "cuda", 0.5), recs("vanilla", "cuda", 1.0))
    assert "not expected to be faster" not in to_markdown(gpu)


def test_answer_cost_fit_separates_fixed_and_per_token_cost():
    """scripts/answer_costs.py: wall = a + b * tokens recovered exactly; equal lengths give (None, mean per token)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("answer_costs",
                                                  Path(__file__).resolve().parents[1] / "scripts/answer_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = mod.fit([(t, 40.0 + 0.9 * t) for t in (50, 200, 512)])
    assert abs(a - 40.0) < 1e-9 and abs(b - 0.9) < 1e-12
    assert mod.fit([(512, 460.8), (512, 460.8)]) == (None, 0.9)  # no fixed cost can be told apart: none given


def test_the_report_says_when_its_speedup_says_little(tmp_path):
    """Few answers, or a method that drafted nothing (SWIFT on answers too short for its search), get a note under
    the table; enough answers of a method that drafted get none."""
    from evaluation_llama.speed import to_markdown
    few = to_markdown(compare(swift_records(), vanilla_records()))
    assert "Note: 3 answers only" in few and "drafted no token" not in few
    plain = [rec(str(i), "gsm8k", 4, 0.1, [1, 1, 1, 1], 0, [i]) for i in range(12)]
    base = [rec(str(i), "gsm8k", 4, 0.2, [1, 1, 1, 1], 0, [i], method="vanilla") for i in range(12)]
    md = to_markdown(compare(plain, base))
    assert "answers only" not in md and "Note: swift drafted no token in these answers" in md
    drafted = [rec(str(i), "gsm8k", 4, 0.1, [2, 2], 2, [i]) for i in range(12)]
    assert "Note:" not in to_markdown(compare(drafted, base))
