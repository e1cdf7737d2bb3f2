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


@lru_cache(maxsize=512)
def tree_tensors(tree: TokenTree, top_k: int, device: str):
    """Device tensors for one tree shape, padded to the verification bucket: intra mask [Nb, Nb] (pads see only
    themselves), depth [Nb], token gather index [Nb] into (root|top-k table), parents of nodes 1..n-1 [n-1]."""
    n, nb = tree.size, padded_size(tree.size)
    mask = torch.eye(nb, dtype=torch.bool)
    mask[:n, :n] = tree.ancestor_mask()
    depth = torch.zeros(nb, dtype=torch.long)
    depth[:n] = torch.tensor(tree.depth)
    # index into cat([root], topk_ids.flatten()): 0 = root, 1 + d*top_k + r = draft table entry; pads -> root
    gather = torch.zeros(nb, dtype=torch.long)
    gather[1:n] = torch.tensor([1 + d * top_k + r for d, r in tree.src])
    parents = torch.tensor(tree.parents[1:], dtype=torch.long)
    return mask.to(device), depth.to(device), gather.to(device), parents.to(device)


class DeviceTree:
    """The same tree rule, built on the device from the draft's tables, inside a graph (no host round trip).

    Inputs of `build`: the draft's top-k ids `table` [D, K] (row d: depth d+1; column 0 is the chain token), its top-1
    probabilities `top1` [D], and the chain length C [1] (rows >= C were not drafted this cycle). Depth d+1 gets
    `branch_counts`' candidates, allocated in depth order within `max_nodes`; the result is padded to `size` nodes
    (pads: the root's token at depth 0, seeing only the committed prefix). Node order as in `build_tree`: root,
    chain nodes 1..C, then the alternatives depth by depth."""

    def __init__(self, rule: tuple[tuple[float, int], ...], max_nodes: int, size: int, device):
        self.thresholds = torch.tensor([t for t, _ in rule], dtype=torch.float32, device=device)
        self.counts = torch.tensor([c for _, c in rule], dtype=torch.long, device=device)
        self.max_nodes, self.size = max_nodes, size

    def build(self, table: torch.Tensor, top1: torch.Tensor, C: torch.Tensor, root_token: torch.Tensor):
        """(tokens [size], depth [size], node [D, K] (index of each table entry's node; `size` = not in the tree),
        extras [D] (alternatives per depth row))."""
        D, K = table.shape
        dev = table.device
        d = torch.arange(D, device=dev)
        r = torch.arange(K, device=dev)
        drafted = d < C
        row = (top1[:, None] < self.thresholds[None, :]).sum(1).clamp_max(len(self.counts) - 1)
        extras = torch.where(drafted, (self.counts[row] - 1).clamp(0, K - 1), 0)
        budget = self.max_nodes - 1 - C
        extras = torch.minimum(extras, (budget - (extras.cumsum(0) - extras)).clamp_min(0))
        before = extras.cumsum(0) - extras
        node = torch.where(r[None, :] == 0, d[:, None] + 1, 1 + C + before[:, None] + r[None, :] - 1)
        valid = torch.where(r[None, :] == 0, drafted[:, None], r[None, :] <= extras[:, None])
        node = torch.where(valid, node, self.size)
        tokens = root_token.expand(self.size + 1).clone()
        tokens.scatter_(0, node.flatten(), table.flatten())
        depth = torch.zeros(self.size + 1, dtype=torch.long, device=dev)
        depth.scatter_(0, node.flatten(), (d[:, None] + 1).expand(D, K).flatten())
        return tokens[:self.size], depth[:self.size], node, extras
