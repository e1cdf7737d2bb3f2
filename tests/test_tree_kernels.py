"""The tree kernels (model/kernels/tree.py) against the PyTorch code they replace, on random trees: the build against
`DeviceTree.build`, the greedy acceptance and commit against `Verifier`'s PyTorch tail; and greedy SWIFT with the
kernels against vanilla decoding. On CPU they run in Triton's interpreter."""

from __future__ import annotations

import random

import pytest
import torch

from model import kernels
from model.backends import Backends
from model.kernels import tree as tree_kernels
from model.swift.acceleration import accept_and_commit, greedy_checks
from model.swift.config import DEFAULT_TREE_RULE
from model.tree import DeviceTree

pytestmark = pytest.mark.skipif(not kernels.interpreting() and not torch.cuda.is_available(),
                                reason="the kernels run on CPU tensors only in Triton's interpreter")


def _case(rng: random.Random, D: int, K: int, B: int, n: int, vocab: int = 6):
    """A random cycle: a draft table with repeated tokens (siblings that must be dropped), a chain length, a context
    branch that shares a random number of leading tokens with the chain."""
    max_nodes = rng.choice([n, max(D + 2, n // 2)]) if n // 2 >= D + 2 else n
    C = rng.randint(0, min(D, max_nodes - 1))
    clen = rng.randint(0, min(B, max_nodes - 1 - C))
    table = torch.tensor([[rng.randrange(vocab) for _ in range(K)] for _ in range(D)], dtype=torch.long)
    top1 = torch.tensor([rng.random() for _ in range(D)], dtype=torch.float32)
    ctx = torch.tensor([rng.randrange(vocab) for _ in range(B)], dtype=torch.long)
    share = rng.randint(0, min(clen, C))
    ctx[:share] = table[:share, 0]
    seq = torch.tensor([rng.randrange(vocab) for _ in range(200)], dtype=torch.long)
    cursor = torch.tensor([rng.randrange(100)], dtype=torch.long)
    return dict(table=table, top1=top1, C=torch.tensor([C]), ctx=ctx, clen=torch.tensor([clen]), seq=seq,
                cursor=cursor, max_nodes=max_nodes)


SHAPES = [(25, 4, 10, 32), (25, 4, 10, 64), (5, 3, 1, 16), (8, 1, 4, 16), (16, 2, 16, 64), (12, 4, 32, 128)]


@pytest.mark.parametrize("D,K,B,n", SHAPES)
def test_build_kernel_equals_the_pytorch_tree(D, K, B, n):
    rng = random.Random(D * 1000 + K * 100 + B * 10 + n)
    for _ in range(12):
        x = _case(rng, D, K, B, n)
        tree = DeviceTree(DEFAULT_TREE_RULE, x["max_nodes"], n, "cpu")
        R = x["cursor"]
        ref = tree.build(x["table"], x["top1"], x["C"], x["ctx"], x["clen"], x["seq"].index_select(0, R))
        got, ext = tree_kernels.build(tree, x["table"], x["top1"], x["C"], x["ctx"], x["clen"], x["seq"], R)
        for name in ("tokens", "depth", "prefix", "run_lo", "cand", "ctok", "bnode"):
            assert torch.equal(getattr(got, name), getattr(ref, name)), (name, x)
        assert [got.blen.item(), got.at.item()] == [ref.blen.item(), ref.at.item()]
        assert torch.equal(ext, torch.stack([R + ref.prefix, R + ref.run_lo, R + torch.arange(n), R + ref.depth]))


def _reference_accept(pred, t, table, C, R, seq):
    """The greedy acceptance and commit of `Verifier._cycle` (PyTorch), on copies."""
    seq = seq.clone()
    first, b_ok = greedy_checks(pred, t)
    report, moves = accept_and_commit(pred, first, b_ok, t, table, C, R, seq)
    return seq, report, moves


@pytest.mark.parametrize("D,K,B,n", SHAPES)
def test_accept_kernel_equals_the_pytorch_acceptance(D, K, B, n):
    rng = random.Random(7 + D * 1000 + K * 100 + B * 10 + n)
    for trial in range(16):
        x = _case(rng, D, K, B, n, vocab=4)
        tree = DeviceTree(DEFAULT_TREE_RULE, x["max_nodes"], n, "cpu")
        R = x["cursor"]
        t = tree.build(x["table"], x["top1"], x["C"], x["ctx"], x["clen"], x["seq"].index_select(0, R))
        # the full model's argmax per node: mostly the chain / branch continuation, so long paths get accepted
        pred = torch.tensor([rng.randrange(4) for _ in range(n)], dtype=torch.long)
        follow = rng.random()
        for i in range(n):
            kids = [j for j in range(n) if j != i and t.prefix[j] == t.depth[j] and t.depth[j] == t.depth[i] + 1]
            if rng.random() < follow and i <= x["C"].item() and i + 1 < n and i < D:
                pred[i] = t.tokens[i + 1]
            elif kids and rng.random() < 0.5:
                pred[i] = t.tokens[rng.choice(kids)]
        bn = t.bnode.clamp_max(n - 1)
        for b in range(B - 1):
            if rng.random() < 0.8:
                pred[bn[b]] = t.tokens[bn[b + 1]]
        ref_seq, ref_report, ref_moves = _reference_accept(pred, t, x["table"], x["C"], R, x["seq"])
        seq = x["seq"].clone()
        report = torch.zeros_like(ref_report)
        moves = tree_kernels.accept_greedy(pred, t, x["table"], x["C"], R, seq, report)
        assert torch.equal(report, ref_report), (trial, report, ref_report)
        assert torch.equal(seq, ref_seq)
        assert torch.equal(moves, ref_moves)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_swift_with_the_tree_kernels_equals_vanilla(seed):
    """The whole cycle with the draft step's tail, the tree, acceptance and commit in the kernels: the draft chain with
    alternatives, and the union tree with a context branch, give vanilla's tokens. The passes run the PyTorch ops
    here (the Triton passes in the interpreter take minutes; their bits are checked in test_kernels.py)."""
    from helpers import tiny_engine
    from model.generate import vanilla_generate
    from model.swift.decoding import accelerator, swift_generate
    from model.swift.layer_search import LayerSearch
    from model.swift.config import SwiftConfig

    eng, _ = tiny_engine(seed=seed, scale=6, num_hidden_layers=6, vocab_size=24)
    prompt = [int(t) for t in torch.randint(0, 24, (30,), generator=torch.Generator().manual_seed(seed))]
    prompt = prompt + prompt[:12]  # a repeat, so the context has continuations to propose
    want = vanilla_generate(eng, prompt, 60).tokens
    for cfg in (SwiftConfig(guard=False, context_window=12, skip_ratio=0.25, seed=seed),
                SwiftConfig(guard=False, context_window=12, skip_ratio=0.25, seed=seed, context_drafts=True,
                            context_tree="union")):
        acc = accelerator(eng, cfg)  # one for both settings (same buffer shapes)
        assert acc.verifier.fused == acc.drafter.fused == (cfg.context_tree == "union")  # PyTorch passes: unless asked
        acc.verifier.fused = acc.drafter.fused = True
        res = swift_generate(eng, prompt, 60, cfg=cfg, search=LayerSearch(6, cfg))
        assert res.tokens == want
        assert max(res.accept_lengths) > 1
        if cfg.context_drafts:
            assert res.stats["cycles"]["union"] > 0


@pytest.mark.parametrize("V,k,mapped", [(24, 4, False), (97, 8, False), (300, 3, True), (64, 1, False)])
def test_draft_topk_kernel_equals_topk_and_the_top1_probability(V, k, mapped):
    from model.kernels.topk import draft_topk
    g = torch.Generator().manual_seed(V + k)
    D = 6
    table, top1 = torch.full((D, k), -1, dtype=torch.long), torch.zeros(D)
    vocab_map = torch.randperm(1000, generator=g)[:V].sort().values if mapped else None
    for d in range(3):
        logits = torch.randn(1, V, generator=g) * 4
        offset = torch.tensor([2])
        tok = draft_topk(logits, k, table, top1, offset, d, vocab_map)
        vals, ids = logits.topk(k, dim=-1)
        want = ids[0] if vocab_map is None else vocab_map[ids[0]]
        assert table[2 + d].tolist() == want.tolist()
        assert tok.tolist() == want[:1].tolist()
        assert torch.allclose(top1[2 + d], torch.softmax(logits, -1).max(), rtol=1e-5)
    assert (table[:2] == -1).all() and (table[5:] == -1).all()  # only rows offset + d are written


def test_draft_topk_kernel_breaks_ties_towards_the_lower_id():
    from model.kernels.topk import draft_topk
    logits = torch.zeros(1, 200)
    logits[0, [150, 7, 90]] = 3.0
    logits[0, 120] = 5.0
    table, top1 = torch.zeros(1, 3, dtype=torch.long), torch.zeros(1)
    draft_topk(logits, 3, table, top1, torch.tensor([0]), 0)
    assert table[0].tolist() == [120, 7, 90]


def test_the_kernels_leave_a_handful_of_operations_around_the_passes(monkeypatch):
    """What the kernels are for: inside a CUDA graph every operation is a launch of a microsecond or two. Counted here
    for what a draft graph and a verification graph hold (PyTorch dispatches, views and same-device moves excluded; a
    kernel launch counts once), the passes themselves (forward and LM head) left out."""
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    from helpers import tiny_engine
    from model.kernels import topk as topk_kernels
    from model.sampling import SamplingConfig
    from model.swift import acceleration
    from model.swift.config import SwiftConfig
    from model.swift.decoding import accelerator

    free = {"view", "_unsafe_view", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "alias",
            "detach", "t", "transpose", "permute", "reshape", "lift_fresh", "unbind", "to"}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.__name__.split(".")[0] not in free
            return func(*args, **(kwargs or {}))

    def uncounted(fn, launches=0):
        def call(*a, **kw):
            with _disable_current_modes():
                out = fn(*a, **kw)
            Count.n += launches
            return out
        return call

    def counted(fn):
        def call(*a, **kw):
            with Count():
                return fn(*a, **kw)
        return call

    eng, _ = tiny_engine(seed=0, scale=6, num_hidden_layers=6, vocab_size=24)
    acc = accelerator(eng, SwiftConfig(guard=False, context_drafts=True))
    eng.start(list(range(1, 20)))
    monkeypatch.setattr(eng, "forward", uncounted(eng.forward))
    monkeypatch.setattr(eng, "logits", uncounted(eng.logits))
    monkeypatch.setattr(acceleration, "tree_kernels", type("K", (), dict(
        build=staticmethod(uncounted(tree_kernels.build, 1)),
        accept_greedy=staticmethod(uncounted(tree_kernels.accept_greedy, 1)))))
    monkeypatch.setattr(acceleration, "topk_kernels", type("K", (), dict(
        draft_topk=staticmethod(uncounted(topk_kernels.draft_topk, 2)))))
    monkeypatch.setattr(acc.drafter, "_steps", counted(acc.drafter._steps))  # what a draft graph holds
    monkeypatch.setattr(acc.verifier, "_cycle", counted(acc.verifier._cycle))  # what a verification graph holds
    counts = {}
    for fused in (False, True):
        acc.drafter.fused = acc.verifier.fused = fused
        eng.cursor.fill_(19)
        eng.length = 20
        Count.n = 0
        acc.drafter.draft(4)
        draft = Count.n
        Count.n = 0
        acc.verifier.verify(4, SamplingConfig(), context=[1, 2, 3])
        counts[fused] = (draft, Count.n)
    (draft_torch, verify_torch), (draft_fused, verify_fused) = counts[False], counts[True]
    # verification: the tree, argmax, acceptance, the K/V move (gather + scatter), the cursor
    assert verify_fused <= 6 and verify_torch >= 150, counts
    # a draft of 4: the first input (6), the steps' positions (2), two kernels per step (PyTorch: nine)
    assert draft_fused <= 6 + 2 + 4 * 2 and draft_torch >= draft_fused + 4 * 7, counts


def test_sampling_with_the_kernels_draws_what_the_pytorch_tails_draw():
    """Sampling keeps the PyTorch acceptance (the rejection rule of model/sampling.py, checked by the chi-square tests
    of test_swift.py and test_drafts.py) over the tree the kernel builds, and the draft's top-k from the kernel: with
    the same random numbers, both give the same tokens."""
    from helpers import tiny_engine
    from model.llama import LayerSkip
    from model.sampling import SamplingConfig
    from model.swift.config import SwiftConfig
    from model.swift.decoding import accelerator, swift_generate

    eng, _ = tiny_engine(seed=3, scale=8, num_hidden_layers=6, vocab_size=24)
    prompt = [int(t) for t in torch.randint(0, 24, (20,), generator=torch.Generator().manual_seed(3))] * 2
    cfg = SwiftConfig(guard=False, context_drafts=True, context_tree="union")
    acc = accelerator(eng, cfg)
    for seed in range(3):
        runs = []
        for fused in (False, True):
            acc.drafter.fused = acc.verifier.fused = fused
            torch.manual_seed(seed)
            runs.append(swift_generate(eng, prompt, 30, SamplingConfig(temperature=0.8, top_p=0.95), cfg=cfg,
                                       skip=LayerSkip.of(attn=[2], mlp=[3])))
        assert runs[0].tokens == runs[1].tokens and runs[0].accept_lengths == runs[1].accept_lengths
        assert runs[1].stats["cycles"]["union"] > 0


def test_the_kernels_compile_for_an_sm90_gpu():
    """The interpreter runs code the GPU compiler rejects; tests/compile_sm90.py builds each kernel for an H100/H200
    with Triton's own compiler (no GPU needed), with and without programmatic dependent launch, and checks that with
    it no kernel touches global memory before its wait for the kernel before it."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("compile_sm90.py")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    if "ptxas" in out.stdout + out.stderr and "ok " not in out.stdout:
        pytest.skip(f"Triton cannot assemble for a GPU here: {(out.stdout + out.stderr)[-300:]}")
    lines = out.stdout.splitlines()
    assert len(lines) == 26 and all(line.startswith("ok ") for line in lines), out.stdout + out.stderr[-2000:]


def test_kernels_that_disagree_fall_back_to_the_pytorch_code(monkeypatch):
    """`fused_tails` runs the kernels once per engine and shape on made-up cycles (an accepted context branch beside
    a dropped equal alternative, an accepted alternative, a whole accepted chain) and random logits, and uses them
    only when they give what the PyTorch code gives; otherwise a warning and the PyTorch code."""
    from model.swift import acceleration

    cpu, rule = torch.device("cpu"), DEFAULT_TREE_RULE
    seen = []
    real_accept = acceleration.accept_and_commit

    def spy(*args):
        report, moves = real_accept(*args)
        seen.append(report[:4].tolist())
        return report, moves

    monkeypatch.setattr(acceleration, "accept_and_commit", spy)
    assert acceleration._tree_kernels_disagree(cpu, rule, (8, 16, 32), 32, 25, 8, 10) is None
    assert [2, 0, 2] in [r[1:] for r in seen] and [1, 1, 0] in [r[1:] for r in seen]  # branch, alternative
    assert any(r[1] >= 15 and r[2] == r[3] == 0 for r in seen)  # the whole chain
    assert acceleration._tree_kernels_disagree(cpu, rule, (16,), 16, 5, 1, 1) is None  # K = 1, no branch room
    assert acceleration._topk_kernel_disagrees(cpu, 8, 5000, None) is None
    assert acceleration._topk_kernel_disagrees(cpu, 4, 3000, torch.arange(0, 6000, 2)) is None

    real = tree_kernels.accept_greedy

    def off_by_one(*args):
        moves = real(*args)
        args[6][0] += 1  # the report's committed count
        return moves

    monkeypatch.setattr(tree_kernels, "accept_greedy", off_by_one)
    problem = acceleration._tree_kernels_disagree(cpu, rule, (16,), 16, 6, 4, 4)
    assert problem == "16-node tree: acceptance and commit"

    class FakeEngine:
        ops = type("Ops", (), {"inplace": True})()
        device, multi_device = cpu, False

        def __init__(self, asked: Backends):
            self.asked, self.backends = asked, asked.resolve("cuda")

    eng, calls = FakeEngine(Backends("triton")), []
    check = lambda: calls.append(1) or problem  # noqa: E731
    with pytest.warns(RuntimeWarning, match="disagree"):
        assert not acceleration.fused_tails(eng, ("tree", 16), check)
    assert not acceleration.fused_tails(eng, ("tree", 16), check) and len(calls) == 1  # once per engine and shape
    assert acceleration.fused_tails(eng, ("tree", 32), lambda: None)
    with pytest.raises(RuntimeError, match="disagree"):  # asked for by name: no silent fallback
        acceleration.fused_tails(FakeEngine(Backends("triton", tails="kernels")), ("tree", 16), check)
    assert not acceleration.fused_tails(FakeEngine(Backends("triton", tails="torch")), ("tree", 32), lambda: None)


def test_the_tails_setting_picks_the_kernels_or_the_pytorch_code():
    """An engine with the Triton passes runs the tails as kernels unless told `tails="torch"`; the answer's stats say
    which ran, and the tokens are the same."""
    from helpers import hf_config, hf_model, ours_from_hf
    from model.engine import Engine
    from model.generate import cache_capacity, vanilla_generate
    from model.llama import LayerSkip
    from model.swift.config import SwiftConfig
    from model.swift.decoding import accelerator, swift_generate

    model, _ = ours_from_hf(hf_model(hf_config("llama", num_hidden_layers=3), seed=3, scale=4))
    cfg = SwiftConfig(guard=False, context_window=8, skip_ratio=0.25, max_draft_len=4, max_tree_nodes=8)
    prompt = torch.randint(0, 97, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    got = {}
    for tails in ("auto", "torch"):
        eng = Engine(model, cache_capacity(12, 6), Backends("triton", tails=tails))
        acc = accelerator(eng, cfg)
        assert acc.drafter.fused == acc.verifier.fused == (tails == "auto")
        assert eng.backends.tails == ("kernels" if tails == "auto" else "torch")
        res = swift_generate(eng, prompt, 6, cfg=cfg, skip=LayerSkip.of(attn=[1]))
        assert res.stats["tail_kernels"] == {"draft": tails == "auto", "verify": tails == "auto"}
        got[tails] = res.tokens
    assert got["auto"] == got["torch"] == vanilla_generate(eng, prompt, 6).tokens
