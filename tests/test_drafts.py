"""Drafts beyond the layer-skip chain: prompt lookup (n-gram matcher), early exit, hybrid SWIFT trees, the reduced
draft vocabulary, and the device-side cycle's graph keys (warm-up covers every graph)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model import graphs
from model.context_draft import ContextIndex
from model.generate import vanilla_generate
from model.llama import NO_SKIP, LayerSkip
from model.sampling import SamplingConfig
from model.swift.config import SwiftConfig
from model.swift.decoding import SpeedGuard, accelerator, swift_generate
from model.swift.layer_search import LayerSearch
from tests.helpers import FakeGraph, tiny_engine
from tests.test_swift import VOCAB, _chi2_pvalue, _prompt


# ---- the n-gram matcher ----------------------------------------------------------------------------------------------
def test_context_index_longest_then_most_recent_match():
    idx = ContextIndex(ngram_max=3, ngram_min=1)
    idx.extend([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3])
    # suffix (1, 2, 3) occurred at the start: the longest match wins over the more recent (2, 3) -> 5
    assert idx.propose(3) == [4, 9, 2]
    idx.extend([5])
    # suffix (2, 3, 5) occurred once before, followed by 7, 1, 2
    assert idx.propose(2) == [7, 1]
    idx.extend([8])  # (3, 5, 8), (5, 8), (8): never seen before
    assert idx.propose(4) == []


def test_context_index_prefers_the_most_recent_occurrence():
    idx = ContextIndex(ngram_max=2, ngram_min=1)
    idx.extend([6, 1, 10, 6, 1, 20, 6, 1])
    assert idx.propose(1) == [20]  # (6, 1) was followed by 10, then by 20: the later one
    idx2 = ContextIndex(ngram_max=3, ngram_min=2)
    idx2.extend([4, 5, 6, 7])
    assert idx2.propose(3) == []  # no suffix of 2..3 tokens repeats, and 1-grams are not tried


# ---- lossless on tiny models -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pld_early_exit_and_hybrid_equal_vanilla_tiny(seed):
    eng, _ = tiny_engine(seed=seed, scale=6, num_hidden_layers=6, vocab_size=24)
    prompt = _prompt(40, 24, seed=seed)
    want = vanilla_generate(eng, prompt, 100).tokens
    pld = swift_generate(eng, prompt, 100, cfg=SwiftConfig(guard=False, context_drafts=True), skip=NO_SKIP)
    early = swift_generate(eng, prompt, 100, cfg=SwiftConfig(guard=False), skip=LayerSkip.of(range(3, 6), range(3, 6)))
    cfg = SwiftConfig(guard=False, context_drafts=True, context_window=16, skip_ratio=0.25, seed=seed)
    hybrid = swift_generate(eng, prompt, 100, cfg=cfg, search=LayerSearch(6, cfg))
    ucfg = dataclasses.replace(cfg, context_tree="union")
    union = swift_generate(eng, prompt, 100, cfg=ucfg, search=LayerSearch(6, ucfg))
    for res in (pld, early, hybrid, union):
        assert res.tokens == want
    assert pld.stats["accepted_from"]["context"] > 0 and pld.stats["accepted_from"]["draft"] == 0
    assert early.stats["accepted_from"]["draft"] > 0 and early.stats["accepted_from"]["context"] == 0
    for res in (hybrid, union):
        assert sum(res.stats["accepted_from"].values()) == sum(a - 1 for a in res.accept_lengths)
    # select: one chain per cycle, from either source, never a branch; union: branches
    assert hybrid.stats["cycles"]["union"] == 0
    assert hybrid.stats["cycles"]["context"] > 0
    assert union.stats["cycles"]["union"] > 0


# ---- the context guard tries again ------------------------------------------------------------------------------------
def test_speed_guard_rearms_after_a_doubling_hold():
    cfg = SwiftConfig(guard_min_cycles=2)
    g = SpeedGuard(cfg, retry=16)
    g.plain_tps = 100.0
    assert g.until_rearm(0) == 0 and not g.check(0)
    for _ in range(2):
        g.observe(1, 1.0)  # 1 token/s against 100 plain
    assert g.check(20) and g.tripped_at == 20 and g.trips == 1
    assert not g.rearm(35) and g.until_rearm(35) == 1 and g.check(35)
    assert g.rearm(36) and g.swift_tps() is None and not g.check(36)  # armed again, its window empty
    for _ in range(2):
        g.observe(1, 1.0)
    assert g.check(50) and g.trips == 2
    assert g.until_rearm(50) == 32 and not g.rearm(81) and g.rearm(82)  # the second hold is twice the first
    final = SpeedGuard(cfg)  # retry 0: the trip is final
    final.plain_tps = 100.0
    for _ in range(2):
        final.observe(1, 1.0)
    assert final.check(10) and final.until_rearm(10) is None and not final.rearm(10_000) and final.check(10_000)


def test_context_guard_tries_continuations_again_and_stays_lossless():
    """A stream whose context continuations are judged slow (an impossible margin) stops them for good with
    context_retry=0, and tries them again after 16, 32, 64 ... new tokens otherwise; the tokens never change."""
    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6, vocab_size=24)
    prompt = _prompt(40, 24, seed=0)
    want = vanilla_generate(eng, prompt, 150).tokens
    out = {}
    for retry in (0, 16):
        cfg = SwiftConfig(context_drafts=True, guard_margin=1000.0, guard_min_cycles=2, context_retry=retry)
        out[retry] = res = swift_generate(eng, prompt, 150, cfg=cfg, skip=NO_SKIP)
        assert res.tokens == want
    assert out[0].stats["guard_trips"]["context"] == 1 and out[0].stats["fallback_at"] is not None
    assert out[16].stats["guard_trips"]["context"] >= 2
    assert out[16].stats["cycles"]["context"] > out[0].stats["cycles"]["context"]


def test_hybrid_chooses_the_source_predicted_faster():
    """select: the context continuation while its observed acceptance makes it faster than the layer-skip draft's
    prediction, the draft once it is not; union: both in one tree; without a source: a plain step."""
    from model.swift.decoding import choose_source
    from model.swift.planner import ContextRate, CostModel, DraftPlanner

    costs = CostModel(fixed=0.05, attn=0.01, mlp=0.01, verify=((16, 1.05), (32, 1.5)), n_layers=12, measured=True)
    planner = DraftPlanner(costs, (1, 2, 4, 8), alpha=0.9)
    skip = LayerSkip.of(attn=range(1, 6), mlp=range(1, 6))
    cfg = SwiftConfig(context_drafts=True)
    rate = ContextRate()
    for _ in range(20):
        rate.observe(5)
    assert choose_source(cfg, True, [1, 2, 3, 4, 5, 6], planner, skip, 8, rate, costs) == "context"
    for _ in range(60):
        rate.observe(0)
    assert choose_source(cfg, True, [1, 2, 3, 4, 5, 6], planner, skip, 8, rate, costs) == "draft"
    weak = DraftPlanner(costs, (1, 2, 4, 8), alpha=0.5)  # a draft predicted worse than an untried context
    assert choose_source(cfg, True, [1, 2, 3, 4, 5, 6], weak, skip, 8, rate, costs) == "draft"
    idle = 0  # cycles that offered a continuation and verified the draft: the bad streak fades, the context returns
    while choose_source(cfg, True, [1, 2, 3, 4, 5, 6], weak, skip, 8, rate, costs) == "draft" and idle < 1000:
        rate.idle()
        idle += 1
    assert 20 < idle < 400 and rate.mean() < 1.0  # slowly: a failing continuation is not retried every few cycles
    for _ in range(60):
        rate.observe(0)
    assert choose_source(cfg, True, [], planner, skip, 8, rate, costs) == "draft"
    assert choose_source(cfg, False, [7], planner, skip, 8, rate, costs) == "context"
    assert choose_source(cfg, False, [], planner, skip, 8, rate, costs) is None
    union = SwiftConfig(context_drafts=True, context_tree="union")
    assert choose_source(union, True, [7], planner, skip, 8, rate, costs) == "union"


def test_verification_runs_on_the_smallest_tree_that_holds_the_cycle():
    """A short chain is verified on an 8-node tree, a longer one on 16 or 32 nodes; the planner prices each length at
    the cost of its tree size."""
    from model.swift.acceleration import tree_sizes
    from model.swift.planner import CostModel, expected_speedup

    assert tree_sizes(32) == (8, 16, 32) and tree_sizes(16) == (8, 16) and tree_sizes(8) == (8,)
    assert tree_sizes(100) == (8, 16, 32, 64, 128)
    eng, _ = tiny_engine(seed=0, num_hidden_layers=4)
    acc = accelerator(eng, SwiftConfig(max_draft_len=25, max_tree_nodes=32))
    vf = acc.verifier
    assert vf.size_for(1 + 1) == 8 and vf.size_for(1 + 7) == 8 and vf.size_for(1 + 8) == 16
    assert vf.size_for(1 + 15) == 16 and vf.size_for(1 + 16) == 32 and vf.size_for(1 + 4 + 10) == 16
    costs = CostModel(fixed=0.1, attn=0.0, mlp=0.0, verify=((16, 1.0), (32, 2.0)), n_layers=4)
    v = costs.verify_chain()
    assert v(15) == 1.0 and v(16) == 2.0 and costs.verify_chain(extra=10)(8) == 2.0
    # certain acceptance: 15 tokens on the small tree beat 16 on the large one
    assert expected_speedup(1.0, 0.1, v, (15, 16))[1] == 15


@pytest.mark.parametrize("tree", ["union", "select", "pld"])
def test_context_draft_sampling_matches_exact_distribution(tree):
    """The chi-square test of tests/test_swift.py with context drafts in the trees (prompt lookup on an 8-token
    vocabulary always finds a continuation): the hybrid's union tree (and its wrong-rule control), the hybrid that
    verifies one chain per cycle, and prompt lookup alone (no skip set)."""
    from model import sampling as rules
    from model.llama import NO_SKIP
    from tests.test_swift import _exact_joint

    eng, _ = tiny_engine(seed=8, scale=25, vocab_size=VOCAB, max_seq_len=256)
    prompt = _prompt(12, VOCAB, seed=8)
    exact = _exact_joint(eng, prompt)
    cfg = SwiftConfig(guard=False, tree_rule=((0.95, 1), (0.0, 3)), max_draft_len=3, context_drafts=True,
                      context_len=2, context_tree="select" if tree == "select" else "union")
    skip = NO_SKIP if tree == "pld" else LayerSkip.of(mlp=[1], attn=[2])

    def samples(n):
        counts, drafted = np.zeros(VOCAB * VOCAB), 0
        for i in range(n):
            torch.manual_seed(2000 + i)
            res = swift_generate(eng, prompt, 3, SamplingConfig(temperature=1.0), cfg=cfg, skip=skip)
            counts[res.tokens[1] * VOCAB + res.tokens[2]] += 1
            drafted += res.num_drafted
        assert drafted > 0
        return counts

    assert _chi2_pvalue(samples(1500), exact) > 1e-3
    if tree != "union":
        return
    real = rules.accept_probability
    rules.accept_probability = lambda p, mass: p  # forgets to renormalise the residual
    try:
        assert _chi2_pvalue(samples(1500), exact) < 1e-6
    finally:
        rules.accept_probability = real


# ---- the reduced draft vocabulary ------------------------------------------------------------------------------------
def test_reduced_draft_vocabulary_never_changes_the_output():
    """A 64-id draft head on a 97-token model: the draft cannot propose ids outside it, the full model still produces
    them, and the output equals vanilla decoding."""
    eng, _ = tiny_engine(seed=3, scale=6, num_hidden_layers=6)
    prompt = _prompt(40, seed=3)
    want = vanilla_generate(eng, prompt, 120).tokens
    cfg = SwiftConfig(guard=False, draft_vocab=64, skip_ratio=0.25, context_window=16)
    res = swift_generate(eng, prompt, 120, cfg=cfg, search=LayerSearch(6, cfg))
    assert res.tokens == want
    vocab = accelerator(eng, cfg).drafter.vocab
    kept = set(vocab.map.tolist())
    assert len(kept) == 64 and any(t not in kept for t in want)  # the output holds ids the draft cannot propose
    assert res.num_drafted > 0


# ---- graphs: warm-up covers every graph a stream replays ----------------------------------------------------------
def test_warm_up_captures_every_graph_a_stream_replays(monkeypatch):
    """With graph capture faked on the CPU and the draft graph in its switch-kernels-off mode, a SWIFT stream whose
    search changes the skip set many times captures nothing after the accelerator's and the decode warm-up."""
    monkeypatch.setattr(graphs, "capture", lambda fn, pool=None, track=False: FakeGraph(fn, track))
    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6)
    eng.cuda_graphs = True
    cfg = SwiftConfig(guard=False, context_window=16, skip_ratio=0.25)
    acc = accelerator(eng, cfg)
    acc.drafter.tracked = True
    monkeypatch.setattr(acc, "measure", lambda at, sampling: acc.costs)  # no CUDA events on the CPU
    eng.warm_up_decode()
    acc.warm_up(SamplingConfig())
    before = eng.graph_captures
    search = LayerSearch(6, cfg)
    res = swift_generate(eng, _prompt(40), 120, cfg=cfg, search=search)
    assert len(res.stats["skip_changes"]) > 1  # the skip set changed during the stream
    assert eng.graph_captures == before and res.stats["graph_captures"] == 0


def test_warm_up_measures_a_search_step(monkeypatch):
    """The warm-up prices every pass a stream runs, the layer search's step among them: its scoring pass over
    candidates x gamma tokens and the read of the scores, relative to a plain step. Here a pass "costs" its rows
    (a stand-in for the CUDA events that counts the token rows each timed call runs), so a plain step costs 1 row and
    a search step of 4 candidates x 16 tokens 64."""
    from model.swift import decoding
    monkeypatch.setattr(graphs, "capture", lambda fn, pool=None, track=False: FakeGraph(fn, track))
    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6)
    rows = [0]
    forward = eng.forward
    monkeypatch.setattr(eng, "forward", lambda p, *a, **k: rows.__setitem__(0, rows[0] + p.tokens.numel())
                        or forward(p, *a, **k))

    def rows_per_call(fn, reps=5, before=None):
        if before:
            before()
        fn()  # untimed, as gpu_ms does
        rows[0] = 0
        for _ in range(reps):
            if before:
                before()
            fn()
        return rows[0] / reps

    monkeypatch.setattr(decoding, "gpu_ms", rows_per_call)
    eng.cuda_graphs = True
    cfg = SwiftConfig(guard=False, context_window=16, num_candidates=4)
    acc = accelerator(eng, cfg)
    eng.warm_up_decode()
    acc.warm_up(SamplingConfig())
    assert acc.costs.measured and acc.costs.search == 64.0
    assert acc.costs.to_dict()["search"] == 64.0
    assert eng.length == 0


def test_pass_costs_script_refuses_unknown_shapes_and_a_machine_without_cuda():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "pass_costs.py"
    bad = subprocess.run([sys.executable, str(script), "--shapes", "smollm2-135m,gpt2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown gpt2" in bad.stderr and "Traceback" not in bad.stderr
    small = subprocess.run([sys.executable, str(script), "--max-tree-nodes", "8"], capture_output=True, text=True)
    assert small.returncode == 2 and "max tree nodes must be in [max draft length + 2" in small.stderr
    assert "Traceback" not in small.stderr
    if not torch.cuda.is_available():
        cpu = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        assert cpu.returncode == 2 and "needs a CUDA GPU" in cpu.stderr and "Traceback" not in cpu.stderr


def test_a_settled_skip_set_drafts_on_graphs_of_its_own(monkeypatch):
    """Once the skip set is final, `Accelerator.settle` (untimed, between answers) captures one draft graph per chunk
    length for it; a stream then replays those, captures nothing, and still equals vanilla decoding."""
    monkeypatch.setattr(graphs, "capture", lambda fn, pool=None, track=False: FakeGraph(fn, track))
    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6)
    eng.cuda_graphs = True
    skip = LayerSkip.of(attn=[2, 3], mlp=[3])
    cfg = SwiftConfig(guard=False, context_window=16)
    acc = accelerator(eng, cfg)
    acc.drafter.tracked = True
    monkeypatch.setattr(acc, "measure", lambda at, sampling: acc.costs)
    eng.warm_up_decode()
    acc.warm_up(SamplingConfig())
    before = eng.graph_captures
    assert acc.settle(skip) and eng.graph_captures == before + len(acc.drafter.chunks())
    assert not acc.settle(skip) and eng.graph_captures == before + len(acc.drafter.chunks())  # once per set
    assert eng.length == 0
    own = [key for key in eng._graphs if key[0] == "draft" and key[-1] == skip]
    assert len(own) == len(acc.drafter.chunks())
    prompt = _prompt(40)
    want = vanilla_generate(eng, prompt, 80).tokens
    captures = eng.graph_captures
    res = swift_generate(eng, prompt, 80, cfg=cfg, skip=skip)
    assert res.tokens == want
    assert eng.graph_captures == captures and res.stats["graph_captures"] == 0
    assert sum(eng._graphs[key].replays for key in own) > 0
    tracked = [g for key, g in eng._graphs.items() if key[0] == "draft" and len(key) == 4]
    assert tracked and all(g.replays == 1 for g in tracked)  # the shared graph only ran at warm-up


def test_settling_after_chunked_drafting_stays_inside_the_table(monkeypatch):
    """A capture runs its function once first (model.graphs.capture): settling right after a stream that drafted in
    chunks (draft_stop="confidence" leaves the depth offset past 0) must not draft past the table's last row."""
    def capture(fn, pool=None, track=False):
        fn(lambda key: None) if track else fn()
        return FakeGraph(fn, track)

    monkeypatch.setattr(graphs, "capture", capture)
    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6)
    eng.cuda_graphs = True
    cfg = SwiftConfig(guard=False, context_window=16, draft_stop="confidence", draft_chunk=4, max_draft_len=8)
    acc = accelerator(eng, cfg)
    acc.drafter.tracked = True
    monkeypatch.setattr(acc, "measure", lambda at, sampling: acc.costs)
    eng.warm_up_decode()
    acc.warm_up(SamplingConfig())
    skip = LayerSkip.of(attn=[2], mlp=[3])
    swift_generate(eng, _prompt(40), 60, cfg=cfg, skip=LayerSkip.of(attn=[4]))
    acc.drafter.offset.fill_(4)  # where a chunked draft leaves it
    assert acc.settle(skip)


def test_a_settled_cost_belongs_to_its_skip_set():
    """The measured step cost of a settled set prices that set only; another set with as many skipped attention and
    MLP sub-layers keeps the linear model's price."""
    from model.swift.planner import CostModel, DraftPlanner

    costs = CostModel(fixed=0.1, attn=0.02, mlp=0.02, verify=((16, 1.1),), n_layers=10, measured=True)
    a, b = LayerSkip.of(attn=[1, 2], mlp=[3]), LayerSkip.of(attn=[4, 5], mlp=[6])
    linear = costs.draft(2, 1)
    costs.settled[a] = 0.3
    assert costs.draft_for(a) == 0.3 and costs.draft_for(b) == linear
    planner = DraftPlanner(costs, (1, 2, 4, 8), alpha=0.9)
    assert planner.best(8, a)[0] > planner.best(8, b)[0]
    assert costs.to_dict()["settled"] == [{"attn": [1, 2], "mlp": [3], "cost": 0.3}]


@pytest.mark.real_model
def test_pld_early_exit_and_hybrid_equal_vanilla_real_smollm2(smollm2_path, shared_data_dir):
    """2 CNN/DM + 2 HumanEval prompts (their last 400 tokens: CPU time), 96 new tokens, on the real SmolLM2."""
    from data import load_task
    from model.engine import Engine
    from model.loading import load_model, load_tokenizer
    tok = load_tokenizer(smollm2_path)
    model, args = load_model(smollm2_path)
    prompts = [tok(inst.prompt).input_ids[-400:] for task in ("cnndm", "humaneval")
               for inst in load_task(task, str(shared_data_dir), num_samples=2, seed=0).instances]
    eng = Engine(model, 400 + 96 + 200)
    hybrid_cfg = SwiftConfig(context_drafts=True, context_window=16, num_candidates=2, max_opt_iter=30,
                             max_draft_len=6, guard=False)
    search = LayerSearch(args.n_layers, hybrid_cfg)
    exit_skip = LayerSkip.of(range(args.n_layers // 2, args.n_layers), range(args.n_layers // 2, args.n_layers))
    context = 0
    for p in prompts:
        want = vanilla_generate(eng, p, 96).tokens
        pld = swift_generate(eng, p, 96, cfg=SwiftConfig(context_drafts=True, guard=False), skip=NO_SKIP)
        early = swift_generate(eng, p, 96, cfg=SwiftConfig(max_draft_len=6, guard=False), skip=exit_skip)
        hybrid = swift_generate(eng, p, 96, cfg=hybrid_cfg, search=search)
        assert pld.tokens == want and early.tokens == want and hybrid.tokens == want
        context += pld.stats["accepted_from"]["context"]
    assert context > 0  # prompt lookup found continuations that were accepted


def test_planner_extends_the_chain_when_every_tested_token_is_accepted():
    """Depths never tested take the rate of the depths before them: a draft whose tokens are all accepted is planned
    longer and longer until its chain reaches the length the costs make fastest; a draft that fails at depth 3 is
    kept short."""
    from model.swift.planner import CostModel, DraftPlanner, expected_speedup

    costs = CostModel(fixed=0.1, attn=0.01, mlp=0.01, verify=((16, 1.05), (32, 1.4)), n_layers=32, measured=True)
    skip = LayerSkip.of(attn=range(1, 15), mlp=range(1, 15))
    lengths = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25)
    good, bad = DraftPlanner(costs, lengths), DraftPlanner(costs, lengths)
    first = good.length(25, skip)
    for _ in range(40):
        good.observe(k := good.length(25, skip), k)  # everything accepted
        bad.observe(k := bad.length(25, skip), min(k, 2))  # the third token always fails
    best = expected_speedup(1.0, costs.draft_for(skip), costs.verify_chain(), lengths)[1]
    assert good.length(25, skip) == best == 25 and first < 8
    assert bad.length(25, skip) <= 3
    assert good.rates()[20] > 0.95  # untested depths follow the tested ones


def test_planner_forgets_failures_at_depths_it_no_longer_drafts():
    """A depth that is no longer drafted keeps no stale verdict: after a phase where the second token always failed,
    the planner drafts one token; once those are all accepted, the second depth's old failures fade (every depth's
    counts decay each cycle), it is tried again and the chain grows. Were only tested depths to decay, the plan
    would stay at one token for good."""
    from model.swift.planner import CostModel, DraftPlanner

    costs = CostModel(fixed=0.1, attn=0.01, mlp=0.01, verify=((16, 1.05), (32, 1.4)), n_layers=32, measured=True)
    skip = LayerSkip.of(attn=range(1, 15), mlp=range(1, 15))
    planner = DraftPlanner(costs, (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25))
    for _ in range(40):
        planner.observe(4, 1)  # a noisy phase: the second token always rejected
    assert planner.length(25, skip) == 1
    planned = []
    for _ in range(200):
        planner.observe(k := planner.length(25, skip), k)  # from now on, every drafted token accepted
        planned.append(k)
    assert planned[0] == 1 and max(planned[-20:]) >= 8


def test_planner_starts_again_from_the_prior_for_a_new_skip_set():
    """Acceptance belongs to a skip set: the counts of the set the search has left do not hold the next set's chains
    short; the same set keeps its counts."""
    from model.swift.planner import CostModel, DraftPlanner

    costs = CostModel(fixed=0.1, attn=0.01, mlp=0.01, verify=((16, 1.05), (32, 1.4)), n_layers=32, measured=True)
    old, new = LayerSkip.of(attn=range(1, 15), mlp=range(1, 14)), LayerSkip.of(attn=range(1, 14), mlp=range(1, 15))
    planner = DraftPlanner(costs, (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25))
    planner.use(old)
    for _ in range(40):
        planner.observe(4, 1)  # the old set's second token always rejected
    planner.use(old)
    assert planner.length(25, old) == 1  # the same set keeps its counts
    planner.use(new)
    planned = []
    for _ in range(15):
        planner.observe(k := planner.length(25, new), k)
        planned.append(k)
    assert planned[0] > 1 and planned[-1] == 25


def test_planner_choice_is_reused_only_while_nothing_it_depends_on_changes():
    """`DraftPlanner.best` answers repeated questions from memory (a hybrid stream asks every cycle and observes only
    its draft cycles). Every answer equals the expression computed afresh: after observed cycles, a new skip set,
    another limit or extra branch, a settled cost, new verification costs."""
    from model.swift.planner import CostModel, DraftPlanner, expected_speedup

    costs = CostModel(fixed=0.1, attn=0.01, mlp=0.01, verify=((16, 1.05), (32, 1.4)), n_layers=32, measured=True)
    a, b = LayerSkip.of(attn=range(1, 15), mlp=range(1, 14)), LayerSkip.of(attn=range(1, 14), mlp=range(1, 15))
    planner = DraftPlanner(costs, (1, 2, 3, 4, 6, 8, 12, 16, 25))

    def fresh(limit, skip, extra=0):
        allowed = [k for k in planner.lengths if k <= limit] or [planner.lengths[0]]
        return expected_speedup(planner.rates(), planner.costs.draft_for(skip), planner.costs.verify_chain(extra),
                                allowed)

    seen = set()

    def check(limit, skip, extra=0):
        got = planner.best(limit, skip, extra)
        assert got == fresh(limit, skip, extra)
        seen.add(got)

    planner.use(a)
    check(25, a)
    for accepted in (0, 1, 5, 5, 12, 2):  # each observed cycle changes the answer
        before = planner.best(25, a)
        planner.observe(12, accepted)
        check(25, a)
        assert planner.best(25, a) != before
    for _ in range(5):
        planner.observe(12, 12)  # long chains accepted: the best length grows past what a small limit allows
    check(25, a)
    check(25, a, extra=10)  # a context branch beside the chain moves it to the larger tree
    check(3, a)
    answers = {planner.best(25, a), planner.best(25, a, extra=10), planner.best(3, a)}
    assert len(answers) == 3 and planner.best(25, a)[1] > 3
    planner.use(b)  # a new skip set: its counts start from the prior
    check(25, b)
    costs.settled[b] = 0.9  # a measured cost for the set
    check(25, b)
    costs.verify = ((16, 1.2), (32, 1.3))
    check(25, b)
    planner.costs = CostModel.default(32)
    check(25, b)
    assert len(seen) >= 10


def test_speed_guard_judges_the_last_full_window_only():
    """The guard's SWIFT speed is that of the last `guard_min_cycles` cycles: none before the window is full, and the
    cycles before the window no longer count."""
    g = SpeedGuard(SwiftConfig(guard_min_cycles=3))
    g.plain_tps = 10.0
    for tokens in (30, 30):
        g.observe(tokens, 1.0)
    assert g.swift_tps() is None and not g.check(5)
    g.observe(30, 1.0)
    assert g.swift_tps() == 30.0 and not g.check(6)
    for tokens, seconds in ((1, 1.0), (2, 1.0), (3, 2.0)):  # the fast cycles leave the window one by one
        g.observe(tokens, seconds)
    assert g.swift_tps() == 6 / 4 and g.check(9) and g.tripped_at == 9
    from model.errors import UserError

    with pytest.raises(UserError, match="guard window"):
        SwiftConfig(guard_min_cycles=0)  # a window of no cycles could never judge


def test_cycle_host_benchmark_runs_and_refuses_bad_input(tmp_path):
    import subprocess
    import sys

    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "scripts" / "bench_cycle_host.py")
    out = subprocess.run([sys.executable, script, "--number", "20", "--repeat", "1"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert [line.split(":")[0].strip() for line in out.stdout.splitlines()[1:]] == [
        "hybrid context cycle", "draft cycle", "two guard checks"]
    for bad in (["--number", "0"], ["--repo", str(tmp_path)]):
        err = subprocess.run([sys.executable, script, *bad], capture_output=True, text=True, timeout=120)
        assert err.returncode == 2 and "Traceback" not in err.stderr


def test_expected_speedup_equals_the_plain_loop_over_depths():
    """The expected-speed expression, computed over a prepared list of per-depth rates, gives the same bits as the
    plain loop that takes depth j's rate (the last one past the list's end) for every j: the planner's and the
    search's decisions do not change with it."""
    import random

    from model.swift.planner import CostModel, expected_speedup

    def reference(rates, c, v, lengths):
        best, best_k, tokens, p, k_done = 0.0, 0, 1.0, 1.0, 0
        for k in sorted(lengths):
            for j in range(k_done, k):
                p *= rates if isinstance(rates, float) else rates[min(j, len(rates) - 1)]
                tokens += p
            k_done = k
            s = tokens / (k * c + (v(k) if callable(v) else v))
            if s > best:
                best, best_k = s, k
        return best, best_k

    rng = random.Random(0)
    costs = CostModel(fixed=0.1, attn=0.01, mlp=0.01, verify=((8, 1.02), (16, 1.05), (32, 1.4)), n_layers=32)
    for case in range(3000):
        n = rng.choice([1, 3, 25, 32, 40])
        rates = rng.random() if case % 3 == 0 else [rng.random() for _ in range(n)]
        if case % 5 == 1:
            rates = tuple(rates) if isinstance(rates, list) else rates
        lengths = rng.sample((1, 2, 3, 4, 6, 8, 12, 16, 25, 32), rng.randint(0, 10))
        c = rng.uniform(0.05, 1.2)
        v = costs.verify_chain(rng.randint(0, 10)) if case % 2 else rng.uniform(0.9, 1.5)
        assert expected_speedup(rates, c, v, lengths) == reference(rates, c, v, lengths)
