"""SWIFT settings in one frozen dataclass (paper defaults), validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.errors import UserError

# (threshold, candidates): depth d gets the count of the first row whose threshold <= the draft's top-1 probability
DEFAULT_TREE_RULE = ((0.95, 1), (0.8, 2), (0.5, 4), (0.0, 8))
MULTIROW_LAUNCHES = ("dependent", "plain")  # the values of SwiftConfig.multirow_launches
MAX_SYNC_CYCLES = 32  # the most cycles of SwiftConfig.sync_cycles


@dataclass(frozen=True)
class SwiftConfig:
    # optimization phase (paper: r = 0.45 for 13B, 0.5 for 34B/70B; gamma = 32, beta = 25, S = 1000)
    skip_ratio: float | None = None  # None = automatic: adapt the ratio to the model during the optimization phase
    context_window: int = 32  # gamma: tokens scored for matchness
    bayes_interval: int = 25  # beta: a Bayesian-optimization proposal every beta steps
    max_opt_iter: int = 1000  # S
    max_tolerance_iter: int = 300  # stop after this many steps without improvement
    max_score: float = 0.95  # stop once matchness reaches this
    num_candidates: int = 4  # skip sets scored per optimization step, in one batched forward
    bayes_history: int = 128  # most recent observations the Gaussian process is fitted on
    # "paper": random candidates (uniform, and 1-2 random swaps of the best) plus the Bayesian proposal; "guided": the
    # swaps are drawn from a regression of the observed scores on the sub-layers (LayerSearch.effects) and repeated
    # sets are drawn again
    search_proposals: str = "guided"
    guide_history: int = 512  # most recent observations at the current ratio the regression is fitted on
    # "margin": between skip sets of equal matchness, the one whose logits are closer to the followed tokens ranks
    # higher (mean log-probability margin of the followed token to the argmax, clipped; it never outweighs one
    # matched token), and the regression of "guided" is fitted on that score; "none" (paper): matchness alone
    search_tiebreak: str = "margin"
    # automatic skip ratio
    ratio_init: float = 0.45
    ratio_min: float = 0.1
    ratio_max: float = 0.6
    ratio_step: float = 0.05
    ratio_low_score: float = 0.75  # lower the ratio while the best matchness stays below this
    ratio_patience: int = 25  # optimization steps at one ratio before it may change
    # acceleration phase
    draft_stop_threshold: float = 0.8
    # "speed": draft the length that maximises expected tokens/s (measured step costs, observed acceptance), one host
    # sync per cycle or per group of cycles (`sync_cycles`); "confidence" (paper): stop at the first top-1 probability
    # below the threshold, read once per `draft_chunk` tokens; "calibrated": the same with the probability mapped to
    # the observed acceptance rate
    draft_stop: str = "speed"
    draft_chunk: int = 4
    # with draft_stop="speed", once no search runs (and without context drafts): up to this many draft/verify cycles
    # are launched before the host reads their results, with one sync (1: a read after every cycle). The cycles run
    # on the device one after the other, as they would with a read between them; the host's work of a read no
    # longer leaves the GPU idle after each cycle
    sync_cycles: int = 4
    max_draft_len: int = 25
    tree_rule: tuple = DEFAULT_TREE_RULE
    max_tree_nodes: int = 32
    draft_vocab: int = 0  # > 0: the draft's LM head keeps only this many token ids (verification keeps all)
    # how the graphs that pass many rows at once (the tree's verification, the search's scoring) launch their kernels:
    # "dependent", as plain decoding does (SWIFT_PDL, where the GPU has it), or "plain", each after the one before it
    # has finished. Only timing differs: the kernels, their order and the output are the same. Replayed alone, the
    # plain graphs are cheaper; inside a stream, dependent ones gave prompt lookup about 10% more speed (docs/RESULTS.md)
    multirow_launches: str = "dependent"
    # hybrid drafts: each cycle's tree also holds the best continuation found in the context (prompt + output so far)
    context_drafts: bool = False
    # "select": each cycle verifies one chain, the context continuation or the layer-skip draft, whichever is
    # predicted faster (every node then reduces like plain decoding: bit-identical in bf16); "union": the layer-skip
    # chain with the continuation as a branch off it, acceptance over both (a branch node deeper than one token
    # reduces its branch ancestors in another order than plain decoding: not bit-identical in bf16)
    context_tree: str = "select"
    context_len: int = 10  # most tokens of a context continuation
    ngram_max: int = 3  # longest suffix matched against the context (prompt lookup), down to ngram_min
    ngram_min: int = 1
    # automatic ratio: "speed" raises r while the predicted tokens/s (matchness as acceptance, measured draft cost)
    # grows; "matchness" raises it while matchness stays >= max_score and stops there
    ratio_objective: str = "speed"
    # speed guard: fall back to plain decoding when SWIFT is slower than plain steps measured in the same stream
    guard: bool = True
    guard_probe_tokens: int = 8
    guard_min_cycles: int = 12
    guard_margin: float = 1.0  # fall back when swift tokens/s < margin * plain tokens/s
    # a tripped context guard lets continuations be tried again this many new tokens later, twice as long after each
    # further trip (0: a trip is final). A stream's text changes (a copied passage, a loop) and a continuation costs
    # only its verification; the layer-skip draft's trip stays final (trying it again costs draft steps)
    context_retry: int = 64
    # after a stream in which the guard stopped the layer-skip draft, the task's next draft_rest streams start without
    # it (plain steps; context drafts in the hybrid) and the one after them tries it again; each further stop in a row
    # doubles the rest, up to 16x (0: every stream tries it)
    draft_rest: int = 3
    seed: int = 0

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise UserError(msg)
        if self.skip_ratio is not None:
            need(0 < self.skip_ratio < 1, f"skip ratio must be in (0, 1), got {self.skip_ratio}.")
        need(self.context_window >= 2, f"context window (gamma) must be >= 2, got {self.context_window}.")
        need(self.bayes_interval >= 1, f"Bayesian interval (beta) must be >= 1, got {self.bayes_interval}.")
        need(self.max_opt_iter >= 0, f"max optimization steps must be >= 0, got {self.max_opt_iter}.")
        need(self.max_tolerance_iter >= 1, f"max tolerance steps must be >= 1, got {self.max_tolerance_iter}.")
        need(0 < self.max_score <= 1, f"matchness threshold must be in (0, 1], got {self.max_score}.")
        need(1 <= self.num_candidates <= 16, f"candidates per step must be in [1, 16], got {self.num_candidates}.")
        need(0 < self.draft_stop_threshold <= 1,
             f"draft stop threshold must be in (0, 1], got {self.draft_stop_threshold}.")
        need(self.draft_stop in ("speed", "confidence", "calibrated"),
             f"draft stop rule must be 'speed', 'confidence' or 'calibrated', got '{self.draft_stop}'.")
        need(1 <= self.draft_chunk <= 32, f"draft chunk must be in [1, 32], got {self.draft_chunk}.")
        need(1 <= self.sync_cycles <= MAX_SYNC_CYCLES,
             f"cycles per sync must be in [1, {MAX_SYNC_CYCLES}], got {self.sync_cycles}.")
        need(1 <= self.context_len <= 32, f"context draft length must be in [1, 32], got {self.context_len}.")
        need(1 <= self.ngram_min <= self.ngram_max <= 8,
             f"n-gram sizes must satisfy 1 <= min <= max <= 8, got {self.ngram_min}..{self.ngram_max}.")
        need(self.context_tree in ("select", "union"),
             f"context tree must be 'select' or 'union', got '{self.context_tree}'.")
        need(self.multirow_launches in MULTIROW_LAUNCHES,
             f"multi-row launches must be 'plain' or 'dependent', got '{self.multirow_launches}'.")
        need(self.draft_vocab >= 0, f"draft vocabulary size must be >= 0 (0 = full), got {self.draft_vocab}.")
        need(self.search_proposals in ("paper", "guided"),
             f"search proposals must be 'paper' or 'guided', got '{self.search_proposals}'.")
        need(self.search_tiebreak in ("margin", "none"),
             f"search tie-break must be 'margin' or 'none', got '{self.search_tiebreak}'.")
        need(self.guide_history >= 8, f"guide history must be >= 8, got {self.guide_history}.")
        need(self.ratio_objective in ("speed", "matchness"),
             f"ratio objective must be 'speed' or 'matchness', got '{self.ratio_objective}'.")
        need(1 <= self.max_draft_len <= 32, f"max draft length must be in [1, 32], got {self.max_draft_len}.")
        need(self.max_draft_len + 2 <= self.max_tree_nodes <= 128,
             f"max tree nodes must be in [max draft length + 2, 128], got {self.max_tree_nodes}.")
        need(not self.context_drafts or self.max_tree_nodes >= self.context_len + 2,
             f"max tree nodes must be >= context draft length + 2, got {self.max_tree_nodes}.")
        need(0 < self.ratio_min <= self.ratio_init <= self.ratio_max < 1 and self.ratio_step > 0,
             "automatic ratio bounds must satisfy 0 < min <= init <= max < 1 and step > 0.")
        need(self.guard_margin > 0, f"guard margin must be > 0, got {self.guard_margin}.")
        need(self.guard_min_cycles >= 1, f"guard window must be >= 1 cycle, got {self.guard_min_cycles}.")
        need(self.context_retry >= 0, f"context retry must be >= 0 tokens (0 = never), got {self.context_retry}.")
        need(self.draft_rest >= 0, f"draft rest must be >= 0 streams (0 = never), got {self.draft_rest}.")
        need(self.context_window * self.num_candidates <= 128,
             "context window x candidates must be <= 128 tokens (one scoring pass).")

    @property
    def auto_ratio(self) -> bool:
        return self.skip_ratio is None

    @property
    def groups_cycles(self) -> bool:
        """Whether cycles may be read in groups (`sync_cycles`): with the planned draft length and no context drafts;
        the confidence rules and context continuations need each cycle read."""
        return self.draft_stop == "speed" and not self.context_drafts

    @property
    def plain_multirow(self) -> bool:
        """Whether the verification and search-scoring graphs are captured with plain launches."""
        return self.multirow_launches == "plain"

    @property
    def top_k(self) -> int:
        return max(c for _, c in self.tree_rule)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tree_rule"] = [list(r) for r in self.tree_rule]
        return d
