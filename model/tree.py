"""Dynamic token trees built from a confidence-aware draft chain.

The draft (the model with layers skipped) proposes a chain d_1..d_D by top-1 and keeps its top-k at every depth.
Depth d receives `b_d` candidates: the chain token plus `b_d - 1` runner-up tokens as extra leaves hanging off the
chain node at depth d-1. `b_d` comes from the draft's top-1 probability at that depth (less confident -> more
candidates), see `branch_counts`. Node order: root (the last committed token), chain nodes 1..D, then the
alternatives depth by depth. Trees are cached by shape (the tuple of per-depth branch counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

BUCKETS = (8, 16, 32, 64, 128)


def padded_size(n: int) -> int:
    """Verification runs on a fixed set of sizes (CUDA graphs need static shapes)."""
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"tree of {n} nodes exceeds the largest bucket {BUCKETS[-1]}")


def branch_counts(top1_probs: list[float], rule: tuple[tuple[float, int], ...], max_nodes: int) -> tuple[int, ...]:
    """Candidates per depth: the first (threshold, count) in `rule` with p >= threshold; total nodes <= max_nodes."""
    counts, budget = [], max_nodes - 1 - len(top1_probs)  # root + chain always fit (caller caps the chain length)
    for p in top1_probs:
        b = next((c for t, c in rule if p >= t), rule[-1][1])
        b = max(1, min(b, 1 + budget))
        budget -= b - 1
        counts.append(b)
    return tuple(counts)


@dataclass(frozen=True)
class TokenTree:
    branches: tuple[int, ...]
    parents: tuple[int, ...]  # parent node index, -1 for the root
    depth: tuple[int, ...]
    src: tuple[tuple[int, int], ...]  # per non-root node: (depth-1, rank) into the draft's top-k table
    children: tuple[tuple[int, ...], ...]  # candidates under each node, chain child first

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def chain_len(self) -> int:
        return len(self.branches)

    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool: node i may attend to node j iff j is i or an ancestor of i (row OR parent's row)."""
        n = self.size
        m = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(self.parents):
            if p >= 0:
                m[i] = m[p]
            m[i, i] = True
        return m


@lru_cache(maxsize=512)
def build_tree(branches: tuple[int, ...]) -> TokenTree:
    D = len(branches)
    parents, depth, src = [-1] + list(range(D)), list(range(D + 1)), [(d, 0) for d in range(D)]
    children = [[i + 1] if i < D else [] for i in range(D + 1)]
    for d, b in enumerate(branches):
        for r in range(1, b):
            node = len(parents)
            parents.append(d)  # chain node d sits at depth d; its children are at depth d+1
            depth.append(d + 1)
            src.append((d, r))
            children[d].append(node)
            children.append([])
    return TokenTree(tuple(branches), tuple(parents), tuple(depth), tuple(src), tuple(tuple(c) for c in children))


@dataclass
class DeviceTreeTensors:
    """One cycle's tree on the device. Nodes: 0 the root, 1..C the draft chain, then the alternatives depth by depth,
    then the context branch. `cand` [D, K+1] is the node of each candidate of depth row d (the candidates of chain
    node d: column 0 the chain token, 1..K-1 alternatives, K the first context-branch token, only at the branch's
    row), n for those not in the tree (`valid`); `bnode` [B] are the branch's nodes in order, `blen` their number."""

    tokens: torch.Tensor  # [n]
    depth: torch.Tensor  # [n]
    prefix: torch.Tensor  # [n]: each node sees slots [0, R + prefix) ...
    run_lo: torch.Tensor  # [n]: ... and [R + run_lo, its own slot]
    cand: torch.Tensor  # [D, K + 1]
    ctok: torch.Tensor  # [D, K + 1] candidate tokens
    bnode: torch.Tensor  # [B]
    blen: torch.Tensor  # [1]
    at: torch.Tensor  # [1] the chain node the branch hangs off

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def valid(self) -> torch.Tensor:  # [D, K + 1]
        return self.cand < self.size


class DeviceTree:
    """The tree rule of `branch_counts`, built on the device inside a graph (no host round trip), plus an optional
    context branch (a token sequence proposed from the context, e.g. by prompt lookup).

    Inputs of `build`: the draft's top-k ids `table` [D, K] (row d: depth d+1; column 0 is the chain token), its
    top-1 probabilities `top1` [D], the chain length C [1] (rows >= C were not drafted this cycle), the context
    continuation `ctx` [B] of length `clen` [1] (0: none) and the root's token. Depth d+1 gets `branch_counts`'
    candidates, allocated in depth order within `max_nodes` minus the branch. The branch shares its leading tokens
    with the chain (they are the chain's nodes); the rest hangs off the chain node where they part, as a path of
    nodes at consecutive slots (a node sees the prefix up to that chain node, then the branch before it). An
    alternative equal to the branch's first token is dropped (siblings must differ). Pads: the root's token at depth
    0, seeing the committed prefix only."""

    def __init__(self, rule: tuple[tuple[float, int], ...], max_nodes: int, size: int, device):
        self.thresholds = torch.tensor([t for t, _ in rule], dtype=torch.float32, device=device)
        self.counts = torch.tensor([c for _, c in rule], dtype=torch.long, device=device)
        self.max_nodes, self.size = max_nodes, size

    def build(self, table, top1, C, ctx, clen, root_token) -> DeviceTreeTensors:
        D, K = table.shape
        B, n, dev = ctx.shape[0], self.size, table.device
        d = torch.arange(D, device=dev)
        r = torch.arange(K, device=dev)
        b = torch.arange(B, device=dev)
        # the branch: its part shared with the chain, then the rest off chain node `at`
        m = min(B, D)
        chain_tok = torch.cat([table[:m, 0], torch.full((B - m,), -1, dtype=table.dtype, device=dev)])
        shared = ((b < clen) & (b < C) & (ctx == chain_tok)).long().cumprod(0).sum().view(1)
        blen = (clen - shared).clamp_min(0)
        at = shared
        drafted = d < C
        row = (top1[:, None] < self.thresholds[None, :]).sum(1).clamp_max(len(self.counts) - 1)
        extras = torch.where(drafted, (self.counts[row] - 1).clamp(0, K - 1), 0)
        budget = self.max_nodes - 1 - C - blen
        extras = torch.minimum(extras, (budget - (extras.cumsum(0) - extras)).clamp_min(0))
        before = extras.cumsum(0) - extras
        first_b = ctx.index_select(0, at.clamp_max(B - 1))  # the branch's first token
        alt = (r[None, :] >= 1) & (r[None, :] <= extras[:, None])
        alt &= table != table[:, :1]  # siblings must differ (a proposed chain row keeps older alternatives)
        alt &= ~((d[:, None] == at) & (blen > 0) & (table == first_b))  # a sibling equal to the branch goes
        chain = (r[None, :] == 0) & drafted[:, None]
        node = torch.where(r[None, :] == 0, d[:, None] + 1, 1 + C + before[:, None] + r[None, :] - 1)
        base = 1 + C + extras.sum()  # the branch's first node
        bnode = torch.where(b < blen, base + b, n)
        bcol = torch.where(d == at, base, n).view(D, 1)
        cand = torch.cat([torch.where(chain | alt, node, n), torch.where((d == at).view(D, 1) & (blen > 0), bcol, n)], 1)
        ctok = torch.cat([table, first_b.expand(D, 1)], 1)
        tokens = root_token.expand(n + 1).clone()
        depth = torch.zeros(n + 1, dtype=torch.long, device=dev)
        tokens.scatter_(0, cand[:, :K].flatten(), table.flatten())
        depth.scatter_(0, cand[:, :K].flatten(), (d[:, None] + 1).expand(D, K).flatten())
        btok = ctx.index_select(0, (at + b).clamp_max(B - 1))
        tokens.scatter_(0, bnode, btok)
        depth.scatter_(0, bnode, at + 1 + b)
        prefix = depth.clone()  # chain nodes, alternatives and pads see [0, R + depth)
        prefix.scatter_(0, bnode, (at + 1).expand(B))  # branch nodes see up to the chain node they hang off ...
        run_lo = torch.arange(n + 1, device=dev)
        run_lo.scatter_(0, bnode, base.expand(B))  # ... then the branch before them
        return DeviceTreeTensors(tokens[:n], depth[:n], prefix[:n], run_lo[:n], cand, ctok, bnode, blen, at)
