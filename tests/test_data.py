"""Tests of the data package: counts, sampling, exemplars, prompt shapes, errors, chat wrapping.

Uses the offline JSON Lines files beside the repository (``../shared/data``); no network, no models.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from data import (DEFAULT_NUM_SAMPLES, PAPER_TASKS, TASKS, Instance, TaskData, format_prompt,
                  load_task, resolve_data_dir)
from data import prompts
from model.errors import UserError


@pytest.fixture(scope="module")
def data_dir(shared_data_dir) -> str:
    """The shared data folder (conftest: beside the repository, or $SWIFT_DATA_DIR; a missing one fails)."""
    return str(shared_data_dir)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("SWIFT_DATA_DIR", raising=False)


def read_records(folder: str, name: str) -> list[dict]:
    with open(Path(folder) / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def ids(data: TaskData) -> list[str]:
    return [inst.question_id for inst in data.instances]


# --- constants / API -------------------------------------------------------------------------------


def test_public_constants():
    assert TASKS == ("cnndm", "gsm8k", "tinystories", "humaneval", "specbench")
    assert PAPER_TASKS == ("cnndm", "gsm8k", "tinystories", "humaneval")
    assert DEFAULT_NUM_SAMPLES == 1000


def test_instance_is_frozen():
    inst = Instance("1", "gsm8k", "p", {})
    with pytest.raises(Exception):
        inst.prompt = "q"  # type: ignore[misc]


# --- counts and sampling ---------------------------------------------------------------------------


def test_humaneval_all_164(data_dir):
    data = load_task("humaneval", data_dir)
    assert len(data.instances) == 164
    assert data.note is None
    assert ids(data)[0] == "HumanEval/0" and ids(data)[-1] == "HumanEval/163"
    assert all(isinstance(i.question_id, str) for i in data.instances)


def test_humaneval_subset_and_too_many(data_dir):
    data = load_task("humaneval", data_dir, num_samples=10, seed=3)
    assert len(set(ids(data))) == 10
    order = [int(q.split("/")[1]) for q in ids(data)]
    assert order == sorted(order)
    with pytest.raises(UserError, match=r"humaneval.*165.*164"):
        load_task("humaneval", data_dir, num_samples=165)


def test_tinystories_uses_all_313_with_note(data_dir):
    data = load_task("tinystories", data_dir)
    assert len(data.instances) == 313
    assert data.note is not None and "313" in data.note and "1000" in data.note
    assert data.note.startswith("tinystories")


def test_specbench_all_480_with_note(data_dir):
    data = load_task("specbench", data_dir)
    assert len(data.instances) == 480
    assert data.note is not None and "480" in data.note
    categories = {inst.reference["category"] for inst in data.instances}
    assert {"writing", "translation", "summarization", "qa", "math_reasoning", "rag"} <= categories


def test_gsm8k_default_1000_sorted(data_dir):
    data = load_task("gsm8k", data_dir)
    assert len(data.instances) == 1000 and data.note is None
    order = [int(q) for q in ids(data)]
    assert order == sorted(order) and len(set(order)) == 1000


def test_gsm8k_sampling_is_seeded(data_dir):
    a = load_task("gsm8k", data_dir, num_samples=20, seed=0)
    b = load_task("gsm8k", data_dir, num_samples=20, seed=0)
    c = load_task("gsm8k", data_dir, num_samples=20, seed=1)
    assert len(ids(a)) == 20 and len(set(ids(a))) == 20
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert [int(q) for q in ids(a)] == sorted(int(q) for q in ids(a))
    assert a.seed == 0 and c.seed == 1


def test_explicit_request_above_available_fails(data_dir):
    with pytest.raises(UserError) as err:
        load_task("tinystories", data_dir, num_samples=1000)
    assert "tinystories" in str(err.value) and "1000" in str(err.value) and "313" in str(err.value)
    assert len(load_task("tinystories", data_dir, num_samples=313).instances) == 313


# --- exemplars never evaluated ---------------------------------------------------------------------


def test_cnndm_exemplar_not_evaluated(data_dir):
    data = load_task("cnndm", data_dir)
    exemplar_id = str(prompts.CNNDM_EXEMPLAR_ID)
    assert [str(e["id"]) for e in data.exemplars] == [exemplar_id]
    assert exemplar_id not in ids(data)
    assert len(data.instances) == 999 and data.note is not None and "999" in data.note
    exemplar_article = data.exemplars[0]["article"]
    # the exemplar article appears once in each prompt (as the shot), never as the evaluated article
    assert all(inst.prompt.count(exemplar_article) == 1 for inst in data.instances[:50])


def test_gsm8k_exemplars_not_evaluated(data_dir):
    data = load_task("gsm8k", data_dir, num_samples=1319)
    train = read_records(data_dir, "gsm8k_train.jsonl")
    assert [e["question"] for e in data.exemplars] == [r["question"] for r in train[:5]]
    evaluated = {inst.reference["question"] for inst in data.instances}
    assert not evaluated & {e["question"] for e in data.exemplars}


def test_tinystories_exemplar_not_evaluated(data_dir):
    data = load_task("tinystories", data_dir)
    texts = {inst.reference["text"] for inst in data.instances}
    assert prompts.TINYSTORIES_EXEMPLAR not in texts
    assert all(prompts.TINYSTORIES_EXEMPLAR[:60] not in t for t in texts)


# --- prompt shapes ---------------------------------------------------------------------------------


def test_gsm8k_prompt_shape(data_dir):
    data = load_task("gsm8k", data_dir, num_samples=5, seed=7)
    for inst in data.instances:
        assert inst.prompt.count("####") == 5
        for ex in data.exemplars:
            assert prompts.clean_gsm8k_answer(ex["answer"]) in inst.prompt
            assert "<<" not in inst.prompt
        assert inst.prompt.endswith(f"Question: {inst.reference['question'].strip()}\nAnswer:")
        assert inst.reference["final"] == inst.reference["answer"].split("####")[-1].strip().replace(",", "")


def test_humaneval_prompt_is_record_prompt(data_dir):
    records = {r["task_id"]: r for r in read_records(data_dir, "humaneval.jsonl")}
    for inst in load_task("humaneval", data_dir).instances:
        rec = records[inst.question_id]
        assert inst.prompt == rec["prompt"]
        assert inst.reference["test"] == rec["test"]
        assert inst.reference["entry_point"] == rec["entry_point"]


def test_cnndm_prompt_shape(data_dir):
    records = {str(r["id"]): r for r in read_records(data_dir, "cnndm_test.jsonl")}
    inst = load_task("cnndm", data_dir, num_samples=3).instances[0]
    rec = records[inst.question_id]
    assert inst.prompt.count(prompts.CNNDM_INSTRUCTION) == 2
    assert inst.prompt.endswith(f"Article: {rec['article'].strip()}\n{prompts.CNNDM_INSTRUCTION}\nSummary:")
    assert inst.reference["highlights"] == rec["highlights"]
    assert not re.search(r" \.(?:\s|$)", prompts.clean_highlights(records["63"]["highlights"]))


def test_tinystories_prompt_shape(data_dir):
    data = load_task("tinystories", data_dir)
    for inst in data.instances:
        ref = inst.reference
        assert ref["beginning"] + ref["continuation"] == ref["text"].strip()
        assert ref["continuation"].strip()
        assert len(ref["beginning"]) >= prompts.TINYSTORIES_MIN_PREFIX_CHARS
        assert inst.prompt.startswith(prompts.TINYSTORIES_INSTRUCTION)
        assert prompts.TINYSTORIES_EXEMPLAR in inst.prompt
        assert inst.prompt.endswith("Story: " + ref["beginning"].strip())
    first = data.instances[1].reference["beginning"]
    assert first == "Once upon a time, in a big forest, there lived a rhinoceros named Roxy."


def test_split_story_edge_cases():
    assert prompts.split_story("no sentence end here at all") == ("no sentence", " end here at all")
    assert prompts.split_story("Hi. Yo. This is long enough to count now. More.") == (
        "Hi. Yo. This is long enough to count now.", " More.")


def test_specbench_prompt_is_first_turn(data_dir):
    records = {str(r["id"]): r for r in read_records(data_dir, "specbench_question.jsonl")}
    for inst in load_task("specbench", data_dir, num_samples=30, seed=2).instances:
        rec = records[inst.question_id]
        assert inst.prompt == rec["turns"][0]
        assert inst.reference["category"] == rec["category"]


def test_gsm8k_final_answer():
    assert prompts.gsm8k_final_answer("a\n#### 1,234") == "1234"
    assert prompts.gsm8k_final_answer("no marker") is None


# --- sources and errors ----------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def humaneval_row(i: int) -> dict:
    return {"id": f"HumanEval/{i}", "task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n",
            "canonical_solution": "    return 1\n", "test": "def check(c):\n    pass\n",
            "entry_point": f"f{i}"}


def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("SWIFT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == str(tmp_path / "env")
    assert resolve_data_dir(str(tmp_path)) == str(tmp_path)  # explicit wins
    monkeypatch.setenv("SWIFT_DATA_DIR", "")
    assert resolve_data_dir(None) is None


def test_env_var_is_used(monkeypatch, tmp_path):
    write_jsonl(tmp_path / "humaneval.jsonl", [humaneval_row(i) for i in range(3)])
    monkeypatch.setenv("SWIFT_DATA_DIR", str(tmp_path))
    data = load_task("humaneval")
    assert ids(data) == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert data.source.endswith("humaneval.jsonl")


def test_unknown_task():
    with pytest.raises(UserError) as err:
        load_task("mmlu", "unused")
    msg = str(err.value)
    assert "mmlu" in msg and all(t in msg for t in TASKS)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist") as err:
        load_task("gsm8k", str(missing))
    assert str(missing) in str(err.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(UserError) as err:
        load_task("gsm8k", str(tmp_path))
    msg = str(err.value)
    assert "gsm8k_test.jsonl" in msg and str(tmp_path / "gsm8k_test.jsonl") in msg


def test_missing_exemplar_file(tmp_path):
    write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"id": 0, "question": "q", "answer": "a\n#### 1"}])
    with pytest.raises(UserError, match="gsm8k_train.jsonl"):
        load_task("gsm8k", str(tmp_path))


def test_malformed_line(tmp_path):
    path = write_jsonl(tmp_path / "humaneval.jsonl",
                       [humaneval_row(0), humaneval_row(1), '{"id": "HumanEval/2", "prompt": '])
    with pytest.raises(UserError) as err:
        load_task("humaneval", str(tmp_path))
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg


def test_non_object_line(tmp_path):
    write_jsonl(tmp_path / "humaneval.jsonl", [humaneval_row(0), "[1, 2]"])
    with pytest.raises(UserError, match="line 2"):
        load_task("humaneval", str(tmp_path))


def test_missing_field(tmp_path):
    row = humaneval_row(1)
    del row["entry_point"]
    path = write_jsonl(tmp_path / "humaneval.jsonl", [humaneval_row(0), "", row])
    with pytest.raises(UserError) as err:
        load_task("humaneval", str(tmp_path))
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg and "entry_point" in msg


def test_missing_id_and_empty_list_field(tmp_path):
    write_jsonl(tmp_path / "specbench_question.jsonl",
                [{"id": 1, "category": "qa", "turns": ["hi"]}, {"category": "qa", "turns": ["x"]}])
    with pytest.raises(UserError, match=r"line 2.*'id'"):
        load_task("specbench", str(tmp_path))
    write_jsonl(tmp_path / "specbench_question.jsonl", [{"id": 1, "category": "qa", "turns": []}])
    with pytest.raises(UserError, match=r"line 1.*'turns'"):
        load_task("specbench", str(tmp_path))


def test_duplicate_ids(tmp_path):
    write_jsonl(tmp_path / "humaneval.jsonl", [humaneval_row(0), humaneval_row(0)])
    with pytest.raises(UserError, match=r"line 2.*more than once"):
        load_task("humaneval", str(tmp_path))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_samples(tmp_path, bad):
    write_jsonl(tmp_path / "humaneval.jsonl", [humaneval_row(0)])
    with pytest.raises(UserError, match="num_samples"):
        load_task("humaneval", str(tmp_path), num_samples=bad)


def test_cnndm_without_exemplar_record(tmp_path):
    write_jsonl(tmp_path / "cnndm_test.jsonl", [{"id": 0, "article": "A.", "highlights": "B ."}])
    with pytest.raises(UserError, match=str(prompts.CNNDM_EXEMPLAR_ID)):
        load_task("cnndm", str(tmp_path))


# --- hub (no network: the datasets package is absent or faked) ------------------------------------


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError) as err:
        load_task("gsm8k")
    assert "pip install datasets" in str(err.value) and "--data-dir" in str(err.value)


def test_specbench_has_no_hub():
    with pytest.raises(UserError, match="--data-dir"):
        load_task("specbench")


def test_hub_records_are_mapped(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return [{"question": f"{split} q{i}?", "answer": f"step\n#### {i}"} for i in range(8)]
        if name == "openai/openai_humaneval":
            rows = [humaneval_row(i) for i in range(4)]
            return [{k: v for k, v in r.items() if k != "id"} for r in rows]
        if name == "roneneldan/TinyStories":
            return [{"text": "Once upon a time there was a cat. It sat."}, {"text": "  "}]
        raise AssertionError(name)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    gsm = load_task("gsm8k", num_samples=3, seed=0)
    assert ("openai/gsm8k", "main", "test") in calls and ("openai/gsm8k", "main", "train") in calls
    assert gsm.source == "hub:openai/gsm8k/main/test"
    assert len(gsm.instances) == 3 and gsm.note is None
    assert all(inst.prompt.count("train q") == 5 for inst in gsm.instances)
    he = load_task("humaneval")
    assert ids(he) == [f"HumanEval/{i}" for i in range(4)]
    assert he.instances[2].prompt == "def f2():\n"
    ts = load_task("tinystories")
    assert len(ts.instances) == 1 and ts.instances[0].question_id == "0"


def test_hub_failure_is_user_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError, match="offline"):
        load_task("humaneval")


# --- chat template ---------------------------------------------------------------------------------


class TinyChatTokenizer:
    """A stand-in with just the chat-template method of a Hugging Face tokenizer."""

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")


class NoTemplateTokenizer:
    def apply_chat_template(self, messages, **kwargs):
        raise ValueError("tokenizer.chat_template is not set")


def test_format_prompt_plain_and_chat():
    tok = TinyChatTokenizer()
    assert format_prompt("Hello") == "Hello"
    assert format_prompt("Hello", tok) == "Hello" and not tok.calls
    out = format_prompt("Hello", tok, chat_template=True)
    assert out == "<|user|>Hello<|end|><|assistant|>"
    assert tok.calls == [([{"role": "user", "content": "Hello"}], False, True)]


def test_format_prompt_errors():
    with pytest.raises(UserError, match="chat template"):
        format_prompt("x", None, chat_template=True)
    with pytest.raises(UserError, match="--chat-template"):
        format_prompt("x", NoTemplateTokenizer(), chat_template=True)
