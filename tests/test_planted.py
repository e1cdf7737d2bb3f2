"""The planted-redundancy model (model/planted.py) that scripts/bench_scale.py measures SWIFT on at 7B/13B shapes: it
does what it is designed to do, on small shapes on the CPU, in float32 and bfloat16."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from model.config import ModelArgs
from model.engine import Engine
from model.generate import vanilla_generate
from model.llama import LayerSkip
from model.planted import build_planted
from model.swift.config import SwiftConfig
from model.swift.layer_search import LayerSearch
from model.swift.decoding import swift_generate
from tests.helpers import full_logits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def _args(n_layers: int = 8) -> ModelArgs:
    return ModelArgs(architecture="LlamaForCausalLM", vocab_size=256, dim=128, n_layers=n_layers, n_heads=2,
                     n_kv_heads=1, head_dim=64, intermediate_size=64, max_position_embeddings=1024)


def _agreement(model, text: list[int], skip: LayerSkip) -> list[bool]:
    """Per position of `text`: does the model with `skip` predict the next token of the text?"""
    pred = full_logits(model, torch.tensor(text), skip=skip).argmax(-1)
    return [int(pred[i]) == text[i + 1] for i in range(len(text) - 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("flips", [0, 2])
def test_the_full_model_walks_its_alphabet_confidently(dtype, flips):
    model, task = build_planted(_args(), ratio=0.45, n_flips=flips, alphabet=16, seed=1, dtype=dtype)
    text = task.text(task.start_tokens()[0], 160)
    assert set(text) <= set(task.tokens) and len(set(text)) == 16 - flips  # the cycle skips one token per flip
    out = vanilla_generate(Engine(model, 512), text[:60], 100)
    assert out.tokens == text[60:160]
    probs = torch.softmax(full_logits(model, torch.tensor(text[:80])), -1)
    assert probs.max(-1).values.min() > 0.99  # confident: drafting is never cut short by a flat distribution


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planted_sublayers_change_only_the_redirected_tokens_and_every_other_one_matters(dtype):
    model, task = build_planted(_args(), ratio=0.45, n_flips=1, alphabet=16, seed=1, dtype=dtype)
    text = task.text(task.start_tokens()[0], 120)
    assert all(_agreement(model, text, LayerSkip()))
    ok = _agreement(model, text, task.planted)
    assert [not x for x in ok] == [t in task.flipped for t in text[:-1]]  # wrong exactly at the redirected tokens
    assert abs(sum(ok) / len(ok) - task.expected_acceptance()) < 0.02
    for (kind, layer), tokens in task.votes.items():  # one more skipped voter: its tokens go wrong, nothing else
        skip = LayerSkip.of(attn=task.planted.attn | ({layer} if kind == "attn" else set()),
                            mlp=task.planted.mlp | ({layer} if kind == "mlp" else set()))
        got = _agreement(model, text, skip)
        assert [not x for x in got] == [t in task.flipped or t in tokens for t in text[:-1]], (kind, layer)


def test_the_layer_search_finds_the_planted_set():
    """At r = the planted share, with the matchness threshold at 1, the paper's search (random + Bayesian proposals,
    carried over a task's texts) ends on exactly the planted set; SWIFT meanwhile equals vanilla."""
    args = _args(n_layers=12)
    model, task = build_planted(args, ratio=0.45, n_flips=1, alphabet=16, seed=2)
    engine = Engine(model, 512)
    cfg = SwiftConfig(skip_ratio=0.45, guard=False, max_score=1.0)
    search = LayerSearch(args.n_layers, cfg)
    starts = task.start_tokens()
    for i in range(8):
        text = task.text(starts[(5 * i) % len(starts)], 200)
        res = swift_generate(engine, text[:64], 128, cfg=cfg, search=search)
        assert res.tokens == text[64:192]
        if not search.active:
            break
    assert search.best == task.planted


def test_bench_scale_measures_a_level_on_the_cpu():
    """scripts/bench_scale.py's search-then-time step: the planted set found, SWIFT identical to vanilla, nothing
    captured while timed, and the record's fields consistent."""
    import bench_scale

    args = _args(n_layers=12)
    a = argparse.Namespace(ratio=0.45, max_score=1.0, search_prompts=8, prompts=2, prompt_len=64, max_new_tokens=96)
    model, task = build_planted(args, 0.45, 0, alphabet=16, seed=2)
    row = bench_scale.run_level(Engine(model, 512), args, a, task, {"gpu": "cpu"})
    assert row["found_planted"] and row["planted_overlap"] == row["n_planted"] == len(task.planted)
    assert row["identical"] == 1.0 and row["captures_in_timed_runs"] == 0
    assert row["found_matchness"] == row["planted_matchness"] == 1.0
    assert row["alpha"] == 1.0  # every drafted token right: none is drafted past the answer's end
    assert 0 < row["search_share"] < 1 and row["ceiling"] > 1
    assert bench_scale.overlap(LayerSkip.of(attn=[1, 2], mlp=[2]), LayerSkip.of(attn=[2], mlp=[1, 2])) == 2


def test_shapes_that_cannot_hold_the_design_are_refused():
    import dataclasses
    with pytest.raises(ValueError, match="alphabet"):
        build_planted(_args(), alphabet=100)
    with pytest.raises(ValueError, match="untied"):
        build_planted(dataclasses.replace(_args(), tie_embeddings=True), alphabet=16)
    with pytest.raises(ValueError, match="planted sub-layers"):
        build_planted(_args(), ratio=0.0, n_flips=1, alphabet=16)
    with pytest.raises(ValueError, match="no token"):
        build_planted(_args(), n_flips=12, alphabet=16)


def test_bench_scale_report_merges_runs(tmp_path, monkeypatch):
    """`bench_scale.py --report a.jsonl b.jsonl --out DIR` merges runs without a GPU: rows in order, one line per row,
    each run's command named once, the verification costs per shape from its first row."""
    import json

    import bench_scale

    def row(shape, flips, command, speedup):
        return dict(shape=shape, n_flips=flips, command=command, gpu="G", torch="T", expected_acceptance=1.0,
                    alpha=0.99, vanilla_tps=100.0, swift_tps=100.0 * speedup, speedup=speedup, M=10.0,
                    draft_cost=0.6, ceiling=1.5, share_of_ceiling=speedup / 1.5, search_steps=50, search_share=0.4,
                    found_planted=flips == 0, planted_overlap=26, n_planted=27, found_matchness=1.0,
                    planted_matchness=1.0, verify_ms_by_tree_size={"16": 4.9 if shape == "a" else 9.9})

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(row("a", f, "run one", 1.5 - f / 10)) + "\n" for f in (0, 1)))
    (tmp_path / "b.jsonl").write_text(json.dumps(row("b", 3, "run two", 1.03)) + "\n")
    out = tmp_path / "merged"
    monkeypatch.setattr(sys, "argv", ["bench_scale.py", "--report", str(tmp_path / "a.jsonl"),
                                      str(tmp_path / "b.jsonl"), "--out", str(out)])
    assert bench_scale.main() == 0
    md = (out / "bench_scale.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert [line.split("|")[6].strip() for line in table] == ["1.50x", "1.40x", "1.03x"]
    assert "`run one`; `run two`" in md and "the planted set" in table[0] and "26/27" in table[1]
    assert "a: {'16': 4.9}; b: {'16': 9.9}" in md
    assert len((out / "bench_scale.jsonl").read_text().splitlines()) == 3


def test_draft_bytes_and_the_byte_bound_ceiling():
    """The weight bytes of a draft step at the LLaMA-2-13B shape and the ceiling they allow (docs/RESULTS.md)."""
    import bench_scale

    args = ModelArgs.from_hf_config(bench_scale.SHAPES["llama-2-13b"])
    assert bench_scale.draft_bytes(args, LayerSkip()) == 1.0
    everything = LayerSkip.of(attn=range(args.n_layers), mlp=range(args.n_layers))
    head = args.vocab_size * args.dim
    assert bench_scale.draft_bytes(args, everything) == pytest.approx(
        head / (head + args.n_layers * 4 * args.dim ** 2 + args.n_layers * 3 * args.dim * args.intermediate_size))
    # 18 attention and 16 MLP sub-layers skipped (the 13B planted set's counts): 58.9% of the bytes
    skip = LayerSkip.of(attn=range(1, 19), mlp=range(1, 17))
    assert bench_scale.draft_bytes(args, skip) == pytest.approx(0.589, abs=1e-3)
    row = dict(shape="llama-2-13b", alpha=1.0, found_skip=skip.to_dict())
    c, bound = bench_scale.byte_bound(row)
    assert bound == pytest.approx(26 / (25 * c + 1))  # every token accepted: the longest chain, 25
    assert bench_scale.byte_bound(dict(row, alpha=0.996))[1] < 1.6 < bound
    assert bench_scale.byte_bound(dict(shape="other", alpha=1.0)) is None
