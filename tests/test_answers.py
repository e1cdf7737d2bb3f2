"""Answer files: hashing, reading, resume semantics of AnswerWriter, merging shards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation_llama.answers import (VOLATILE_KEYS, AnswerWriter, config_hash, merge_answer_files,
                                      natural_key, read_answer_file, read_answers)
from model.errors import UserError

CONFIG = {"model_path": "models/x", "dtype": "float32", "device": "cpu", "temperature": 0.0,
          "top_p": 1.0, "max_new_tokens": 64, "seed": 0, "swift": {"skip_ratio": 0.45}}


def rec(qid, text="hi", ids=(1, 2), task="gsm8k", method="swift"):
    return {"question_id": qid, "model_id": "m", "task": task, "method": method,
            "tstamp": 1.0, "token_ids": [list(ids)],
            "choices": [{"index": 0, "turns": [text], "new_tokens": [len(ids)],
                         "wall_time": [0.5], "accept_lengths": [len(ids)], "num_drafted": [1]}]}


def lines_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ config_hash


def test_config_hash_is_stable_and_ignores_key_order_and_volatile_keys():
    h = config_hash(CONFIG)
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    reordered = dict(reversed(list(CONFIG.items())))
    assert config_hash(reordered) == h
    assert {"device_index", "shard", "num_shards"} <= VOLATILE_KEYS
    assert config_hash({**CONFIG, "device_index": 3, "shard": 1, "num_shards": 4}) == h
    assert config_hash({**CONFIG, "swift": {"skip_ratio": 0.45, "shard": 2}}) == h
    assert config_hash({**CONFIG, "max_new_tokens": 65}) != h
    assert config_hash({**CONFIG, "swift": {"skip_ratio": 0.5}}) != h


def test_natural_key_orders_numbers_numerically():
    ids = ["10", "2", "1", "HumanEval/10", "HumanEval/9", "q3", "q20"]
    assert sorted(ids, key=natural_key) == ["1", "2", "10", "HumanEval/9", "HumanEval/10",
                                            "q3", "q20"]


# ------------------------------------------------------------------ reading


def test_read_answers_skips_header_and_normalises_ids(tmp_path):
    p = tmp_path / "a.jsonl"
    header = {"header": True, "config": CONFIG, "config_hash": config_hash(CONFIG), "seed": 0,
              "created": 0.0}
    p.write_text("\n".join(json.dumps(x) for x in [header, rec(1), rec("2")]) + "\n")
    records = read_answers(p)
    assert [r["question_id"] for r in records] == ["1", "2"]
    h, _ = read_answer_file(p)
    assert h["config"] == CONFIG


def test_read_answers_reports_file_and_line_for_bad_json(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(rec(1)) + "\n{not json\n" + json.dumps(rec(3)) + "\n")
    with pytest.raises(UserError, match=r"a\.jsonl, line 2: not valid JSON"):
        read_answers(p)


def test_read_answers_reports_missing_keys(tmp_path):
    p = tmp_path / "a.jsonl"
    bad = rec(2)
    del bad["model_id"]
    bad2 = rec(3)
    del bad2["choices"][0]["wall_time"]
    p.write_text(json.dumps(rec(1)) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r"line 3: .*missing key\(s\) model_id"):
        read_answers(p)
    p.write_text(json.dumps(bad2) + "\n" + json.dumps(rec(4)) + "\n")
    with pytest.raises(UserError, match=r"line 1: .*wall_time"):
        read_answers(p)


def test_truncated_last_line_is_tolerated_with_a_warning(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(rec(1)) + "\n" + json.dumps(rec(2))[:25])
    warnings = []
    records = read_answers(p, warn=warnings.append)
    assert [r["question_id"] for r in records] == ["1"]
    assert len(warnings) == 1 and "line 2" in warnings[0]


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_answers(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------ writer / resume


def test_writer_creates_header_and_appends(tmp_path):
    p = tmp_path / "sub" / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        assert w.done_ids == set() and not w.resumed
        w.write(rec(1))
        w.write(rec(2))
        assert w.done_ids == {"1", "2"}
        with pytest.raises(UserError, match="already answered"):
            w.write(rec("2"))
    objs = lines_of(p)
    assert objs[0]["header"] is True and objs[0]["config_hash"] == config_hash(CONFIG)
    assert objs[0]["seed"] == 0 and "created" in objs[0]
    assert [o["question_id"] for o in objs[1:]] == [1, 2]


def test_writer_resumes_with_done_ids(tmp_path):
    p = tmp_path / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        w.write(rec(1))
    # a volatile key differs: still the same run
    with AnswerWriter(p, {**CONFIG, "device_index": 1}) as w:
        assert w.resumed and w.done_ids == {"1"}
        w.write(rec(2))
    assert [o.get("question_id") for o in lines_of(p)] == [None, 1, 2]


def test_a_cut_last_line_is_reported_once_on_resume(tmp_path, capsys):
    """The runner asks has_records, then resumes through the writer: the cut line was reported by both."""
    from evaluation_llama.answers import has_records, open_writer
    p = tmp_path / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        w.write(rec(1))
    with open(p, "a") as fh:
        fh.write(json.dumps(rec(2))[:30])
    assert has_records(p)
    open_writer(p, CONFIG).close()
    assert capsys.readouterr().err.count("incomplete last line") == 1


def test_writer_drops_truncated_last_line(tmp_path):
    p = tmp_path / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        w.write(rec(1))
    with open(p, "a") as fh:
        fh.write(json.dumps(rec(2))[:30])  # interrupted write
    notes = []
    with AnswerWriter(p, CONFIG, warn=notes.append) as w:
        assert w.done_ids == {"1"}
        w.write(rec(2))
    assert notes and "incomplete last line" in notes[0]
    text = p.read_text()
    assert text.endswith("\n")
    assert [o.get("question_id") for o in lines_of(p)] == [None, 1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_writer_refuses_other_configuration(tmp_path):
    p = tmp_path / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        w.write(rec(1))
    other = {**CONFIG, "max_new_tokens": 128, "swift": {"skip_ratio": 0.3}}
    with pytest.raises(UserError) as info:
        AnswerWriter(p, other)
    msg = str(info.value)
    assert "another configuration" in msg and "max_new_tokens" in msg
    assert "swift.skip_ratio" in msg and "--overwrite" in msg
    # the file is untouched
    assert [o.get("question_id") for o in lines_of(p)] == [None, 1]


def test_writer_overwrite_starts_fresh(tmp_path):
    p = tmp_path / "a.jsonl"
    with AnswerWriter(p, CONFIG) as w:
        w.write(rec(1))
    other = {**CONFIG, "max_new_tokens": 128}
    with AnswerWriter(p, other, overwrite=True) as w:
        assert w.done_ids == set()
        w.write(rec(1))
    objs = lines_of(p)
    assert len(objs) == 2 and objs[0]["config"]["max_new_tokens"] == 128


def test_writer_without_header_uses_record_config(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({**rec(1), "config": CONFIG}) + "\n")
    with AnswerWriter(p, CONFIG) as w:
        assert w.done_ids == {"1"}
    assert lines_of(p)[0]["header"] is True
    p.write_text(json.dumps(rec(1)) + "\n")
    with pytest.raises(UserError, match="no header"):
        AnswerWriter(p, CONFIG)


# ------------------------------------------------------------------ merge


def _shard(path, shard, records):
    with AnswerWriter(path, {**CONFIG, "shard": shard, "num_shards": 2,
                             "device_index": shard}) as w:
        for r in records:
            w.write(r)


def test_merge_shards_dedups_and_sorts(tmp_path):
    a, b = tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"
    _shard(a, 0, [rec(10), rec(2)])
    _shard(b, 1, [rec(1), rec(2)])  # id 2 duplicated with the same output
    out = tmp_path / "merged.jsonl"
    assert merge_answer_files([a, b], out) == 3
    objs = lines_of(out)
    assert objs[0]["header"] is True and "shard" not in objs[0]["config"]
    assert objs[0]["config_hash"] == config_hash(CONFIG)
    assert [o["question_id"] for o in objs[1:]] == ["1", "2", "10"]


def test_merge_refuses_conflicts_and_other_configs(tmp_path):
    a, b, c = tmp_path / "s0.jsonl", tmp_path / "s1.jsonl", tmp_path / "c.jsonl"
    _shard(a, 0, [rec(1)])
    _shard(b, 1, [rec(1, text="other", ids=(5, 6))])
    with pytest.raises(UserError, match="question 1 has different answers"):
        merge_answer_files([a, b], tmp_path / "m.jsonl")
    with AnswerWriter(c, {**CONFIG, "temperature": 0.7}) as w:
        w.write(rec(2))
    with pytest.raises(UserError, match="different configurations.*temperature"):
        merge_answer_files([a, c], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_cli_helper_prints_user_errors_without_traceback(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from evaluation_llama.cli import run_cli\n"
        "from model.errors import UserError\n"
        "def main():\n"
        "    raise UserError('bad flag')\n"
        "run_cli(main)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == "error: bad flag"
    res = subprocess.run([sys.executable, str(script), "--debug"], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_answer_files_honour_the_umask(tmp_path):
    """New answer files (and files rewritten in place) get the umask's mode, e.g. 0644, not a temporary file's 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "a.jsonl"
        with AnswerWriter(path, {"seed": 0}) as writer:
            writer.write({"question_id": "1", "model_id": "m", "task": "t", "method": "x",
                          "choices": [{"turns": ["a"], "new_tokens": [1], "wall_time": [0.1]}]})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        merged = tmp_path / "merged.jsonl"
        merge_answer_files([path], merged)
        assert stat.S_IMODE(merged.stat().st_mode) == 0o644
        path.chmod(0o640)  # a rewrite keeps the file's own mode
        with open(path, "a") as fh:
            fh.write('{"question_id": "2", "mod')
        AnswerWriter(path, {"seed": 0}).close()  # drops the cut line by rewriting the file
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
