"""Pipeline placement (model/placement.py): layers split over several devices, here ["cpu", "cpu"] so that the
multi-device code paths (stage boundaries, one KV-cache tensor per stage, eager engine) run without GPUs."""

from __future__ import annotations

import types

import pytest
import torch

from evaluation_llama import guards, runner
from evaluation_llama.answers import read_answer_file
from model.engine import Engine
from model.errors import UserError
from model.generate import vanilla_generate
from model.kv_cache import KVCache
from model.loading import load_model
from model.placement import chunk_sizes, place_model, split_layers
from model.swift.config import SwiftConfig
from model.swift.decoding import swift_generate
from model.swift.layer_search import LayerSearch
from tests.helpers import full_logits, hf_config, hf_model, ours_from_hf

CPU2 = ["cpu", "cpu"]
CASES = {
    "llama-untied": ("llama", dict(tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=False)),
}


def _pair(arch, kw, devices=CPU2, seed=0, scale=1.0, **extra):
    """(unplaced model, model placed over `devices`) with the same weights."""
    hf = hf_model(hf_config(arch, **kw, **extra), seed, scale)
    ref, _ = ours_from_hf(hf)
    placed, _ = ours_from_hf(hf)
    return ref, place_model(placed, devices)


def _logits(model, ids, S=128, gates=None):
    return full_logits(model, ids, gates=gates, S=S)


# ---- splitting -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers,n_dev", [(4, 2), (5, 2), (7, 3), (30, 4), (32, 8), (3, 3), (80, 3)])
def test_split_layers_is_contiguous_and_balanced(n_layers, n_dev):
    devices = [torch.device("cpu")] + [torch.device("meta", i) for i in range(n_dev - 1)]
    per_layer = split_layers(n_layers, devices)
    assert len(per_layer) == n_layers
    runs = [per_layer[0]]
    for d in per_layer[1:]:
        if d != runs[-1]:
            runs.append(d)
    assert runs == devices  # contiguous chunks, in the order given, every device used
    sizes = [per_layer.count(d) for d in devices]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the extra layers go first: the last device holds the head


def test_split_layers_weights_and_errors():
    assert chunk_sizes(10, 2, weights=[3, 2]) == [6, 4]
    assert chunk_sizes(10, 3, weights=[1, 1, 0.5]) == [4, 4, 2]
    assert chunk_sizes(3, 3, weights=[100, 1, 1]) == [1, 1, 1]  # at least one layer each
    with pytest.raises(UserError, match="at least one"):
        split_layers(2, ["cpu"] * 3)
    with pytest.raises(UserError, match="positive"):
        split_layers(4, CPU2, weights=[1, 0])


# ---- the placed model computes the same thing ----------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_placed_logits_equal_unplaced(case):
    arch, kw = CASES[case]
    ref, placed = _pair(arch, kw, seed=1)
    assert placed.stages == [(torch.device("cpu"), 0, 2), (torch.device("cpu"), 2, 4)]
    assert placed.layer_devices == [torch.device("cpu")] * 4
    ids = torch.randint(0, 97, (30,))
    want = _logits(ref, ids)
    got = _logits(placed, ids)
    assert len(placed.cache.tensors) == 2 and len(ref.cache.tensors) == 1
    assert placed.cache.nbytes() == ref.cache.nbytes()
    assert (got - want).abs().max().item() <= 1e-5
    if kw["tie_word_embeddings"]:  # first and last device are the same: the weight stays shared
        assert placed.output.weight is placed.tok_embeddings.weight
    # gated (per-token skip) forward over the stage boundary
    n, T = 4, ids.shape[0]
    keep = torch.rand(2, n, T) > 0.3
    keep[:, 0] = keep[:, -1] = True
    gates = (keep[0], keep[1])
    assert (_logits(placed, ids, gates=gates) - _logits(ref, ids, gates=gates)).abs().max().item() <= 1e-5


def test_tied_head_is_copied_to_another_last_device():
    hf = hf_model(hf_config("llama", tie_word_embeddings=True))
    model, _ = ours_from_hf(hf)
    emb = model.tok_embeddings.weight.clone()
    place_model(model, ["cpu", "meta"])  # meta: checks where parameters go without a second real device
    assert model.tok_embeddings.weight.device.type == "cpu" and torch.equal(model.tok_embeddings.weight, emb)
    assert model.output.weight.device.type == "meta" and model.output.weight is not model.tok_embeddings.weight
    assert model.norm.weight.device.type == "meta" and model.inv_freq.device.type == "cpu"
    assert [next(layer.parameters()).device.type for layer in model.layers] == ["cpu", "cpu", "meta", "meta"]


# ---- KV cache groups -----------------------------------------------------------------------------------------------
def test_kv_move_across_groups_matches_one_group():
    args = dict(n_layers=5, n_kv_heads=2, max_seq_len=16, head_dim=4)
    one = KVCache(**args)
    split = KVCache(**args, groups=[("cpu", 3), ("cpu", 2)])
    assert [t.shape[0] for t in split.tensors] == [3, 2] and split.layer_group[3] == (1, 0)
    for layer in range(5):
        kv = torch.randn(2, 2, 16, 4)
        pos = torch.arange(16)
        for c in (one, split):
            c.update(layer, pos, kv[0], kv[1])
            keys, values = c.layer(layer)
            assert torch.equal(keys, kv[0]) and torch.equal(values, kv[1])
    src, dst = torch.tensor([9, 12, 14]), torch.tensor([5, 6, 7])
    one.move(src, dst)
    split.move(src, dst)
    assert torch.equal(torch.cat(split.tensors), one.kv)
    assert torch.equal(one.kv[:, :, :, 5:8], one.kv[:, :, :, [9, 12, 14]])
    with pytest.raises(AttributeError):
        split.kv  # noqa: B018 - several groups have no single tensor


# ---- engine and decoding on a placed model -------------------------------------------------------------------------
def test_engine_on_placed_model_is_eager_and_answers_on_the_first_device():
    _, placed = _pair("llama", dict(tie_word_embeddings=False))
    eng = Engine(placed, 64, cuda_graphs=True)  # asked for graphs: turned off, the model spans several stages
    assert eng.multi_device and not eng.cuda_graphs and eng.device == torch.device("cpu")
    assert eng.start(list(range(5))).shape == (97,)
    eng.decode(2)
    assert eng.length == 8 and eng.seq.device == torch.device("cpu")


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_swift_equals_vanilla_on_placed_model(case):
    arch, kw = CASES[case]
    ref, placed = _pair(arch, kw, seed=2, scale=6, num_hidden_layers=6)
    prompt = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    want = vanilla_generate(Engine(ref, 512), prompt, 80).tokens
    eng = Engine(placed, 512)
    assert vanilla_generate(eng, prompt, 80).tokens == want
    cfg = SwiftConfig(skip_ratio=0.25, context_window=16, guard=False)
    res = swift_generate(eng, prompt, 80, cfg=cfg, search=LayerSearch(6, cfg))
    assert res.tokens == want
    assert res.num_drafted > 0 and sum(res.accept_lengths) == len(res.tokens) == 80


def test_placed_model_with_three_stages():
    ref, placed = _pair("llama", dict(tie_word_embeddings=False), devices=["cpu"] * 3, num_hidden_layers=7)
    assert [hi - lo for _, lo, hi in placed.stages] == [3, 2, 2]
    ids = torch.randint(0, 97, (20,))
    assert (_logits(placed, ids) - _logits(ref, ids)).abs().max().item() <= 1e-5


# ---- loading and the runner flag -----------------------------------------------------------------------------------
@pytest.mark.real_model
def test_load_model_with_devices(smollm2_path):
    ref, args = load_model(str(smollm2_path))
    placed, _ = load_model(str(smollm2_path), devices=CPU2)
    half = args.n_layers - args.n_layers // 2
    assert placed.stages == [(torch.device("cpu"), 0, half), (torch.device("cpu"), half, args.n_layers)]
    ids = torch.randint(0, args.vocab_size, (12,))
    assert (_logits(placed, ids) - _logits(ref, ids)).abs().max().item() <= 1e-5


def _argv(model, data, answer, *extra):
    return ["--model-path", str(model), "--data-dir", str(data), "--task", "gsm8k", "--num-samples", "1",
            "--max-new-tokens", "16", "--warmup", "0", "--answer-file", str(answer), *extra]


@pytest.mark.real_model
@pytest.mark.slow
def test_runner_layer_devices_end_to_end(smollm2_path, shared_data_dir, tmp_path):
    small = ["--context-window", "8", "--num-candidates", "2", "--max-opt-iter", "6", "--no-guard"]
    plain, placed = tmp_path / "vanilla.jsonl", tmp_path / "swift.jsonl"
    assert runner.main("vanilla", _argv(smollm2_path, shared_data_dir, plain, "--device", "cpu")) == 0
    assert runner.main("swift", _argv(smollm2_path, shared_data_dir, placed, "--layer-devices", "cpu,cpu",
                                      "--layer-cache", str(tmp_path / "layers.json"), *small)) == 0
    header, records = read_answer_file(placed)
    assert header["config"]["layer_devices"] == ["cpu", "cpu"]
    assert records[0]["config"]["layer_devices"] == ["cpu", "cpu"]
    assert "layer_devices" not in read_answer_file(plain)[0]["config"]  # single-device configs are unchanged
    assert records[0]["token_ids"] == read_answer_file(plain)[1][0]["token_ids"]  # greedy SWIFT is lossless
    assert max(records[0]["choices"][0]["accept_lengths"]) > 1  # and it drafted (no guard: no plain probe)


def test_runner_layer_devices_refusals(shared_data_dir, tmp_path):
    smollm2_path = tmp_path / "model"  # never loaded: every refusal comes before the model
    answer = tmp_path / "a.jsonl"
    with pytest.raises(UserError, match="--layer-devices.*--num-shards 2"):
        runner.main("swift", _argv(smollm2_path, shared_data_dir, answer, "--layer-devices", "cpu,cpu",
                                   "--num-shards", "2"))
    with pytest.raises(UserError, match="--layer-devices.*--num-gpus 2"):
        runner.main("vanilla", _argv(smollm2_path, shared_data_dir, answer, "--layer-devices", "cpu,cpu",
                                     "--num-gpus", "2"))
    with pytest.raises(UserError, match="at least two"):
        runner.main("vanilla", _argv(smollm2_path, shared_data_dir, answer, "--layer-devices", "cpu"))
    with pytest.raises(UserError, match="--layer-devices 'bogus' is not a torch device"):
        runner.main("vanilla", _argv(smollm2_path, shared_data_dir, answer, "--layer-devices", "cpu,bogus"))
    assert not answer.exists()


def test_oom_message_mentions_layer_devices():
    s = types.SimpleNamespace(dtype_name="bfloat16", model_path="big-model", device=torch.device("cpu"),
                              layer_devices=None, max_new_tokens=8)
    assert "--layer-devices" in str(guards.oom_error(s, None, None, None))
