"""On-the-fly search for the skip set: random search, a Bayesian-optimization proposal every beta steps.

Search space: 2*(L-2) bits, the attention and MLP sub-layers of layers 1..L-2 (the first and last layer are always
kept). A candidate skips exactly round(r * 2(L-2)) sub-layers. The score is matchness (`candidate_scores`); with
`search_tiebreak="margin"` the search ranks sets of equal matchness by their closeness (how near the skipped model's
logits come to the followed tokens), so that a set one sub-layer short of matching a token ranks above one that is
further away: without it, two skipped sub-layers that must both be kept to win a token leave a plateau that no single
swap climbs.
State lives in one `SearchState` per stream or task; the caller owns the `LayerSearch` and decides when to `reset()`.

Automatic ratio: every `ratio_patience` steps at a ratio, a best matchness below `ratio_low_score` lowers r by
`ratio_step` (and caps it there for good); a best matchness >= `max_score` raises r by one step while under the cap,
remembering the last good set; if a raised ratio cannot reach `ratio_low_score`, the search returns to that set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

import torch

from model.llama import LayerSkip, Pass
from model.swift.config import SwiftConfig

GUIDE_DECAY = 0.6  # weight of each next rank in a guided swap's draw
MARGIN_CLIP = 16.0  # nats: a followed token's log-probability margin to the argmax counts down to -MARGIN_CLIP


@dataclass
class SearchState:
    ratio: float
    best_skip: LayerSkip | None = None
    best_score: float = -1.0  # matchness of best_skip
    best_rank: float = -1.0  # what the search ranks by: matchness, plus the closeness tie-break (`LayerSearch.rank`)
    n_iter: int = 0
    n_stale: int = 0
    active: bool = True
    steps_at_ratio: int = 0
    ratio_cap: float = 1.0
    good: tuple | None = None  # (ratio, skip, score) of the last set that reached max_score (or best predicted speed)
    good_value: float = 0.0  # ratio_objective="speed": the predicted speedup of `good`
    stop_reason: str | None = None
    history: list = field(default_factory=list)  # (n_iter, ratio, best_score, skip dict) on every change of best


def _cheap_ucb():
    """UCB whose acquisition maximisation uses fewer random and L-BFGS starts than bayes_opt's defaults (10000/10):
    the suggestion is only ranked into a top-k skip set, and a suggestion must cost milliseconds, not seconds."""
    from bayes_opt import acquisition

    class CheapUCB(acquisition.UpperConfidenceBound):
        def suggest(self, gp, target_space, n_random=4000, n_smart=0, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=n_random, n_smart=n_smart, fit_gp=fit_gp,
                                   random_state=random_state)

    return CheapUCB(kappa=2.5)


class LayerSearch:
    def __init__(self, n_layers: int, cfg: SwiftConfig, seed: int | None = None, value=None):
        """`value(matchness, n_skipped)` predicts the speedup of a skip set (ratio_objective="speed"); the decoder
        hands in its planner's (measured costs), the default assumes evenly priced sub-layers."""
        if n_layers < 3:
            raise ValueError("layer search needs at least 3 layers")
        from model.swift.planner import DRAFT_LENGTHS, CostModel, DraftPlanner
        self.n_layers, self.cfg = n_layers, cfg
        self.dims = 2 * (n_layers - 2)
        self.seed = cfg.seed if seed is None else seed
        self.value = value or DraftPlanner(CostModel.default(n_layers), DRAFT_LENGTHS).value
        self.reset()

    # ---- state ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        cfg = self.cfg
        self.rng = np.random.default_rng(self.seed)
        self.state = SearchState(ratio=cfg.ratio_init if cfg.auto_ratio else cfg.skip_ratio)
        self._obs: list[tuple[np.ndarray, float]] = []
        self._scored: set[bytes] = set()  # the bits of every set in _obs
        self._pending_best = True  # best must be (re-)scored

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def best(self) -> LayerSkip | None:
        return self.state.best_skip

    def n_skip(self, ratio: float | None = None) -> int:
        r = self.state.ratio if ratio is None else ratio
        return max(1, min(self.dims - 1, int(round(r * self.dims))))

    # ---- encoding ---------------------------------------------------------------------------------------------------
    def to_skip(self, bits: np.ndarray) -> LayerSkip:
        idx = np.flatnonzero(bits)
        h = self.n_layers - 2
        return LayerSkip.of([1 + i for i in idx if i < h], [1 + i - h for i in idx if i >= h])

    def to_bits(self, skip: LayerSkip) -> np.ndarray:
        h = self.n_layers - 2
        b = np.zeros(self.dims, dtype=np.int8)
        b[[i - 1 for i in skip.attn]] = 1
        b[[h + i - 1 for i in skip.mlp]] = 1
        return b

    def _random(self) -> np.ndarray:
        b = np.zeros(self.dims, dtype=np.int8)
        b[self.rng.choice(self.dims, self.n_skip(), replace=False)] = 1
        return b

    def _resize(self, bits: np.ndarray, k: int) -> np.ndarray:
        """Add or drop random skipped sub-layers so exactly k are skipped."""
        b = bits.copy()
        on, off = np.flatnonzero(b), np.flatnonzero(b == 0)
        if len(on) > k:
            b[self.rng.choice(on, len(on) - k, replace=False)] = 0
        elif len(on) < k:
            b[self.rng.choice(off, k - len(on), replace=False)] = 1
        return b

    def _mutate(self, bits: np.ndarray) -> np.ndarray:
        b = bits.copy()
        swaps = 1 + int(self.rng.integers(0, 2))
        on, off = np.flatnonzero(b), np.flatnonzero(b == 0)
        swaps = min(swaps, len(on), len(off))
        b[self.rng.choice(on, swaps, replace=False)] = 0
        b[self.rng.choice(off, swaps, replace=False)] = 1
        return b

    def effects(self) -> np.ndarray | None:
        """Each sub-layer's estimated change of the search's rank (`rank`: matchness, with the closeness tie-break)
        when it is skipped: a ridge regression of the ranks observed at the current ratio on their bits (every
        candidate skips the same number, so only the differences between sub-layers are meaningful). None until there
        are enough observations."""
        obs = self._obs[-self.cfg.guide_history:]
        if len(obs) < min(self.cfg.guide_history, max(8, self.dims // 4)):
            return None
        X = np.array([b for b, _ in obs], dtype=np.float64)
        y = np.array([s for _, s in obs], dtype=np.float64)
        X -= X.mean(0)
        y -= y.mean()
        return np.linalg.solve(X.T @ X + np.eye(self.dims), X.T @ y)

    def _guided(self, bits: np.ndarray, w: np.ndarray) -> np.ndarray:
        """One or two swaps that the regression favours: take out skipped sub-layers that seem to cost matchness, put
        in ones that seem not to; drawn by rank (geometric weights), so the best guesses come first but not always."""
        b = bits.copy()
        for _ in range(1 + int(self.rng.integers(0, 2))):
            on, off = np.flatnonzero(b), np.flatnonzero(b == 0)
            if not len(on) or not len(off):
                break
            b[self._by_rank(on[np.argsort(w[on])])] = 0  # the most harmful to skip first
            b[self._by_rank(off[np.argsort(-w[off])])] = 1  # the least harmful first
        return b

    def _by_rank(self, ranked: np.ndarray) -> int:
        p = GUIDE_DECAY ** np.arange(len(ranked))
        return ranked[self.rng.choice(len(ranked), p=p / p.sum())]

    def _bayes(self) -> np.ndarray | None:
        """Fit a GP (bayes_opt) on recent observations; turn its continuous suggestion into the top-k sub-layers."""
        if len(self._obs) < 4:
            return None
        from bayes_opt import BayesianOptimization
        names = [f"x{i:03d}" for i in range(self.dims)]
        bo = BayesianOptimization(f=None, pbounds={n: (0.0, 1.0) for n in names}, verbose=0,
                                  acquisition_function=_cheap_ucb(),
                                  random_state=int(self.rng.integers(1 << 31)), allow_duplicate_points=True)
        bo.set_gp_params(optimizer=None)  # fixed Matern kernel on the unit cube: no hyper-parameter fit every call
        recent = {}  # unique points, most recent score wins
        for bits, score in self._obs[-self.cfg.bayes_history:]:
            recent[bits.tobytes()] = (bits, score)
        for bits, score in recent.values():
            bo.space.register(bits.astype(float), float(score))  # the public register() re-reads all points each call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = bo.suggest()
        v = np.array([x[n] for n in names])
        b = np.zeros(self.dims, dtype=np.int8)
        b[np.argsort(-v)[: self.n_skip()]] = 1
        return b

    # ---- propose / observe -----------------------------------------------------------------------------------------
    def propose(self, n: int) -> list[LayerSkip]:
        """n candidate skip sets: the current best when it needs scoring, a Bayesian proposal every beta steps, and
        random ones (half local mutations of the best, half uniform). With `search_proposals="guided"` the local
        mutations are swaps the regression of `effects` favours once it has enough observations, and a set
        already scored at this ratio is drawn again (a few tries)."""
        st, out = self.state, []
        w = self.effects() if self.cfg.search_proposals == "guided" else None
        best_bits = self.to_bits(st.best_skip) if st.best_skip is not None else None
        if best_bits is not None and self._pending_best:
            out.append(self._resize(best_bits, self.n_skip()))
        if st.n_iter > 0 and st.n_iter % self.cfg.bayes_interval == 0:
            b = self._bayes()
            if b is not None:
                out.append(b)
        batch = {b.tobytes() for b in out}  # guided: neither scored at this ratio nor already in this batch
        while len(out) < n:
            use_local = best_bits is not None and len(out) % 2 == 1
            for _ in range(8):
                if not use_local:
                    b = self._random()
                elif w is not None:
                    b = self._guided(self._resize(best_bits, self.n_skip()), w)
                else:
                    b = self._mutate(self._resize(best_bits, self.n_skip()))
                if w is None or (b.tobytes() not in self._scored and b.tobytes() not in batch):
                    break
            batch.add(b.tobytes())
            out.append(b)
        return [self.to_skip(b) for b in out[:n]]

    def rank(self, score: float, closeness: float | None) -> float:
        """What the search maximises: matchness, plus with the "margin" tie-break the closeness in [0, 1] scaled to
        under half a matched token, so that it orders sets of equal matchness and never outweighs a token."""
        if closeness is None or self.cfg.search_tiebreak == "none":
            return score
        return score + min(max(closeness, 0.0), 1.0) / (2 * self.cfg.context_window)

    def observe(self, skips: list[LayerSkip], scores: list[float], closeness: list[float] | None = None) -> None:
        """Scores (matchness) of the proposed sets, and their closeness (`candidate_scores`) for the tie-break."""
        st, cfg = self.state, self.cfg
        if self._pending_best and st.best_skip is not None:
            st.best_score = st.best_rank = -1.0  # the re-sized best is judged afresh
        self._pending_best = False
        improved = False
        for skip, score, close in zip(skips, scores, closeness or [None] * len(scores)):
            bits = self.to_bits(skip)
            r = self.rank(score, close)
            self._obs.append((bits, r))
            self._scored.add(bits.tobytes())
            if r > st.best_rank:
                st.best_skip, st.best_score, st.best_rank, improved = skip, float(score), r, True
        st.n_iter += 1
        st.steps_at_ratio += 1
        st.n_stale = 0 if improved else st.n_stale + 1
        if improved:
            st.history.append((st.n_iter, st.ratio, st.best_score, st.best_skip.to_dict()))
        if cfg.auto_ratio and cfg.ratio_objective == "speed":
            self._adapt_ratio_for_speed()
        elif cfg.auto_ratio:
            self._adapt_ratio()
        elif st.best_score >= cfg.max_score:
            self._stop("matchness threshold reached")
        if st.active and st.n_iter >= cfg.max_opt_iter:
            self._stop("max optimization steps")
        if st.active and st.n_stale >= cfg.max_tolerance_iter:
            self._stop("no improvement")

    def _stop(self, reason: str) -> None:
        self.state.active, self.state.stop_reason = False, reason

    def _set_ratio(self, ratio: float, seed_bits: np.ndarray | None) -> None:
        st = self.state
        st.ratio, st.steps_at_ratio, st.n_stale = round(ratio, 4), 0, 0
        self._obs = []  # scores at another ratio are not comparable for the GP
        self._scored = set()
        if seed_bits is not None:
            st.best_skip = self.to_skip(self._resize(seed_bits, self.n_skip()))
            self._pending_best = True
        st.best_score = st.best_rank = -1.0

    def _adapt_ratio(self) -> None:
        st, cfg = self.state, self.cfg
        step = cfg.ratio_step
        if st.best_score >= cfg.max_score:
            st.good = (st.ratio, st.best_skip, st.best_score)
            nxt = st.ratio + step
            if nxt <= min(cfg.ratio_max, st.ratio_cap) + 1e-9 and self.n_skip(nxt) > self.n_skip():
                self._set_ratio(nxt, self.to_bits(st.best_skip))
            else:
                self._stop("matchness threshold reached")
            return
        if st.steps_at_ratio < cfg.ratio_patience or st.best_score >= cfg.ratio_low_score:
            return
        if st.good is not None and st.good[0] < st.ratio:  # a raise went too far: return to the last good set
            st.ratio_cap = st.ratio - step
            ratio, skip, score = st.good
            st.ratio, st.best_skip, st.best_score = ratio, skip, score
            st.best_rank = score
            self._stop("returned to the last ratio that reached the threshold")
            return
        nxt = st.ratio - step
        if nxt >= cfg.ratio_min - 1e-9:
            st.ratio_cap = min(st.ratio_cap, nxt)
            self._set_ratio(nxt, self.to_bits(st.best_skip) if st.best_skip is not None else None)

    def _adapt_ratio_for_speed(self) -> None:
        """Once a ratio has settled (matchness >= max_score, or `ratio_patience` steps there), compare its predicted
        speedup with the best ratio so far: better -> remember it and try one step more skipping; worse -> return to
        the best and stop. A ratio far from usable (matchness < ratio_low_score before anything was good) is lowered
        as the matchness rule does."""
        st, cfg = self.state, self.cfg
        if not (st.best_score >= cfg.max_score or st.steps_at_ratio >= cfg.ratio_patience) or st.best_skip is None:
            return
        if st.good is None and st.best_score < cfg.ratio_low_score:
            nxt = st.ratio - cfg.ratio_step
            if nxt >= cfg.ratio_min - 1e-9:
                st.ratio_cap = min(st.ratio_cap, nxt)
                self._set_ratio(nxt, self.to_bits(st.best_skip))
            return
        v = self.value(st.best_score, len(st.best_skip))
        if st.good is None or v > st.good_value:
            st.good, st.good_value = (st.ratio, st.best_skip, st.best_score), v
            nxt = st.ratio + cfg.ratio_step
            if nxt <= min(cfg.ratio_max, st.ratio_cap) + 1e-9 and self.n_skip(nxt) > self.n_skip():
                self._set_ratio(nxt, self.to_bits(st.best_skip))
            else:
                self._stop("best predicted speed")
            return
        st.ratio_cap = st.ratio - cfg.ratio_step
        st.ratio, st.best_skip, st.best_score = st.good
        st.best_rank = st.best_score
        self._stop("returned to the ratio of the best predicted speed")

    def summary(self) -> dict:
        st = self.state
        return {"ratio": st.ratio, "best_score": st.best_score, "predicted_speedup": round(st.good_value, 4), "n_iter": st.n_iter, "active": st.active,
                "stop_reason": st.stop_reason, "best_skip": st.best_skip.to_dict() if st.best_skip else None,
                "n_skipped": len(st.best_skip) if st.best_skip else 0, "search_dims": self.dims}


def score_candidates(engine, cands: list[LayerSkip], gamma: int, *, plain_launches: bool) -> list[float]:
    """Matchness of each skip set (`candidate_scores`)."""
    return candidate_scores(engine, cands, gamma, plain_launches=plain_launches)[0]


@torch.inference_mode()
def candidate_scores(engine, cands: list[LayerSkip], gamma: int, *,
                     plain_launches: bool) -> tuple[list[float], list[float]]:
    """Matchness and closeness of each skip set. Over the window of the last `gamma` committed tokens with K/V (slots
    [R - gamma, R), R = `engine.cursor`): matchness is the share of positions where the skipped model's argmax equals
    the token that followed; closeness is 1 + the mean over the window of that token's log-probability margin to the
    argmax (0 where it is the argmax, clipped at -MARGIN_CLIP nats) / MARGIN_CLIP, in [0, 1]. All candidates run in
    one forward (one graph per candidate count): candidate c is block c of the input, written to scratch slots
    R + c*gamma.., its skip set applied by per-token gates; each block sees the committed prefix before the window
    plus itself causally. `plain_launches`: see `Engine.run`."""
    n, nl = len(cands), engine.args.n_layers
    keep = torch.ones(2, nl, n, gamma, dtype=torch.bool)
    for c, sk in enumerate(cands):
        keep[0, list(sk.attn), c] = False
        keep[1, list(sk.mlp), c] = False
    gates = engine.buffer(("score-gates", n, gamma), (2, nl, n * gamma), torch.bool)
    gates.copy_(keep.view(2, nl, n * gamma))
    scores = engine.buffer(("score", n, gamma), (2, n))
    kv = engine.kv_len(n * gamma)

    def score():
        R = engine.cursor
        w = engine.arange[:gamma]
        i = engine.arange[:n * gamma]
        ws = R - gamma
        slot = R + i
        ext = engine.ext(ws.expand(n * gamma), R + (i // gamma) * gamma, slot, (ws + w).repeat(n))
        x = engine.forward(Pass(engine.seq.index_select(0, (ws + w).repeat(n)), ext, kv), gates=(gates[0], gates[1]))
        logits = engine.logits(x)
        pred = logits.argmax(dim=-1)
        target = engine.seq.index_select(0, (ws + 1 + w).repeat(n))
        margin = logits.gather(-1, target[:, None]) - logits.gather(-1, pred[:, None])
        # NaN (logits that overflowed) counts as far as can be: the search never sees a non-finite closeness
        margin = margin[:, 0].float().nan_to_num(nan=-MARGIN_CLIP).clamp(min=-MARGIN_CLIP)
        scores[0].copy_((pred == target).view(n, gamma).float().mean(dim=1))
        scores[1].copy_(1 + margin.view(n, gamma).mean(dim=1) / MARGIN_CLIP)

    engine.run(("score", n, gamma, kv), score, plain_launches=plain_launches)
    match, close = scores.tolist()  # sync: the search's decision
    return match, close
