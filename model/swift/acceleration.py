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
the rest of the cycle as one replay; its `report` holds what the host needs, read with the cycle's one sync.

The skip set is data, not a new graph: with the Triton kernels the draft graph is captured once with every
sub-layer and `Drafter.set_skip` switches the kernels of skipped sub-layers off in place (model/graphs.py); where
that is not possible (the PyTorch path, or a runtime without the graph API) one graph per skip set is captured and
counted in `engine.graph_captures`.
"""

from __future__ import annotations

import torch

from model import graphs
from model import sampling as rules
from model.engine import Engine
from model.llama import NO_SKIP, LayerSkip, Pass
from model.sampling import SamplingConfig, logits_to_probs, sample_from_probs
from model.swift.config import SwiftConfig
from model.swift.planner import DRAFT_LENGTHS
from model.tree import DeviceTree, padded_size



class Drafter:
    """The draft model: the full model with a skip set, and optionally a reduced-vocabulary head."""

    def __init__(self, engine: Engine, cfg: SwiftConfig):
        self.engine, self.cfg = engine, cfg
        dev, K = engine.device, cfg.top_k
        self.table = torch.zeros(cfg.max_draft_len, K, dtype=torch.long, device=dev)
        self.top1 = torch.zeros(cfg.max_draft_len, dtype=torch.float32, device=dev)
        self.offset = torch.zeros(1, dtype=torch.long, device=dev)  # first depth row this replay writes
        self.vocab = DraftVocabulary(engine, cfg.draft_vocab)
        self.skip: LayerSkip = NO_SKIP
        self.tracked = engine.cuda_graphs and engine.ops.inplace and graphs.tracking_works()

    def chunks(self) -> tuple[int, ...]:
        return tuple(k for k in DRAFT_LENGTHS if k <= self.cfg.max_draft_len)

    def set_skip(self, skip: LayerSkip) -> None:
        self.skip = skip

    def _steps(self, k: int, skip: LayerSkip, mark=None):
        e, K = self.engine, self.cfg.top_k
        R, d0 = e.cursor, self.offset
        first = e.seq.index_select(0, R)
        prev = self.table.index_select(0, (d0 - 1).clamp_min(0))[:, 0]
        tok = torch.where(d0 > 0, prev, first)
        for d in range(k):
            pos = R + d0 + d
            p = Pass(tok, e.ext(pos, pos, pos, pos), e.kv_len(self.cfg.max_draft_len + 1))
            step_mark = None if mark is None else (lambda key, d=d: mark(None if key is None else (d,) + key))
            x = e.forward(p, skip=skip, mark=step_mark)
            logits = e.logits(x, self.vocab.weight)  # [1, V'] float32
            vals, ids = logits.topk(K, dim=-1)
            self.table.index_copy_(0, d0 + d, self.vocab.ids(ids))
            self.top1.index_copy_(0, d0 + d, torch.exp(vals[:, 0] - torch.logsumexp(logits, dim=-1)))
            tok = self.vocab.ids(ids[:, 0])

    def draft(self, k: int, offset: int = 0) -> None:
        """k draft steps from depth row `offset` (0: from the root) with the current skip set."""
        self.offset.fill_(offset)
        e, kv = self.engine, self.engine.kv_len(self.cfg.max_draft_len + 1)
        if not e.cuda_graphs:
            self._steps(k, self.skip)
        elif self.tracked:
            g = e.graph(("draft", k, kv), lambda mark: self._steps(k, NO_SKIP, mark), track=True)
            if getattr(g, "skip", None) != self.skip:  # switch the skipped sub-layers' kernels off, the rest on
                for key in g.regions:
                    _, kind, layer = key
                    g.enable(key, layer not in (self.skip.attn if kind == "attn" else self.skip.mlp))
                g.skip = self.skip
            g.replay()
        else:
            e.run(("draft", k, kv, self.skip), lambda: self._steps(k, self.skip))

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
    """Tree building, one full-model pass over the tree, acceptance and commit, as one graph per tree size."""

    def __init__(self, engine: Engine, cfg: SwiftConfig, drafter: Drafter):
        self.engine, self.cfg, self.drafter = engine, cfg, drafter
        dev = engine.device
        self.size = padded_size(cfg.max_tree_nodes)
        self.tree = DeviceTree(cfg.tree_rule, cfg.max_tree_nodes, self.size, dev)
        self.chain = torch.zeros(1, dtype=torch.long, device=dev)  # C: chain tokens drafted this cycle
        D = cfg.max_draft_len
        # report: [tokens committed, chain tokens accepted, leaf accepted, committed tokens (D + 2)]
        self.report = torch.zeros(3 + D + 2, dtype=torch.long, device=dev)

    def verify(self, chain_len: int, sampling: SamplingConfig) -> torch.Tensor:
        """Verify the drafted chain of `chain_len` tokens (and the tree around it); returns the report (on device)."""
        e = self.engine
        self.chain.fill_(chain_len)
        if not sampling.greedy:
            e.buffer(("verify-noise", self.size), (self.size, e.args.vocab_size)).exponential_(1)
            e.buffer(("verify-u", self.size), tuple(self.drafter.table.shape)).uniform_()
        kv = e.kv_len(self.size + 1)
        e.run(("verify", self.size, sampling, kv), lambda: self._cycle(sampling, kv))
        return self.report

    def _cycle(self, sampling: SamplingConfig, kv):
        e, dr, n = self.engine, self.drafter, self.size
        table, R, C = dr.table, e.cursor, self.chain
        D = table.shape[0]
        tokens, depth, node, extras = self.tree.build(table, dr.top1, C, e.seq.index_select(0, R))
        slot = R + e.arange[:n]
        x = e.forward(Pass(tokens, e.ext(R + depth, slot, slot, R + depth), kv))
        logits = e.logits(x)  # [n, V]
        d = torch.arange(D, device=e.device)
        if sampling.greedy:
            pred = logits.argmax(dim=-1)
            first = _greedy_choice(table, pred, node, extras, C, n)
            samples = pred
        else:
            first, samples = self._sampling_choice(logits, sampling, table, node, extras, C)
        chain_ok = (first == 0) & (d < C)
        a = chain_ok.long().cumprod(0).sum().view(1)  # chain tokens accepted
        row = a.clamp_max(D - 1)
        r_leaf = first.index_select(0, row)  # candidate accepted at the first non-chain row (>= 1: a leaf)
        has_leaf = (a < C) & (r_leaf >= 1)
        leaf = node.index_select(0, row).gather(1, r_leaf.clamp_min(0).view(1, 1)).view(1)
        bonus_node = torch.where(has_leaf, leaf, a)
        bonus = samples.index_select(0, bonus_node)
        leaf_tok = table.index_select(0, row).gather(1, r_leaf.clamp_min(0).view(1, 1)).view(1)
        out = torch.cat([table[:, 0], torch.zeros(2, dtype=torch.long, device=e.device)])
        out.index_copy_(0, a, torch.where(has_leaf, leaf_tok, bonus))
        out.index_copy_(0, a + 1, torch.where(has_leaf, bonus, out.index_select(0, a + 1)))
        n_new = a + 1 + has_leaf.long()
        e.seq.index_copy_(0, R + 1 + torch.arange(D + 2, device=e.device), out)
        e.cache.move(R + torch.where(has_leaf, leaf, a + 1), R + a + 1)
        e.cursor.add_(n_new)
        self.report.copy_(torch.cat([n_new, a, has_leaf.long(), out]))

    def _sampling_choice(self, logits, sampling, table, node, extras, C):
        """Recursive rejection sampling over each chain node's candidates (model/sampling.py): per depth row, the
        first accepted candidate (0 = the chain token, r >= 1 an alternative, -1 none), and per node the token it
        emits when none of its candidates is accepted: a sample of its residual distribution (its candidates removed;
        alternatives and the last chain node have none, so theirs is a plain sample)."""
        n, (D, K) = self.size, table.shape
        probs = logits_to_probs(logits, sampling)  # [n, V]; row d < D is chain node d
        V = probs.shape[1]
        valid = _candidates(D, K, C, extras, table.device)
        p_c = torch.where(valid, probs[:D].gather(1, table), 0.0)  # candidates' target probabilities, in order
        mass = p_c.cumsum(1) - p_c  # rejected mass before each candidate
        u = self.engine.buffer(("verify-u", n), (D, K))
        accept = valid & (u < rules.accept_probability(p_c, mass))
        first = torch.where(accept.any(1), accept.float().argmax(1), -1)
        rows = torch.arange(D, device=table.device)[:, None]
        hidden = torch.where(valid, rows * V + table, n * V)  # flat index into [n, V], or the trash entry
        residual = torch.cat([probs.flatten(), probs.new_zeros(1)]).index_fill_(0, hidden.flatten(), 0.0)
        noise = self.engine.buffer(("verify-noise", n), (n, V))
        return first, sample_from_probs(residual[:-1].view(n, V), noise)


def _candidates(D: int, K: int, C, extras, device) -> torch.Tensor:
    """[D, K] bool: depth row d's candidates in the tree (column 0 the chain token, then `extras[d]` alternatives)."""
    d = torch.arange(D, device=device)
    r = torch.arange(K, device=device)
    return torch.where(r[None, :] == 0, (d < C)[:, None], r[None, :] <= extras[:, None])


def _greedy_choice(table, pred, node, extras, C, n):
    """Per depth row d: 0 when the chain token equals the full model's prediction at chain node d, else the rank of
    the alternative that does (at most one: the draft's top-k ids are distinct), else -1."""
    D, K = table.shape
    match = _candidates(D, K, C, extras, table.device) & (table == pred[:D].view(D, 1))
    return torch.where(match.any(1), match.float().argmax(1), -1)
