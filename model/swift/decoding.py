"""SWIFT decoding: optimize the skip set on the fly, draft with it, verify a token tree, commit.

One stream, as in the paper's algorithm box:

    prefill -> [probe: a few plain steps, timed] -> repeat:
        optimize: score candidate skip sets on the last gamma tokens (one batched pass), update the search
        draft:    k tokens with the current skip set (one graph replay; k planned for speed, or until confidence drops)
        verify:   build the tree, run the full model over it, accept the longest valid path + bonus, commit
                  (one graph replay on the smallest tree size that holds the cycle, one host sync; once no
                  search runs, up to `sync_cycles` cycles are launched before that one sync)

The device-side cycle lives in `acceleration.py`, the search in `layer_search.py`, the draft-length and ratio model
in `planner.py`. With context drafts (hybrid), each cycle's chain is the context continuation or the layer-skip draft,
whichever `choose_source` predicts faster (or both in one tree, context_tree="union"). A speed guard per source
stops using a source whose cycles are slower than the stream's plain steps; with none left, decoding is plain.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from model.engine import Engine
from model.graphs import gpu_ms
from model.generate import GenerationResult, check_lengths, sync
from model.llama import LayerSkip
from model.sampling import SamplingConfig
from model.swift.acceleration import Drafter, Verifier
from model.swift.config import SwiftConfig
from model.swift.layer_search import LayerSearch, candidate_scores, score_candidates
from model.swift.planner import ContextRate, CostModel, DraftPlanner
from model.context_draft import ContextIndex


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
    """Times SWIFT cycles against plain decoding steps of the same stream; trips when SWIFT is not paying off.
    With `retry` > 0 a trip holds for `retry` new tokens, then the guard is armed again with an empty window (`rearm`);
    each later trip holds twice as long as the one before."""

    def __init__(self, cfg: SwiftConfig, retry: int = 0):
        self.cfg = cfg
        self.plain_tps: float | None = None
        self.cycles: deque = deque(maxlen=cfg.guard_min_cycles)
        self._tps: float | None = None  # of the full window, computed once per observed cycle (checked every cycle)
        self.tripped_at: int | None = None
        self.trips, self.retry, self.hold = 0, retry, retry

    def observe(self, tokens: int, seconds: float) -> None:
        self.cycles.append((tokens, seconds))
        if len(self.cycles) == self.cycles.maxlen:
            self._tps = sum(t for t, _ in self.cycles) / max(sum(s for _, s in self.cycles), 1e-9)

    def swift_tps(self) -> float | None:
        return self._tps

    def rearm(self, n_generated: int) -> bool:
        """Arm a tripped guard again once its hold is over; returns whether it did (the source starts afresh)."""
        if self.tripped_at is None or not self.retry or n_generated < self.tripped_at + self.hold:
            return False
        self.tripped_at, self.hold = None, self.hold * 2
        self.cycles.clear()
        self._tps = None
        return True

    def until_rearm(self, n_generated: int) -> int | None:
        """New tokens until the guard is armed again: 0 when it is armed, None when its trip is final."""
        if self.tripped_at is None:
            return 0
        return max(0, self.tripped_at + self.hold - n_generated) if self.retry else None

    def check(self, n_generated: int) -> bool:
        tps = self.swift_tps()
        if (self.tripped_at is None and self.cfg.guard and self.plain_tps and tps is not None
                and tps < self.cfg.guard_margin * self.plain_tps):
            self.tripped_at, self.trips = n_generated, self.trips + 1
        return self.tripped_at is not None


class DraftRest:
    """The layer-skip draft's verdict, carried across the streams of a task by the caller (like the planner). After a
    stream in which the speed guard stopped the draft, the next `streams` streams start with it stopped (plain steps;
    context drafts in the hybrid) and the one after them tries it again. Each further stop in a row doubles the rest
    (3, 6, 12, 24, then 48 at most), and a stream whose guard judges the draft without a stop ends the run of stops:
    its successor tries the draft and the next stop rests `streams` again (a stream too short for a verdict changes
    nothing). A model whose draft does not pay then stops
    paying, in most streams, the cycles the guard needs to decide (12, each slower than plain steps). A rested stream
    reports `fallback_at` 0 (with nothing else drafting) and `draft_rested`."""

    MAX_DOUBLINGS = 4  # the longest rest is streams * 2**4

    def __init__(self, streams: int):
        self.streams, self.left, self.stops = streams, 0, 0

    def begin(self) -> bool:
        """Whether the stream that starts now leaves the draft out."""
        if self.left > 0:
            self.left -= 1
            return True
        return False

    def end(self, guard: SpeedGuard) -> None:
        """After a stream that tried the draft (with no search running): a rest if it was stopped, doubled for each
        stop in a row before it; a stream whose guard judged the draft (a full window of cycles) without a stop
        ends the run. A stream too short for a verdict (fewer draft cycles than the window) changes nothing."""
        if guard.tripped_at is None:
            if guard.swift_tps() is not None:
                self.stops = 0
            return
        self.left = self.streams << min(self.stops, self.MAX_DOUBLINGS)
        self.stops += 1


class Accelerator:
    """The draft and verify programs of one engine and SWIFT configuration, made once and reused by every stream
    (their graphs read these objects' buffers): see `accelerator`."""

    def __init__(self, engine: Engine, cfg: SwiftConfig):
        self.engine, self.cfg = engine, cfg
        self.drafter = Drafter(engine, cfg)
        self.verifier = Verifier(engine, cfg, self.drafter)
        self.costs = CostModel.default(engine.args.n_layers)
        self.full_ms = None  # GPU ms of a plain step, measured at warm-up

    @torch.inference_mode()
    def warm_up(self, sampling: SamplingConfig) -> None:
        """Capture every graph a stream can replay (each draft length, the verification, the search's scoring) on
        scratch positions, then measure the pass costs the planner works with. Leaves the stream empty."""
        e, cfg = self.engine, self.cfg
        if not e.cuda_graphs:
            return
        at = cfg.context_window + 1
        self._at(at)
        self.drafter.warm_up()
        for n in self.verifier.sizes:
            self._at(at)
            self.verifier.verify(1, sampling, size=n)
        self._at(at)
        score_candidates(e, [LayerSkip()] * cfg.num_candidates, cfg.context_window,
                         plain_launches=cfg.plain_multirow)
        self.costs = self.measure(at, sampling)
        self.drafter.settled.clear()  # new costs: a settled set is measured again (its graphs are kept)
        e.length = 0

    @torch.inference_mode()
    def settle(self, skip: LayerSkip) -> bool:
        """Once the search has stopped: graphs of the draft with `skip` alone (`Drafter.settle`) and the measured
        cost of its step, which the planner then uses. Call it untimed (between answers); leaves the stream empty.
        Returns whether anything was captured."""
        e, dr = self.engine, self.drafter
        if not e.cuda_graphs:
            return False
        at = self.cfg.context_window + 1
        self._at(at)
        done = dr.settle(skip)
        if done and self.costs.measured:
            dr.set_skip(skip)
            k = max(dr.chunks())
            step = gpu_ms(lambda: dr.draft(k), 5, before=lambda: self._at(at)) / k
            self.costs.settled[skip] = step / self.full_ms
        e.length = 0
        return done

    def _at(self, slot: int) -> None:
        self.engine.cursor.fill_(slot)
        self.engine.length = slot + 1

    def measure(self, at: int, sampling: SamplingConfig, reps: int = 5) -> CostModel:
        """Pass costs from graph replays timed with CUDA events: a full step, a draft step with nothing / every
        skippable attention / every skippable MLP skipped, a verification of each tree size, a step of the layer
        search (scoring every candidate on the last gamma tokens, and reading the scores: its time includes that
        host round trip, as a stream pays it); relative to the full step."""
        e, dr, L = self.engine, self.drafter, self.engine.args.n_layers

        def ms(fn) -> float:
            return gpu_ms(fn, reps, before=lambda: self._at(at))

        k = max(dr.chunks())
        full = self.full_ms = ms(lambda: e.decode(8, sampling)) / 8
        middle = range(1, L - 1)
        steps = {}
        for name, skip in (("none", LayerSkip()), ("attn", LayerSkip.of(attn=middle)),
                           ("mlp", LayerSkip.of(mlp=middle))):
            dr.set_skip(skip)
            steps[name] = ms(lambda: dr.draft(k)) / k
        dr.set_skip(LayerSkip())
        vf = self.verifier
        verify = tuple((n, ms(lambda: vf.verify(vf.chain_for(n), sampling, size=n)) / full) for n in vf.sizes)
        attn = max(0.0, steps["none"] - steps["attn"]) / (L - 2) / full
        mlp = max(0.0, steps["none"] - steps["mlp"]) / (L - 2) / full
        fixed = max(0.0, steps["none"] / full - (attn + mlp) * (L - 2))
        cands = [LayerSkip()] * self.cfg.num_candidates
        search = ms(lambda: score_candidates(e, cands, self.cfg.context_window,
                                             plain_launches=self.cfg.plain_multirow)) / full
        return CostModel(fixed=fixed, attn=attn, mlp=mlp, verify=verify, n_layers=L, measured=True, search=search)


def accelerator(engine: Engine, cfg: SwiftConfig) -> Accelerator:
    """The engine's `Accelerator` for the settings that shape its buffers (made on first use)."""
    key = (cfg.max_draft_len, cfg.tree_rule, cfg.max_tree_nodes, cfg.draft_vocab, cfg.context_len,
           cfg.multirow_launches)
    store = engine.__dict__.setdefault("_accelerators", {})
    if key not in store:
        store[key] = Accelerator(engine, cfg)
    return store[key]


class CycleProfile:
    """Per-cycle timings of `swift_generate` (scripts/profile_swift.py): host wall time of the cycle and of its parts,
    and GPU time of the draft and of the verification replays (CUDA events, read once the cycle has synced). The
    cycles of a group read with one sync (`SwiftConfig.sync_cycles`) share the group's wall time and read evenly."""

    def __init__(self, cuda: bool):
        self.cuda, self.cycles, self._pending = cuda, [], []

    def _event(self):
        if not self.cuda:
            return None
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def begin(self, t: float) -> None:
        self._pending.append(([t], [self._event()]))

    def drafted(self, t: float) -> None:
        times, events = self._pending[-1]
        times.append(t)
        events.append(self._event())

    def verified(self) -> None:
        self.drafted(time.perf_counter())

    def end(self, t: float, infos: list[dict]) -> None:
        """The group's cycles were read at `t`; `infos`: one dict per cycle the stream used (fewer than were launched
        when it ended inside the group: every launched cycle takes its share of the group's time, and the rows of
        the unused ones are left out, as their tokens are)."""
        pending, self._pending = self._pending, []
        n = len(pending)
        wall, read = (t - pending[0][0][0]) / n, (t - pending[-1][0][2]) / n
        for info, ((t0, t1, t2), ev) in zip(infos, pending):
            row = dict(info, group=n, wall_ms=wall * 1e3, draft_launch_ms=(t1 - t0) * 1e3,
                       verify_launch_ms=(t2 - t1) * 1e3, read_and_host_ms=read * 1e3)
            if self.cuda:
                row.update(gpu_draft_ms=ev[0].elapsed_time(ev[1]), gpu_verify_ms=ev[1].elapsed_time(ev[2]))
            self.cycles.append(row)


@dataclass
class _Stream:
    cfg: SwiftConfig
    eos_ids: frozenset
    max_new: int
    new: list = field(default_factory=list)
    accept_lengths: list = field(default_factory=list)  # tokens committed per step, bonus included
    done: bool = False
    reads: int = 0  # host syncs that read generated tokens (prefill, plain-step chunks, cycles or groups of cycles)
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


def plain_steps(engine: Engine, s: _Stream, n: int, sampling: SamplingConfig) -> None:
    """Up to n plain decoding steps with the full model (the vanilla graphs), one host sync per chunk."""
    while n > 0 and not s.done:
        c = engine.decode_chunk(min(n, s.max_new - len(s.new)))
        engine.decode(c, sampling)
        s.append(engine.seq[engine.length - c:engine.length].tolist(), one_step=False)  # sync: EOS check
        s.reads += 1
        n -= c


def choose_source(cfg: SwiftConfig, layers: bool, context: list[int], planner: DraftPlanner, skip: LayerSkip | None,
                  limit: int, ctx_rate: ContextRate, costs: CostModel) -> str | None:
    """This cycle's chain: "draft" (the layer-skip draft), "context" (the context continuation), "union" (the draft
    chain with the continuation as a branch, context_tree="union"), or None (a plain step)."""
    if not layers:
        return "context" if context else None
    if not context:
        return "draft"
    if cfg.context_tree == "union":
        return "union"
    draft_value = planner.best(limit, skip)[0]
    return "context" if ctx_rate.value(len(context), costs) >= draft_value else "draft"


def cycles_per_read(most: int, k: int, remaining: int) -> int:
    """How many cycles drafting k tokens each to launch before one read: up to `most`, as many as fit `remaining`
    new tokens when every cycle commits its most (k + 1 tokens) and leaves the last place to a cycle's own token, as
    a single cycle's draft limit does; at least 1."""
    return max(1, min(most, (remaining - 1) // (k + 1)))


def draft_chain(acc: Accelerator, cfg: SwiftConfig, planner: DraftPlanner, skip: LayerSkip, limit: int,
                calibrate=None, extra: int = 0) -> list[float] | int:
    """Draft the cycle's chain; returns its length (draft_stop="speed": the planned length, no host sync) or the
    top-1 probabilities of its tokens (confidence rules: read once per `draft_chunk` tokens, stop after the first
    below the threshold). `extra`: tree nodes verified beside the chain (a context branch)."""
    dr = acc.drafter
    dr.set_skip(skip)
    if cfg.draft_stop == "speed":
        k = planner.length(limit, skip, extra)
        dr.draft(k)
        return k
    top1: list[float] = []
    while len(top1) < limit:
        k = max(c for c in dr.chunks() if c <= min(cfg.draft_chunk, limit - len(top1)))
        dr.draft(k, offset=len(top1))
        for p in dr.top1[len(top1):len(top1) + k].tolist():  # sync: the stop decision, once per chunk
            top1.append(p)
            if (calibrate(p) if calibrate else p) < cfg.draft_stop_threshold:
                return top1
    return top1


@torch.inference_mode()
def swift_generate(engine: Engine, prompt_ids: list[int], max_new_tokens: int,
                   sampling: SamplingConfig = SamplingConfig(), eos_ids=(), cfg: SwiftConfig = SwiftConfig(),
                   search: LayerSearch | None = None, skip: LayerSkip | None = None,
                   calibrator: DraftCalibrator | None = None, planner: DraftPlanner | None = None,
                   rest: DraftRest | None = None, profile: "CycleProfile | None" = None) -> GenerationResult:
    """SWIFT generation. Pass `search` (owned by the caller, carried across prompts of a task, or reset) to optimize
    the skip set on the fly, or a fixed `skip` (e.g. from a layer-config cache) to only accelerate. `calibrator`
    (draft_stop="calibrated"), `planner` (draft_stop="speed") and `rest` (the guard's verdict on the draft) can
    likewise be carried across prompts."""
    check_lengths(engine, len(prompt_ids), max_new_tokens)
    acc = accelerator(engine, cfg)
    planner = planner or DraftPlanner(acc.costs, acc.drafter.chunks())
    planner.costs = acc.costs  # measured at warm-up (Accelerator.warm_up), else the even split
    if search is None and skip is None:
        search = LayerSearch(engine.args.n_layers, cfg, value=planner.value)
    elif search is not None and acc.costs.measured:
        search.value = planner.value  # the measured draft costs price the skip ratio
    if cfg.draft_stop == "calibrated" and calibrator is None:
        calibrator = DraftCalibrator()
    calibrate = calibrator if cfg.draft_stop == "calibrated" else None
    dev, gamma = engine.device, cfg.context_window
    s = _Stream(cfg, frozenset(eos_ids), max_new_tokens)
    guards = {"draft": SpeedGuard(cfg), "context": SpeedGuard(cfg, cfg.context_retry)}  # one per source of chains
    has_draft = search is not None or (skip is not None and len(skip) > 0)
    search_done = search is None or not search.active  # a running search keeps the guard from judging the draft
    rested = bool(cfg.guard and rest is not None and has_draft and search_done and rest.begin())
    if rested:  # the draft was stopped in a recent stream of the task: this one leaves it out from the start
        guards["draft"].tripped_at = 0
    drafted, skip_log, captures0 = 0, [], engine.graph_captures  # skip_log: (new tokens, the set drafting from there)
    sync(dev)
    t0 = time.perf_counter()
    acc.drafter.vocab.observe(prompt_ids)                                  # the draft head learns the prompt's ids
    acc.drafter.vocab.update()
    engine.start(prompt_ids, sampling)                                     # prefill -> the first root
    s.append(engine.seq[len(prompt_ids):len(prompt_ids) + 1].tolist(), one_step=False)
    s.reads += 1
    s.times["prefill"] = time.perf_counter() - t0
    if cfg.guard and not s.done:                                          # probe: plain steps, timed
        t, n0 = time.perf_counter(), len(s.new)
        plain_steps(engine, s, cfg.guard_probe_tokens, sampling)
        s.times["plain"] += (dt := time.perf_counter() - t)
        for g in guards.values():
            g.plain_tps = (len(s.new) - n0) / max(dt, 1e-9)
    ctx = ContextIndex(cfg.ngram_max, cfg.ngram_min) if cfg.context_drafts else None
    if ctx is not None:
        ctx.extend(prompt_ids)
    ctx_rate = ContextRate()
    sources = {"draft": 0, "context": 0}
    cycles = {"draft": 0, "context": 0, "union": 0}
    while not s.done:
        t = time.perf_counter()
        if search is not None and search.active and engine.length - 1 > gamma:  # optimize: score candidates
            cands = search.propose(cfg.num_candidates)
            search.observe(cands, *candidate_scores(engine, cands, gamma, plain_launches=cfg.plain_multirow))
            s.times["optimize"] += time.perf_counter() - t
        current = search.best if search is not None else skip
        layers = current is not None and len(current) > 0 and not guards["draft"].check(len(s.new))
        if layers:
            planner.use(current)
        context = []
        if ctx is not None:  # a continuation of the root from the context (prompt lookup)
            ctx.extend(s.new[len(ctx.tokens) - len(prompt_ids):])
            if guards["context"].rearm(len(s.new)):
                ctx_rate = ContextRate()  # tried again: its acceptance is learned afresh, from the prior
            if not guards["context"].check(len(s.new)):
                context = ctx.propose(cfg.context_len)
        # the cycle's own token (bonus or correction) takes the last place left: drafting into it would be wasted
        # work, and a drafted token cut off there would count as rejected
        limit = min(cfg.max_draft_len, max_new_tokens - len(s.new) - 1)
        source = choose_source(cfg, layers, context[:limit], planner, current, limit, ctx_rate, acc.costs) \
            if limit >= 1 else None
        if source is None:  # nothing to draft with, or every source's guard tripped
            t = time.perf_counter()
            # one step at a time while the search runs or a continuation may turn up, else chunks of up to 8
            wait = guards["context"].until_rearm(len(s.new)) if ctx is not None else None
            n = 1 if search is not None and search.active else 8 if wait is None else max(1, min(8, wait))
            plain_steps(engine, s, n, sampling)
            s.times["plain"] += time.perf_counter() - t
            continue
        if layers and (not skip_log or skip_log[-1][1] != current):
            skip_log.append((len(s.new), current))
        group = 1  # cycles launched before the one read
        if source == "draft" and cfg.groups_cycles and (search is None or not search.active):
            group = cycles_per_read(cfg.sync_cycles, planner.length(limit, current), max_new_tokens - len(s.new))
        captures = engine.graph_captures
        t = time.perf_counter()
        launched = []  # per cycle: (chain length, context tokens, chain (its top-1 probabilities, or its length),
        try:  # whether a continuation was offered and the draft chosen, seconds launching the draft)
            for _ in range(group):
                tj = time.perf_counter()
                if profile:
                    profile.begin(tj)
                offered = source == "draft" and len(context) > 0  # a continuation was there, and the draft chosen
                if source == "context":  # the continuation is the chain: its nodes reduce like plain decoding
                    chain, context = acc.drafter.propose(context[:limit]), []
                else:
                    if source == "draft":
                        context = []
                    extra = min(len(context), acc.verifier.B)
                    chain = draft_chain(acc, cfg, planner, current, limit, calibrate, extra)  # draft, skip set
                t1 = time.perf_counter()
                if profile:
                    profile.drafted(t1)
                C = chain if isinstance(chain, int) else len(chain)
                context = context[:max(0, min(limit, acc.verifier.sizes[-1] - 1 - C))]  # a union tree: chain first
                report = acc.verifier.verify(C, sampling, context)
                if group > 1:
                    acc.verifier.keep(len(launched))
                    engine.ahead += C + 1  # the most this cycle commits before the read
                if profile:
                    profile.verified()
                launched.append((C, len(context), chain, offered, t1 - tj))
            # sync: tree, verify, accept, commit on the device; the one read of the cycle (or of the group)
            rows = (acc.verifier.reports[:group] if group > 1 else report[None]).tolist()
        finally:
            engine.ahead = 0
        s.reads += 1
        infos = []
        for (C, n_context, chain, offered, t_draft), row in zip(launched, rows):
            n_new, a, leaf, nb = row[:4]
            engine.length += n_new
            n_new = s.append(row[4:4 + n_new], one_step=True)  # may stop short at EOS or the budget
            accepted = n_new - 1  # as the metrics count it: the step's last token is its bonus
            cycles[source] += 1
            sources["context" if source == "context" else "draft"] += min(a, accepted) + min(leaf, max(0, accepted - a))
            sources["context"] += min(nb, max(0, accepted - a))
            if source == "context":
                ctx_rate.observe(a)
            else:
                if offered:
                    ctx_rate.idle()
                planner.observe(C, a)
                if calibrate:
                    calibrator.update(chain, a)
            drafted += C + n_context
            infos.append(dict(C=C, committed=n_new, accepted=a, context=n_context, source=source,
                              captures=engine.graph_captures - captures if not infos else 0,
                              searching=search is not None and search.active,
                              syncs=1 / group if isinstance(chain, int) else 1 + -(-len(chain) // cfg.draft_chunk)))
            if s.done:  # at EOS: the group's later cycles ran on the device, and their tokens are dropped
                break
        t2 = time.perf_counter()
        t_drafts = sum(x[-1] for x in launched)
        s.times["draft"] += t_drafts
        s.times["verify"] += t2 - t - t_drafts
        if engine.graph_captures == captures and (source == "context" or search is None or not search.active):
            for info in infos:  # each cycle with its share of the group's time
                guards["context" if source == "context" else "draft"].observe(info["committed"], (t2 - t) / group)
        if profile:
            profile.end(time.perf_counter(), infos)
    acc.drafter.vocab.observe(s.new)
    sync(dev)
    wall = time.perf_counter() - t0
    if rest is not None and has_draft and not rested and search_done:
        rest.end(guards["draft"])
    used = [guards[k] for k, on in (("draft", has_draft), ("context", ctx is not None)) if on] or [guards["draft"]]
    tripped = [g.tripped_at for g in used]
    stats = {"method": "swift", "times": s.times, "skip_changes": [(n, sk.to_dict()) for n, sk in skip_log],
             "guard_plain_tps": guards["draft"].plain_tps, "guard_swift_tps": used[0].swift_tps(),
             "fallback_at": None if None in tripped else max(tripped),  # plain decoding from here on
             "guard_tripped_at": {k: g.tripped_at for k, g in guards.items()},
             "guard_trips": {k: g.trips for k, g in guards.items()}, "draft_rested": rested, "cycles": cycles,
             "num_layers": engine.args.n_layers,
             "search": search.summary() if search is not None else None, "cache_hit": search is None,
             "final_skip": (search.best if search is not None else skip).to_dict()
             if (search.best if search is not None else skip) is not None else None,
             "draft_costs": acc.costs.to_dict(), "accepted_from": sources,
             "tail_kernels": {"draft": acc.drafter.fused, "verify": acc.verifier.fused},
             "graph_captures": engine.graph_captures - captures0, "reads": s.reads}
    return GenerationResult(tokens=s.new, num_new_tokens=len(s.new), num_steps=len(s.accept_lengths),
                            accept_lengths=s.accept_lengths, num_drafted=drafted, wall_time_s=wall, stats=stats)
