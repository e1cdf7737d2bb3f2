"""SWIFT decoding: optimize the skip set on the fly, draft with it, verify a token tree, commit.

Cache layout during one cycle (L = committed tokens; the last one, the root, has no K/V yet):
slots [0, L-1) hold the full model's K/V of committed tokens; the draft writes slots L-1.. with the skipped model;
verification rewrites slots L-1.. with the full model for every tree node (chain nodes first, so an accepted chain
prefix is already in place); at most one accepted alternative leaf is moved into place. The layer-search scoring pass
uses the same scratch slots before drafting. Nothing is cloned, rejection costs nothing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from model.engine import Engine
from model.generate import GenerationResult, check_lengths, sampling_head, sync
from model.llama import LayerSkip
from model import sampling as rules
from model.sampling import SamplingConfig, logits_to_probs, next_token, sample_from_probs
from model.swift.config import SwiftConfig
from model.swift.layer_search import LayerSearch
from model.tree import TokenTree, branch_counts, build_tree, tree_tensors


class DraftCalibrator:
    """Maps the draft's top-1 probability to the observed chance that the full model accepts that chain token.

    The paper stops drafting when the draft's top-1 probability falls below 0.8, treating confidence as the
    acceptance probability. A skipped model is often right while unsure (skipping flattens its distribution), so
    we learn the mapping online: per probability bin, accepted / tested chain tokens (Laplace prior centred on the
    raw probability, old counts decaying), and stop when the *calibrated* probability falls below the threshold."""

    BINS = 20

    def __init__(self, prior_weight: float = 4.0, decay: float = 0.995):
        mid = (torch.arange(self.BINS, dtype=torch.float64) + 0.5) / self.BINS
        self.acc = (mid * prior_weight).tolist()
        self.n = [prior_weight] * self.BINS
        self.decay = decay

    def _bin(self, p: float) -> int:
        return min(int(p * self.BINS), self.BINS - 1)

    def __call__(self, p: float) -> float:
        b = self._bin(p)
        return self.acc[b] / self.n[b]

    def update(self, top1: list[float], n_accepted_chain: int) -> None:
        for d, p in enumerate(top1[: n_accepted_chain + 1]):  # tokens after the first rejection were not tested
            b = self._bin(p)
            self.acc[b] = self.acc[b] * self.decay + (d < n_accepted_chain)
            self.n[b] = self.n[b] * self.decay + 1


class SpeedGuard:
    """Times SWIFT cycles against plain decoding steps of the same stream; trips when SWIFT is not paying off."""

    def __init__(self, cfg: SwiftConfig):
        self.cfg = cfg
        self.plain_tps: float | None = None
        self.cycles: deque = deque(maxlen=cfg.guard_min_cycles)
        self.tripped_at: int | None = None

    def observe(self, tokens: int, seconds: float) -> None:
        self.cycles.append((tokens, seconds))

    def swift_tps(self) -> float | None:
        if len(self.cycles) < self.cycles.maxlen:
            return None
        return sum(t for t, _ in self.cycles) / max(sum(s for _, s in self.cycles), 1e-9)

    def check(self, n_generated: int) -> bool:
        tps = self.swift_tps()
        if (self.tripped_at is None and self.cfg.guard and self.plain_tps and tps is not None
                and tps < self.cfg.guard_margin * self.plain_tps):
            self.tripped_at = n_generated
        return self.tripped_at is not None


@dataclass
class _Stream:
    engine: Engine
    cfg: SwiftConfig
    sampling: SamplingConfig
    eos_ids: frozenset
    max_new: int
    seq: torch.Tensor  # committed tokens on device; seq[L-1] is the root (no K/V yet)
    L: int
    new: list = field(default_factory=list)
    accept_lengths: list = field(default_factory=list)  # tokens committed per step, bonus included
    done: bool = False
    times: dict = field(default_factory=lambda: dict(prefill=0.0, optimize=0.0, draft=0.0, verify=0.0, plain=0.0))

    def append(self, tokens: list[int], one_step: bool) -> int:
        """Append generated tokens (stopping at EOS / the budget); record them as one step or as one step each."""
        n = 0
        for t in tokens:
            self.new.append(t)
            n += 1
            if t in self.eos_ids or len(self.new) >= self.max_new:
                self.done = True
                break
        self.accept_lengths += [n] if one_step else [1] * n
        return n


def _topk_head(k: int):
    return f"topk{k}", (lambda logits, st: torch.softmax(logits[-1], dim=-1).topk(k))


def _argmax(logits, st=None):
    return logits.argmax(dim=-1)


@torch.inference_mode()
def plain_steps(s: _Stream, n: int) -> None:
    """n plain decoding steps with the full model, one host sync at the end."""
    name, head = sampling_head(s.sampling)
    L0 = s.L
    for _ in range(n):
        s.seq[s.L:s.L + 1] = s.engine.decode(s.seq[s.L - 1], s.L - 1, head_name=name, head=head,
                                             noise=not s.sampling.greedy)
        s.L += 1
    s.append(s.seq[L0:s.L].tolist(), one_step=False)


@torch.inference_mode()
def score_candidates(engine: Engine, seq: torch.Tensor, L: int, cands: list[LayerSkip], gamma: int) -> list[float]:
    """Matchness of each skip set: over the window of the last `gamma` committed tokens with K/V (slots
    [L-1-gamma, L-1)), the share of positions where the skipped model's argmax equals the token that followed.
    All candidates run in one forward: candidate c is block c of the input, its skip set applied by per-token gates,
    each block sees the prefix before the window plus itself causally."""
    n, nl, dev = len(cands), engine.args.n_layers, engine.device
    ws = L - 1 - gamma
    keep = torch.ones(2, nl, n, gamma, dtype=torch.bool)
    for c, sk in enumerate(cands):
        keep[0, list(sk.attn), c] = False
        keep[1, list(sk.mlp), c] = False
    keep = keep.view(2, nl, n * gamma).to(dev)
    tokens = seq[ws:L - 1].repeat(n)
    rope = (engine.arange[:gamma] + ws).repeat(n)
    pred = engine.block(n * gamma, tokens, prefix=ws, start=L - 1, rope_pos=rope,
                        intra=_block_causal(n, gamma, str(dev)), head_name="argmax", head=_argmax,
                        gates=(keep[0], keep[1]))
    return (pred.view(n, gamma) == seq[ws + 1:L]).float().mean(dim=1).tolist()


@lru_cache(maxsize=16)
def _block_causal(n: int, gamma: int, device: str) -> torch.Tensor:
    """n causal blocks of gamma tokens on the diagonal: each candidate's window sees only itself."""
    return torch.block_diag(*[torch.ones(gamma, gamma).tril().bool()] * n).to(device)


@torch.inference_mode()
def draft(s: _Stream, skip: LayerSkip, table: torch.Tensor, calibrate=None) -> list[float]:
    """Chain draft with the skipped model: top-1 each step, top-k kept in `table` [max_draft_len, k]; stops when the
    top-1 probability (mapped through `calibrate` when given) drops below the threshold, at the length cap, or at
    the end of the output budget."""
    cfg = s.cfg
    name, head = _topk_head(cfg.top_k)
    top1, tok = [], s.seq[s.L - 1]
    limit = min(cfg.max_draft_len, s.max_new - len(s.new))
    for d in range(max(1, limit)):
        probs, ids = s.engine.decode(tok, s.L - 1 + d, skip=skip, head_name=name, head=head)
        table[d].copy_(ids)
        p = probs[0].item()  # the draft-stop decision: the one host sync per drafted token
        top1.append(p)
        tok = ids[0]
        if (calibrate(p) if calibrate else p) < cfg.draft_stop_threshold:
            break
    return top1


@torch.inference_mode()
def verify(s: _Stream, tree: TokenTree, table: torch.Tensor) -> tuple[list[int], int, list[int]]:
    """One full-model pass over the tree; walk it with the acceptance rule. Returns (accepted nodes, bonus token,
    node tokens)."""
    eng, K, root = s.engine, s.cfg.top_k, s.L - 1
    mask, depth, gather, parents = tree_tensors(tree, K, str(eng.device))
    nb, n = mask.shape[0], tree.size
    tokens = torch.cat([s.seq[root:root + 1], table.flatten()])[gather]
    if s.sampling.greedy:
        pred = eng.block(nb, tokens, prefix=root, start=root, rope_pos=depth + root, intra=mask,
                         head_name="argmax", head=_argmax)
        tok, best = torch.stack([tokens, pred])[:, :n].tolist()
        path, node = [], 0
        while True:
            nxt = next((c for c in tree.children[node] if tok[c] == best[node]), None)
            if nxt is None:
                return path, best[node], tok
            path.append(nxt)
            node = nxt
    logits = eng.block(nb, tokens, prefix=root, start=root, rope_pos=depth + root, intra=mask)
    probs = logits_to_probs(logits[:n], s.sampling)
    child_p = torch.zeros(n, device=eng.device)
    child_p[1:] = probs[parents, tokens[1:n]]
    residual = probs.index_put((parents, tokens[1:n]), torch.zeros((), device=eng.device))
    resample = sample_from_probs(residual)
    u = torch.rand(n, device=eng.device)
    tok, p_child, res, u = torch.stack([tokens[:n].double(), child_p.double(), resample.double(), u.double()]).tolist()
    tok, res = [int(t) for t in tok], [int(t) for t in res]
    path, node = [], 0
    while True:
        mass, nxt = 0.0, None
        for c in tree.children[node]:
            if u[c] < rules.accept_probability(p_child[c], mass):
                nxt = c
                break
            mass += p_child[c]
        if nxt is None:
            return path, res[node], tok
        path.append(nxt)
        node = nxt


def commit(s: _Stream, tree: TokenTree, path: list[int], bonus: int, tok: list[int]) -> int:
    """Accept the path: move an accepted alternative leaf's K/V into place, append tokens, advance L."""
    root = s.L - 1
    if path and path[-1] > tree.chain_len:
        node = path[-1]
        a = s.engine.arange
        s.engine.cache.move(a[root + node:root + node + 1], a[root + tree.depth[node]:root + tree.depth[node] + 1])
    new = [tok[c] for c in path] + [bonus]
    s.seq[s.L:s.L + len(new)].copy_(torch.tensor(new), non_blocking=True)
    s.L += len(new)
    return s.append(new, one_step=True)


@torch.inference_mode()
def swift_generate(engine: Engine, prompt_ids: list[int], max_new_tokens: int,
                   sampling: SamplingConfig = SamplingConfig(), eos_ids=(), cfg: SwiftConfig = SwiftConfig(),
                   search: LayerSearch | None = None, skip: LayerSkip | None = None,
                   calibrator: DraftCalibrator | None = None) -> GenerationResult:
    """SWIFT generation. Pass `search` (owned by the caller, carried across prompts of a task, or reset) to optimize
    the skip set on the fly, or a fixed `skip` (e.g. from a layer-config cache) to only accelerate. `calibrator`
    (draft_stop="calibrated") can likewise be carried across prompts; a fresh one is made when omitted."""
    check_lengths(engine, len(prompt_ids), max_new_tokens)
    if search is None and skip is None:
        search = LayerSearch(engine.args.n_layers, cfg)
    dev, gamma = engine.device, cfg.context_window
    sync(dev)
    t0 = time.perf_counter()
    seq = torch.zeros(engine.max_seq_len, dtype=torch.long, device=dev)
    seq[:len(prompt_ids)] = torch.tensor(prompt_ids)
    s = _Stream(engine, cfg, sampling, frozenset(eos_ids), max_new_tokens, seq, len(prompt_ids))
    s.seq[s.L:s.L + 1] = next_token(engine.prefill(s.seq[:s.L])[None], sampling)  # prefill -> the first root
    s.L += 1
    s.append(s.seq[s.L - 1:s.L].tolist(), one_step=False)
    s.times["prefill"] = time.perf_counter() - t0
    table = torch.zeros(cfg.max_draft_len, cfg.top_k, dtype=torch.long, device=dev)
    guard, drafted, skip_log = SpeedGuard(cfg), 0, []
    if cfg.draft_stop == "calibrated" and calibrator is None:
        calibrator = DraftCalibrator()
    calibrate = calibrator if cfg.draft_stop == "calibrated" else None
    if cfg.guard and not s.done:                                          # probe: plain steps, timed
        t, n0 = time.perf_counter(), len(s.new)
        plain_steps(s, min(cfg.guard_probe_tokens, max_new_tokens - len(s.new)))
        s.times["plain"] += (dt := time.perf_counter() - t)
        guard.plain_tps = (len(s.new) - n0) / max(dt, 1e-9)
    while not s.done:
        t = time.perf_counter()
        if search is not None and search.active and s.L - 1 > gamma:      # optimization phase: score candidates
            cands = search.propose(cfg.num_candidates)
            search.observe(cands, score_candidates(engine, s.seq, s.L, cands, gamma))
            s.times["optimize"] += time.perf_counter() - t
        current = search.best if search is not None else skip
        if current is None or len(current) == 0 or guard.check(len(s.new)):  # nothing to draft with, or guard
            t = time.perf_counter()
            plain_steps(s, 1 if (search is not None and search.active) else 8)
            s.times["plain"] += time.perf_counter() - t
            continue
        if not skip_log or skip_log[-1][1] != current.to_dict():
            skip_log.append((len(s.new), current.to_dict()))
        captures = engine.graph_captures
        t = time.perf_counter()
        top1 = draft(s, current, table, calibrate)                        # draft a chain with the skip set
        t1 = time.perf_counter()
        tree = build_tree(branch_counts(top1, cfg.tree_rule, cfg.max_tree_nodes))  # dynamic tree from confidence
        path, bonus, tok = verify(s, tree, table)                         # one full-model pass over the tree
        n_new = commit(s, tree, path, bonus, tok)                         # accept path + bonus, no cache copies
        if calibrate:
            calibrator.update(top1, sum(1 for c in path if c <= tree.chain_len))
        t2 = time.perf_counter()
        s.times["draft"] += t1 - t
        s.times["verify"] += t2 - t1
        drafted += len(top1)
        if engine.graph_captures == captures and (search is None or not search.active):
            guard.observe(n_new, t2 - t)
    sync(dev)
    wall = time.perf_counter() - t0
    final = search.best if search is not None else skip
    stats = {"method": "swift", "times": s.times, "skip_changes": skip_log, "guard_plain_tps": guard.plain_tps,
             "guard_swift_tps": guard.swift_tps(), "fallback_at": guard.tripped_at, "num_layers": engine.args.n_layers,
             "final_skip": final.to_dict() if final is not None else None,
             "search": search.summary() if search is not None else None, "cache_hit": search is None}
    return GenerationResult(tokens=s.new, num_new_tokens=len(s.new), num_steps=len(s.accept_lengths),
                            accept_lengths=s.accept_lengths, num_drafted=drafted, wall_time_s=wall, stats=stats,
                            final_skip=stats["final_skip"])
