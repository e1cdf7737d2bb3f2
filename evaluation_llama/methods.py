"""Decoding methods behind one interface, so that a new drafter is one class.

The runner (`evaluation_llama/runner.py`), the suite (`scripts/run_suite.py`) and the peer
benchmark (`scripts/bench_peers.py`) drive every method alike:

    method = Swift(config, run)             # config from Swift.build_config(args); run: TaskRun
    method.warm_up(engine, prompts, n, timed)  # untimed; binds the engine
    for each instance:
        method.start_instance(first)        # e.g. reset a per-instance search
        torch.manual_seed(instance_seed(seed, index))
        result = method.generate(ids, n)    # model.generate.GenerationResult
        stats = method.answer_stats(result) # the answer record's "stats"
        method.answer_written()             # after the record is safely on disk
    lines = method.end_task()               # persist what the method keeps; summary lines

A class declares its name, its runner module, its own flags (`add_flags`), builds and validates
its own configuration from them (`build_config`) and names the entries it adds to the run config
(`record_config`). Nothing outside this module branches on a method's name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

from evaluation_llama.answers import json_safe
from evaluation_llama.cli import note
from evaluation_llama.flags import INT, REAL, SEED_STRIDE, WARMUP_MAX_NEW_TOKENS
from evaluation_llama.paths import existing_shards, shard_path
from model.errors import UserError
from model.swift.config import MULTIROW_LAUNCHES, SwiftConfig

# model code that needs torch is imported inside the methods that use it, so that flags are
# checked before torch is loaded


def instance_seed(seed: int, index: int) -> int:
    """The torch seed before the instance at position ``index`` of the task's list (independent
    of sharding, so a split run answers like a single one)."""
    return seed * SEED_STRIDE + index


@dataclass(frozen=True)
class TaskRun:
    """What a method knows of the task run it serves."""

    model_id: str
    task: str
    model_args: Any  # model.config.ModelArgs
    sampling: Any  # model.sampling.SamplingConfig
    eos_ids: tuple
    shard: Optional[int] = None  # this process's shard when the task is split over processes
    num_shards: int = 1
    note: Callable[[str], None] = note  # warnings and notes for the user (stderr)


class Method:
    """The interface every decoding method implements (see the module docstring)."""

    name: ClassVar[str] = ""  # registry key, the records' "method", the answer file's stem
    entry_module: ClassVar[str] = ""  # the runner module that runs this method
    description: ClassVar[str] = ""  # what it does, for --help
    record_keys: ClassVar[tuple[str, ...]] = ()  # its entries in the run config
    answer_names: ClassVar[str] = ""  # for --answer-file's help: how its flags change the default name (run_name)

    # ---- configuration (class level: before any model is loaded) ---------------------------------
    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Add this method's own flags (an argument group) to the runner's parser."""

    @classmethod
    def build_config(cls, args: argparse.Namespace) -> Any:
        """This method's validated configuration from the parsed flags (None: it has none).
        Raises UserError naming the flag to fix."""
        return None

    @classmethod
    def place(cls, config: Any, folder: Path) -> Any:
        """The configuration with default file locations filled in; ``folder`` is the run's
        <outputs>/<model-id>/<task>/ folder."""
        return config

    @classmethod
    def run_name(cls, config: Any) -> str:
        """The stem of this configuration's default answer file (before any -t<temperature>); `answer_names` says
        in the --answer-file help which flags change it."""
        return cls.name

    @classmethod
    def record_config(cls, config: Any) -> dict:
        """This method's entries of the run config (hashed: a resumed file must agree)."""
        return {}

    @classmethod
    def config_to_dict(cls, config: Any) -> Optional[dict]:
        return None if config is None else config.to_dict()

    @classmethod
    def config_from_dict(cls, data: Optional[dict]) -> Any:
        return None

    @classmethod
    def merge_shards(cls, config: Any) -> list[str]:
        """Called by the shard parent after the shards' answers are merged: fold whatever the
        method keeps per shard into one; returns summary lines."""
        return []

    @classmethod
    def check_resume(cls, config: Any, path: Path, records: list[dict]) -> None:
        """Called before a run resumes the answer file ``path`` (its ``records``, same
        configuration): a UserError when what this run would do differs in a way the
        configuration does not record."""

    # ---- one task run ---------------------------------------------------------------------------
    def __init__(self, config: Any, run: TaskRun):
        self.config = config
        self.run = run
        self.engine = None

    def warm_up(self, engine, prompts: Sequence[list[int]], max_new_tokens: int,
                timed: Sequence[list[int]] = ()) -> None:
        """Bind the engine, then run untimed generations on ``prompts`` (compilation, graph
        capture, lazy initialisation), capture the one-token graph of every KV-length bucket and
        prefill each prompt length of the ``timed`` prompts once, so that none of it lands inside
        a timed answer."""
        self.engine = engine
        for ids in prompts:
            self.warm_generate(ids, min(max_new_tokens, WARMUP_MAX_NEW_TOKENS))
        engine.warm_up_decode(self.run.sampling)
        self.warm_up_graphs()
        engine.warm_up_prefill(timed)

    def warm_up_graphs(self) -> None:
        """Capture the method's own graphs (beyond plain decoding's) before anything is timed."""

    def warm_generate(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        """One warm-up generation; by default a generation like the timed ones."""
        self.generate(prompt_ids, max_new_tokens)

    def start_instance(self, first: bool) -> None:
        """Before each timed instance (``first``: the first of this process)."""

    def generate(self, prompt_ids: list[int], max_new_tokens: int):
        raise NotImplementedError

    def answer_stats(self, result) -> dict:
        """The answer record's ``stats`` (JSON-safe)."""
        return json_safe(result.stats)

    def answer_written(self) -> None:
        """After an answer is on disk (signals are held off meanwhile)."""

    def end_task(self) -> list[str]:
        """At the end of the run, also when it fails: persist what the method keeps; returns
        summary lines for a successful run."""
        return []


REGISTRY: dict[str, type[Method]] = {}
ALIASES = {"baseline": "vanilla"}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Method]:
    """The method class called ``name`` (or an alias such as "baseline")."""
    cls = REGISTRY.get(ALIASES.get(name, name))
    if cls is None:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(REGISTRY)}")
    return cls


def config_entries(cls: type[Method], config: Any) -> dict:
    """The run-config entries of a method: every registered method's keys, None where they are
    not this method's, so that all answer files share one configuration layout."""
    out = {key: None for m in REGISTRY.values() for key in m.record_keys}
    out.update(cls.record_config(config))
    return out


# ----------------------------------------------------------------------------------------------
# plain decoding


@register
class Vanilla(Method):
    name = "vanilla"
    entry_module = "evaluation_llama.inference_baseline"
    description = "plain autoregressive decoding (the baseline SWIFT is compared with)"

    def generate(self, prompt_ids, max_new_tokens):
        from model import generate  # looked up at call time (tests replace it)

        return generate.vanilla_generate(self.engine, prompt_ids, max_new_tokens,
                                         self.run.sampling, self.run.eos_ids)


# ----------------------------------------------------------------------------------------------
# SWIFT

LAYER_CONFIG = "layer_config.json"
# SWIFT flags -> SwiftConfig fields (one to one), with their argparse types
SWIFT_FLAGS = {"skip_ratio": REAL, "context_window": INT, "bayes_interval": INT,
               "max_opt_iter": INT, "max_tolerance_iter": INT, "max_score": REAL,
               "num_candidates": INT, "draft_stop_threshold": REAL, "draft_chunk": INT,
               "max_draft_len": INT, "max_tree_nodes": INT, "draft_vocab": INT, "guard_margin": REAL,
               "context_retry": INT, "draft_rest": INT, "sync_cycles": INT}


MULTIROW_HELP = ("how the graphs that pass many rows at once (the tree's verification, and the layer search's "
                 "scoring where there is a search) launch their kernels: 'dependent', as plain decoding does "
                 "(SWIFT_PDL), or 'plain', each after the one before it has finished; the output is the same "
                 "(default {})")


# SwiftConfig fields that runs were recorded without, and the value those runs ran with
RECORDED_BEFORE = {"multirow_launches": "dependent", "sync_cycles": 1, "search_tiebreak": "none"}


def swift_record(cfg: SwiftConfig, search: bool = True) -> dict:
    """A SwiftConfig as a run's configuration records it (`search`: whether the run has a layer search, whose tie-break
    then counts; without one, `search_tiebreak` is recorded as runs from before it existed). A field of
    `RECORDED_BEFORE` with the value that runs from before it existed ran with (recording nothing) is left out: the
    configuration, and its hash, of such a run stay as they were, so it resumes (`SwiftRun.from_dict` reads the absence
    back as that value). "dependent" launches are the default; one read per cycle (sync_cycles 1) is not, so a run with
    the default records its sync_cycles and does not resume answers timed with a read after every cycle, unless its
    cycles are read one by one anyway (context drafts, or a confidence rule for the draft length)."""
    d = cfg.to_dict()
    if not cfg.groups_cycles:  # cycles are read one by one: sync_cycles does nothing
        d["sync_cycles"] = RECORDED_BEFORE["sync_cycles"]
    if not search:  # a fixed draft (prompt lookup, early exit, cached layers): no ties to break
        d["search_tiebreak"] = RECORDED_BEFORE["search_tiebreak"]
    for key, before in RECORDED_BEFORE.items():
        if d[key] == before:
            del d[key]
    return d


def add_multirow_flag(group) -> None:
    group.add_argument("--multirow-launches", default=None, choices=MULTIROW_LAUNCHES,
                       help=MULTIROW_HELP.format(SwiftConfig().multirow_launches))


@dataclass(frozen=True)
class SwiftRun:
    """SWIFT's configuration for one run: the algorithm's settings and where its skip set lives."""

    swift: SwiftConfig
    layer_cache: Optional[str] = None  # the layer-configuration cache (None: none kept)
    cache_hit: bool = False  # read the skip set from layer_cache instead of searching
    reset_search_per_instance: bool = False
    skip: Optional[dict] = None  # a fixed skip set given directly ({"attn": [...], "mlp": [...]})

    def to_dict(self) -> dict:
        return {"swift": self.swift.to_dict(), "layer_cache": self.layer_cache,
                "cache_hit": self.cache_hit,
                "reset_search_per_instance": self.reset_search_per_instance, "skip": self.skip}

    @classmethod
    def from_dict(cls, data: dict) -> "SwiftRun":
        cfg = dict(data["swift"])
        cfg["tree_rule"] = tuple(tuple(r) for r in cfg["tree_rule"])
        for key, before in RECORDED_BEFORE.items():  # see swift_record
            cfg.setdefault(key, before)
        return cls(SwiftConfig(**cfg), data.get("layer_cache"), bool(data.get("cache_hit")),
                   bool(data.get("reset_search_per_instance")), data.get("skip"))


def swift_config(values: dict, given: dict[str, str], what: str = "SWIFT settings") -> SwiftConfig:
    """SwiftConfig(**values), its UserError worded for the command line (``what``: whose settings): the flag that
    alone breaks a rule, and without which the rest keep them, is named with the message of the values as given
    (``given``: field -> flag as typed); else the flags given are listed."""
    try:
        return SwiftConfig(**values)
    except UserError as exc:
        fixed = {k: v for k, v in values.items() if k not in given}
        for field, flag in given.items():
            try:
                SwiftConfig(**fixed, **{field: values[field]})
                continue
            except UserError:
                pass
            try:
                SwiftConfig(**{k: v for k, v in values.items() if k != field})
            except UserError:
                continue  # the others break a rule too
            raise UserError(f"invalid {what}: {flag} {values[field]}: {exc}") from None
        raise UserError(f"invalid {what}: {exc} Adjust the matching flags ("
                        f"{', '.join(given.values()) or 'see --help'}).") from None


@register
class Swift(Method):
    name = "swift"
    entry_module = "evaluation_llama.inference_swift"
    description = ("SWIFT self-speculative decoding (on-the-fly layer-skip search, then drafting "
                   "with the skipped model and verifying with the full model)")
    record_keys = ("swift", "cache_hit", "reset_search_per_instance")
    answer_names = "hybrid for --context-drafts, and -cached after it for --cache-hit"

    @classmethod
    def add_flags(cls, parser):
        d = {f.name: f.default for f in dataclasses.fields(SwiftConfig)}
        g = parser.add_argument_group("SWIFT (defaults are the paper's settings; SwiftConfig "
                                      "checks the values)")

        def add(field, help_text, **kw):
            g.add_argument("--" + field.replace("_", "-"), default=None, help=help_text, **kw)

        add("skip_ratio", "share of the attention/MLP sub-layers the draft skips, in (0, 1); omit "
            "it to adapt the ratio to the model during the optimization phase (paper: 0.45 for "
            "13B, 0.5 for 34B/70B)", type=REAL)
        add("context_window", f"gamma: recent tokens on which a candidate skip set's matchness is "
            f"measured, >= 2 (default {d['context_window']})", type=INT)
        add("bayes_interval", f"beta: a Bayesian-optimization proposal every beta optimization "
            f"steps (default {d['bayes_interval']})", type=INT)
        add("max_opt_iter", f"S: most optimization steps before the skip set is frozen "
            f"(default {d['max_opt_iter']})", type=INT)
        add("max_tolerance_iter", f"stop optimizing after this many steps without improvement "
            f"(default {d['max_tolerance_iter']})", type=INT)
        add("max_score", f"stop optimizing once the matchness reaches this, in (0, 1] "
            f"(default {d['max_score']})", type=REAL)
        add("num_candidates", f"candidate skip sets scored per optimization step, in one batched "
            f"forward, in [1, 16] (default {d['num_candidates']})", type=INT)
        add("draft_stop_threshold", f"stop drafting when the draft's top-1 probability falls "
            f"below this, in (0, 1] (default {d['draft_stop_threshold']})", type=REAL)
        add("draft_stop", f"how long to draft: 'speed' drafts the length that maximises the expected "
            f"tokens/s (measured draft and verify costs, the acceptance observed so far; one host "
            f"sync per cycle, or per --sync-cycles cycles); 'confidence' stops after the first token "
            f"whose top-1 probability is below --draft-stop-threshold (the paper's rule), "
            f"'calibrated' first maps that probability to the acceptance rate observed for it; both "
            f"read the probabilities once per --draft-chunk tokens (default {d['draft_stop']})",
            choices=("speed", "confidence", "calibrated"))
        add("draft_chunk", f"with --draft-stop confidence/calibrated: tokens drafted between two "
            f"reads of the probabilities, in [1, 32] (default {d['draft_chunk']})", type=INT)
        add("sync_cycles", f"with --draft-stop speed, once the search has stopped (and without "
            f"--context-drafts): up to this many draft/verify cycles are launched before one read of "
            f"their results, in [1, 32]; 1 = a read after every cycle. The output is the same; fewer "
            f"reads leave the GPU idle less often (default {d['sync_cycles']})", type=INT)
        add("draft_vocab", f"keep only this many token ids in the draft's LM head (the most "
            f"frequent in the task's prompts and answers so far, then the lowest ids); "
            f"verification keeps the whole vocabulary, so the output does not change; 0 = the "
            f"whole vocabulary (default {d['draft_vocab']})", type=INT)
        add("ratio_objective", f"with an automatic skip ratio: 'speed' raises the ratio while the "
            f"predicted tokens/s grows (matchness as acceptance, measured draft cost), 'matchness' "
            f"raises it while the matchness stays >= --max-score (default {d['ratio_objective']})",
            choices=("speed", "matchness"))
        add("search_proposals", f"how the layer search draws its local candidates: 'paper' swaps 1-2 "
            f"random sub-layers of the best set; 'guided' draws the swaps from a regression of the "
            f"observed matchness on the sub-layers, so the ones that cost matchness leave the set "
            f"first (default {d['search_proposals']})", choices=("paper", "guided"))
        add("search_tiebreak", f"how the layer search ranks skip sets of equal matchness: 'margin' "
            f"prefers the set whose logits are closer to the followed tokens (the log-probability "
            f"margin to the argmax, which never outweighs one matched token), so a set that is one "
            f"step from matching one more token ranks above one that is not; 'none' ranks by "
            f"matchness alone, as the paper (default {d['search_tiebreak']})", choices=("margin", "none"))
        add("max_draft_len", f"most tokens drafted per cycle, in [1, 32] "
            f"(default {d['max_draft_len']})", type=INT)
        add("max_tree_nodes", f"most nodes of the verified token tree, in [--max-draft-len + 2, "
            f"128] (default {d['max_tree_nodes']})", type=INT)
        add_multirow_flag(g)
        g.add_argument("--context-drafts", action="store_true",
                       help=f"hybrid drafts: besides the layer-skip draft, each cycle may verify the best "
                            f"continuation found in the prompt and the output so far (prompt lookup, at "
                            f"most {d['context_len']} tokens); lossless like the layer-skip draft; see "
                            f"--context-tree")
        add("context_tree", f"with --context-drafts: 'select' verifies, each cycle, the context "
            f"continuation or the layer-skip draft, whichever is predicted faster (bit-identical to "
            f"plain decoding in bf16); 'union' verifies the layer-skip chain with the continuation as a "
            f"branch in one tree, accepting from both (in bf16 a branch node can differ from plain "
            f"decoding in the last bits) (default {d['context_tree']})", choices=("select", "union"))
        g.add_argument("--no-guard", action="store_true",
                       help="disable the speed guard that falls back to plain decoding when SWIFT "
                            "is slower than plain steps of the same answer; the guard decides from "
                            "wall-clock timings, so with --temperature > 0 pass --no-guard for "
                            "bit-reproducible samples")
        add("guard_margin", f"the guard falls back when SWIFT tokens/s < margin x plain tokens/s, "
            f"> 0 (default {d['guard_margin']})", type=REAL)
        add("draft_rest", f"after an answer in which the guard stopped the layer-skip draft, the task's "
            f"next N answers start without it (plain steps; context drafts with --context-drafts) and "
            f"the one after them tries it again, each further stop in a row doubling the rest (up to 16 N); "
            f"0 = every answer tries it. Only while no search runs "
            f"and with the guard on, so it does nothing with --no-guard or "
            f"--reset-search-per-instance (default {d['draft_rest']})", type=INT)
        add("context_retry", f"with --context-drafts: when the guard stops the context continuations, "
            f"they are tried again this many new tokens later, twice as long after each further stop; "
            f"0 = the stop is final (default {d['context_retry']})", type=INT)
        g.add_argument("--layer-cache", default=None,
                       help=f"layer-configuration cache (default: <outputs>/<model-id>/<task>/"
                            f"{LAYER_CONFIG}, with --context-drafts layer_config-hybrid.json): written "
                            f"with the best skip set when the search stops and at the end of the run; read "
                            f"with --cache-hit")
        g.add_argument("--cache-hit", action="store_true",
                       help="read the skip set from --layer-cache and skip the optimization phase; "
                            "answers go to swift-cached.jsonl (hybrid-cached.jsonl) unless --answer-file")
        g.add_argument("--reset-search-per-instance", action="store_true",
                       help="start the layer search (and the draft-stop calibration) afresh for "
                            "every instance (default: one search carried across all instances of "
                            "the task, as in the paper)")

    @classmethod
    def build_config(cls, args):
        fields = [*SWIFT_FLAGS, "draft_stop", "ratio_objective", "context_tree", "search_proposals",
                  "search_tiebreak", "multirow_launches"]
        values = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
        given = {f: "--" + f.replace("_", "-") for f in values}
        values.update(guard=not args.no_guard, seed=args.seed,
                      context_drafts=bool(getattr(args, "context_drafts", False)))
        idle = [given[f] for f in ("context_tree", "context_retry") if f in given and not values["context_drafts"]]
        if idle:  # they would do nothing, yet enter the run's configuration (a rerun without them: "another one")
            raise UserError(f"{' and '.join(idle)} only act{'s' if len(idle) == 1 else ''} on the context drafts of "
                            f"the hybrid: add --context-drafts or drop {'it' if len(idle) == 1 else 'them'}.")
        if args.cache_hit and args.reset_search_per_instance:
            raise UserError("--cache-hit reads a fixed skip set, so there is no search to reset; "
                            "drop --reset-search-per-instance or --cache-hit.")
        return SwiftRun(swift_config(values, given), args.layer_cache, bool(args.cache_hit),
                        bool(args.reset_search_per_instance))

    @classmethod
    def place(cls, config, folder):
        if config.layer_cache is None:  # the hybrid's search finds its own set: layer_config-hybrid.json
            name = LAYER_CONFIG if not config.swift.context_drafts else "layer_config-hybrid.json"
            config = dataclasses.replace(config, layer_cache=str(folder / name))
        return config

    @classmethod
    def run_name(cls, config):
        """swift, hybrid (--context-drafts), and swift-cached / hybrid-cached (--cache-hit): the runs of one task
        keep their answers apart, so a --cache-hit run after the search run needs no --answer-file."""
        return ("hybrid" if config.swift.context_drafts else cls.name) + ("-cached" if config.cache_hit else "")

    @classmethod
    def record_config(cls, config):
        return {"swift": swift_record(config.swift, search=not config.cache_hit), "cache_hit": config.cache_hit,
                "reset_search_per_instance": config.reset_search_per_instance}

    @classmethod
    def config_from_dict(cls, data):
        return SwiftRun.from_dict(data)

    @classmethod
    def check_resume(cls, config, path, records):
        """A --cache-hit run reads its skip set from --layer-cache, which the configuration names
        but does not hold: answers made with another set than the cache gives now are refused."""
        if not config.cache_hit or config.layer_cache is None:
            return
        from model.llama import LayerSkip

        try:  # an unreadable cache is reported, with its fix, when the run loads it
            now = LayerSkip.from_dict(json.loads(Path(config.layer_cache).read_text())["skip"])
        except Exception:  # noqa: BLE001
            return
        for r in records:
            used = (r.get("stats") or {}).get("final_skip")
            if isinstance(used, dict) and LayerSkip.from_dict(used) != now:
                raise UserError(
                    f"{path} holds answers made with the skip set {fmt_skip(used)}, but "
                    f"{config.layer_cache} now gives {fmt_skip(now.to_dict())}: pass --overwrite to "
                    f"answer again with the new set, or another --answer-file.")

    @classmethod
    def merge_shards(cls, config):
        if config.cache_hit or config.layer_cache is None:
            return []
        path = Path(config.layer_cache)
        merge_layer_caches(path)
        if not path.exists():
            return []
        with contextlib.suppress(Exception):
            info = json.loads(path.read_text())
            return [f"best skip set over the shards: {fmt_skip(info.get('skip'))} (ratio "
                    f"{info.get('skip_ratio')}, matchness {info.get('matchness')}); saved to "
                    f"{path}"]
        return []

    # ---- one task run ---------------------------------------------------------------------------
    def __init__(self, config: SwiftRun, run: TaskRun):
        from model.swift.layer_search import LayerSearch

        super().__init__(config, run)
        cfg, n_layers = config.swift, run.model_args.n_layers
        self.fixed_skip = None
        self.keeper: Optional[LayerCacheKeeper] = None
        if config.skip is not None:
            from model.llama import LayerSkip

            self.fixed_skip = LayerSkip.from_dict(config.skip)
        elif config.cache_hit:
            from model.swift.layer_cache import load_layer_config

            self.fixed_skip, info = load_layer_config(str(config.layer_cache), run.model_id,
                                                      n_layers, run.task)
            run.note(f"cache hit: skip set from {config.layer_cache} (ratio "
                     f"{info.get('skip_ratio')}, matchness {info.get('matchness')}): "
                     f"{fmt_skip(self.fixed_skip.to_dict())}")
        elif n_layers < 3:
            raise UserError(f"the model has {n_layers} layers; SWIFT needs at least 3 (the first "
                            f"and last are never skipped).")
        elif config.layer_cache is not None:
            path = Path(config.layer_cache)
            if run.shard is not None and run.num_shards > 1:  # the parent keeps the best shard's
                path = shard_path(path, run.shard)
            self.keeper = LayerCacheKeeper(path, run.model_id, run.model_args.architecture,
                                           n_layers, run.task,
                                           per_instance=config.reset_search_per_instance)
        # the search and the draft-stop calibrator are carried across the task's instances
        self.search = LayerSearch(n_layers, cfg) if self.fixed_skip is None else None
        self.calibrator = self._new_calibrator()
        self.planner = None  # the draft-length planner, made with the engine and carried likewise
        self.rest = self._new_rest()  # the guard's verdict on the draft, carried likewise
        self._was_active = False

    def _new_calibrator(self):
        from model.swift.decoding import DraftCalibrator

        return DraftCalibrator() if self.config.swift.draft_stop == "calibrated" else None

    def _generate(self, prompt_ids, max_new_tokens, search, calibrator, planner, rest=None):
        from model.swift.decoding import swift_generate

        return swift_generate(self.engine, prompt_ids, max_new_tokens, self.run.sampling,
                              self.run.eos_ids, self.config.swift, search=search,
                              skip=self.fixed_skip, calibrator=calibrator, planner=planner, rest=rest)

    def _new_rest(self):
        from model.swift.decoding import DraftRest

        return DraftRest(self.config.swift.draft_rest)

    def _new_planner(self):
        from model.swift.decoding import accelerator
        from model.swift.planner import DraftPlanner

        acc = accelerator(self.engine, self.config.swift)
        return DraftPlanner(acc.costs, acc.drafter.chunks())

    def warm_generate(self, prompt_ids, max_new_tokens):
        """A throwaway search, calibrator and planner: warming up must not teach the timed run
        anything."""
        from model.swift.layer_search import LayerSearch

        throwaway = None if self.search is None else \
            LayerSearch(self.run.model_args.n_layers, self.config.swift)
        self._generate(prompt_ids, max_new_tokens, throwaway, self._new_calibrator(),
                       self._new_planner())

    def warm_up_graphs(self):
        from model.swift.decoding import accelerator

        accelerator(self.engine, self.config.swift).warm_up(self.run.sampling)

    def start_instance(self, first):
        if self.planner is None:
            self.planner = self._new_planner()
        if self.config.reset_search_per_instance and not first:
            if self.search is not None:
                self.search.reset()
            self.calibrator = self._new_calibrator()
            self.planner = self._new_planner()
            self.rest = self._new_rest()
        self._settle()

    def _settle(self):
        """Before the timer starts: once the skip set is final (a fixed set, or a search that has
        stopped), give its draft graphs of their own (`Accelerator.settle`)."""
        from model.swift.decoding import accelerator

        skip = self.fixed_skip
        if skip is None and self.search is not None and not self.search.active:
            skip = self.search.best
        if skip is not None:
            accelerator(self.engine, self.config.swift).settle(skip)

    def generate(self, prompt_ids, max_new_tokens):
        self._was_active = self.search is not None and self.search.active
        if self.planner is None:
            self.planner = self._new_planner()
        return self._generate(prompt_ids, max_new_tokens, self.search, self.calibrator,
                              self.planner, self.rest)

    def answer_written(self):
        if self.keeper is None:
            return
        stopped = self._was_active and not self.search.active  # keep it as soon as it is final
        try:
            self.keeper.offer(self.search, write_now=stopped)
        except OSError as exc:
            self.run.note(f"warning: could not write the layer configuration {self.keeper.path} "
                          f"({exc.strerror or exc}); retrying at the end")

    def end_task(self):
        if self.keeper is not None:
            self.keeper.offer(self.search, write_now=False)
            try:
                self.keeper.flush()
            except OSError as exc:
                self.run.note(f"warning: could not write the layer configuration "
                              f"{self.keeper.path} ({exc.strerror or exc}); pass a writable "
                              f"--layer-cache to keep it")
        return self.summary_lines()

    def summary_lines(self) -> list[str]:
        lines = []
        if self.fixed_skip is not None:
            lines.append(f"skip set (cache hit): {fmt_skip(self.fixed_skip.to_dict())}")
        elif self.search.best is None:
            lines.append("no skip set yet: the layer search needs answers longer than the guard's "
                         "plain probe and --context-window; SWIFT decoded plainly")
        else:
            sm = self.search.summary()
            state = "still searching" if sm["active"] else f"stopped: {sm['stop_reason']}"
            lines.append(f"final skip set: {fmt_skip(sm['best_skip'])}; {sm['n_skipped']} of "
                         f"{sm['search_dims']} sub-layers skipped (ratio {sm['ratio']}, matchness "
                         f"{sm['best_score']:.3f}, {sm['n_iter']} optimization steps, {state})")
        if self.keeper is not None and self.keeper.saved_to is not None:
            lines.append(f"layer configuration saved to {self.keeper.saved_to} (reuse it with "
                         f"--cache-hit)")
        return lines


class _FixedDrafter(Method):
    """A method that drafts without a search, through the SWIFT engine (`swift_generate` with a fixed skip set):
    prompt lookup (the empty skip set, context drafts on) and early exit (every layer from --exit-layer on
    skipped). Its configuration is a SwiftConfig, recorded like SWIFT's."""

    record_keys = ("swift",)

    @classmethod
    def add_guard_flags(cls, g):
        d = {f.name: f.default for f in dataclasses.fields(SwiftConfig)}
        g.add_argument("--no-guard", action="store_true",
                       help="disable the speed guard (fall back to plain decoding when drafting is "
                            "slower than plain steps of the same answer)")
        g.add_argument("--guard-margin", type=REAL, default=None,
                       help=f"the guard falls back when tokens/s < margin x plain tokens/s, > 0 "
                            f"(default {d['guard_margin']})")
        add_multirow_flag(g)

    # the guard flags a fixed drafter may have, and how its verification launches
    GUARD_FIELDS = ("guard_margin", "context_retry", "draft_rest", "multirow_launches")

    @classmethod
    def guard_given(cls, args) -> dict[str, str]:
        """The guard flags typed on the command line (field -> flag), so that an error names them."""
        return {f: "--" + f.replace("_", "-") for f in cls.GUARD_FIELDS if getattr(args, f, None) is not None}

    @classmethod
    def swift_values(cls, args) -> dict:
        return {"guard": not args.no_guard, "seed": args.seed,
                **{f: getattr(args, f) for f in cls.guard_given(args)}}

    @classmethod
    def record_config(cls, config):
        return {"swift": swift_record(config, search=False)}

    @classmethod
    def config_from_dict(cls, data):
        return SwiftRun.from_dict({"swift": data}).swift

    @property
    def swift(self) -> SwiftConfig:
        return self.config

    def skip(self):
        raise NotImplementedError

    def warm_up_graphs(self):
        from model.swift.decoding import accelerator

        acc = accelerator(self.engine, self.swift)
        acc.warm_up(self.run.sampling)
        acc.settle(self.skip())  # the skip set is fixed: its own draft graphs (none for an empty set)

    def __init__(self, config, run):
        from model.swift.decoding import DraftRest

        super().__init__(config, run)
        self.rest = DraftRest(self.swift.draft_rest)  # the guard's verdict on the draft, carried across the instances

    def _generate(self, prompt_ids, max_new_tokens, rest):
        from model.swift.decoding import swift_generate

        return swift_generate(self.engine, prompt_ids, max_new_tokens, self.run.sampling,
                              self.run.eos_ids, self.swift, skip=self.skip(), rest=rest)

    def warm_generate(self, prompt_ids, max_new_tokens):
        """Without the carried verdict on the draft: warming up must not teach the timed run anything."""
        self._generate(prompt_ids, max_new_tokens, None)

    def generate(self, prompt_ids, max_new_tokens):
        return self._generate(prompt_ids, max_new_tokens, self.rest)


@register
class PromptLookup(_FixedDrafter):
    name = "pld"
    entry_module = "evaluation_llama.inference_pld"
    description = ("prompt lookup decoding (drafts are continuations of n-grams found in the "
                   "prompt and the output so far, verified by the full model in one pass)")

    @classmethod
    def add_flags(cls, parser):
        d = {f.name: f.default for f in dataclasses.fields(SwiftConfig)}
        g = parser.add_argument_group("prompt lookup")
        g.add_argument("--context-len", type=INT, default=None,
                       help=f"most tokens proposed per cycle, in [1, 32] (default {d['context_len']})")
        g.add_argument("--ngram-max", type=INT, default=None,
                       help=f"longest suffix matched against the context (default {d['ngram_max']})")
        g.add_argument("--ngram-min", type=INT, default=None,
                       help=f"shortest suffix matched (default {d['ngram_min']})")
        cls.add_guard_flags(g)
        g.add_argument("--context-retry", type=INT, default=None,
                       help=f"when the guard stops the continuations, they are tried again this many new "
                            f"tokens later, twice as long after each further stop; 0 = the stop is final "
                            f"(default {d['context_retry']})")

    @classmethod
    def build_config(cls, args):
        values = {f: getattr(args, f) for f in ("context_len", "ngram_max", "ngram_min")
                  if getattr(args, f, None) is not None}
        given = {f: "--" + f.replace("_", "-") for f in values} | cls.guard_given(args)
        n = values.get("context_len", 10)
        values.update(cls.swift_values(args), context_drafts=True, max_draft_len=n, max_tree_nodes=max(16, n + 2))
        return swift_config(values, given, "prompt lookup settings")

    def skip(self):
        from model.llama import NO_SKIP

        return NO_SKIP


@register
class EarlyExit(_FixedDrafter):
    name = "early-exit"
    entry_module = "evaluation_llama.inference_early_exit"
    description = ("LayerSkip-style self-speculation: the draft is the model's first --exit-layer "
                   "layers and its LM head (a fixed depth, no search), verified by the full model")

    @classmethod
    def add_flags(cls, parser):
        d = {f.name: f.default for f in dataclasses.fields(SwiftConfig)}
        g = parser.add_argument_group("early exit")
        g.add_argument("--exit-layer", type=INT, default=None,
                       help="layers the draft runs before the LM head (default: half the model's)")
        g.add_argument("--max-draft-len", type=INT, default=None,
                       help=f"most tokens drafted per cycle, in [1, 32] (default {d['max_draft_len']})")
        g.add_argument("--sync-cycles", type=INT, default=None,
                       help=f"up to this many draft/verify cycles are launched before one read of their "
                            f"results, in [1, 32]; 1 = a read after every cycle; the output is the same "
                            f"(default {d['sync_cycles']})")
        cls.add_guard_flags(g)
        g.add_argument("--draft-rest", type=INT, default=None,
                       help=f"after an answer in which the guard stopped the draft, the next N answers start "
                            f"without it and the one after them tries it again, each further stop in a row doubling the "
                            f"rest (up to 16 N); 0 = every answer tries it; "
                            f"nothing with --no-guard (default {d['draft_rest']})")

    @classmethod
    def build_config(cls, args):
        values = {f: getattr(args, f) for f in ("max_draft_len", "sync_cycles") if getattr(args, f) is not None}
        given = {f: "--" + f.replace("_", "-") for f in values} | cls.guard_given(args)
        values.update(cls.swift_values(args))
        if args.exit_layer is not None and args.exit_layer < 1:
            raise UserError(f"--exit-layer must be >= 1, got {args.exit_layer}.")
        return EarlyExitRun(swift_config(values, given, "early exit settings"), args.exit_layer)

    @classmethod
    def record_config(cls, config):
        return {"swift": dict(swift_record(config.swift, search=False), exit_layer=config.exit_layer)}

    @classmethod
    def config_from_dict(cls, data):
        return EarlyExitRun(SwiftRun.from_dict({"swift": data["swift"]}).swift, data.get("exit_layer"))

    def __init__(self, config, run):
        super().__init__(config, run)
        n = run.model_args.n_layers
        self.exit_layer = config.exit_layer or max(1, n // 2)
        if self.exit_layer >= n:
            raise UserError(f"--exit-layer {self.exit_layer} leaves nothing to skip: the model has {n} "
                            f"layers; pass a smaller one.")

    @property
    def swift(self) -> SwiftConfig:
        return self.config.swift

    def skip(self):
        from model.llama import LayerSkip

        n = self.run.model_args.n_layers
        return LayerSkip.of(attn=range(self.exit_layer, n), mlp=range(self.exit_layer, n))


@dataclass(frozen=True)
class EarlyExitRun:
    swift: SwiftConfig
    exit_layer: Optional[int] = None

    def to_dict(self) -> dict:
        return {"swift": self.swift.to_dict(), "exit_layer": self.exit_layer}


def fmt_skip(skip: Optional[dict]) -> str:
    if not skip:
        return "none"
    return f"attention {skip.get('attn', [])}, MLP {skip.get('mlp', [])}"


@dataclass
class LayerCacheKeeper:
    """Writes the layer-configuration cache when a search stops and at the end of the run.

    One search carried across the task: its current best set (the search's own choice, which
    accounts for ratio changes). A search reset per instance: the highest-matchness set of all the
    instances' searches."""

    path: Path
    model_id: str
    architecture: str
    n_layers: int
    task: str
    per_instance: bool
    best: Optional[tuple] = None  # (score, skip, ratio)
    written: Optional[tuple] = None
    saved_to: Optional[Path] = None

    def offer(self, search, write_now: bool) -> None:
        skip = search.best
        if skip is not None and len(skip) > 0:
            sm = search.summary()
            found = (float(sm["best_score"]), skip, float(sm["ratio"]))
            if not self.per_instance or self.best is None or found[0] > self.best[0]:
                self.best = found
        if write_now:
            self.flush()

    def flush(self) -> None:
        if self.best is None or self.best == self.written:
            return
        from model.swift.layer_cache import save_layer_config

        score, skip, ratio = self.best
        save_layer_config(str(self.path), self.model_id, self.architecture, self.n_layers,
                          self.task, skip, ratio, score)
        self.written = self.best
        self.saved_to = self.path


def merge_layer_caches(path: Path) -> None:
    """Keep the best-scoring shard layer cache (<stem>.shard<i>.json) as the run's cache."""
    found = existing_shards(path)
    best, best_score = None, -math.inf
    for p in found:
        with contextlib.suppress(Exception):
            score = float(json.loads(p.read_text()).get("matchness", -math.inf))
            if score > best_score:
                best, best_score = p, score
    if best is not None:
        os.replace(best, path)
    for p in found:
        if p != best:
            p.unlink(missing_ok=True)
