"""Robustness of the evaluation runners against bad input and crashes.

"Users run long evaluations unattended; a crash at hour three must not lose two hours of answers,
and a typo must not produce a 40-line traceback." Every user mistake below must end the CLI with
exit status 2 and one paragraph on stderr (``error: ...``, no traceback); interrupted runs
(SIGINT, SIGTERM, kill -9) must resume without duplicated, truncated or lost answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evaluation_llama import guards, inference_baseline, inference_swift, runner
from evaluation_llama.answers import config_hash, read_answer_file
from model.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


# ----------------------------------------------------------------------------------------------
# helpers


def cli(method: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    module = "evaluation_llama.inference_" + ("swift" if method == "swift" else "baseline")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `error:` paragraph that contains every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    message = errors[0]
    assert proc.stderr.rstrip().endswith(message)  # the paragraph is the last thing printed
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)
    return message


def small_args(model, data, answer, task="tinystories", num=1, max_new=4):
    return ["--model-path", model, "--data-dir", data, "--task", task, "--num-samples", num,
            "--max-new-tokens", max_new, "--warmup", 0, "--device", "cpu", "--answer-file", answer]


def answer_lines(path: Path) -> list[dict]:
    """Every non-blank line of an answer file, parsed (fails on a truncated line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records_by_id(path: Path) -> dict[str, dict]:
    _, records = read_answer_file(path)
    ids = [r["question_id"] for r in records]
    assert len(ids) == len(set(ids)), f"duplicated answers in {path}: {ids}"
    return {r["question_id"]: r for r in records}


def make_tiny_model(folder: Path, tokenizer_src: Path, max_position_embeddings: int) -> Path:
    """A 4-layer random LLaMA with SmolLM2's tokenizer (so the vocabularies agree)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_src / name).exists():
            shutil.copy(tokenizer_src / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, smollm2_path):
    return make_tiny_model(tmp_path_factory.mktemp("tiny64"), smollm2_path, 64)


# ----------------------------------------------------------------------------------------------
# flags


BAD_FLAGS = [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "-1"], "--num-samples"),
    (["--num-samples", "two"], "--num-samples"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5", "--temperature", "1"], "--top-p"),
    (["--top-k", "-3"], "--top-k"),
    (["--top-p", "0.9"], "--temperature"),  # top-p without sampling
    (["--seed", "-1"], "--seed"),
    (["--warmup", "-1"], "--warmup"),
    (["--num-gpus", "0"], "--num-gpus"),
    (["--shard", "2", "--num-shards", "2"], "--shard"),
    (["--shard", "0"], "--num-shards"),
    (["--num-gpus", "2", "--num-shards", "3"], "disagree"),
    (["--answer-file", "answers.txt"], ".jsonl"),
    (["--task", "nosuchtask"], "invalid choice"),
    (["--dtype", "int8"], "--dtype"),
    (["--no-such-flag"], "unrecognized"),
]

BAD_SWIFT_FLAGS = [
    (["--skip-ratio", "0"], "--skip-ratio"),
    (["--skip-ratio", "1"], "--skip-ratio"),
    (["--skip-ratio", "1.5"], "--skip-ratio"),
    (["--skip-ratio", "-0.2"], "--skip-ratio"),
    (["--context-window", "1"], "--context-window"),
    (["--bayes-interval", "0"], "--bayes-interval"),
    (["--max-opt-iter", "-1"], "--max-opt-iter"),
    (["--max-tolerance-iter", "0"], "--max-tolerance-iter"),
    (["--max-score", "0"], "--max-score"),
    (["--max-score", "1.2"], "--max-score"),
    (["--num-candidates", "0"], "--num-candidates"),
    (["--num-candidates", "17"], "--num-candidates"),
    (["--draft-stop-threshold", "0"], "--draft-stop-threshold"),
    (["--draft-stop-threshold", "2"], "--draft-stop-threshold"),
    (["--max-draft-len", "0"], "--max-draft-len"),
    (["--max-draft-len", "40"], "--max-draft-len"),
    (["--guard-margin", "0"], "--guard-margin"),
    (["--context-retry", "-1"], "--context-retry"),
    (["--draft-rest", "-1"], "--draft-rest"),
    (["--max-draft-len", "25", "--max-tree-nodes", "10"], "invalid SWIFT settings"),
    (["--context-window", "64", "--num-candidates", "4"], "invalid SWIFT settings"),
    (["--cache-hit", "--reset-search-per-instance"], "--cache-hit"),
    (["--context-tree", "union"], "--context-tree only acts on the context drafts of the hybrid"),
    (["--context-retry", "8", "--context-tree", "select"], "add --context-drafts or drop them"),
    (["--search-proposals", "greedy"], "invalid choice"),
]


@pytest.mark.parametrize("extra,needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_values_are_one_paragraph_errors(extra, needle, tmp_path):
    args = ["--task", "tinystories", "--answer-file", tmp_path / "a.jsonl"]
    proc = cli("vanilla", *args, *extra)
    assert_user_error(proc, needle)
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("extra,needle", BAD_SWIFT_FLAGS,
                         ids=[" ".join(a) for a, _ in BAD_SWIFT_FLAGS])
def test_bad_swift_settings_are_one_paragraph_errors(extra, needle, tmp_path):
    proc = cli("swift", "--task", "tinystories", "--answer-file", tmp_path / "a.jsonl", *extra)
    assert_user_error(proc, needle)


@pytest.mark.parametrize("method,extra,needle", [("pld", ["--context-retry", "-1"], "--context-retry"),
                                                 ("pld", ["--guard-margin", "0"], "--guard-margin"),
                                                 ("early_exit", ["--guard-margin", "-1"], "--guard-margin"),
                                                 ("early_exit", ["--draft-rest", "-1"], "--draft-rest"),
                                                 ("pld", ["--ngram-min", "4", "--ngram-max", "2"],
                                                  "invalid prompt lookup settings: --ngram-min 4: n-gram sizes "
                                                  "must satisfy 1 <= min <= max <= 8, got 4..2"),
                                                 ("early_exit", ["--max-draft-len", "0"], "early exit settings")])
def test_bad_guard_settings_of_the_fixed_drafters_name_their_flag(method, extra, needle, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", f"evaluation_llama.inference_{method}", "--task", "tinystories",
                           "--answer-file", str(tmp_path / "a.jsonl"), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert_user_error(proc, needle)
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("extra,needle", [(["--num-samples", "0"], "--num-samples: must be >= 1"),
                                          (["--tasks", "cnndm,gsm8kk"], "--tasks: unknown task(s) gsm8kk"),
                                          (["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 1")])
def test_run_suite_refuses_bad_values_before_running_anything(extra, needle, tmp_path):
    """--num-samples 0 once meant "unset" (the paper's 1000 instances per task), and a misspelt task was found only
    after the tasks before it had run."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_suite.py"), "--outputs", str(tmp_path / "o"),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback():
    proc = cli("vanilla", "--task", "tinystories", "--max-new-tokens", "0", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(shared_data_dir, tmp_path):
    proc = cli("vanilla", "--task", "tinystories", "--data-dir", shared_data_dir, "--device",
               "cuda", "--answer-file", tmp_path / "a.jsonl")
    assert_user_error(proc, "CUDA is not available", "--device cpu")


def test_unknown_device(shared_data_dir, tmp_path):
    proc = cli("vanilla", "--task", "tinystories", "--data-dir", shared_data_dir, "--device",
               "tpu7", "--answer-file", tmp_path / "a.jsonl")
    assert_user_error(proc, "--device")


# ----------------------------------------------------------------------------------------------
# model


def test_model_path_missing(shared_data_dir, tmp_path):
    proc = cli("vanilla", *small_args(tmp_path / "no-such-model", shared_data_dir,
                                      tmp_path / "a.jsonl"))
    assert_user_error(proc, "does not exist", "fetch_models.py")
    assert not (tmp_path / "a.jsonl").exists()


def test_model_path_is_not_a_model(shared_data_dir, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "README.md").write_text("just notes\n")
    assert_user_error(cli("vanilla", *small_args(folder, shared_data_dir, tmp_path / "a.jsonl")),
                      "config.json")
    text_file = tmp_path / "weights.bin"
    text_file.write_text("not a model")
    assert_user_error(cli("vanilla", *small_args(text_file, shared_data_dir,
                                                 tmp_path / "a.jsonl")), ".gguf")


def test_model_with_broken_weights(shared_data_dir, smollm2_path, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(smollm2_path / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    proc = cli("vanilla", *small_args(folder, shared_data_dir, tmp_path / "a.jsonl"))
    assert_user_error(proc, "could not load the model")


def test_unsupported_architecture(shared_data_dir, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_head": 4,
        "n_layer": 2, "vocab_size": 100, "activation_function": "gelu_new"}))
    proc = cli("swift", *small_args(folder, shared_data_dir, tmp_path / "a.jsonl"))
    assert_user_error(proc, "unsupported architecture", "GPT2LMHeadModel")


def test_tokenizer_missing(shared_data_dir, smollm2_path, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    shutil.copy(smollm2_path / "config.json", folder / "config.json")
    os.symlink(smollm2_path / "model.safetensors", folder / "model.safetensors")
    proc = cli("vanilla", *small_args(folder, shared_data_dir, tmp_path / "a.jsonl"))
    assert_user_error(proc, "tokenizer")
    assert not (tmp_path / "a.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# data


def test_data_file_missing(smollm2_path, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    proc = cli("vanilla", *small_args(smollm2_path, empty, tmp_path / "a.jsonl"))
    assert_user_error(proc, "tinystories_valid.jsonl", "missing")


def test_data_dir_missing(smollm2_path, tmp_path):
    proc = cli("vanilla", *small_args(smollm2_path, tmp_path / "nowhere", tmp_path / "a.jsonl"))
    assert_user_error(proc, "does not exist")


def test_malformed_data_line_names_file_and_line(smollm2_path, shared_data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = (shared_data_dir / "tinystories_valid.jsonl").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # cut line 3 in half
    (data / "tinystories_valid.jsonl").write_text("\n".join(lines) + "\n")
    proc = cli("vanilla", *small_args(smollm2_path, data, tmp_path / "a.jsonl"))
    assert_user_error(proc, "tinystories_valid.jsonl", "line 3")


def test_more_samples_than_data(smollm2_path, shared_data_dir, tmp_path):
    proc = cli("vanilla", *small_args(smollm2_path, shared_data_dir, tmp_path / "a.jsonl",
                                      num=100000))
    assert_user_error(proc, "100000", "313")


# ----------------------------------------------------------------------------------------------
# lengths


def test_prompt_longer_than_the_context(tiny64, shared_data_dir, tmp_path):
    proc = cli("vanilla", *small_args(tiny64, shared_data_dir, tmp_path / "a.jsonl", max_new=8))
    message = assert_user_error(proc, "question", "context of 64", "--max-new-tokens")
    # names the offending question
    qids = {i.question_id for i in runner.load_task("tinystories", str(shared_data_dir), 1, 0)
            .instances}
    assert any(f"question {q} " in message for q in qids), message
    assert not (tmp_path / "a.jsonl").exists()


def test_max_new_tokens_that_cannot_fit(tiny64, shared_data_dir, tmp_path):
    proc = cli("swift", *small_args(tiny64, shared_data_dir, tmp_path / "a.jsonl", max_new=64))
    assert_user_error(proc, "--max-new-tokens 64 cannot fit", "64 positions")


# ----------------------------------------------------------------------------------------------
# layer cache, answer file


def test_layer_cache_of_another_model(smollm2_path, shared_data_dir, tmp_path):
    from model.llama import LayerSkip
    from model.swift.layer_cache import save_layer_config

    cache = tmp_path / "layer_config.json"
    save_layer_config(str(cache), "some-other-model", "LlamaForCausalLM", 30, "tinystories",
                      LayerSkip.of([1, 2], [3]), 0.4, 0.9)
    proc = cli("swift", *small_args(smollm2_path, shared_data_dir, tmp_path / "a.jsonl"),
               "--cache-hit", "--layer-cache", cache)
    assert_user_error(proc, "some-other-model", "--cache-hit")


def test_layer_cache_missing_or_broken(smollm2_path, shared_data_dir, tmp_path):
    argv = [str(a) for a in small_args(smollm2_path, shared_data_dir, tmp_path / "a.jsonl")]
    with pytest.raises(UserError, match="does not exist"):
        inference_swift.main(argv + ["--cache-hit", "--layer-cache", str(tmp_path / "none.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        inference_swift.main(argv + ["--cache-hit", "--layer-cache", str(broken)])


def test_answer_file_of_another_configuration_needs_overwrite(smollm2_path, shared_data_dir,
                                                              tmp_path):
    answer = tmp_path / "vanilla.jsonl"
    other = {"model_path": "models/another/hf", "model_id": "another", "task": "tinystories",
             "method": "vanilla", "max_new_tokens": 99, "temperature": 0.0}
    record = {"question_id": "1", "model_id": "another", "task": "tinystories",
              "method": "vanilla", "tstamp": 0.0, "config": other,
              "choices": [{"index": 0, "turns": ["x"], "new_tokens": [1], "wall_time": [0.1]}]}
    answer.write_text(json.dumps({"header": True, "config": other,
                                  "config_hash": config_hash(other)}) + "\n"
                      + json.dumps(record) + "\n")
    before = answer.read_bytes()
    argv = [str(a) for a in small_args(smollm2_path, shared_data_dir, answer)]
    proc = cli("vanilla", *argv)
    assert_user_error(proc, "another configuration", "max_new_tokens", "--overwrite")
    assert answer.read_bytes() == before  # untouched
    assert inference_baseline.main(argv + ["--overwrite"]) == 0
    header, records = read_answer_file(answer)
    assert header["config"]["model_path"] == str(smollm2_path) and len(records) == 1


def test_wrong_model_path_is_named_before_a_stale_answer_file(shared_data_dir, tmp_path):
    """An answer file of an earlier run and a mistyped --model-path: the missing model is the error, not the
    configuration the file was made with."""
    answer = tmp_path / "vanilla.jsonl"
    other = {"model_path": "models/another/hf", "max_new_tokens": 99}
    answer.write_text(json.dumps({"header": True, "config": other, "config_hash": config_hash(other)}) + "\n"
                      + json.dumps({"question_id": "1", "model_id": "another", "task": "tinystories",
                                    "method": "vanilla", "config": other,
                                    "choices": [{"turns": ["x"], "new_tokens": [1], "wall_time": [0.1]}]})
                      + "\n")
    for model in (tmp_path / "no-such-model", tmp_path):  # missing; a folder without config.json
        message = assert_user_error(cli("vanilla", *small_args(model, shared_data_dir, answer)))
        assert "another configuration" not in message
        assert "does not exist" in message or "config.json" in message, message


def test_failed_run_leaves_no_empty_folder(tiny64, smollm2_path, shared_data_dir, tmp_path):
    """A run that stops before its first answer creates neither the answer file nor its folders."""
    outputs = tmp_path / "outputs"
    for model, max_new in ((tmp_path / "no-such-model", 4), (tiny64, 8)):  # before / after loading the model
        answer = outputs / "m" / "tinystories" / "vanilla.jsonl"
        assert_user_error(cli("vanilla", *small_args(model, shared_data_dir, answer, max_new=max_new)))
        assert not outputs.exists()
    proc = cli("vanilla", "--model-path", tmp_path / "no-such-model", "--data-dir", shared_data_dir,
               "--task", "tinystories", "--num-samples", 1, "--device", "cpu", "--outputs", outputs)
    assert_user_error(proc, "does not exist")
    assert not outputs.exists()


def test_answer_file_with_a_malformed_line(smollm2_path, shared_data_dir, tmp_path):
    answer = tmp_path / "vanilla.jsonl"
    answer.write_text('{"question_id": "1", "model_id": "m"\n{"also": "bad"}\n')
    proc = cli("vanilla", *small_args(smollm2_path, shared_data_dir, answer))
    assert_user_error(proc, str(answer), "line 1")


def test_answer_file_in_an_impossible_place(smollm2_path, shared_data_dir, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    proc = cli("vanilla", *small_args(smollm2_path, shared_data_dir, blocker / "a.jsonl"))
    assert_user_error(proc, "cannot create the folder", "--answer-file")


def test_second_run_on_the_same_answer_file_is_refused(smollm2_path, shared_data_dir, tmp_path):
    answer = tmp_path / "vanilla.jsonl"
    with guards.exclusive(answer):
        proc = cli("vanilla", *small_args(smollm2_path, shared_data_dir, answer))
    assert_user_error(proc, "another run is writing")


def test_out_of_memory_becomes_a_sizing_message(tmp_path_factory, smollm2_path, shared_data_dir,
                                                monkeypatch):
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny512"), smollm2_path, 512)
    import model.generate

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.generate, "vanilla_generate", oom)
    answer = tmp_path_factory.mktemp("oom") / "a.jsonl"
    argv = [str(a) for a in small_args(tiny, shared_data_dir, answer, max_new=16)]
    with pytest.raises(UserError) as info:
        inference_baseline.main(argv)
    message = str(info.value)
    assert "out of GPU memory" in message and "GiB for the float32 weights" in message
    assert "KV cache" in message and "--dtype bfloat16" in message
    assert "--max-new-tokens" in message and "\n" not in message
    # weights: the tied 49152 x 32 embedding + 4 small layers; KV: 4 layers x 2 x 1 head x 16 x slots
    from model.generate import cache_capacity
    from model.loading import load_model
    m, args = load_model(str(tiny))
    weights, kv = guards.memory_needs(args, "float32", cache_capacity(200, 16), m)
    assert weights == sum(p.numel() * 4 for p in m.parameters())
    assert kv == 4 * 2 * 1 * cache_capacity(200, 16) * 16 * 4


# ----------------------------------------------------------------------------------------------
# interrupted runs


INTERRUPT_N = 3
INTERRUPT_MAX_NEW = 8


def interrupt_args(model, data, answer):
    return [str(a) for a in small_args(model, data, answer, num=INTERRUPT_N,
                                       max_new=INTERRUPT_MAX_NEW)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smollm2_path, shared_data_dir):
    """An uninterrupted run of the configuration the interrupted runs use."""
    answer = tmp_path_factory.mktemp("reference") / "vanilla.jsonl"
    assert inference_baseline.main(interrupt_args(smollm2_path, shared_data_dir, answer)) == 0
    records = records_by_id(answer)
    assert len(records) == INTERRUPT_N
    return records


def wait_for_answers(path: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                lines = answer_lines(path)
            except json.JSONDecodeError:
                lines = []  # a line being written
            if sum(1 for r in lines if not r.get("header")) >= n:
                return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {n} answer(s) landed: "
                        f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no answer landed in time")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_run_resumes_without_loss(how, reference, smollm2_path, shared_data_dir,
                                              tmp_path):
    answer = tmp_path / "vanilla.jsonl"
    argv = interrupt_args(smollm2_path, shared_data_dir, answer)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "evaluation_llama.inference_baseline", *argv],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_answers(answer, proc)
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        # the worst case of a hard kill: half a line at the end of the file
        with open(answer, "a") as fh:
            fh.write('{"question_id": "999", "model_id": "smollm2-135m", "choi')
    else:
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err and "interrupted" in err
        answer_lines(answer)  # every line complete
    kept = records_by_id(answer)
    if how != "SIGKILL":  # it says how much is kept and how to go on
        assert f"interrupted: {len(kept)} of {INTERRUPT_N} answers are kept in {answer}; run the same command " \
               f"again to continue" in err, err[-2000:]
    assert 1 <= len(kept) < INTERRUPT_N
    for qid, r in kept.items():
        assert r["token_ids"] == reference[qid]["token_ids"]

    assert inference_baseline.main(argv) == 0  # resume
    lines = answer_lines(answer)  # no truncated line left
    assert lines[0].get("header") is True
    final = records_by_id(answer)  # no duplicates
    assert set(final) == set(reference)  # nothing lost
    for qid, r in final.items():
        assert r["token_ids"] == reference[qid]["token_ids"]
    for qid in kept:  # answers from before the interruption were kept as they were
        assert final[qid]["tstamp"] == kept[qid]["tstamp"]


def test_interrupted_swift_run_resumes_to_the_vanilla_answers(reference, smollm2_path, shared_data_dir, tmp_path):
    """SWIFT without the guard (so it drafts from its first answer) stopped after an answer: the kept answers, the
    resumed ones and an uninterrupted vanilla run's are the same tokens, none twice, and the layer cache is kept."""
    answer, cache = tmp_path / "swift.jsonl", tmp_path / "layers.json"
    argv = interrupt_args(smollm2_path, shared_data_dir, answer) + [
        "--no-guard", "--layer-cache", str(cache), "--context-window", "8", "--num-candidates", "2",
        "--max-opt-iter", "6"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "evaluation_llama.inference_swift", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_answers(answer, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, err[-2000:]
    kept = records_by_id(answer)
    assert 1 <= len(kept) < INTERRUPT_N
    assert inference_swift.main(argv) == 0  # resume
    final = records_by_id(answer)
    assert set(final) == set(reference) and len(answer_lines(answer)) == INTERRUPT_N + 1  # header + no duplicates
    for qid, r in final.items():
        assert r["token_ids"] == reference[qid]["token_ids"], qid
    for qid in kept:
        assert final[qid]["tstamp"] == kept[qid]["tstamp"]
    assert sum(n for r in final.values() for n in r["choices"][0]["num_drafted"]) > 0  # it drafted
    assert json.loads(cache.read_text())["skip"] is not None


# ----------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_answers(smollm2_path, shared_data_dir, tmp_path):
    cases = [("vanilla", inference_baseline, ["--temperature", "0.8"]),
             ("swift", inference_swift, ["--temperature", "0.8", "--no-guard"]),
             ("swift", inference_swift, ["--no-guard"])]
    swift_small = ["--context-window", "8", "--num-candidates", "2", "--max-opt-iter", "4"]
    for k, (method, mod, extra) in enumerate(cases):
        runs = []
        for rep in range(2):
            answer = tmp_path / f"{k}-{rep}.jsonl"
            argv = [str(a) for a in small_args(smollm2_path, shared_data_dir, answer, num=1,
                                               max_new=8)] + extra
            if method == "swift":
                argv += swift_small + ["--layer-cache", str(tmp_path / f"lc{k}-{rep}.json")]
            assert mod.main(argv) == 0
            runs.append(records_by_id(answer))
        a, b = runs
        assert set(a) == set(b)
        for qid in a:
            assert a[qid]["token_ids"] == b[qid]["token_ids"], (method, extra, qid)
            assert a[qid]["choices"][0]["accept_lengths"] == b[qid]["choices"][0]["accept_lengths"]


# ----------------------------------------------------------------------------------------------
# speed report on bad files


def _record(qid, model="m", tokens=(1, 2, 3), seconds=0.5, method="swift"):
    return {"question_id": qid, "model_id": model, "task": "gsm8k", "method": method,
            "tstamp": 0.0, "token_ids": [list(tokens)],
            "choices": [{"index": 0, "turns": ["t"], "new_tokens": [len(tokens)],
                         "wall_time": [seconds], "accept_lengths": [len(tokens)],
                         "num_drafted": [len(tokens)]}]}


def _write(path: Path, records, config=None, tail: str = "") -> Path:
    config = config or {"max_new_tokens": 8, "temperature": 0.0}
    lines = [json.dumps({"header": True, "config": config, "config_hash": config_hash(config)})]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


def speed(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluation_llama.speed", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True)


def test_speed_on_empty_and_header_only_files(tmp_path):
    base = _write(tmp_path / "base.jsonl", [_record("1", method="vanilla")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(speed("--file-path", empty, "--base-path", base), "no answers")
    header_only = _write(tmp_path / "header.jsonl", [])
    assert_user_error(speed("--file-path", header_only, "--base-path", base), "no answers")
    assert_user_error(speed("--file-path", tmp_path / "missing.jsonl", "--base-path", base),
                      "does not exist")


def test_speed_on_mismatched_files(tmp_path):
    base = _write(tmp_path / "base.jsonl", [_record("1", method="vanilla")])
    other_model = _write(tmp_path / "other.jsonl", [_record("1", model="other")])
    assert_user_error(speed("--file-path", other_model, "--base-path", base), "different models")
    other_len = _write(tmp_path / "len.jsonl", [_record("1")],
                       config={"max_new_tokens": 16, "temperature": 0.0})
    assert_user_error(speed("--file-path", other_len, "--base-path", base), "max_new_tokens")


def test_speed_on_partial_files(tmp_path):
    base = _write(tmp_path / "base.jsonl", [_record("1", method="vanilla"),
                                            _record("2", method="vanilla")])
    # an interrupted write: the last line is cut; it is skipped with a warning
    cut = _write(tmp_path / "cut.jsonl", [_record("1"), _record("2")],
                 tail='{"question_id": "3", "mod')
    proc = speed("--file-path", cut, "--base-path", base, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "incomplete last line" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["overall"]["answers"] == 2
    # fewer answers than the baseline: refused unless --allow-partial
    half = _write(tmp_path / "half.jsonl", [_record("1")])
    assert_user_error(speed("--file-path", half, "--base-path", base), "--allow-partial")
    proc = speed("--file-path", half, "--base-path", base, "--allow-partial", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["partial"] is True
    # a broken line in the middle is an error naming the line
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(_record("1")) + "\n{oops\n" + json.dumps(_record("2")) + "\n")
    assert_user_error(speed("--file-path", broken, "--base-path", base), "line 2")


# ----------------------------------------------------------------------------------------------
# a machine without Triton (CPU-only installs may lack it): the PyTorch path must still run


def test_runs_without_triton(tmp_path):
    """Every runner imports, and decoding runs on the PyTorch path, with Triton missing; asking for its kernels is
    then a clear error."""
    block = tmp_path / "block" / "triton"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('triton is not installed (blocked by the test)')\n")
    code = (
        "import evaluation_llama.inference_swift, evaluation_llama.inference_pld, evaluation_llama.inference_baseline\n"
        "from model import kernels\n"
        "from model.engine import Backends, Engine\n"
        "from model.errors import UserError\n"
        "from model.generate import vanilla_generate\n"
        "from model.swift.decoding import swift_generate\n"
        "from tests.helpers import tiny_engine\n"
        "assert kernels.triton is None\n"
        "e, _ = tiny_engine(seed=0, scale=6)\n"
        "want = vanilla_generate(e, [5, 6, 7, 8, 9, 10], 12).tokens\n"
        "assert swift_generate(e, [5, 6, 7, 8, 9, 10], 12).tokens == want\n"
        "try:\n"
        "    Engine(e.model, 64, Backends(kernels='triton'))\n"
        "except UserError as err:\n"
        "    assert 'triton' in str(err)\n"
        "else:\n"
        "    raise SystemExit('--kernels triton was accepted without Triton')\n"
        "print('ok')\n")
    # with Triton's interpreter asked for, the kernels would run on CPU tensors if Triton were there
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block.parent), str(ROOT)]), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
