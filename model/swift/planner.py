"""How long to draft, and which skip ratio pays: an expected-speed model from measured costs and observed acceptance.

A cycle that drafts k tokens costs k draft steps plus one verification, and commits 1 + sum_{i<=k} prod_{j<=i} a_j
tokens, where a_j is the chance that chain token j is accepted given that the tokens before it were. Relative to
plain decoding (one token per full step):

    speedup(k) = (1 + sum_{i=1..k} prod_{j=1..i} a_j) / (k * c + v(k)),   c = draft step / full step, v = verify / full

`CostModel` holds c as a function of the skip set (a fixed part plus one cost per kept attention and per kept MLP
sub-layer, measured from the draft graphs at warm-up on the GPU, an even split elsewhere) and v per tree size: a
verification runs on the smallest tree size that holds the root and the chain (8, 16, 32 nodes, ...: the products'
work grows with the rows), so a short chain is verified more cheaply than a long one. `DraftPlanner` learns a_j
per depth from the cycles of the stream (decayed counts around the rate pooled over depths), picks the k that
maximises the expression each cycle (draft_stop="speed"), and scores a skip ratio for the layer search: with
matchness m as a constant acceptance, the best speedup over k at that ratio's draft cost (ratio_objective="speed").
"""

from __future__ import annotations

from dataclasses import dataclass, field

# draft steps per cycle that have a graph; 7 and 15 are the longest chains an 8- and a 16-node tree hold beside the root
DRAFT_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 16, 20, 25, 32)


def expected_speedup(rates, c: float, v, lengths) -> tuple[float, int]:
    """(best speedup, its k) over the draft lengths `lengths`; `rates` is a per-depth list or one float, `v` the
    verification cost, one float or a function of k."""
    ks = sorted(lengths)
    depth = ks[-1] if ks else 0
    if isinstance(rates, float):
        rates = [rates] * depth
    elif len(rates) < depth:  # depths past the list take its last rate
        rates = list(rates) + [rates[-1]] * (depth - len(rates))
    best, best_k, tokens, p, k_done = 0.0, 0, 1.0, 1.0, 0
    for k in ks:
        for r in rates[k_done:k]:
            p *= r
            tokens += p
        k_done = k
        s = tokens / (k * c + (v(k) if callable(v) else v))
        if s > best:
            best, best_k = s, k
    return best, best_k


@dataclass
class CostModel:
    """Costs relative to one full decoding step: draft step = fixed + attn * kept attention + mlp * kept MLP
    sub-layers (of the skippable layers 1..L-2); verification: `verify` = ((tree size, cost), ...), by size."""

    fixed: float
    attn: float
    mlp: float
    verify: tuple
    n_layers: int
    measured: bool = False
    # LayerSkip -> the measured draft step cost of a settled skip set (one on graphs of its own, `Accelerator.settle`)
    settled: dict = field(default_factory=dict)
    search: float | None = None  # one step of the layer search (its batched scoring pass and the read), when measured

    def verify_of(self, nodes: int) -> float:
        """The cost of verifying a tree of `nodes` nodes: that of the smallest measured size holding them."""
        for size, c in self.verify:
            if nodes <= size:
                return c
        return self.verify[-1][1]

    def verify_chain(self, extra: int = 0):
        """v(k): the cost of verifying a chain of k tokens (plus `extra` nodes) and the root."""
        return lambda k: self.verify_of(k + 1 + extra)

    @classmethod
    def default(cls, n_layers: int) -> "CostModel":
        """Where nothing was measured: the head and the first and last layers are 10% of a step, the rest is split
        evenly over the sub-layers; a verification costs 1.25 steps whatever its size."""
        per = 0.9 / max(1, 2 * (n_layers - 2))
        return cls(fixed=0.1, attn=per, mlp=per, verify=((1 << 30, 1.25),), n_layers=n_layers)

    def draft(self, n_attn_skipped: int, n_mlp_skipped: int) -> float:
        keep = self.n_layers - 2
        return max(0.05, self.fixed + self.attn * (keep - n_attn_skipped) + self.mlp * (keep - n_mlp_skipped))

    def draft_for(self, skip) -> float:
        """The draft cost of the skip set `skip`: measured if it is settled, else from its sub-layer counts."""
        c = self.settled.get(skip)
        return c if c is not None else self.draft(len(skip.attn), len(skip.mlp))

    def draft_of(self, n_skipped: int) -> float:
        """The draft cost of a skip set of `n_skipped` sub-layers, half attention and half MLP."""
        return self.draft(n_skipped // 2, n_skipped - n_skipped // 2)

    def to_dict(self) -> dict:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        out["verify"] = {str(size): round(c, 4) for size, c in self.verify}
        out["settled"] = [dict(skip.to_dict(), cost=round(c, 4)) for skip, c in self.settled.items()]
        return out


class DraftPlanner:
    """Per-depth acceptance estimates and the draft length they make fastest.

    Depth j's estimate is its own decayed counts of accepted / tested chain tokens (every depth's counts decay each
    cycle, tested or not), shrunk towards the rate pooled over all depths (itself shrunk towards the prior `alpha`). A depth that has never been tested therefore takes
    the rate seen at the depths before it, not the prior: with a fixed prior, a draft whose every tested token is
    accepted would never be planned past the length where the prior stops paying, and its deeper depths would
    never be tested (measured: chains of 3-4 tokens at 99.5% acceptance on the planted 7B model)."""

    def __init__(self, costs: CostModel, lengths, alpha: float = 0.8, prior: float = 2.0, decay: float = 0.98):
        self.costs, self.lengths = costs, tuple(sorted(lengths))
        depth = max(self.lengths)
        self.acc = [0.0] * depth  # decayed accepted / tested chain tokens per depth
        self.n = [0.0] * depth
        self.alpha, self.prior, self.decay = alpha, prior, decay
        self.skip = None  # the skip set the counts belong to (`use`)
        # `best` per (limit, extra, draft cost, verification costs), valid until the counts change: a hybrid stream
        # asks every cycle and observes only its draft cycles, so most cycles' choice costs one lookup
        self._best: dict = {}

    def use(self, skip) -> None:
        """Plan for the skip set `skip` from now on. Acceptance belongs to a skip set: when the search moves to a new
        one, the counts start again from the prior, instead of holding the new set's chains to the old set's
        failures for tens of cycles."""
        if skip != self.skip:
            if self.skip is not None:
                self.acc, self.n = [0.0] * len(self.acc), [0.0] * len(self.n)
                self._best.clear()
            self.skip = skip

    def rates(self) -> list[float]:
        pooled = (sum(self.acc) + self.alpha * self.prior) / (sum(self.n) + self.prior)
        return [(a + pooled * self.prior) / (n + self.prior) for a, n in zip(self.acc, self.n)]

    def best(self, limit: int, skip, extra: int = 0) -> tuple[float, int]:
        """(expected speedup, draft length) of the fastest length (one of `lengths`, at most `limit`) for the skip set
        `skip`; `extra`: tree nodes verified beside the chain (a context branch)."""
        costs = self.costs
        c = costs.draft_for(skip)
        key = (limit, extra, c, costs.verify)
        out = self._best.get(key)
        if out is None:
            allowed = [k for k in self.lengths if k <= limit] or [self.lengths[0]]
            out = self._best[key] = expected_speedup(self.rates(), c, costs.verify_chain(extra), allowed)
        return out

    def length(self, limit: int, skip, extra: int = 0) -> int:
        """The draft length (one of `lengths`, at most `limit`) with the highest expected speed."""
        return self.best(limit, skip, extra)[1]

    def observe(self, drafted: int, accepted: int) -> None:
        """A cycle drafted `drafted` chain tokens and accepted the first `accepted`: depths < accepted succeeded,
        depth `accepted` (if drafted) failed, deeper ones were not tested. Every depth's counts decay each cycle,
        tested or not: evidence about a depth that is no longer drafted fades, and its estimate returns to the
        pooled rate, so that a few early failures (a noisy search phase, a hard passage) cannot keep the chain
        short for good once the draft has become better."""
        tested = min(drafted, accepted + 1)
        self._best.clear()
        for j in range(len(self.n)):
            self.acc[j] = self.acc[j] * self.decay + (j < accepted)
            self.n[j] = self.n[j] * self.decay + (j < tested)

    def value(self, matchness: float, n_skipped: int) -> float:
        """Predicted speedup of a skip set of `n_skipped` sub-layers whose matchness is `matchness`."""
        return expected_speedup(float(matchness), self.costs.draft_of(n_skipped), self.costs.verify_chain(),
                                self.lengths)[0]


class ContextRate:
    """Context tokens accepted per cycle that verifies a context continuation (decayed mean around a prior), and
    the speed such a cycle is predicted to have: (1 + accepted) / verification cost. Hybrid SWIFT compares it with
    the layer-skip draft's `DraftPlanner.best` to choose each cycle's chain (context_tree="select"). A cycle that
    offers a continuation but verifies the draft moves the estimate back towards the prior (`idle`), as the planner's
    untested depths return to the pooled rate."""

    def __init__(self, prior: float = 1.0, weight: float = 2.0, decay: float = 0.95, idle_decay: float = 0.99):
        self.acc, self.n, self.decay = prior * weight, weight, decay
        self.prior, self.weight, self.idle_decay = prior, weight, idle_decay

    def mean(self) -> float:
        return self.acc / self.n

    def value(self, n_tokens: int, costs: CostModel) -> float:
        return (1.0 + min(self.mean(), n_tokens)) / costs.verify_of(n_tokens + 1)

    def observe(self, accepted: int) -> None:
        self.acc = self.acc * self.decay + accepted
        self.n = self.n * self.decay + 1

    def idle(self) -> None:
        """A cycle offered a continuation and verified the draft instead: the estimate moves back towards the prior,
        so that a bad streak cannot keep the context from being tried again for the rest of the stream. Slowly
        (`idle_decay`): a continuation that keeps failing is retried every few tens of cycles, not every few."""
        d = self.idle_decay
        self.acc = self.acc * d + self.prior * self.weight * (1 - d)
        self.n = self.n * d + self.weight * (1 - d)
