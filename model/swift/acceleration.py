"""SWIFT's acceleration phase on the device: draft a chain with the skip set, build the token tree, verify it with the
full model in one pass, accept the longest valid path plus a bonus token, commit.

Cache layout during one cycle (R = `engine.cursor`, the slot of the last committed token, the root, which has no K/V
yet): slots [0, R) hold the full model's K/V of committed tokens; the draft writes slots R.. with the skipped model;
verification rewrites slots R.. with the full model for every tree node (chain nodes first, so an accepted chain
prefix is already in place); an accepted alternative leaf is moved into place. Nothing is cloned, rejection costs
nothing. Every node at depth d attends to the committed prefix plus its chain ancestors, which are exactly the slots
[0, R + d): the same slots, reduced in the same order, as plain decoding of that token (model/kernels/attention.py).

`Drafter.draft(k)` runs k draft steps as one graph replay: each step's input is the previous step's top-1 token, on
the device; the top-k ids and the top-1 probability of every step land in `table` / `top1`. `Verifier.verify()` is
the rest of the cycle as one replay; its `report` holds what the host needs, read with the cycle's one sync (or, for
a group of cycles read together, kept as a row of `reports` before the next cycle overwrites it: `keep`). Where
the passes run the Triton kernels, the work around them (a draft step's top-k and table writes; the tree, greedy
acceptance and commit) is a few kernels of model/kernels/topk.py and tree.py; elsewhere it is the PyTorch code here.

The skip set is data, not a new graph: with the Triton kernels the draft graph is captured once with every
sub-layer and `Drafter.set_skip` switches the kernels of skipped sub-layers off in place (model/graphs.py); where
that is not possible (the PyTorch path, or a runtime without the graph API) one graph per skip set is captured and
counted in `engine.graph_captures`. A switched-off kernel still holds its place in the graph's schedule (about a
microsecond each on an H200), so once the search has stopped, `Drafter.settle` captures graphs of the final skip set
alone, between answers (untimed), and drafting replays those.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import torch

from model import graphs
from model import sampling as rules
from model.engine import Engine
from model.llama import NO_SKIP, LayerSkip, Pass
from model.sampling import SamplingConfig, logits_to_probs, sample_from_probs
from model.swift.config import MAX_SYNC_CYCLES, SwiftConfig
from model.swift.planner import DRAFT_LENGTHS
from model.kernels import topk as topk_kernels
from model.kernels import tree as tree_kernels
from model.tree import BUCKETS, DeviceTree, DeviceTreeTensors, padded_size

_SERIAL = itertools.count()  # graph and buffer keys: unique per object for the process (an id() can be reused)


class Drafter:
    """The draft model: the full model with a skip set, and optionally a reduced-vocabulary head."""

    def __init__(self, engine: Engine, cfg: SwiftConfig):
        self.engine, self.cfg, self.key = engine, cfg, next(_SERIAL)
        dev, K = engine.device, cfg.top_k
        self.table = torch.zeros(cfg.max_draft_len, K, dtype=torch.long, device=dev)
        self.top1 = torch.zeros(cfg.max_draft_len, dtype=torch.float32, device=dev)
        self.offset = torch.zeros(1, dtype=torch.long, device=dev)  # first depth row this replay writes
        self.vocab = DraftVocabulary(engine, cfg.draft_vocab)
        self.skip: LayerSkip = NO_SKIP
        self.tracked = engine.cuda_graphs and engine.ops.inplace and graphs.tracking_works()
        V, vmap = self.vocab.size or engine.args.vocab_size, self.vocab.map  # the step's top-k etc. in two kernels
        self.fused = fused_tails(engine, ("top-k", K, V, vmap is not None),
                                 lambda: _topk_kernel_disagrees(dev, K, V, vmap))
        self.settled: set = set()  # skip sets with graphs of their own (`settle`)

    def chunks(self) -> tuple[int, ...]:
        return tuple(k for k in DRAFT_LENGTHS if k <= self.cfg.max_draft_len)

    def propose(self, tokens: list[int]) -> int:
        """Use `tokens` (e.g. a context continuation) as this cycle's chain, with full confidence (no alternatives);
        returns the chain length."""
        n = len(tokens)
        self.table[:n, 0].copy_(torch.tensor(tokens, dtype=torch.long), non_blocking=False)
        self.top1[:n].fill_(1.0)
        return n

    def set_skip(self, skip: LayerSkip) -> None:
        self.skip = skip

    def _steps(self, k: int, skip: LayerSkip, mark=None):
        e, K = self.engine, self.cfg.top_k
        R, d0 = e.cursor, self.offset
        first = e.seq.index_select(0, R)
        prev = self.table.index_select(0, (d0 - 1).clamp_min(0))[:, 0]
        tok = torch.where(d0 > 0, prev, first)
        positions = R + d0 + e.arange[:k]  # [k]: one launch for the whole draft
        for d in range(k):
            pos = positions[d:d + 1]
            p = Pass(tok, e.ext(pos, pos, pos, pos), e.kv_len(self.cfg.max_draft_len + 1))
            step_mark = None if mark is None else (lambda key, d=d: mark(None if key is None else (d,) + key))
            x = e.forward(p, skip=skip, mark=step_mark)
            logits = e.logits(x, self.vocab.weight)  # [1, V'] float32
            if self.fused:  # two kernels
                tok = topk_kernels.draft_topk(logits, K, self.table, self.top1, d0, d, self.vocab.map)
                continue
            vals, ids = logits.topk(K, dim=-1)
            self.table.index_copy_(0, d0 + d, self.vocab.ids(ids))
            # top-1 probability = 1 / sum(exp(logits - max)): three kernels (logsumexp launches about nine)
            self.top1.index_copy_(0, d0 + d, torch.exp(logits - vals[:, :1]).sum(dim=-1).reciprocal())
            tok = self.vocab.ids(ids[:, 0])

    def draft(self, k: int, offset: int = 0) -> None:
        """k draft steps from depth row `offset` (0: from the root) with the current skip set."""
        self.offset.fill_(offset)
        e, kv = self.engine, self.engine.kv_len(self.cfg.max_draft_len + 1)
        if not e.cuda_graphs:
            self._steps(k, self.skip)
        elif self.skip in self.settled and e.has_graph(self._own_key(k, kv, self.skip)):
            e.graph(self._own_key(k, kv, self.skip), None).replay()
        elif self.tracked:
            try:
                g = e.graph(("draft", (self.key, self.fused), k, kv), lambda mark: self._steps(k, NO_SKIP, mark),
                            track=True)
            except RuntimeError as err:  # the graph API refused: one graph per skip set from now on
                warnings.warn(f"draft graphs cannot switch kernels off ({err}); capturing one per skip set",
                              RuntimeWarning)
                self.tracked = False
                return self.draft(k, offset)
            if getattr(g, "skip", None) != self.skip:  # switch the skipped sub-layers' kernels off, the rest on
                for key in g.regions:
                    _, kind, layer = key
                    g.enable(key, layer not in (self.skip.attn if kind == "attn" else self.skip.mlp))
                g.skip = self.skip
            g.replay()
        else:
            e.run(self._own_key(k, kv, self.skip), lambda: self._steps(k, self.skip))

    def _own_key(self, k: int, kv, skip: LayerSkip) -> tuple:
        return ("draft", (self.key, self.fused), k, kv, skip)

    def settle(self, skip: LayerSkip) -> bool:
        """Capture a draft graph of every chunk length for `skip` alone (call it untimed, on scratch positions);
        `draft` replays those while `skip` is the skip set. Returns whether anything was captured."""
        e = self.engine
        if not self.tracked or not len(skip) or skip in self.settled:
            return False
        kv = e.kv_len(self.cfg.max_draft_len + 1)
        self.offset.zero_()  # a capture runs the steps once first: from depth row 0 they stay inside the table
        for k in self.chunks():
            e.graph(self._own_key(k, kv, skip), lambda k=k: self._steps(k, skip))
        self.settled.add(skip)
        return True

    def warm_up(self) -> None:
        """Capture the draft graph of every chunk length now (with tracking, these serve every skip set)."""
        if not self.engine.cuda_graphs:
            return
        for k in self.chunks():
            self.draft(k)


class DraftVocabulary:
    """The draft's LM head restricted to `size` token ids (0 = the full vocabulary).

    A draft step of a small model spends a large share of its time in the LM head (Qwen2.5-0.5B: 152k x 896). The
    draft only proposes tokens; verification keeps the full head, so a token outside the draft vocabulary is never
    proposed but is still produced (as a bonus or a correction) when the full model predicts it: the output does not
    change. The ids kept are those seen in the task's prompts and outputs so far, most frequent first, then the lowest
    ids (byte-pair vocabularies number their most frequent merges first). `update` refills the rows in place (graphs
    read the same buffers)."""

    def __init__(self, engine: Engine, size: int):
        self.engine = engine
        V = engine.args.vocab_size
        self.size = 0 if size <= 0 or size >= V else -(-size // 64) * 64
        self.counts = torch.zeros(V, dtype=torch.long)
        if self.size:
            w = engine.model.output.weight
            self.map = torch.arange(self.size, dtype=torch.long, device=engine.device)
            self.weight = w[:self.size].clone()
        else:
            self.map, self.weight = None, None

    def ids(self, local: torch.Tensor) -> torch.Tensor:
        return local if self.map is None else self.map[local]

    def observe(self, token_ids: list[int]) -> None:
        if self.size and token_ids:
            self.counts.index_add_(0, torch.tensor(token_ids, dtype=torch.long),
                                   torch.ones(len(token_ids), dtype=torch.long))

    def update(self) -> None:
        """Keep the `size` most frequent ids seen so far (ties and unseen: lowest ids first)."""
        if not self.size:
            return
        V = self.counts.shape[0]
        score = self.counts.double() * V - torch.arange(V, dtype=torch.double)  # frequency, then low id
        keep = torch.topk(score, self.size).indices.sort().values.to(self.engine.device)
        self.map.copy_(keep)
        self.weight.copy_(self.engine.model.output.weight.index_select(0, keep))


class Verifier:
    """Tree building, one full-model pass over the tree, acceptance and commit, as one graph per tree size.

    The tree holds the draft chain with its alternatives (`Drafter.table`) and, when `context` tokens are given, a
    context branch (model/tree.py `DeviceTree`). Acceptance walks the chain while its tokens are accepted; at the
    first chain node whose chain child is not, one of its other candidates (an alternative, or the branch's first
    token) may be accepted; along an accepted branch, its tokens are accepted one after the other. Greedy: a
    candidate is accepted when it equals the full model's argmax at its parent; sampling: recursive rejection over
    each node's candidates (model/sampling.py), so the output has the full model's distribution either way."""

    def __init__(self, engine: Engine, cfg: SwiftConfig, drafter: Drafter):
        self.engine, self.cfg, self.drafter, self.key = engine, cfg, drafter, next(_SERIAL)
        dev = engine.device
        self.sizes = tree_sizes(cfg.max_tree_nodes)
        self.trees = {n: DeviceTree(cfg.tree_rule, min(cfg.max_tree_nodes, n), n, dev) for n in self.sizes}
        self.chain = torch.zeros(1, dtype=torch.long, device=dev)  # C: chain tokens drafted this cycle
        self.B = max(1, cfg.context_len)
        self.context = torch.zeros(1 + self.B, dtype=torch.long, device=dev)  # [length, tokens...]
        self._host = torch.zeros(1 + self.B, dtype=torch.long, pin_memory=engine.device.type == "cuda")
        D = cfg.max_draft_len
        # report: [tokens committed, chain tokens accepted, alternative accepted, branch tokens accepted,
        #          committed tokens (D + B + 1)]
        self.report = torch.zeros(4 + D + self.B + 1, dtype=torch.long, device=dev)
        # the reports of a group of cycles read with one sync (`keep`), one row per cycle; sized for the largest
        # group, so that every sync_cycles shares this object (and its graphs)
        self.reports = torch.zeros(MAX_SYNC_CYCLES, self.report.shape[0], dtype=torch.long, device=dev)
        self._context_len = None  # the context length last copied to the device (`verify`)
        K, n = drafter.table.shape[1], cfg.max_tree_nodes  # the tree's bookkeeping in two kernels
        self.fused = fused_tails(engine, ("tree", cfg.tree_rule, self.sizes, n, D, K, self.B),
                                 lambda: _tree_kernels_disagree(dev, cfg.tree_rule, self.sizes, n, D, K, self.B))

    def size_for(self, nodes: int) -> int:
        """The tree size a cycle of `nodes` nodes (root, chain, context branch) is verified at: the smallest that
        holds them; the alternatives fill what is left of it."""
        return next((n for n in self.sizes if nodes <= n), self.sizes[-1])

    def verify(self, chain_len: int, sampling: SamplingConfig, context: list[int] = (),
               size: int | None = None) -> torch.Tensor:
        """Verify the drafted chain of `chain_len` tokens, its alternatives and the `context` branch, on the tree size
        that holds them (or `size`); returns the report (on the device; read it with the cycle's one sync, or `keep` it
        before the next cycle of a group overwrites it)."""
        e = self.engine
        ctx = list(context)[:self.B]
        n = size or self.size_for(1 + chain_len + len(ctx))
        if 1 + chain_len + len(ctx) > n:  # the tree kernels index nodes without bounds checks
            raise ValueError(f"a tree of {n} nodes cannot hold the root, {chain_len} chain and {len(ctx)} context "
                             f"tokens")
        self.chain.fill_(chain_len)
        if ctx or self._context_len != 0:  # without a context the device already holds length 0: no copy, so the
            # pinned buffer is not written while an earlier copy from it may still be queued (a group of cycles)
            self._host[0] = len(ctx)
            self._host[1:1 + len(ctx)] = torch.tensor(ctx, dtype=torch.long)
            self.context.copy_(self._host, non_blocking=True)
            self._context_len = len(ctx)
        if not sampling.greedy:
            e.buffer(("verify-noise", self.key, n), (n, e.args.vocab_size)).exponential_(1)
            e.buffer(("verify-u", self.key), (self.drafter.table.shape[0], self.drafter.table.shape[1] + 1)).uniform_()
            e.buffer(("verify-ub", self.key), (self.B,)).uniform_()
        kv = e.kv_len(n + 1)
        # graphs read these buffers
        e.run(("verify", (self.key, self.fused), n, sampling, kv), lambda: self._cycle(n, sampling, kv),
              plain_launches=self.cfg.plain_multirow)
        return self.report

    def keep(self, j: int) -> None:
        """Keep the report of the cycle just verified as row j of `reports` (a group of cycles, read together)."""
        self.reports[j].copy_(self.report)

    def chain_for(self, size: int) -> int:
        """The longest chain a tree of `size` nodes holds (what its verification is measured with)."""
        return min(self.cfg.max_draft_len, size - 1)

    def _cycle(self, n: int, sampling: SamplingConfig, kv):
        e, dr = self.engine, self.drafter
        table, R, C = dr.table, e.cursor, self.chain
        t, ext = self._tree(n)
        x = e.forward(Pass(t.tokens, ext, kv))
        logits = e.logits(x)  # [n, V]
        if sampling.greedy and self.fused:  # acceptance and commit in one kernel
            moves = tree_kernels.accept_greedy(logits.argmax(dim=-1), t, table, C, R, e.seq, self.report)
        else:
            if sampling.greedy:
                pred = logits.argmax(dim=-1)
                first, b_ok = greedy_checks(pred, t)
                samples = pred
            else:
                first, b_ok, samples = self._sampling(logits, sampling, t)
            report, moves = accept_and_commit(samples, first, b_ok, t, table, C, R, e.seq)
            self.report.copy_(report)
        # K/V of accepted off-chain nodes into place; unused moves copy a scratch slot onto itself
        e.cache.move(moves[0], moves[1])
        e.cursor.add_(self.report[:1])

    def _tree(self, n: int):
        """This cycle's tree of size n and the verification pass's extents."""
        e, dr, R = self.engine, self.drafter, self.engine.cursor
        tree = self.trees[n]
        if self.fused:  # one kernel
            t, ext = tree_kernels.build(tree, dr.table, dr.top1, self.chain, self.context[1:], self.context[:1],
                                        e.seq, R)
            return t, e.ext(*ext)
        t = tree.build(dr.table, dr.top1, self.chain, self.context[1:], self.context[:1], e.seq.index_select(0, R))
        return t, e.ext(R + t.prefix, R + t.run_lo, R + e.arange[:n], R + t.depth)

    def _sampling(self, logits, sampling, t):
        """Recursive rejection sampling (model/sampling.py): per depth row, the first accepted candidate (-1: none);
        per branch node, whether its child is accepted; per node, the token it emits when it is the last accepted
        node: a sample of its residual distribution (its candidates removed; a node without candidates has the
        plain distribution)."""
        e, B, n = self.engine, self.B, t.size
        D = t.cand.shape[0]
        chain_rows = torch.arange(D, device=logits.device).clamp_max(n - 1)  # node d is chain node d (d <= C < n)
        nxt_b, more_b = _branch_children(t), _has_child(t)
        valid = t.valid
        probs = logits_to_probs(logits, sampling)  # [n, V]; row d < D is chain node d
        V = probs.shape[1]
        # the candidates' target probabilities, in order
        p_c = torch.where(valid, probs.index_select(0, chain_rows).gather(1, t.ctok), 0.0)
        mass = p_c.cumsum(1) - p_c  # rejected mass before each candidate
        u = e.buffer(("verify-u", self.key), tuple(t.cand.shape))
        first = _first(valid & (u < rules.accept_probability(p_c, mass)))
        bn = t.bnode.clamp_max(n - 1)
        p_b = probs.index_select(0, bn).gather(1, nxt_b.view(B, 1)).view(B)
        ub = e.buffer(("verify-ub", self.key), (B,))
        b_ok = ub < rules.accept_probability(p_b, torch.zeros_like(p_b))
        rows = torch.arange(D, device=probs.device)[:, None]
        hidden = torch.where(valid, rows * V + t.ctok, n * V).flatten()  # chain nodes' candidates
        hidden_b = torch.where(more_b & (t.bnode < n), bn * V + nxt_b, n * V)  # branch nodes' children
        residual = torch.cat([probs.flatten(), probs.new_zeros(1)])
        residual = residual.index_fill_(0, torch.cat([hidden, hidden_b]), 0.0)
        noise = e.buffer(("verify-noise", self.key, n), (n, V))
        return first, b_ok, sample_from_probs(residual[:-1].view(n, V), noise)


def fused_tails(engine: Engine, key: tuple, check) -> bool:
    """Whether the work around the passes (the draft step's top-k, the tree, acceptance and commit) runs as the
    kernels of model/kernels/topk.py and tree.py: where the engine's backends say so (`tails`, model/backends.py: the
    Triton passes on one device) and the kernels at the caller's shapes (`key`) give what the PyTorch code gives on
    made-up inputs (`check()`: None or the problem; run once per engine and key). When they do not: an error if the
    tail kernels were asked for by name, else a warning and the PyTorch code."""
    if engine.backends.tails != "kernels":  # the engine resolved it: the Triton passes on one device
        return False
    checked = engine.__dict__.setdefault("_tails_checked", {})
    if key not in checked:
        try:
            problem = check()
        except Exception as e:  # noqa: BLE001 - any kernel failure means: use the PyTorch code
            problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if problem:
            say = f"the {key[0]} kernels disagree with the PyTorch code on {engine.device} ({problem})"
            if engine.asked.tails == "kernels":
                raise RuntimeError(f"{say}; ask for tails auto or torch")
            warnings.warn(f"{say}; using the PyTorch code", RuntimeWarning)
        checked[key] = problem is None
    return checked[key]


def _made_up_cycles(D: int, K: int, B: int, max_nodes: int):
    """Cycles for `_tree_kernels_disagree`, each (table, top1, C, ctx, clen, predict): a context branch that shares
    two tokens with the chain, parts where an alternative equals it (which is dropped) and is accepted; an alternative
    accepted after one chain token; the whole chain accepted. `predict(tree)` gives the full model's argmax per node."""
    table = torch.arange(D)[:, None] % 3 + 3 * torch.arange(K)[None, :]  # [D, K]: alternatives differ from the chain
    along = lambda t: torch.cat([t.tokens[1:], t.tokens[:1]])  # noqa: E731 - node i predicts node i + 1's token
    C = min(D, max_nodes - 5)  # room for two alternatives beside the branch
    if C >= 3 and B >= 4:
        ctx = torch.zeros(B, dtype=torch.long)
        ctx[:4] = torch.stack([table[0, 0], table[1, 0], table[2, min(1, K - 1)] + 3 * (K == 1), torch.tensor(3 * K)])

        def branch(t):
            pred = along(t)
            pred[2], pred[t.bnode[0]] = ctx[2], ctx[3]  # node 2 predicts the branch, its first node the second
            return pred

        top1 = torch.full((D,), 0.96)
        top1[2:] = 0.6  # alternatives from row 2 on: the one equal to the branch is dropped
        yield table, top1, torch.tensor([C]), ctx, torch.tensor([4]), branch
    C = min(D, 4, max_nodes - 2)
    if C >= 2 and K >= 2:
        def alternative(t):
            pred = along(t)
            pred[1] = table[1, 1]
            return pred

        yield table, torch.full((D,), 0.3), torch.tensor([C]), torch.zeros(B, dtype=torch.long), torch.tensor([0]), \
            alternative
    yield table, torch.full((D,), 0.3), torch.tensor([min(D, max_nodes - 1)]), torch.zeros(B, dtype=torch.long), \
        torch.tensor([0]), along


@torch.inference_mode()
def _tree_kernels_disagree(device, rule, sizes, max_tree_nodes: int, D: int, K: int, B: int) -> str | None:
    """The tree and acceptance kernels against `DeviceTree.build` and `accept_and_commit` on `_made_up_cycles`, for
    every tree size; None when they agree."""
    g = torch.Generator().manual_seed(0)
    seq, R = torch.randint(0, 3 * K, (256,), generator=g), torch.tensor([5])
    for n in sizes:
        tree = DeviceTree(rule, min(max_tree_nodes, n), n, "cpu")
        for table, top1, C, ctx, clen, predict in _made_up_cycles(D, K, B, tree.max_nodes):
            ref = tree.build(table, top1, C, ctx, clen, seq.index_select(0, R))
            pred, ref_seq = predict(ref), seq.clone()
            report, moves = accept_and_commit(pred, *greedy_checks(pred, ref), ref, table, C, R, ref_seq)
            table_d, C_d, R_d, seq_d = (x.to(device) for x in (table, C, R, seq))
            got, ext = tree_kernels.build(DeviceTree(rule, tree.max_nodes, n, device), table_d, top1.to(device), C_d,
                                          ctx.to(device), clen.to(device), seq_d, R_d)
            for f in dataclasses.fields(ref):
                if not torch.equal(getattr(got, f.name).cpu(), getattr(ref, f.name)):
                    return f"{n}-node tree: {f.name}"
            if not torch.equal(ext.cpu(), torch.stack([R + ref.prefix, R + ref.run_lo, R + torch.arange(n),
                                                       R + ref.depth])):
                return f"{n}-node tree: extents"
            got_report = torch.zeros_like(report, device=device)
            got_moves = tree_kernels.accept_greedy(pred.to(device), got, table_d, C_d, R_d, seq_d, got_report)
            if not (torch.equal(got_report.cpu(), report) and torch.equal(seq_d.cpu(), ref_seq)
                    and torch.equal(got_moves.cpu(), moves)):
                return f"{n}-node tree: acceptance and commit"
    return None


@torch.inference_mode()
def _topk_kernel_disagrees(device, K: int, V: int, vocab_map: torch.Tensor | None) -> str | None:
    """The draft's top-k kernel against torch.topk and the softmax maximum on random logits of the draft head's
    width (through its vocabulary map when it has one); None when they agree."""
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 3
    row, p = torch.zeros(1, K, dtype=torch.long, device=device), torch.zeros(1, device=device)
    tok = topk_kernels.draft_topk(logits.to(device), K, row, p, torch.zeros(1, dtype=torch.long, device=device), 0,
                                  vocab_map)
    want = logits.topk(K).indices[0]
    want = want if vocab_map is None else vocab_map.cpu()[want]
    if not (torch.equal(row.cpu()[0], want) and tok.item() == want[0].item()):
        return "top-k ids"
    if not torch.allclose(p.cpu(), torch.softmax(logits, -1).max(), rtol=1e-4):
        return "top-1 probability"
    return None


def tree_sizes(max_nodes: int) -> tuple[int, ...]:
    """The tree sizes verification has graphs for: every bucket up to the one holding `max_nodes`, so a short chain
    is not verified at the cost of a large tree. On the small models the planner mostly drafts one token, and a
    verification of 8 nodes cost 1.04 (SmolLM2's shape) and 1.12 (Qwen2.5-0.5B's) plain steps on an H100, against
    1.36 and 1.40 for 16 nodes (scripts/pass_costs.py, docs/RESULTS.md)."""
    top = padded_size(max_nodes)
    return tuple(b for b in BUCKETS if b <= top)


def _branch_children(t: DeviceTreeTensors) -> torch.Tensor:
    """Each context-branch node's child token (0 for the last; `_has_child` says whether it is in the tree)."""
    bt = t.tokens.index_select(0, t.bnode.clamp_max(t.size - 1))  # branch tokens
    return torch.cat([bt[1:], bt.new_zeros(1)])


def _has_child(t: DeviceTreeTensors) -> torch.Tensor:
    """Whether each context-branch node has a child in the tree."""
    return torch.arange(t.bnode.shape[0], device=t.bnode.device) + 1 < t.blen


def greedy_checks(pred: torch.Tensor, t: DeviceTreeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy acceptance tests from the full model's argmax per node `pred` [n]: per depth row, the first candidate
    equal to its parent's argmax (-1: none); per branch node, whether its child equals its argmax."""
    D, n = t.cand.shape[0], t.size
    chain_rows = torch.arange(D, device=pred.device).clamp_max(n - 1)  # node d is chain node d (d <= C < n)
    parent_pred = pred.index_select(0, chain_rows).view(D, 1)
    first = _first(t.valid & (t.ctok == parent_pred))
    return first, _branch_children(t) == pred.index_select(0, t.bnode.clamp_max(n - 1))


def accept_and_commit(samples, first, b_ok, t: DeviceTreeTensors, table, C, R, seq) -> tuple[torch.Tensor, ...]:
    """Acceptance and commit with PyTorch ops (model/kernels/tree.py `accept_greedy` is the same in one kernel).
    The chain is accepted while each depth row's first accepted candidate is its chain token; where it stops, an
    alternative leaf or the context branch may be accepted, then the branch's tokens one after the other while their
    checks `b_ok` hold; the last accepted node's `samples` entry is the bonus token. Writes the committed tokens into
    `seq` after the cursor `R`; returns the report [tokens committed, chain tokens accepted, alternative accepted,
    branch tokens accepted, committed tokens (D + B + 1)] and the K/V moves [2, B] (source, destination slots)."""
    D, K = table.shape
    B, n, dev = t.bnode.shape[0], t.size, table.device
    more_b = _has_child(t)
    d = torch.arange(D, device=dev)
    a = ((first == 0) & (d < C)).long().cumprod(0).sum().view(1)  # chain tokens accepted
    row = a.clamp_max(D - 1)
    r = first.index_select(0, row)  # where the chain stops: an alternative (1..K-1), the branch (K), none (-1)
    has_leaf = (r >= 1) & (r < K)
    has_branch = r == K
    nb = torch.where(has_branch, 1 + (b_ok & more_b).long().cumprod(0).sum(), 0)  # branch tokens accepted
    leaf = t.cand.index_select(0, row).gather(1, r.clamp(0, K).view(1, 1)).view(1)
    last_b = t.bnode.index_select(0, (nb - 1).clamp_min(0))
    bonus_node = torch.where(has_branch, last_b, torch.where(has_leaf, leaf, a))
    bonus = samples.index_select(0, bonus_node)
    side = torch.where(has_leaf, leaf.expand(B), t.bnode)  # the accepted off-chain nodes, in order
    n_side = torch.where(has_leaf, 1, nb)
    i = torch.arange(B, device=dev)
    side_tok = t.tokens.index_select(0, side.clamp_max(n - 1))
    out = torch.cat([table[:, 0], torch.zeros(B + 1, dtype=torch.long, device=dev)])
    keep = i < n_side
    out.index_copy_(0, a + i, torch.where(keep, side_tok, out.index_select(0, a + i)))
    out.index_copy_(0, a + n_side, bonus)
    n_new = a + n_side + 1
    seq.index_copy_(0, R + 1 + torch.arange(D + B + 1, device=dev), out)
    scratch = R + n + i
    moves = torch.stack([torch.where(keep, R + side, scratch), torch.where(keep, R + a + 1 + i, scratch)])
    return torch.cat([n_new, a, has_leaf.long(), nb, out]), moves


def _first(ok: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row (-1 when none)."""
    return torch.where(ok.any(1), ok.float().argmax(1), -1)
