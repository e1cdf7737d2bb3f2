#!/usr/bin/env python3
"""Side-by-side peer benchmark (batch 1, greedy): one model, the same prompts and the same stopping rule,
in ONE run, per task and per instance:

  vanilla           our plain autoregressive decoding (`model.generate.vanilla_generate`): the reference
  hf-generate       `transformers` `generate`, greedy, static KV cache (`cache_implementation="static"`); on CUDA
                    `transformers` compiles its decode steps itself; with --hf-compile the model's forward is
                    `torch.compile(..., mode="reduce-overhead")` instead
  hf-early-exit     `transformers` assisted generation with `assistant_early_exit=N` (LayerSkip-style
                    self-speculation: the draft is the model's first N layers + its LM head)
  hf-prompt-lookup  `transformers` prompt-lookup decoding (`prompt_lookup_num_tokens=10`)
  swift             SWIFT (ours), on-the-fly layer search carried across the instances of a task
  swift-cached      SWIFT (ours), second pass with the skip set the first pass found, saved and re-read as a
                    layer-config cache (`<out>/layer_config_<task>.json`), i.e. no optimization phase

Every method stops exactly alike: greedy, at most --max-new-tokens new tokens, the same EOS ids (the model's and the
tokenizer's); outputs are compared token by token up to and including the first EOS. Each method is warmed up on the
task (untimed) before its timed answers; CUDA is synchronized around every timed call.

Reported per task and method (metrics as defined in evaluation_llama/metrics.py): tokens/s (mean of per-answer
tokens/s), speedup over vanilla and over hf-generate, mean accepted tokens per decoding step (ours only; vanilla is 1;
`transformers` does not report it), and the share of answers whose tokens equal vanilla's.

--lengths L1,L2,... runs another mode instead: vanilla and SWIFT (and swift-cached when selected) on the first task
for each max-new-tokens value, reporting speedup and the share of SWIFT's time spent optimizing vs length.

Outputs (in --out): bench_peers.jsonl (one row per method x instance, each also a valid answer record for
evaluation_llama/metrics.py), bench_peers.md (summary), bench_peers.png (speedup bars per task and method; in
--lengths mode a line plot). A --lengths run writes the same file names: give it its own --out to keep both. Both
tables come with a breakdown of SWIFT's time (prefill, optimize, draft, verify, plain decoding, other).
--variant LABEL=METHOD:FLAG=VALUE,... adds a row of one of our methods with other guard, draft or launch settings, run
in the same process beside the method itself and the same vanilla (e.g. swift-rest0=swift:draft-rest=0): an A/B of a
setting in one run. Its rows carry the label as their method and the settings under "variant".
--merge DIR... renders one table and plot from several earlier runs (e.g. tasks split over several runs); a run's rows
may also be gzipped (bench_peers.jsonl.gz), as the committed reference runs are.

Example (H100): python3 scripts/bench_peers.py --model-path models/llama-2-7b/hf --num-samples 50 --hf-compile
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import TASKS, default_data_dir, load_task  # noqa: E402
from evaluation_llama import metrics, paths  # noqa: E402
from evaluation_llama.flags import NONNEG_INT, POS_INT, WARMUP_MAX_NEW_TOKENS, task_list  # noqa: E402
from evaluation_llama.methods import (EarlyExit, EarlyExitRun, PromptLookup, Swift, SwiftRun, TaskRun,  # noqa: E402
                                      Vanilla, instance_seed)
from evaluation_llama.methods import RECORDED_BEFORE as SWIFT_RECORDED_BEFORE  # noqa: E402
from evaluation_llama.prompting import PromptTooLong, tokenize_prompt  # noqa: E402
from model.kernels import settings as kernel_settings  # noqa: E402
from model.backends import COMPILE, KERNELS, TAILS, Backends  # noqa: E402
from model.engine import Engine  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.generate import cache_capacity, cut_at_eos, sync  # noqa: E402
from model.loading import default_eos_ids, load_model, load_tokenizer, model_name, resolve_checkpoint  # noqa: E402
from model.sampling import SamplingConfig  # noqa: E402
from model.swift.config import MULTIROW_LAUNCHES, SwiftConfig  # noqa: E402

METHODS = ("vanilla", "pld", "early-exit", "swift", "swift-cached", "hybrid", "hf-generate", "hf-prompt-lookup",
           "hf-early-exit")
HF_METHODS = ("hf-generate", "hf-early-exit", "hf-prompt-lookup")
# settings of ours -> the methods they apply to: the guard of context drafts, the guard's verdict on a layer-skip
# draft, the layer-skip draft's LM head, the speed guard itself (--no-guard; guard=0 in a --variant), and how the
# verification and search graphs launch (multirow-launches=plain or dependent in a --variant), and how many
# layer-skip draft cycles are read with one sync (sync-cycles)
KNOBS = {"context_retry": ("pld", "hybrid"), "draft_rest": ("swift", "swift-cached", "hybrid", "early-exit"),
         "draft_vocab": ("swift", "swift-cached", "hybrid"),
         "guard": ("pld", "early-exit", "swift", "swift-cached", "hybrid"),
         "multirow_launches": ("pld", "early-exit", "swift", "swift-cached", "hybrid"),
         "sync_cycles": ("swift", "swift-cached", "early-exit")}
VARIANT_BASES = ("pld", "early-exit", "swift", "hybrid")  # methods of ours a --variant may change
LENGTH_METHODS = ("vanilla", "swift", "swift-cached")
PROMPT_LOOKUP_TOKENS = 10
GREEDY = SamplingConfig()


# ---------------------------------------------------------------------------------------------------------------------
# flags

def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return vals


def _peer_samples(text: str) -> dict[str, int]:
    """--peer-samples: N (every transformers method) or METHOD=N,... (those methods; the others run all instances)."""
    text = text.strip()
    if "=" not in text:
        return {m: POS_INT(text) for m in HF_METHODS}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        name = name.strip()
        if name not in HF_METHODS:
            raise argparse.ArgumentTypeError(f"--peer-samples: {name!r} is not a transformers method "
                                             f"({', '.join(HF_METHODS)})")
        out[name] = POS_INT(n.strip())
    return out


class Variant(NamedTuple):
    """--variant LABEL=METHOD:FLAG=VALUE,...: `method` of ours run again as `label` with `knobs` (SwiftConfig
    fields, from `KNOBS`) in place of the command line's."""

    label: str
    method: str
    knobs: tuple[tuple[str, int | bool | str], ...]

    def describe(self) -> str:
        return ", ".join(("--no-guard" if not v else "guard on") if k == "guard" else f"--{k.replace('_', '-')} {v}"
                         for k, v in self.knobs)


def _variant(text: str) -> Variant:
    label, eq, rest = text.partition("=")
    method, colon, flags = rest.partition(":")
    label, method = label.strip(), method.strip()
    if not eq or not colon or not flags.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=METHOD:FLAG=VALUE[,FLAG=VALUE...], got {text!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", label) or label in METHODS:
        raise argparse.ArgumentTypeError(f"variant label {label!r}: use lower-case letters, digits and '-', other "
                                         f"than a method's name")
    if method not in VARIANT_BASES:
        raise argparse.ArgumentTypeError(f"variant {label}: {method!r} is not one of {', '.join(VARIANT_BASES)}")
    knobs = {}
    for part in filter(None, (p.strip() for p in flags.split(","))):
        flag, _, value = part.partition("=")
        key = flag.strip().lstrip("-").replace("-", "_")
        if method not in KNOBS.get(key, ()):
            raise argparse.ArgumentTypeError(
                f"variant {label}: {method} has no setting {flag.strip()!r} here; it has "
                f"{', '.join(k.replace('_', '-') for k, ms in KNOBS.items() if method in ms)}")
        if key == "multirow_launches":
            if value.strip() not in MULTIROW_LAUNCHES:
                raise argparse.ArgumentTypeError(f"variant {label}: multirow-launches is plain or dependent, got "
                                                 f"{value.strip()!r}")
            knobs[key] = value.strip()
            continue
        knobs[key] = NONNEG_INT(value.strip())
        if key == "guard":
            knobs[key] = bool(knobs[key])
    return Variant(label, method, tuple(sorted(knobs.items())))


def _variants(args) -> dict[str, Variant]:
    return {v.label: v for v in getattr(args, "variant", None) or []}


def _base(args, method: str) -> str:
    """The method a row label runs: itself, or a --variant's METHOD."""
    v = _variants(args).get(method)
    return v.method if v else method


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench_peers.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=paths.DEFAULT_MODEL_PATH,
                    help="model folder (Hugging Face layout), .gguf file or hub id; both our engine and "
                         "`transformers` load it (default: %(default)s)")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the tasks' JSON Lines files (default: $SWIFT_DATA_DIR, else ../shared/data "
                         "beside the repository, else the Hugging Face hub)")
    ap.add_argument("--tasks", type=task_list, default="cnndm,gsm8k,tinystories,humaneval",
                    help=f"comma-separated tasks, from {', '.join(TASKS)} (default: %(default)s); "
                         f"--lengths uses the first one")
    ap.add_argument("--num-samples", type=POS_INT, default=50,
                    help="instances per task, drawn with --seed as the evaluation runners draw them "
                         "(default: %(default)s)")
    ap.add_argument("--instances", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                    metavar="ID1,ID2,...",
                    help="answer only these question ids among the drawn instances (e.g. answers a table singled "
                         "out), every method the same ones; an id that was not drawn is an error (default: all)")
    ap.add_argument("--max-new-tokens", type=POS_INT, default=512,
                    help="most new tokens per answer, the same for every method (default: %(default)s)")
    ap.add_argument("--max-prompt-tokens", type=POS_INT, default=None,
                    help="keep only the last N tokens of every prompt (the same ids go to every method); for quick "
                         "smoke runs on a CPU, where the few-shot prompts' prefill dominates; default: whole prompts")
    ap.add_argument("--chat-template", action="store_true",
                    help="wrap every prompt as one user turn in the tokenizer's chat template (instruction-tuned "
                         "models), as the evaluation runners' flag of that name does; default: plain prompts")
    ap.add_argument("--device", default="auto",
                    help="torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:<i> "
                         "(default: %(default)s)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                    help="weights and KV cache of both implementations; auto = bfloat16 on cuda, float32 on cpu "
                         "(default: %(default)s)")
    ap.add_argument("--kernels", default="auto", choices=KERNELS,
                    help="our engine's decode/draft/verify passes: the fused batch-invariant Triton kernels, PyTorch "
                         "ops (cuBLAS/SDPA), or auto = Triton on CUDA when its kernels pass their self-check, else "
                         "torch, as the evaluation runners' flag of that name (default: %(default)s)")
    ap.add_argument("--compile", default="auto", choices=COMPILE,
                    help="torch.compile of our engine's torch-path sub-layer functions (CUDA graphs are used on cuda "
                         "either way); auto = on for CUDA with the torch kernels (default: %(default)s)")
    ap.add_argument("--tails", default="auto", choices=TAILS,
                    help="the work around our SWIFT cycles' passes (draft top-k, tree, acceptance, commit): Triton "
                         "kernels, PyTorch ops, or auto = kernels with the Triton passes, as the evaluation runners' "
                         "flag of that name (default: %(default)s)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {', '.join(METHODS)} (default: all). vanilla is always run "
                         f"(it is the reference of the speedups and of the token comparison); swift-cached needs "
                         f"the swift pass to find its skip set, so swift is run too when swift-cached is asked")
    ap.add_argument("--hf-compile", action="store_true",
                    help="hf-generate: replace the model's forward with torch.compile(forward, "
                         "mode='reduce-overhead') and turn off transformers' own decode-step compilation "
                         "(disable_compile=True); when compiling fails the run goes on uncompiled and records a "
                         "note. The assisted methods always run the eager forward (their input lengths vary)")
    ap.add_argument("--early-exit-layer", type=POS_INT, default=None,
                    help="hf-early-exit: number of layers the draft runs before the LM head "
                         "(assistant_early_exit); default: half the model's layers")
    ap.add_argument("--context-retry", type=NONNEG_INT, default=None, metavar="N",
                    help="pld and hybrid: new tokens after which a stopped context source is tried again, doubling "
                         "after each further stop; 0 = a stop is final (default: the runners' default, "
                         f"{SwiftConfig().context_retry})")
    ap.add_argument("--draft-rest", type=NONNEG_INT, default=None, metavar="N",
                    help="swift, swift-cached, hybrid, early-exit: after an answer in which the guard stopped the "
                         "layer-skip draft, the task's next N answers start without it (the answers' draft_rested), "
                         "doubled for each further stop in a row up to 16 N; 0 = every answer tries it "
                         f"(default: the runners' default, {SwiftConfig().draft_rest})")
    ap.add_argument("--draft-vocab", type=NONNEG_INT, default=None, metavar="N",
                    help="swift, swift-cached, hybrid: keep only N token ids in the layer-skip draft's LM head "
                         "(verification keeps all); 0 = the whole vocabulary "
                         f"(default: the runners' default, {SwiftConfig().draft_vocab})")
    ap.add_argument("--multirow-launches", default=None, choices=MULTIROW_LAUNCHES,
                    help="our drafting methods: how the verification and layer-search graphs launch their kernels, "
                         "'plain' (each after the one before it) or 'dependent' (as plain decoding, SWIFT_PDL); "
                         f"the output is the same (default: the runners' default, {SwiftConfig().multirow_launches})")
    ap.add_argument("--sync-cycles", type=POS_INT, default=None, metavar="N",
                    help="swift, swift-cached, early-exit: once no search runs, up to N draft/verify cycles are "
                         "launched before one read of their results (1: a read after every cycle); the output is the "
                         f"same (default: the runners' default, {SwiftConfig().sync_cycles})")
    ap.add_argument("--no-guard", dest="guard", action="store_const", const=False, default=None,
                    help="our drafting methods never fall back to plain decoding (SwiftConfig guard off): for "
                         "checks that every method drafts, not for speed; a --variant sets it as guard=0")
    ap.add_argument("--variant", type=_variant, action="append", default=[], metavar="LABEL=METHOD:FLAG=VALUE,...",
                    help=f"also run METHOD (one of {', '.join(VARIANT_BASES)}) as a row named LABEL with these "
                         f"settings instead of the command line's, in the same run and against the same vanilla: an "
                         f"A/B of a setting (e.g. swift-rest0=swift:draft-rest=0, "
                         f"hybrid-r0=hybrid:context-retry=0,draft-rest=0); FLAG is one of "
                         f"{', '.join(k.replace('_', '-') for k in KNOBS)} (guard=0: --no-guard); repeat for more "
                         f"rows; "
                         f"METHOD runs too. Not in --lengths mode")
    ap.add_argument("--lengths", type=_int_list, default=None, metavar="L1,L2,...",
                    help="length mode: instead of the method comparison, run vanilla and SWIFT (swift-cached too "
                         "when selected) on the first task once per max-new-tokens value and report speedup and "
                         "optimization-time share vs length (e.g. 128,256,512,1024)")
    ap.add_argument("--warmup", type=NONNEG_INT, default=1,
                    help=f"untimed warm-up generations per method and task (prompts of the task in turn, at most "
                         f"{WARMUP_MAX_NEW_TOKENS} new tokens; SWIFT warms up with a throwaway layer search) "
                         f"(default: %(default)s)")
    ap.add_argument("--peer-samples", type=_peer_samples, default=None, metavar="N | METHOD=N,...",
                    help="time the transformers methods on the first N instances of each task only (the assisted "
                         "ones decode one to two orders of magnitude slower than ours), either all of them "
                         "(e.g. 5) or per method (e.g. hf-early-exit=1,hf-prompt-lookup=5: hf-generate then runs "
                         "every instance); speedups are computed on the instances both methods answered "
                         "(default: all instances)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="run nothing: merge the bench_peers.jsonl of earlier runs (e.g. the tasks split over "
                         "several runs) into one table and plot (bench_peers.md/.png in --out; the raw rows stay "
                         "in the parts' files); each part keeps its own command line")
    ap.add_argument("--out", default=str(paths.OUTPUTS / "bench_peers"),
                    help="folder for bench_peers.jsonl / .md / .png and the layer-config caches "
                         "(default: %(default)s)")
    ap.add_argument("--seed", type=NONNEG_INT, default=0,
                    help="seed of the instance sampling; torch.manual_seed(seed * 100003 + index) before each "
                         "generation, as the evaluation runners do (evaluation_llama.methods.instance_seed) "
                         "(default: %(default)s)")
    return ap


# ---------------------------------------------------------------------------------------------------------------------
# helpers

def _record(task: str, qid: str, tokens: list[int], wall: float, accept_lengths=None, num_drafted=None) -> dict:
    """An answer record in the format evaluation_llama/metrics.py reads (so its metric definitions apply)."""
    choice = {"index": 0, "new_tokens": [len(tokens)], "wall_time": [wall]}
    if accept_lengths is not None:
        choice["accept_lengths"] = list(accept_lengths)
        choice["num_drafted"] = [num_drafted or 0]
    return {"question_id": str(qid), "task": task, "choices": [choice], "token_ids": [list(tokens)]}


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _fmt(x, spec=".2f", suffix=""):
    return "" if x is None else f"{x:{spec}}{suffix}"


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-call advice (e.g. its own deprecation notes inside assisted generation)."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


class Bench:
    """Holds the model(s), the prompts and the rows; one method runner per benchmarked method."""

    def __init__(self, args, argv: Sequence[str]):
        self.a = args
        self.notes: list[str] = []
        want = args.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(want)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            sys.exit("error: --device cuda, but torch sees no CUDA GPU")
        name = args.dtype if args.dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")
        self.dtype_name, self.dtype = name, getattr(torch, name)
        import transformers
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.env = dict(gpu=gpu or "none (cpu)", device=str(self.device), torch=torch.__version__,
                        transformers=transformers.__version__, python=platform.python_version(),
                        kernel_settings=kernel_settings(), dtype=name, model=args.model_path,
                        command=" ".join(["scripts/bench_peers.py", *argv]))
        self.load_path = paths.resolve_model_path(args.model_path)[1]
        self.model_id = model_name(args.model_path)
        self.tok = load_tokenizer(self.load_path)
        self.model, self.margs = load_model(self.load_path, device=self.device, dtype=self.dtype)
        self.eos_ids = default_eos_ids(self.margs, self.tok)
        pad = getattr(self.tok, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.swift_cfg = SwiftConfig()
        self.hf = None
        self.hf_forward = self.hf_compiled = None
        self.engine: Optional[Engine] = None

    # ---- data ------------------------------------------------------------------------------------------------------
    def prompts(self, task: str, max_new: int) -> list[tuple[int, str, list[int]]]:
        a = self.a
        td = load_task(task, a.data_dir, a.num_samples, a.seed)
        if td.note:
            self.notes.append(f"{task}: {td.note}")
        out, cut = [], 0
        for index, inst in enumerate(td.instances):
            try:
                ids = tokenize_prompt(inst, self.tok, self.margs, max_new_tokens=max_new, chat_template=a.chat_template,
                                      keep_last=a.max_prompt_tokens, model_path=a.model_path, task=task)
            except PromptTooLong as exc:
                self.notes.append(f"{task} question {inst.question_id}: prompt of {exc.prompt_tokens} tokens + "
                                  f"{max_new} new tokens exceeds the context of {exc.limit}; instance left out")
                continue
            cut += bool(a.max_prompt_tokens) and len(ids) == a.max_prompt_tokens
            out.append((index, inst.question_id, ids))
        if cut:
            self.notes.append(f"{task}: {cut} of {len(td.instances)} prompts cut to their last "
                              f"{a.max_prompt_tokens} tokens (--max-prompt-tokens)")
        if a.instances:
            missing = sorted(set(a.instances) - {qid for _, qid, _ in out})
            if missing:
                sys.exit(f"error: --instances {','.join(missing)} not among the {len(out)} instances of {task} drawn "
                         f"with --num-samples {a.num_samples} --seed {a.seed}")
            out = [p for p in out if p[1] in set(a.instances)]
        if not out:
            sys.exit(f"error: no instance of {task} fits the model's context with {max_new} new tokens")
        return out

    def make_engine(self, longest_prompt: int, max_new: int) -> None:
        """One engine for every method of ours (each method's untimed warm-up captures its graphs)."""
        self.capacity = cache_capacity(longest_prompt, max_new)
        self.engine = Engine(self.model, self.capacity, backends=Backends(kernels=self.a.kernels,
                                                                          compile=self.a.compile,
                                                                          tails=self.a.tails))
        self.env["our_compile"] = self.engine.backends.use_compile
        self.env["our_backends"] = self.engine.backends.to_dict()

    def task_run(self, task: str) -> TaskRun:
        return TaskRun(self.model_id, task, self.margs, GREEDY, tuple(self.eos_ids), note=self.notes.append)

    # ---- transformers ----------------------------------------------------------------------------------------------
    def load_hf(self):
        if self.hf is not None:
            return self.hf
        from transformers import AutoModelForCausalLM
        folder, gguf = resolve_checkpoint(self.load_path)
        kw = {"gguf_file": gguf} if gguf else {}
        with _quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=self.dtype, **kw)
        hf = hf.to(self.device).eval().requires_grad_(False)
        gc = hf.generation_config  # force the stopping rule and greedy decoding on the model's defaults too
        gc.eos_token_id = list(self.eos_ids) if self.eos_ids else None
        gc.pad_token_id = self.pad_id
        gc.do_sample = False
        for k in ("temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty"):
            if hasattr(gc, k):
                setattr(gc, k, None)
        self.hf, self.hf_forward = hf, hf.forward
        return hf

    def hf_call(self, ids: list[int], max_new: int, extra: dict) -> tuple[list[int], float]:
        hf = self.hf
        kw = dict(do_sample=False, num_beams=1, max_new_tokens=max_new,
                  eos_token_id=list(self.eos_ids) if self.eos_ids else None, pad_token_id=self.pad_id)
        with _quiet_transformers(), torch.inference_mode():
            sync(self.device)
            t0 = time.perf_counter()
            inp = torch.tensor([ids], dtype=torch.long, device=self.device)
            out = hf.generate(inp, attention_mask=torch.ones_like(inp), **kw, **extra)
            sync(self.device)
            wall = time.perf_counter() - t0
        tokens = cut_at_eos(out[0, len(ids):].tolist(), set(self.eos_ids), max_new)
        return tokens, wall

    def set_hf_forward(self, compiled: bool) -> None:
        if compiled:
            if self.hf_compiled is None:
                self.hf_compiled = torch.compile(self.hf_forward, mode="reduce-overhead")
            self.hf.forward = self.hf_compiled
        elif "forward" in self.hf.__dict__:
            del self.hf.forward

    # ---- method runners ----------------------------------------------------------------------------------------
    def run_method(self, method: str, task: str, prompts, max_new: int, mode: str, state: dict) -> list[dict]:
        """Warm up, then time every prompt; returns the rows (one per instance, or one 'skipped' row).

        A method may offer several settings, best first (hf-generate: compiled + static cache, static cache,
        dynamic cache); a setting that fails in its warm-up or on its first timed prompt is recorded and the next one
        is tried."""
        a = self.a
        variants, skip_note = self._runner(method, task, max_new, state)
        if not variants:
            self.notes.append(f"{task} {method}: {skip_note}")
            return [self._skip_row(method, task, max_new, mode, skip_note)]
        failures = []
        for variant in variants:
            rows = []
            try:
                variant["setup"]()
                variant["warm_up"]([prompts[w % len(prompts)][2] for w in range(a.warmup)], max_new,
                                   [ids for _, _, ids in prompts])
                for k, (index, qid, ids) in enumerate(prompts):
                    variant["start"](k == 0)
                    torch.manual_seed(instance_seed(a.seed, index))
                    try:
                        res = variant["gen"](ids, max_new)
                    except Exception as exc:  # noqa: BLE001
                        if not rows or method not in HF_METHODS:
                            raise
                        self.notes.append(f"{task} {method}: failed on question {qid} ({_err(exc)}); its remaining "
                                          f"instances are left out")
                        break
                    rows.append(self._row(method, task, qid, index, ids, max_new, mode, res, variant["desc"]))
            except Exception as exc:  # noqa: BLE001 - an unsupported setting is recorded, not fatal
                if method not in HF_METHODS:
                    raise
                failures.append(f"{variant['desc']} failed ({_err(exc)})")
                continue
            if failures:
                self.notes.append(f"{task} {method}: {'; '.join(failures)}; ran with: {variant['desc']}")
            variant["finish"](rows)
            return rows
        note = "skipped: " + "; ".join(failures)
        self.notes.append(f"{task} {method}: {note}")
        return [self._skip_row(method, task, max_new, mode, note)]

    def _ours(self, desc: str, m) -> dict:
        """A setting that drives one of our methods (evaluation_llama.methods) as the evaluation runner does."""
        def gen(ids, n):
            r = m.generate(ids, n)
            return dict(tokens=list(r.tokens), wall=r.wall_time_s, accept=list(r.accept_lengths),
                        drafted=r.num_drafted, stats=m.answer_stats(r))

        def finish(rows):
            m.end_task()  # SWIFT: writes its layer-config cache
            if getattr(m, "search", None) is not None:
                sm = m.search.summary()
                for r in rows:
                    r["search_after_task"] = sm
        return dict(desc=desc, gen=gen, warm_up=lambda prompts, n, timed: m.warm_up(self.engine, prompts, n, timed),
                    start=m.start_instance, finish=finish, setup=lambda: None)

    def _runner(self, method: str, task: str, max_new: int, state: dict):
        """(settings to try, best first; note when there is none). A setting is dict(desc, setup, warm_up, start,
        gen, finish) with gen(ids, max_new) -> dict(tokens, wall, accept, drafted, stats)."""
        run = self.task_run(task)
        base, knobs = self.base(method), self.knobs(method)
        variant = self.variants().get(method)
        tag = f" [{method}: {variant.describe()}]" if variant else ""
        # a variant keeps its own layer-config cache beside its method's
        cache = f"{'' if variant is None else method + '_'}{task}{state.get('suffix', '')}.json"
        if base == "vanilla":
            return [self._ours("our vanilla decoding", Vanilla(None, run))], ""
        if base == "swift":
            path = Path(self.a.out) / f"layer_config_{cache}"
            m = Swift(SwiftRun(SwiftConfig(**knobs), layer_cache=str(path)), run)
            if variant is None:
                state["swift"] = m
            return [self._ours("SWIFT, on-the-fly layer search carried across the task's instances" + tag, m)], ""
        if base == "swift-cached":
            config, desc = self._cached(state.get("swift"))
            return [self._ours(desc, Swift(config, run))], ""
        if base == "hybrid":
            path = Path(self.a.out) / f"layer_config_hybrid_{cache}"
            m = Swift(SwiftRun(SwiftConfig(context_drafts=True, **knobs), layer_cache=str(path)), run)
            return [self._ours("hybrid SWIFT: layer-skip draft chain + prompt-lookup branch in one tree" + tag, m)], ""
        if base == "pld":
            cfg = SwiftConfig(context_drafts=True, max_draft_len=10, max_tree_nodes=16, **knobs)
            return [self._ours("prompt lookup on our engine (n-grams of prompt + output, 10 tokens)" + tag,
                               PromptLookup(cfg, run))], ""
        if base == "early-exit":
            n = self.early_exit_layer()
            return [self._ours(f"early exit on our engine: the first {n} of {self.margs.n_layers} layers draft" + tag,
                               EarlyExit(EarlyExitRun(SwiftConfig(**knobs), n), run))], ""

        # transformers methods
        try:
            self.load_hf()
        except Exception as exc:  # noqa: BLE001
            return [], f"skipped: transformers could not load the model ({_err(exc)})"

        def hf_gen(extra):
            def run(ids, n):
                tokens, wall = self.hf_call(ids, n, extra)
                return dict(tokens=tokens, wall=wall, accept=None, drafted=None, stats=None)
            return run

        def setting(desc, gen, setup):
            def warm_up(prompts, n, timed):
                for ids in prompts:
                    gen(ids, min(n, WARMUP_MAX_NEW_TOKENS))
            return dict(desc=desc, gen=gen, warm_up=warm_up, setup=setup, start=lambda first: None,
                        finish=lambda rows: None)

        eager = lambda: self.set_hf_forward(False)  # noqa: E731
        if method == "hf-generate":
            static = dict(cache_implementation="static", max_cache_len=self.capacity)
            auto = " (transformers compiles the decode steps itself on cuda)" if self.device.type == "cuda" else ""
            out = []
            if self.a.hf_compile:
                out.append(setting("static cache + torch.compile(forward, mode='reduce-overhead')",
                                   hf_gen({**static, "disable_compile": True}),
                                   setup=lambda: self.set_hf_forward(True)))
            out.append(setting("static cache" + auto, hf_gen(static), setup=eager))
            out.append(setting("dynamic cache (default)", hf_gen({}), setup=eager))
            return out, ""
        assisted = "(dynamic cache and eager forward: transformers' assisted generation refuses static caches)"
        if method == "hf-early-exit":
            n = self.early_exit_layer()
            return [setting(f"assistant_early_exit={n} of {self.margs.n_layers} layers {assisted}",
                            hf_gen({"assistant_early_exit": n}), setup=eager)], ""
        if method == "hf-prompt-lookup":
            return [setting(f"prompt_lookup_num_tokens={PROMPT_LOOKUP_TOKENS} {assisted}",
                            hf_gen({"prompt_lookup_num_tokens": PROMPT_LOOKUP_TOKENS}), setup=eager)], ""
        raise ValueError(method)

    def variants(self) -> dict[str, Variant]:
        return _variants(self.a)

    def base(self, method: str) -> str:
        return _base(self.a, method)

    def knobs(self, method: str) -> dict:
        """The settings given on the command line that apply to `method` (`KNOBS`), as SwiftConfig fields; for a
        --variant label, its METHOD's with the variant's own in their place."""
        base = _base(self.a, method)
        out = {f: getattr(self.a, f) for f, methods in KNOBS.items()
               if base in methods and getattr(self.a, f, None) is not None}
        return out | dict(_variants(self.a)[method].knobs) if base != method else out

    def early_exit_layer(self) -> int:
        n = self.a.early_exit_layer or max(1, self.margs.n_layers // 2)
        return min(n, self.margs.n_layers)

    def _cached(self, swift) -> tuple[SwiftRun, str]:
        """swift-cached's configuration: the layer-config cache the task's swift pass wrote, read back with
        --cache-hit; when that search found no set, a fixed empty one (plain decoding)."""
        cfg = SwiftConfig(**self.knobs("swift-cached"))
        saved = swift.keeper.saved_to if swift is not None and swift.keeper is not None else None
        if saved is None:
            return SwiftRun(cfg, skip={}), ("SWIFT with a fixed skip set: the search found none (answers too short "
                                            "for it), so this pass decodes plainly")
        sm = swift.search.summary()
        return SwiftRun(cfg, layer_cache=str(saved), cache_hit=True), (
            f"SWIFT with the cached skip set of the swift pass ({sm['n_skipped']} of {sm['search_dims']} sub-layers "
            f"skipped, matchness {sm['best_score']:.3f}; {Path(saved).name})")

    # ---- rows ------------------------------------------------------------------------------------------------------
    def _base_row(self, method, task, max_new, mode):
        row = dict(self.env, mode=mode, task=task, method=method, max_new_tokens=max_new)
        v = self.variants().get(method)
        if v is not None:  # the settings it ran with in place of the command line's (the env's)
            row["variant"] = dict(v.knobs, of=v.method)
        return row

    def _skip_row(self, method, task, max_new, mode, note):
        return dict(self._base_row(method, task, max_new, mode), skipped=True, note=note)

    def _row(self, method, task, qid, index, ids, max_new, mode, res, note):
        row = self._base_row(method, task, max_new, mode)
        row.update(_record(task, qid, res["tokens"], res["wall"], res["accept"], res["drafted"]))
        row.update(index=index, prompt_tokens=len(ids), new_tokens=len(res["tokens"]), wall_time_s=res["wall"],
                   tokens_per_s=len(res["tokens"]) / res["wall"] if res["wall"] > 0 else None, note=note)
        if res["accept"] is not None:
            row["mean_accept_length"] = metrics.mean_accept_length([row])
            row["num_drafted"] = res["drafted"]
        st = res["stats"] or {}
        if st.get("times") is not None:
            row["times"] = st["times"]
            row["final_skip"] = st.get("final_skip")
            row["fallback_at"] = st.get("fallback_at")
            row["draft_rested"] = st.get("draft_rested")  # fallback_at 0: the guard's verdict from earlier answers
        return row


# ---------------------------------------------------------------------------------------------------------------------
# summaries

def _paired_speedup(done: list[dict], base: list[dict]) -> Optional[float]:
    """Speedup over `base` on the instances both answered (peers may run on the first --peer-samples only)."""
    common = {r["question_id"] for r in done} & {r["question_id"] for r in base}
    if not common:
        return None
    return metrics.speedup([r for r in done if r["question_id"] in common],
                           [r for r in base if r["question_id"] in common])


def method_order(methods) -> list[str]:
    """`METHODS` order, then any --variant labels in the order given."""
    return [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]


def summarize(rows: list[dict], key: str) -> list[dict]:
    """One summary per (group, method): key is 'task' (comparison mode) or 'max_new_tokens' (length mode)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], {}).setdefault(r["method"], []).append(r)
    out = []
    for g, by_method in groups.items():
        base = [r for r in by_method.get("vanilla", []) if not r.get("skipped")]
        hfg = [r for r in by_method.get("hf-generate", []) if not r.get("skipped")]
        for method in method_order(by_method):
            rs = by_method.get(method)
            if not rs:
                continue
            done = [r for r in rs if not r.get("skipped")]
            s = dict(group=g, method=method, n=len(done), note=rs[0].get("note") or "")
            if done:
                s["tokens_per_s"] = metrics.mean_tokens_per_second(done)
                s["speedup_vs_vanilla"] = _paired_speedup(done, base)
                s["speedup_vs_hf_generate"] = _paired_speedup(done, hfg)
                s["mean_accept_length"] = metrics.mean_accept_length(done)
                s["same_as_vanilla"] = metrics.identical_fraction(done, base) if base else None
                times = [r["times"] for r in done if r.get("times")]
                if times:
                    wall = sum(metrics.wall_time(r) for r in done)
                    s["optimize_share"] = sum(t.get("optimize", 0.0) for t in times) / wall if wall > 0 else None
            out.append(s)
    return out


EARLY_EXIT_NOTE = ("hf-early-exit drafts with the first layers and the LM head of the unmodified model (transformers' "
                   "LayerSkip-style self-speculation); it pays off only for checkpoints trained for early exit, which "
                   "this comparison does not assume.")
TIME_PARTS = ("prefill", "optimize", "draft", "verify", "plain")


def time_breakdown(rows: list[dict], key: str) -> list[str]:
    """Where SWIFT's generation time goes, per group and SWIFT method: shares of the summed wall time spent in the
    prompt prefill, the layer search (optimize), drafting, verifying, plain decoding (the speed guard's fallback and
    the probe before the first search) and the rest (Python bookkeeping between the timed parts)."""
    agg: dict = {}
    for r in rows:
        if r.get("skipped") or not r.get("times"):
            continue
        a = agg.setdefault((r[key], r["method"]), dict.fromkeys(TIME_PARTS + ("wall",), 0.0))
        for part in TIME_PARTS:
            a[part] += r["times"].get(part, 0.0)
        a["wall"] += metrics.wall_time(r)
    if not agg:
        return []
    lines = [f"| {'max new tokens' if key == 'max_new_tokens' else key} | method | "
             + " | ".join(TIME_PARTS) + " | other | wall (s) |", "|---|---|" + "---:|" * (len(TIME_PARTS) + 2)]
    for (g, m), a in agg.items():
        wall = a["wall"] or float("nan")
        other = wall - sum(a[p] for p in TIME_PARTS)
        lines.append(f"| {g} | {m} | " + " | ".join(f"{a[p] / wall:.1%}" for p in TIME_PARTS)
                     + f" | {other / wall:.1%} | {a['wall']:.2f} |")
    return lines


# what rows made before a setting existed ran with (the SWIFT settings as the runners' records read them back)
RECORDED_BEFORE = {"guard": True, **SWIFT_RECORDED_BEFORE}


def _knob(row: dict, key: str):
    """A setting as a row records it (none recorded: the earlier code's, `RECORDED_BEFORE` or 0); --draft-rest with
    whether its rest doubles after each further stop (rows from before the doubling have no `draft_rest_doubles`)."""
    value = row.get(key, RECORDED_BEFORE.get(key, 0))
    value = bool(value) if key == "guard" else value
    return (value, bool(row.get("draft_rest_doubles"))) if key == "draft_rest" else value


def merge(dirs: Sequence[str], out: Path) -> int:
    """Merge earlier runs' rows (same mode, same GPU/model/versions) into one bench_peers.{md,png} in `out`."""
    rows: list[dict] = []
    for d in dirs:
        f = Path(d) / "bench_peers.jsonl"
        if not f.is_file() and f.with_suffix(".jsonl.gz").is_file():  # committed reference rows are compressed
            f = f.with_suffix(".jsonl.gz")
        if not f.is_file():
            raise SystemExit(f"--merge: {f} not found")
        text = gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text()
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    if not rows:
        raise SystemExit("--merge: no rows")
    modes = {r.get("mode") for r in rows}
    if len(modes) != 1:
        raise SystemExit(f"--merge: the runs mix modes {sorted(map(str, modes))}")
    length_mode = modes == {"lengths"}
    key = "max_new_tokens" if length_mode else "task"
    seen = set()
    for r in rows:
        ident = (r[key], r["method"], r["question_id"])
        if ident in seen:
            raise SystemExit(f"--merge: {ident} appears in more than one run")
        seen.add(ident)
    out.mkdir(parents=True, exist_ok=True)  # the raw rows stay in the parts' jsonl files
    env_keys = ("gpu", "torch", "transformers", "dtype", "model", "our_compile", "kernel_settings")
    envs = {tuple(str(r.get(k, {} if k == "kernel_settings" else None)) for k in env_keys) for r in rows}
    if len(envs) != 1:
        raise SystemExit(f"--merge: the runs differ in {env_keys}: {sorted(envs)}")
    for key, methods_of in KNOBS.items():
        values = {_knob(r, key) for r in rows if r["method"] in methods_of}  # none recorded: the earlier code's
        if len(values) > 1:
            raise SystemExit(f"--merge: the runs' {', '.join(methods_of)} rows differ in --{key.replace('_', '-')}: "
                             f"{sorted(values, key=str)}")
    variants: dict = {}
    for r in rows:  # a variant label means the same settings in every run
        if "variant" in r:
            v = dict(r["variant"])
            of = v.pop("of")
            settings = {k: v[k] if k in v else _knob(r, k) for k, ms in KNOBS.items() if of in ms}
            variants.setdefault(r["method"], set()).add(json.dumps([of, settings], sort_keys=True, default=str))
    for label, found in variants.items():
        if len(found) > 1:
            raise SystemExit(f"--merge: the runs' {label} rows ran with different settings: {sorted(found)}")
    r0 = rows[0]
    merged = f" (merged from {len(dirs)} runs)" if len(dirs) > 1 else ""
    lines = [f"# Peer benchmark{' vs generation length' if length_mode else ''}{merged}", "",
             f"GPU: {r0['gpu']}; torch {r0['torch']}; transformers {r0['transformers']}; dtype {r0['dtype']}; "
             f"batch 1; greedy; model `{r0['model']}`; our engine compiled: {r0['our_compile']}. Each part ran in one "
             f"process (all methods of a task side by side); the parts ran one after another on the same machine.",
             "", "Commands:", ""]
    lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    lines += [f"- `scripts/bench_peers.py --merge {' '.join(dirs)} --out {out}`", ""]
    write_report(lines, rows, [], out, length_mode)
    return 0


def write_report(head: list[str], rows: list[dict], notes: list[str], out: Path, length_mode: bool) -> None:
    """bench_peers.md (head, summary table, SWIFT's time breakdown, notes) and bench_peers.png in `out`."""
    key = "max_new_tokens" if length_mode else "task"
    summary = summarize(rows, key)
    lines = head + table(summary, "max new tokens" if length_mode else "task")
    breakdown = time_breakdown(rows, key)
    if breakdown:
        lines += ["", "Where SWIFT's time goes (shares of its summed generation time):", ""] + breakdown
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    if any(r["method"] == "hf-early-exit" for r in rows):
        lines += ["", EARLY_EXIT_NOTE]
    (out / "bench_peers.md").write_text("\n".join(lines) + "\n")
    r0 = rows[0] if rows else {"model": "?", "gpu": "?", "dtype": "?", "max_new_tokens": "?", "task": "?"}
    title = (f"{r0['model']} on {r0['gpu']} ({r0['dtype']}), max new tokens {r0['max_new_tokens']}"
             if not length_mode else f"{r0['model']} on {r0['task']}, {r0['gpu']} ({r0['dtype']})")
    try:
        plot(summary, out / "bench_peers.png", length_mode, title)
    except Exception as exc:  # noqa: BLE001 - the numbers are written already; a plot failure is only reported
        print(f"warning: could not draw the plot ({type(exc).__name__}: {exc})", file=sys.stderr)
    print("\n".join(lines), flush=True)


def table(summary: list[dict], key_title: str) -> list[str]:
    lines = [f"| {key_title} | method | answers | tokens/s | speedup vs vanilla | speedup vs hf-generate | "
             f"mean accepted tokens | same tokens as vanilla | optimization time share | setting / note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summary:
        lines.append(f"| {s['group']} | {s['method']} | {s['n']} | {_fmt(s.get('tokens_per_s'), '.1f')} | "
                     f"{_fmt(s.get('speedup_vs_vanilla'), '.2f', 'x')} | "
                     f"{_fmt(s.get('speedup_vs_hf_generate'), '.2f', 'x')} | "
                     f"{_fmt(s.get('mean_accept_length'), '.2f')} | {_fmt(s.get('same_as_vanilla'), '.0%')} | "
                     f"{_fmt(s.get('optimize_share'), '.1%')} | {s['note']} |")
    return lines


def plot(summary: list[dict], path: Path, length_mode: bool, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not length_mode:
        groups = list(dict.fromkeys(s["group"] for s in summary))
        methods = [m for m in method_order(dict.fromkeys(s["method"] for s in summary)) if m != "vanilla"]
        fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups) + 2), 4.5))
        width = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            vals = []
            for g in groups:
                s = next((x for x in summary if x["group"] == g and x["method"] == m), None)
                vals.append((s or {}).get("speedup_vs_vanilla") or 0.0)
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
            bars = ax.bar(xs, vals, width, label=m)
            ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in vals], fontsize=7, padding=1)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("speedup over our vanilla decoding")
        if methods:  # (a run of vanilla alone has no bars)
            ax.legend(fontsize=8, ncol=min(len(methods), 3))
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for m in ("swift", "swift-cached"):
            pts = sorted((s["group"], s.get("speedup_vs_vanilla")) for s in summary if s["method"] == m
                         and s.get("speedup_vs_vanilla") is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{m} speedup")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max new tokens")
        ax.set_ylabel("speedup over our vanilla decoding")
        opt = sorted((s["group"], s["optimize_share"]) for s in summary if s["method"] == "swift"
                     and s.get("optimize_share") is not None)
        if opt:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in opt], [100 * p[1] for p in opt], marker="s", ls=":", color="tab:red",
                     label="swift optimization time share (%)")
            ax2.set_ylabel("optimization time share (%)")
            ax2.legend(loc="lower right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# entry point

def _peer_note(peer_samples: Optional[dict]) -> str:
    if not peer_samples:
        return ""
    return "; " + ", ".join(f"{m} on the first {n}" for m, n in peer_samples.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, Path(a.out))
    tasks = a.tasks
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    methods = set(methods) | {"vanilla"} | ({"swift"} if "swift-cached" in methods else set())
    labels = [v.label for v in a.variant]
    if len(set(labels)) < len(labels):
        ap.error(f"--variant: a label given twice ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))})")
    if a.variant and a.lengths is not None:
        ap.error("--variant rows are not run in --lengths mode")
    methods |= {v.method for v in a.variant}
    try:
        Backends(kernels=a.kernels, compile=a.compile, tails=a.tails)
    except UserError as e:
        ap.error(str(e))
    if a.data_dir is None:
        a.data_dir = default_data_dir()
    length_mode = a.lengths is not None
    if length_mode:
        dropped = sorted(methods - set(LENGTH_METHODS), key=lambda m: (m not in HF_METHODS, m))
        methods &= set(LENGTH_METHODS)
        tasks = tasks[:1]
    order = [m for m in METHODS if m in methods] + labels
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    b = Bench(a, argv)
    if length_mode and dropped:
        b.notes.append(f"length mode runs {', '.join(order)} only; not run: {', '.join(dropped)}")
    print(json.dumps(b.env), flush=True)
    max_news = a.lengths if length_mode else [a.max_new_tokens]
    top_new = max(max_news)
    prompts = {t: b.prompts(t, top_new) for t in tasks}
    b.make_engine(max(len(p[2]) for ps in prompts.values() for p in ps), top_new)
    b.env["max_new_tokens"] = a.lengths if length_mode else a.max_new_tokens
    b.env["eos_ids"] = list(b.eos_ids)
    if "hf-early-exit" in methods:
        b.env["early_exit_layer"] = b.early_exit_layer()
    for key, methods_of in KNOBS.items():  # recorded with the rows of the methods they apply to
        if set(methods_of) & set(methods):
            b.env[key] = getattr(a, key) if getattr(a, key) is not None else getattr(SwiftConfig(), key)
    if "draft_rest" in b.env:
        b.env["draft_rest_doubles"] = True  # (the rest doubles after each further stop: see _knob)

    rows: list[dict] = []
    t_start = time.perf_counter()
    raw = open(out / "bench_peers.jsonl", "w")  # rows land as each (task, method) finishes: a crash loses no block
    for task in tasks:
        for max_new in max_news:
            state: dict = {"suffix": f"_len{max_new}" if length_mode else ""}
            for method in order:
                t0 = time.perf_counter()
                task_prompts = prompts[task]
                if a.peer_samples and method in a.peer_samples:
                    task_prompts = task_prompts[:a.peer_samples[method]]
                got = b.run_method(method, task, task_prompts, max_new, "lengths" if length_mode else "methods",
                                   state)
                rows.extend(got)
                if method != "vanilla":
                    ref = {r["question_id"]: r["token_ids"] for r in rows if r["method"] == "vanilla"
                           and r["task"] == task and r["max_new_tokens"] == max_new and not r.get("skipped")}
                    for r in got:
                        if not r.get("skipped") and r["question_id"] in ref:
                            r["same_as_vanilla"] = r["token_ids"] == ref[r["question_id"]]
                for r in got:
                    raw.write(json.dumps(r) + "\n")
                raw.flush()
                done = [r for r in got if not r.get("skipped")]
                tps = metrics.mean_tokens_per_second(done) if done else None
                print(f"[{time.perf_counter() - t_start:7.1f} s] {task} max_new={max_new} {method}: "
                      f"{len(done)} answers, {_fmt(tps, '.1f')} tok/s ({time.perf_counter() - t0:.1f} s incl. "
                      f"warm-up)", flush=True)

    raw.close()
    env = b.env
    head = [f"# Peer benchmark{' vs generation length' if length_mode else ''}", "",
            f"GPU: {env['gpu']}; torch {env['torch']}; transformers {env['transformers']}; dtype {env['dtype']}; "
            f"batch 1; greedy; model `{env['model']}`; tasks {', '.join(tasks)}; "
            f"{'instances ' + ','.join(a.instances) + ' of ' if a.instances else ''}{a.num_samples} instances per task "
            f"(seed {a.seed}{_peer_note(a.peer_samples)}); max new tokens {env['max_new_tokens']}; EOS ids {env['eos_ids']}; warm-up "
            f"{a.warmup} per method and task; our engine compiled: {env['our_compile']}.", "",
            f"Command: `{env['command']}`", "",
            "tokens/s = mean over answers of the answer's tokens / seconds; speedup = ratio of those means on "
            "the instances both methods answered "
            "(evaluation_llama/metrics.py); mean accepted tokens = tokens committed per decoding step, bonus token "
            "included (blank: transformers does not report it); same tokens = share of answers whose tokens (up to "
            "the first EOS) equal vanilla's; optimization time share = the layer search's share of SWIFT's "
            "generation time.", ""]
    write_report(head, rows, b.notes, out, length_mode)
    print(f"\nwrote {out / 'bench_peers.jsonl'}, {out / 'bench_peers.md'}, {out / 'bench_peers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
