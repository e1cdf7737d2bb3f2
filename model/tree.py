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
