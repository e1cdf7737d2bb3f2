"""Shared logic of the evaluation runners (`inference_swift.py`, `inference_baseline.py`).

One run = one method (``swift`` or ``vanilla``) on one task: load the task's instances, the model and
its tokenizer, then generate an answer per instance and append it to a JSON Lines answer file (format
in `evaluation_llama/answers.py`). Everything a long unattended evaluation needs is here:

* validation of every flag before anything heavy is loaded, with one-paragraph errors (`UserError`);
* resumable answer files: answers already in the file are skipped, each new answer is flushed and
  fsynced as soon as it is done, and a file made with another configuration is refused unless
  ``--overwrite``; two runs on one answer file at the same time are refused (advisory lock);
* SIGINT/SIGTERM end the run cleanly (exit 130) without ever leaving half an answer in the file;
* deterministic generation: ``torch.manual_seed(seed * 100003 + index)`` before each instance, where
  ``index`` is the instance's position in the task's list (independent of sharding);
* warm-up generations before timing (SWIFT warms up with a throwaway layer search);
* data parallelism: ``--num-gpus N`` (or ``--num-shards N``) starts one process per GPU (or N CPU
  processes); process i answers the instances k with k % N == i into ``<answer>.shard<i>.jsonl``;
  the parent then merges them into the answer file;
* model parallelism for a model too large for one GPU: ``--layer-devices cuda:0,cuda:1`` splits the
  layers (and their KV cache) into contiguous chunks over those devices (model/placement.py; eager, no
  CUDA graphs); it cannot be combined with data parallelism;
* CUDA out-of-memory turned into a message with the memory the weights and the KV cache need.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from data import TASKS, TaskData, format_prompt, load_task
from evaluation_llama import metrics
from evaluation_llama.answers import (AnswerWriter, config_hash, file_config, merge_answer_files,
                                      read_answer_file)
from model.errors import UserError
from model.swift.config import SwiftConfig

# torch and the model code are imported only once the flags and the data have been checked, so
# that a typo is reported in a fraction of a second instead of after a two-second torch import.

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_PATH = "models/smollm2-135m/hf"
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DTYPES = ("float32", "bfloat16", "float16")
METHODS = ("swift", "vanilla")
SEED_STRIDE = 100003
WARMUP_MAX_NEW_TOKENS = 32
SHARD_RE = re.compile(r"\.shard(\d+)$")

# SWIFT flags -> SwiftConfig fields (one to one)
SWIFT_FLAGS = {
    "skip_ratio": "skip_ratio",
    "context_window": "context_window",
    "bayes_interval": "bayes_interval",
    "max_opt_iter": "max_opt_iter",
    "max_tolerance_iter": "max_tolerance_iter",
    "max_score": "max_score",
    "num_candidates": "num_candidates",
    "draft_stop_threshold": "draft_stop_threshold",
    "draft_stop": "draft_stop",
    "max_draft_len": "max_draft_len",
    "max_tree_nodes": "max_tree_nodes",
    "guard_margin": "guard_margin",
}


# ----------------------------------------------------------------------------------------------
# argument parsing


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless it already names its default or has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS
        if "default" not in text and not hidden and action.option_strings:
            text += f" (default: {action.default})"
        return text


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are UserErrors (one paragraph, exit 2 through run_cli)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message}. Run with --help for the list of flags and their meaning.")


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
    """argparse type: a number of type ``kind`` within [lo, hi] (open ends where asked)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        bad = ((lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if bad:
            left = "" if lo is None else ("(" if lo_open else "[") + f"{lo}"
            right = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
            if lo is not None and hi is None:
                rng = f"> {lo}" if lo_open else f">= {lo}"
            elif lo is None:
                rng = f"< {hi}" if hi_open else f"<= {hi}"
            else:
                rng = f"in {left}, {right}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


POS_INT = _number(int, 1, what="a positive whole number")
NONNEG_INT = _number(int, 0, what="a whole number >= 0")

_SWIFT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SwiftConfig)}


def default_data_dir() -> Optional[str]:
    """$SWIFT_DATA_DIR, else ../shared/data beside the repository when it exists, else None (hub)."""
    env = os.environ.get("SWIFT_DATA_DIR", "").strip()
    if env:
        return env
    if DEFAULT_SHARED_DATA.is_dir():
        return str(DEFAULT_SHARED_DATA)
    return None


def normalize_method(method: str) -> str:
    method = {"baseline": "vanilla"}.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return method


def build_parser(method: str) -> argparse.ArgumentParser:
    """The command-line parser of one runner; both runners share every flag except the SWIFT ones."""
    method = normalize_method(method)
    swift = method == "swift"
    module = "inference_swift" if swift else "inference_baseline"
    what = ("SWIFT self-speculative decoding (on-the-fly layer-skip search, then drafting with the "
            "skipped model and verifying with the full model)" if swift else
            "plain autoregressive decoding (the baseline SWIFT is compared with)")
    p = _Parser(
        prog=f"python -m evaluation_llama.{module}",
        description=f"Answer the instances of one evaluation task with {what}, writing one JSON "
                    f"line per answer (resumable: re-running the same command continues where it "
                    f"stopped). Compare two answer files with `python -m evaluation_llama.speed`.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False)  # exact flag names: the parent rewrites its children's flags
    g = p.add_argument_group("model")
    g.add_argument("--model-path", default=DEFAULT_MODEL_PATH,
                   help="Hugging Face model folder, .gguf file or hub id (owner/name) of a "
                        "LLaMA-family model; `python3 scripts/fetch_models.py` fetches the default")
    g.add_argument("--model-id", default=None,
                   help="short model name used in the answer records and default output paths "
                        "(default: derived from --model-path, e.g. smollm2-135m)")
    g.add_argument("--device", default="auto",
                   help="torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:<i>")
    g.add_argument("--layer-devices", default=None, metavar="DEV,DEV,...",
                   help="place one model across several devices by layer, for a model too large for "
                        "one GPU: contiguous chunks of layers in this order, the embedding on the "
                        "first device and the lm_head on the last (e.g. cuda:0,cuda:1; cpu,cpu for "
                        "testing); runs eagerly (no CUDA graphs); not with --num-gpus/--num-shards")
    g.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="weight and KV-cache precision; auto is bfloat16 on cuda, float32 on cpu")
    g.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the per-sub-layer functions (fuses their elementwise work; the "
                        "CUDA graphs are kept); auto = on for cuda, off for cpu")
    g.add_argument("--attention", default="auto", choices=("auto", "triton", "sdpa"),
                   help="attention of decode/draft/verify passes: the split-KV Triton kernel "
                        "(model/attention.py), PyTorch SDPA, or auto = the kernel on cuda after it "
                        "checks itself against SDPA on its first call (SDPA on cpu)")
    g.add_argument("--chat-template", action="store_true",
                   help="wrap every prompt as one user turn in the tokenizer's chat template "
                        "(for instruction-tuned models); default: plain prompts")

    g = p.add_argument_group("data")
    g.add_argument("--task", required=True, choices=TASKS,
                   help="evaluation task (cnndm, gsm8k, tinystories and humaneval are the paper's)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the task's JSON Lines files (default: $SWIFT_DATA_DIR, else "
                        "../shared/data beside the repository when it exists, else the Hugging "
                        "Face hub through the `datasets` package)")
    g.add_argument("--num-samples", type=POS_INT, default=None,
                   help="number of instances to evaluate, drawn with --seed (default: 1000 per "
                        "task, all 164 for humaneval; all of them when fewer exist)")

    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=POS_INT, default=512,
                   help="most tokens generated per answer")
    g.add_argument("--temperature", type=_number(float, 0.0, what="a number >= 0"), default=0.0,
                   help="sampling temperature; 0 means greedy decoding")
    g.add_argument("--top-p", type=_number(float, 0.0, 1.0, lo_open=True, what="a number in (0, 1]"),
                   default=1.0, help="nucleus sampling: keep the smallest set of tokens whose "
                                     "probability reaches top-p (1 = off; only with --temperature > 0)")
    g.add_argument("--top-k", type=NONNEG_INT, default=0,
                   help="keep only the k most likely tokens when sampling (0 = off)")
    g.add_argument("--seed", type=NONNEG_INT, default=0,
                   help="seed of the instance sampling and of generation: torch.manual_seed(seed * "
                        f"{SEED_STRIDE} + index) before the instance at position index")
    g.add_argument("--warmup", type=NONNEG_INT, default=1,
                   help="untimed, unrecorded warm-up generations before the timed ones (on the first "
                        f"pending prompt, at most {WARMUP_MAX_NEW_TOKENS} new tokens)")

    g = p.add_argument_group("output")
    g.add_argument("--answer-file", default=None,
                   help=f"answer file (default: outputs/<model-id>/<task>/{method}[-t<temperature>]"
                        f".jsonl); an existing file of the same configuration is resumed")
    g.add_argument("--overwrite", action="store_true",
                   help="start the answer file afresh instead of resuming it (also allows replacing "
                        "a file made with another configuration)")

    g = p.add_argument_group("parallelism")
    g.add_argument("--num-gpus", type=POS_INT, default=None,
                   help="data parallelism over N GPUs: one process per GPU (CUDA_VISIBLE_DEVICES), "
                        "each answering every N-th instance, then the answers are merged; on a "
                        "machine without CUDA the N processes run on the CPU")
    g.add_argument("--num-shards", type=POS_INT, default=None,
                   help="split the instances into N shards (instance k goes to shard k %% N); "
                        "without --shard, one process per shard is started on this machine and "
                        "the shards are merged at the end")
    g.add_argument("--shard", type=NONNEG_INT, default=None,
                   help="answer only shard I of --num-shards (into <answer>.shard<I>.jsonl); used "
                        "by the parent process, or by hand to spread a run over machines (then "
                        "run the same command without --shard to merge the shard files, which "
                        "also answers whatever they miss)")

    if swift:
        g = p.add_argument_group("SWIFT (defaults are the paper's settings)")
        d = _SWIFT_DEFAULTS
        g.add_argument("--skip-ratio", type=_number(float, 0.0, 1.0, True, True,
                                                    what="a number in (0, 1)"), default=None,
                       help="share of the attention/MLP sub-layers the draft skips; omit it to "
                            "adapt the ratio to the model during the optimization phase "
                            "(paper: 0.45 for 13B, 0.5 for 34B/70B)")
        g.add_argument("--context-window", type=_number(int, 2, what="a whole number >= 2"),
                       default=None, help=f"gamma: recent tokens on which a candidate skip set's "
                                          f"matchness is measured (default {d['context_window']})")
        g.add_argument("--bayes-interval", type=POS_INT, default=None,
                       help=f"beta: a Bayesian-optimization proposal every beta optimization steps "
                            f"(default {d['bayes_interval']})")
        g.add_argument("--max-opt-iter", type=NONNEG_INT, default=None,
                       help=f"S: most optimization steps before the skip set is frozen "
                            f"(default {d['max_opt_iter']})")
        g.add_argument("--max-tolerance-iter", type=POS_INT, default=None,
                       help=f"stop optimizing after this many steps without improvement "
                            f"(default {d['max_tolerance_iter']})")
        g.add_argument("--max-score", type=_number(float, 0.0, 1.0, lo_open=True,
                                                   what="a number in (0, 1]"), default=None,
                       help=f"stop optimizing once the matchness reaches this "
                            f"(default {d['max_score']})")
        g.add_argument("--num-candidates", type=_number(int, 1, 16, what="a whole number in "
                                                                          "[1, 16]"),
                       default=None, help=f"candidate skip sets scored per optimization step, in "
                                          f"one batched forward (default {d['num_candidates']})")
        g.add_argument("--draft-stop-threshold", type=_number(float, 0.0, 1.0, lo_open=True,
                                                              what="a number in (0, 1]"),
                       default=None, help=f"stop drafting when the draft's top-1 probability "
                                          f"falls below this (default "
                                          f"{d['draft_stop_threshold']})")
        if "draft_stop" in d:
            g.add_argument("--draft-stop", choices=("confidence", "calibrated"), default=None,
                           help=f"when drafting stops: 'confidence' compares the draft's raw top-1 "
                                f"probability with --draft-stop-threshold (the paper's rule), "
                                f"'calibrated' first maps it to an estimated acceptance "
                                f"probability (default {d['draft_stop']})")
        g.add_argument("--max-draft-len", type=_number(int, 1, 32, what="a whole number in "
                                                                        "[1, 32]"),
                       default=None, help=f"most tokens drafted per cycle "
                                          f"(default {d['max_draft_len']})")
        g.add_argument("--max-tree-nodes", type=_number(int, 3, 128, what="a whole number in "
                                                                          "[3, 128]"),
                       default=None, help=f"most nodes of the verified token tree, at least "
                                          f"--max-draft-len + 2 (default {d['max_tree_nodes']})")
        g.add_argument("--no-guard", action="store_true",
                       help="disable the speed guard that falls back to plain decoding when SWIFT "
                            "is slower than plain steps of the same answer; the guard decides from "
                            "wall-clock timings, so with --temperature > 0 pass --no-guard for "
                            "bit-reproducible samples")
        g.add_argument("--guard-margin", type=_number(float, 0.0, lo_open=True,
                                                      what="a number > 0"), default=None,
                       help=f"the guard falls back when SWIFT tokens/s < margin x plain tokens/s "
                            f"(default {d['guard_margin']})")
        g.add_argument("--layer-cache", default=None,
                       help="layer-configuration cache (default: outputs/<model-id>/<task>/"
                            "layer_config.json): written with the best skip set when the search "
                            "stops and at the end of the run; read with --cache-hit")
        g.add_argument("--cache-hit", action="store_true",
                       help="read the skip set from --layer-cache and skip the optimization phase")
        g.add_argument("--reset-search-per-instance", action="store_true",
                       help="start the layer search (and the draft-stop calibration) afresh for "
                            "every instance (default: one search carried across all instances of "
                            "the task, as in the paper)")

    p.add_argument("--debug", action="store_true",
                   help="show full Python tracebacks instead of one-paragraph error messages")
    return p


# ----------------------------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    """Validated, resolved settings of one run."""

    method: str
    args: argparse.Namespace
    model_path: str  # as given (recorded)
    load_path: str  # where it is loaded from (the default falls back to the repository's models/)
    model_id: str
    task: str
    data_dir: Optional[str]
    device: Any  # torch.device
    dtype_name: str
    sampling: Any  # model.sampling.SamplingConfig
    swift: Optional[SwiftConfig]
    answer_file: Path
    layer_cache: Optional[Path]
    num_shards: int
    shard: Optional[int]
    parent: bool  # this process launches the shard processes
    layer_devices: Optional[list] = None  # torch.devices the layers are placed across (--layer-devices)


def _resolve_device(text: str):
    import torch

    text = text.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text!r} is not a torch device; use auto, cpu, cuda or cuda:<i>."
                        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text} asks for a GPU but CUDA is not available here (torch "
                            f"{torch.__version__}); use --device cpu, or install a CUDA build of "
                            f"torch on a machine with an NVIDIA GPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: there are only {torch.cuda.device_count()} visible "
                            f"GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif device.type != "cpu":
        raise UserError(f"--device {text}: only cpu and cuda devices are supported.")
    return device


def _layer_device_names(text: str) -> list[str]:
    """The comma-separated names of --layer-devices (at least two)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise UserError(f"--layer-devices {text!r} needs at least two comma-separated devices (e.g. "
                        f"cuda:0,cuda:1); for one device use --device.")
    return names


def _resolve_layer_devices(args: argparse.Namespace) -> Optional[list]:
    if args.layer_devices is None:
        return None
    devices = []
    for name in _layer_device_names(args.layer_devices):
        if name.lower() == "auto":
            raise UserError("--layer-devices names each device explicitly (e.g. cuda:0,cuda:1); "
                            "auto is only for --device.")
        try:
            devices.append(_resolve_device(name))
        except UserError as exc:
            raise UserError(str(exc).replace("--device", "--layer-devices", 1)) from None
    if args.device.strip().lower() != "auto" and _resolve_device(args.device) != devices[0]:
        raise UserError(f"--device {args.device} and --layer-devices {args.layer_devices} disagree; "
                        f"drop --device (the first of --layer-devices is where inputs and outputs "
                        f"live).")
    return devices


def _temperature_tag(t: float) -> str:
    return f"{t:g}"


def shard_path(path: Path, shard: int) -> Path:
    """<dir>/<stem>.shard<shard><suffix>, e.g. swift.jsonl -> swift.shard0.jsonl."""
    return path.with_name(f"{path.stem}.shard{shard}{path.suffix}")


def check_args(args: argparse.Namespace, method: str) -> Optional[SwiftConfig]:
    """Checks between flags that need neither torch nor the model; returns the SWIFT settings."""
    method = normalize_method(method)
    if args.temperature == 0 and (args.top_p != 1.0 or args.top_k != 0):
        raise UserError("--top-p and --top-k only apply when sampling; add --temperature > 0 (for "
                        "example --temperature 0.6 --top-p 0.95) or drop them for greedy decoding.")
    swift_cfg = None
    if method == "swift":
        values = {name: getattr(args, flag) for flag, name in SWIFT_FLAGS.items()
                  if getattr(args, flag, None) is not None}
        values["guard"] = not args.no_guard
        values["seed"] = args.seed
        try:
            swift_cfg = SwiftConfig(**values)
        except UserError as exc:
            raise UserError(f"invalid SWIFT settings: {exc} Adjust the matching flag "
                            f"(--context-window, --num-candidates, --max-draft-len, "
                            f"--max-tree-nodes, ...; see --help).") from None
        if args.cache_hit and args.reset_search_per_instance:
            raise UserError("--cache-hit reads a fixed skip set, so there is no search to reset; "
                            "drop --reset-search-per-instance or --cache-hit.")
    if args.answer_file:
        answer_file = Path(args.answer_file)
        if answer_file.suffix != ".jsonl":
            raise UserError(f"--answer-file {answer_file} must end in .jsonl (JSON Lines).")
        if SHARD_RE.search(answer_file.stem):
            raise UserError(f"--answer-file {answer_file} looks like a shard file "
                            f"(.shard<i>.jsonl); pass the name of the merged file, and "
                            f"--shard/--num-shards for a shard.")
        if answer_file.is_dir():
            raise UserError(f"--answer-file {answer_file} is a directory; pass a .jsonl file name.")
    if args.model_id is not None and (not args.model_id.strip() or "/" in args.model_id
                                      or args.model_id in (".", "..")):
        raise UserError(f"--model-id {args.model_id!r} cannot name an output folder; pass a plain "
                        f"name such as smollm2-135m.")
    # parallelism
    if args.num_gpus is not None and args.num_shards is not None and args.num_gpus != args.num_shards:
        raise UserError(f"--num-gpus {args.num_gpus} and --num-shards {args.num_shards} disagree; "
                        f"pass one of them (--num-gpus N starts N processes, one per GPU).")
    num_shards = args.num_shards or args.num_gpus or 1
    if args.layer_devices is not None:
        names = _layer_device_names(args.layer_devices)
        if num_shards > 1:
            flag = "--num-gpus" if args.num_gpus is not None else "--num-shards"
            raise UserError(f"--layer-devices {','.join(names)} splits one model over several devices, "
                            f"but {flag} {num_shards} runs several copies of the whole model; combine "
                            f"neither: use --layer-devices for a model too large for one GPU, or "
                            f"{flag} to spread the instances of a model that fits on one.")
    shard = args.shard
    if shard is not None:
        if args.num_shards is None:
            raise UserError("--shard needs --num-shards (the total number of shards).")
        if args.num_gpus is not None:
            raise UserError("--shard runs one shard in this process; drop --num-gpus (the parent "
                            "process that starts the shards is the one that takes --num-gpus).")
        if shard >= num_shards:
            raise UserError(f"--shard {shard} is out of range for --num-shards {num_shards} "
                            f"(shards are numbered 0..{num_shards - 1}).")
    return swift_cfg


def resolve_settings(args: argparse.Namespace, method: str,
                     swift_cfg: Optional[SwiftConfig]) -> Settings:
    """Resolve device, dtype, model id and paths (imports torch)."""
    import torch
    from model.loading import model_name
    from model.sampling import SamplingConfig

    method = normalize_method(method)
    if not args.model_path.strip():
        raise UserError("--model-path is empty; pass a model folder, a .gguf file or a hub id.")
    model_path = os.path.normpath(args.model_path.strip())  # "./m/" and "m" are one model
    load_path = model_path
    if model_path == DEFAULT_MODEL_PATH and not Path(model_path).exists() \
            and (REPO_ROOT / model_path).exists():
        load_path = str(REPO_ROOT / model_path)
    model_id = args.model_id or model_name(model_path)
    if not model_id or "/" in model_id or model_id in (".", ".."):
        raise UserError(f"cannot derive an output name from --model-path {model_path!r}; pass "
                        f"--model-id (a plain name such as smollm2-135m).")
    layer_devices = _resolve_layer_devices(args)
    device = layer_devices[0] if layer_devices else _resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else (
        "bfloat16" if device.type == "cuda" else "float32")
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    layer_cache = None
    if method == "swift":
        layer_cache = Path(args.layer_cache) if args.layer_cache else \
            Path("outputs") / model_id / args.task / "layer_config.json"
    if args.answer_file:
        answer_file = Path(args.answer_file)
    else:
        name = method + (f"-t{_temperature_tag(args.temperature)}" if args.temperature > 0 else "")
        answer_file = Path("outputs") / model_id / args.task / f"{name}.jsonl"
    num_shards = args.num_shards or args.num_gpus or 1
    shard = args.shard
    parent = shard is None and num_shards > 1
    if parent and device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {args.device} names one GPU, but --num-gpus/--num-shards "
                            f"{num_shards} spreads the run over several; use --device cuda (each "
                            f"process gets its own GPU).")
        if num_shards > torch.cuda.device_count():
            raise UserError(f"--num-gpus {num_shards} asks for more GPUs than the "
                            f"{torch.cuda.device_count()} visible here (CUDA_VISIBLE_DEVICES "
                            f"limits which are visible); pass at most --num-gpus "
                            f"{torch.cuda.device_count()}.")
    return Settings(method=method, args=args, model_path=model_path, load_path=load_path,
                    model_id=model_id, task=args.task, data_dir=resolve_data_dir(args),
                    device=device,
                    dtype_name=dtype_name, sampling=sampling, swift=swift_cfg,
                    answer_file=answer_file, layer_cache=layer_cache, num_shards=num_shards,
                    shard=shard, parent=parent, layer_devices=layer_devices)


def resolve_data_dir(args: argparse.Namespace) -> Optional[str]:
    return args.data_dir if args.data_dir is not None else default_data_dir()


def load_instances(args: argparse.Namespace) -> TaskData:
    """The task's evaluated instances (data errors are reported before torch is imported)."""
    td = load_task(args.task, data_dir=resolve_data_dir(args), num_samples=args.num_samples,
                   seed=args.seed)
    if not td.instances:
        raise UserError(f"task {args.task} has no instances to evaluate in {td.source}.")
    return td


def _data_source(source: str) -> str:
    """The evaluated file, relative to the repository root (no machine-specific prefix), or hub:..."""
    if source.startswith("hub:"):
        return source
    try:
        rel = os.path.relpath(os.path.abspath(source), REPO_ROOT)
    except ValueError:  # another drive on Windows
        rel = source
    if rel.startswith("..") and not rel.startswith(os.path.join("..", "shared", "")):
        return "<data-dir>/" + os.path.basename(source)  # outside the project: keep no machine path
    return rel


def _use_compile(s: Settings) -> bool:
    c = s.args.compile
    return c == "on" or (c == "auto" and s.device.type == "cuda")


def build_config(s: Settings, data_source: str) -> dict:
    """The run configuration recorded in the header and in every record."""
    a = s.args
    swift = s.method == "swift"
    return {
        "model_path": s.model_path,
        "model_id": s.model_id,
        "task": s.task,
        "method": s.method,
        "dtype": s.dtype_name,
        "device": s.device.type,
        "compile": _use_compile(s),
        "attention": a.attention,
        "temperature": a.temperature,
        "top_p": a.top_p,
        "top_k": a.top_k,
        "max_new_tokens": a.max_new_tokens,
        "num_samples": a.num_samples,
        "seed": a.seed,
        "chat_template": bool(a.chat_template),
        "data_source": data_source,
        "swift": s.swift.to_dict() if s.swift is not None else None,
        "cache_hit": bool(a.cache_hit) if swift else None,
        "reset_search_per_instance": bool(a.reset_search_per_instance) if swift else None,
        # only when given, so that the configuration (and hash) of a single-device run is unchanged
        **({"layer_devices": [str(d) for d in s.layer_devices]} if s.layer_devices else {}),
        # volatile (left out of the configuration hash): where this process runs and writes
        "device_index": s.device.index,
        "shard": s.shard,
        "num_shards": s.num_shards,
    }


# ----------------------------------------------------------------------------------------------
# signals, locking


class _Interrupts:
    """SIGINT/SIGTERM -> KeyboardInterrupt, but never while an answer is being written: inside
    `deferred()` the signal is remembered and raised when the block ends."""

    def __init__(self):
        self._critical = 0
        self._pending: Optional[int] = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self._critical:
            self._pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending is not None:
            signum, self._pending = self._pending, None
            raise KeyboardInterrupt(f"signal {signum}")


def lock_path(path: Path) -> Path:
    """The lock file of an answer file: in the temporary folder (not beside the answers), named by
    a hash of the answer file's absolute path."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "swift-eval-locks" / f"{key}.lock"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Refuse a second run on the same answer file while this one holds it (advisory lock, released
    by the operating system even when the process is killed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")
    except OSError:  # no usable temporary folder: run without the lock
        yield
        return
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another run is writing {path} right now. Wait for it to finish, or "
                            f"give this run another --answer-file.") from None
        yield
    finally:
        fh.close()


# ----------------------------------------------------------------------------------------------
# memory estimate for out-of-memory messages


def _param_count(args) -> int:
    """Parameters of a LLaMA-family model described by ModelArgs."""
    q = args.n_heads * args.head_dim
    kv = args.n_kv_heads * args.head_dim
    per_layer = (args.dim * (q + 2 * kv) + (q + 2 * kv if args.qkv_bias else 0) + q * args.dim
                 + 3 * args.dim * args.intermediate_size + 2 * args.dim)
    embed = args.vocab_size * args.dim * (1 if args.tie_embeddings else 2)
    return embed + args.n_layers * per_layer + args.dim


def memory_needs(args, dtype_name: str, capacity: int, model=None) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) for a model and a cache of ``capacity`` slots."""
    elem = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype_name]
    if model is not None:
        seen, weights = set(), 0
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                weights += p.numel() * p.element_size()
    else:
        weights = _param_count(args) * elem
    kv = args.n_layers * 2 * args.n_kv_heads * capacity * args.head_dim * elem
    return weights, kv


def _oom_error(s: Settings, args, capacity: Optional[int], longest: Optional[int], model=None,
               exc: Optional[BaseException] = None) -> UserError:
    import torch
    from model.generate import SCRATCH_SLOTS, cache_capacity

    gib = 1024 ** 3
    if args is None:
        need = (f"the {s.dtype_name} weights of {s.model_path} alone do not fit")
    else:
        cap = capacity or cache_capacity(1, s.args.max_new_tokens)
        weights, kv = memory_needs(args, s.dtype_name, cap, model)
        need = (f"this run needs about {weights / gib:.2f} GiB for the {s.dtype_name} weights plus "
                f"{kv / gib:.2f} GiB for the KV cache ({cap} slots = longest prompt "
                f"{longest if longest is not None else '?'} + --max-new-tokens "
                f"{s.args.max_new_tokens} + {SCRATCH_SLOTS} scratch; {args.n_layers} layers x "
                f"{args.n_kv_heads} KV heads x {args.head_dim}), plus activations")
    free = ""
    where = ",".join(str(d) for d in s.layer_devices) if s.layer_devices else str(s.device)
    if s.device.type == "cuda" and not s.layer_devices:
        with contextlib.suppress(Exception):
            free_b, total_b = torch.cuda.mem_get_info(s.device)
            free = f" ({free_b / gib:.2f} of {total_b / gib:.2f} GiB free now)"
    hint = "--dtype bfloat16, " if s.dtype_name == "float32" else ""
    return UserError(
        f"out of GPU memory on {where}{free}: {need}. Try {hint}a smaller --max-new-tokens, "
        f"a GPU with more free memory, or --layer-devices cuda:0,cuda:1[,...] to split the layers "
        f"of one model (and their KV cache) over several GPUs (--num-gpus instead spreads the "
        f"instances over several GPUs, each holding the whole model and its own cache). Answers "
        f"written so far are kept; re-run the same command to resume.")


# ----------------------------------------------------------------------------------------------
# model loading (cached per process, so in-process calls reuse one copy)

_MODEL_CACHE: dict = {}


def _load(s: Settings):
    import torch
    from model.loading import load_model, load_tokenizer

    placed = [str(d) for d in s.layer_devices] if s.layer_devices else None
    key = (s.load_path, str(s.device), s.dtype_name, tuple(placed or ()))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    _MODEL_CACHE.clear()
    try:
        model, margs = load_model(s.load_path, device=s.device, dtype=getattr(torch, s.dtype_name),
                                  devices=placed)
    except (UserError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - broken files (bad safetensors, ...) are user problems
        raise UserError(f"could not load the model from {s.model_path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}. Check that the "
                        f"folder holds a complete LLaMA-family checkpoint (config.json and "
                        f"*.safetensors) or re-fetch it; --debug shows the traceback.") from exc
    tokenizer = load_tokenizer(s.load_path)
    _MODEL_CACHE[key] = (model, margs, tokenizer)
    return model, margs, tokenizer


def _model_args_for_oom(s: Settings):
    """ModelArgs from the folder's config.json, for an out-of-memory message during loading."""
    from model.config import ModelArgs
    try:
        cfg = json.loads((Path(s.load_path) / "config.json").read_text())
        return ModelArgs.from_hf_config(cfg)
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------------------------
# helpers


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by None and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _existing_ids(path: Path, config: dict) -> set[str]:
    """Question ids already answered in ``path`` under the same configuration (else nothing)."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    header, records = read_answer_file(path, warn=lambda m: None)
    cfg = file_config(header, records)
    if cfg is None or config_hash(cfg) != config_hash(config):
        return set()
    return {str(r["question_id"]) for r in records}


def open_writer(path: Path, config: dict, overwrite: bool = False) -> AnswerWriter:
    """AnswerWriter with file-system problems (permissions, a full disk) as UserErrors."""
    try:
        return AnswerWriter(path, config, overwrite=overwrite)
    except OSError as exc:
        raise UserError(f"cannot write the answer file {path} ({exc.strerror or exc}); choose a "
                        f"writable place with --answer-file.") from exc


def check_writable(path: Path) -> None:
    """Fail early (before the model is loaded) when the answer file's folder cannot be made or
    written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder of the answer file {path} "
                        f"({exc.strerror or exc}); choose a writable place with --answer-file."
                        ) from exc
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"the folder of the answer file {path} is not writable; choose a writable "
                        f"place with --answer-file.")


def _has_records(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    _, records = read_answer_file(path)
    return bool(records)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt_skip(skip: Optional[dict]) -> str:
    if not skip:
        return "none"
    return f"attention {skip.get('attn', [])}, MLP {skip.get('mlp', [])}"


@dataclass
class _Tally:
    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0
    accepted: int = 0
    steps: int = 0

    def add(self, res) -> None:
        self.answers += 1
        self.tokens += res.num_new_tokens
        self.seconds += res.wall_time_s
        self.accepted += sum(res.accept_lengths)
        self.steps += len(res.accept_lengths)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accept(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


@dataclass
class _LayerCacheKeeper:
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
        st = search.state
        if st.best_skip is not None and len(st.best_skip) > 0:
            found = (float(st.best_score), st.best_skip, float(st.ratio))
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


# ----------------------------------------------------------------------------------------------
# one process


@dataclass
class _Prepared:
    instances: list  # [(index, Instance)]
    data_source: str
    note: Optional[str]
    config: dict
    pending: list = field(default_factory=list)


def _prepare(s: Settings, td: TaskData) -> _Prepared:
    source = _data_source(td.source)
    return _Prepared(instances=list(enumerate(td.instances)), data_source=source, note=td.note,
                     config=build_config(s, source))


def _tokenize_all(s: Settings, tokenizer, margs, instances) -> dict[int, list[int]]:
    """Token ids of every instance's prompt (all of the task, so every shard sizes its cache
    alike); checks each against the model's context and vocabulary."""
    limit = margs.max_position_embeddings
    max_new = s.args.max_new_tokens
    if max_new >= limit:
        raise UserError(f"--max-new-tokens {max_new} cannot fit: the model's context is {limit} "
                        f"positions and every prompt needs at least one of them. Use "
                        f"--max-new-tokens below {limit} (well below, to leave room for the "
                        f"prompts).")
    ids: dict[int, list[int]] = {}
    for index, inst in instances:
        text = format_prompt(inst.prompt, tokenizer, chat_template=s.args.chat_template)
        try:
            tok = tokenizer(text, add_special_tokens=not s.args.chat_template)["input_ids"]
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"the tokenizer of {s.model_path} failed on question "
                            f"{inst.question_id} ({type(exc).__name__}: {exc}).") from exc
        tok = [int(t) for t in tok]
        if not tok:
            raise UserError(f"question {inst.question_id} of {s.task}: the prompt is empty after "
                            f"tokenization; check the data file.")
        if len(tok) + max_new > limit:
            raise UserError(
                f"question {inst.question_id} of {s.task}: the prompt has {len(tok)} tokens, and "
                f"with --max-new-tokens {max_new} it needs {len(tok) + max_new} positions, more "
                f"than the model's context of {limit}. Use --max-new-tokens "
                f"{max(limit - len(tok), 0)} or less (if positive), fewer/shorter prompts, or a "
                f"model with a longer context.")
        top = max(tok)
        if top >= margs.vocab_size:
            raise UserError(f"the tokenizer of {s.model_path} produced token id {top}, but the "
                            f"model's vocabulary has only {margs.vocab_size} entries: tokenizer "
                            f"and weights do not belong together.")
        ids[index] = tok
    return ids


def run_one(s: Settings, td: TaskData) -> int:
    """Answer the instances of this process (all, or one shard) into the answer file."""
    prep = _prepare(s, td)
    if prep.note:
        _note(f"note: {prep.note}")
    out = s.answer_file if s.shard is None else shard_path(s.answer_file, s.shard)
    mine = [(i, inst) for i, inst in prep.instances if s.shard is None or i % s.num_shards == s.shard]
    check_writable(out)
    with exclusive(out):
        writer = None
        try:
            done: set[str] = set()
            if not s.args.overwrite and _has_records(out):
                writer = open_writer(out, prep.config)  # refuses another configuration, early
                done |= writer.done_ids
            if s.shard is not None:  # a parent's merged file may already hold some answers
                done |= _existing_ids(s.answer_file, prep.config)
            pending = [(i, inst) for i, inst in mine if inst.question_id not in done]
            if not pending:
                if writer is None:
                    writer = open_writer(out, prep.config, overwrite=True)
                print(f"nothing to do: all {len(mine)} answers of {s.task} are already in {out}")
                return 0
            if done:
                _note(f"resuming {out}: {len(mine) - len(pending)} of {len(mine)} answers already "
                      f"there, {len(pending)} to go")
            return _generate_all(s, prep, mine, pending, out, writer)
        finally:
            if writer is not None:
                writer.close()


def _generate_all(s: Settings, prep: _Prepared, mine, pending, out: Path,
                  writer: Optional[AnswerWriter]) -> int:
    import torch
    from model.backends import Backends
    from model.engine import Engine
    from model.generate import cache_capacity, sampling_head, vanilla_generate
    from model.loading import default_eos_ids
    from model.swift import decoding
    from model.swift.layer_cache import load_layer_config
    from model.swift.layer_search import LayerSearch

    a = s.args
    margs = capacity = longest = model = None
    try:
        model, margs, tokenizer = _load(s)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(s, _model_args_for_oom(s), None, None) from exc
    prompt_ids = _tokenize_all(s, tokenizer, margs, prep.instances)
    longest = max(len(t) for t in prompt_ids.values())
    capacity = cache_capacity(longest, a.max_new_tokens)
    eos_ids = default_eos_ids(margs, tokenizer)

    swift = s.method == "swift"
    fixed_skip = None
    keeper = None
    layer_cache = s.layer_cache
    if swift and s.shard is not None and not a.cache_hit and s.num_shards > 1:
        layer_cache = shard_path(layer_cache, s.shard)
    if swift and a.cache_hit:
        fixed_skip, info = load_layer_config(str(s.layer_cache), s.model_id, margs.n_layers,
                                             s.task)
        _note(f"cache hit: skip set from {s.layer_cache} (ratio {info.get('skip_ratio')}, "
              f"matchness {info.get('matchness')}): {_fmt_skip(fixed_skip.to_dict())}")
    elif swift:
        if margs.n_layers < 3:
            raise UserError(f"{s.model_path} has {margs.n_layers} layers; SWIFT needs at least 3 "
                            f"(the first and last are never skipped).")
        keeper = _LayerCacheKeeper(layer_cache, s.model_id, margs.architecture, margs.n_layers,
                                   s.task, per_instance=bool(a.reset_search_per_instance))

    from model import attention
    attention.set_backend(a.attention)
    try:
        engine = Engine(model, capacity, Backends(compile="on" if _use_compile(s) else "off"))
    except torch.OutOfMemoryError as exc:
        raise _oom_error(s, margs, capacity, longest, model) from exc

    if writer is None:
        writer = open_writer(out, prep.config, overwrite=True)
    search = LayerSearch(margs.n_layers, s.swift) if swift and fixed_skip is None else None
    # the draft-stop calibrator (where the decoder has one) is carried like the search
    calibrated = swift and getattr(s.swift, "draft_stop", None) == "calibrated" \
        and hasattr(decoding, "DraftCalibrator")
    new_calibrator = decoding.DraftCalibrator if calibrated else (lambda: None)
    calibrator = new_calibrator()

    def generate(ids: list[int], max_new: int, srch, calib):
        if not swift:
            return vanilla_generate(engine, ids, max_new, s.sampling, eos_ids)
        extra = {"calibrator": calib} if calib is not None else {}
        return decoding.swift_generate(engine, ids, max_new, s.sampling, eos_ids, s.swift,
                                       search=srch if fixed_skip is None else None,
                                       skip=fixed_skip, **extra)

    tally = _Tally()
    from tqdm import tqdm
    bar = None
    try:
        with _Interrupts() as interrupts:
            # warm-up: untimed, unrecorded; SWIFT uses a throwaway search
            first = prompt_ids[pending[0][0]]
            for _ in range(a.warmup):
                throwaway = LayerSearch(margs.n_layers, s.swift) if search is not None else None
                generate(first, min(a.max_new_tokens, WARMUP_MAX_NEW_TOKENS), throwaway,
                         new_calibrator())
            if engine.cuda_graphs:  # every KV-length bucket's one-token graph, so none is captured while timed
                engine.warm_up_decode(*sampling_head(s.sampling), noise=not s.sampling.greedy)
            if s.device.type == "cuda" and a.attention == "auto" and not attention.kernel_status()["ok"]:
                _note(f"note: attention falls back to SDPA ({attention.kernel_status()['reason']})")
            bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="answer",
                       desc=f"{s.method} {s.task}" + (f" shard {s.shard}" if s.shard is not None
                                                       else ""),
                       position=s.shard if s.shard is not None else None, dynamic_ncols=True,
                       mininterval=0.5, file=sys.stderr)
            for n, (index, inst) in enumerate(pending):
                if swift and a.reset_search_per_instance and n > 0:
                    if search is not None:
                        search.reset()
                    calibrator = new_calibrator()
                was_active = search.active if search is not None else False
                torch.manual_seed(a.seed * SEED_STRIDE + index)
                res = generate(prompt_ids[index], a.max_new_tokens, search, calibrator)
                text = tokenizer.decode(res.tokens, skip_special_tokens=True)
                record = {
                    "question_id": inst.question_id,
                    "model_id": s.model_id,
                    "task": s.task,
                    "method": s.method,
                    "tstamp": time.time(),
                    "choices": [{"index": 0, "turns": [text], "new_tokens": [res.num_new_tokens],
                                 "wall_time": [res.wall_time_s],
                                 "accept_lengths": list(res.accept_lengths),
                                 "num_drafted": [res.num_drafted]}],
                    "token_ids": [list(res.tokens)],
                    "prompt_tokens": len(prompt_ids[index]),
                    "config": prep.config,
                    "stats": _json_safe(res.stats),
                }
                with interrupts.deferred():
                    try:
                        writer.write(record)
                    except OSError as exc:
                        raise UserError(
                            f"could not write to the answer file {out} ({exc.strerror or exc}); "
                            f"the {len(writer.done_ids)} answers already there are kept. Fix the "
                            f"cause (disk space, permissions) and re-run the same command to "
                            f"resume.") from exc
                    tally.add(res)
                    if keeper is not None:
                        stopped = was_active and not search.active
                        try:
                            keeper.offer(search, write_now=stopped)
                        except OSError as exc:
                            _note(f"warning: could not write the layer configuration "
                                  f"{keeper.path} ({exc.strerror or exc}); retrying at the end")
                bar.set_postfix_str(f"{tally.tps:.1f} tok/s, accepted {tally.mean_accept:.2f}/step",
                                    refresh=False)
                bar.update(1)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(s, margs, capacity, longest, model) from exc
    finally:
        if bar is not None:
            bar.close()
        if keeper is not None:
            if search is not None:
                keeper.offer(search, write_now=False)
            try:
                keeper.flush()
            except OSError as exc:
                _note(f"warning: could not write the layer configuration {keeper.path} "
                      f"({exc.strerror or exc}); pass a writable --layer-cache to keep it")
        writer.close()

    _print_summary(s, out, tally, len(mine), search, fixed_skip, keeper)
    return 0


def _print_summary(s: Settings, out: Path, tally: _Tally, total: int, search, fixed_skip,
                   keeper) -> None:
    lines = [f"{s.method} on {s.task}: {tally.answers} new answer(s) written to {out} "
             f"({total} instance(s) in this {'shard' if s.shard is not None else 'run'}); "
             f"{tally.tokens} tokens in {tally.seconds:.2f} s = {tally.tps:.1f} tokens/s, mean "
             f"accepted length {tally.mean_accept:.2f} tokens/step"]
    if s.method == "swift":
        if fixed_skip is not None:
            lines.append(f"skip set (cache hit): {_fmt_skip(fixed_skip.to_dict())}")
        elif search is not None and search.best is None:
            lines.append("no skip set yet: the layer search needs answers longer than the guard's "
                         "plain probe and --context-window; SWIFT decoded plainly")
        elif search is not None:
            sm = search.summary()
            lines.append(f"final skip set: {_fmt_skip(sm['best_skip'])}; {sm['n_skipped']} of "
                         f"{sm['search_dims']} sub-layers skipped (ratio {sm['ratio']}, matchness "
                         f"{sm['best_score']:.3f}, {sm['n_iter']} optimization steps, "
                         f"{'still searching' if sm['active'] else 'stopped: ' + str(sm['stop_reason'])})")
        if keeper is not None and keeper.saved_to is not None:
            lines.append(f"layer configuration saved to {keeper.saved_to} (reuse it with "
                         f"--cache-hit)")
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------------------------
# parent of several shard processes


def _strip_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """argv without the given value-taking flags (both `--flag v` and `--flag=v`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(n + "=") for n in names):
            continue
        out.append(arg)
    return out


def _existing_shards(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.shard\d+" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the parent dies (even of kill -9)."""
    with contextlib.suppress(Exception):
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _merge_into(main: Path, shards: list[Path]) -> int:
    inputs = ([main] if main.exists() and main.stat().st_size > 0 else []) + shards
    n = merge_answer_files(inputs, main)
    for p in shards:
        p.unlink()
    return n


def run_parent(s: Settings, td: TaskData, argv: Sequence[str]) -> int:
    """Start one process per shard, wait for them, merge their answer files."""
    import torch

    prep = _prepare(s, td)
    if prep.note:
        _note(f"note: {prep.note}")
    main = s.answer_file
    swift = s.method == "swift"
    check_writable(main)
    with exclusive(main):
        if s.args.overwrite:
            for p in [main, *_existing_shards(main)]:
                p.unlink(missing_ok=True)
        # validates the configuration of an existing file (or creates it with a header)
        open_writer(main, prep.config,
                    overwrite=s.args.overwrite or not _has_records(main)).close()
        stale = _existing_shards(main)
        if stale:  # shards of an interrupted earlier run: fold them in first
            _note(f"merging {len(stale)} shard file(s) of an earlier interrupted run into {main}")
            _merge_into(main, stale)
        done = _existing_ids(main, prep.config)
        if all(inst.question_id in done for _, inst in prep.instances):
            print(f"nothing to do: all {len(prep.instances)} answers of {s.task} are already in "
                  f"{main}")
            return 0

        module = f"evaluation_llama.inference_{'swift' if swift else 'baseline'}"
        base = _strip_flags(argv, ["--num-gpus", "--num-shards", "--shard", "--answer-file"])
        base = [x for x in base if x != "--overwrite"]  # the parent has already cleared the files
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        visible = None
        if s.device.type == "cuda":
            listed = env.get("CUDA_VISIBLE_DEVICES")
            visible = ([v.strip() for v in listed.split(",") if v.strip()] if listed
                       else [str(i) for i in range(torch.cuda.device_count())])
        elif "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // s.num_shards))
        procs = []
        try:
            with _Interrupts():
                for i in range(s.num_shards):
                    child_env = dict(env)
                    if visible is not None:
                        child_env["CUDA_VISIBLE_DEVICES"] = visible[i]
                    cmd = [sys.executable, "-m", module, *base, "--answer-file", str(main),
                           "--shard", str(i), "--num-shards", str(s.num_shards)]
                    procs.append(subprocess.Popen(
                        cmd, env=child_env,
                        preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux")
                        else None))
                codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            _note(f"interrupted: the answers written so far are kept in "
                  f"{', '.join(str(shard_path(main, i)) for i in range(s.num_shards))}; re-run "
                  f"the same command to resume")
            raise
        failed = [(i, c) for i, c in enumerate(codes) if c != 0]
        if failed:
            worst = 2 if any(c == 2 for _, c in failed) else 1
            desc = ", ".join(f"shard {i} exit {c}" for i, c in failed)
            if worst == 2:
                raise UserError(f"{len(failed)} of {s.num_shards} shard process(es) stopped with "
                                f"an error ({desc}; its message is above). The answers written so "
                                f"far are kept in the shard files; fix the problem and re-run the "
                                f"same command to resume.")
            _note(f"error: {len(failed)} of {s.num_shards} shard process(es) failed ({desc}); the "
                  f"answers written so far are kept in the shard files; re-run the same command "
                  f"to resume.")
            return worst
        shards = [shard_path(main, i) for i in range(s.num_shards)]
        n = _merge_into(main, [p for p in shards if p.exists()])
        if swift and not s.args.cache_hit:
            _merge_layer_caches(s.layer_cache)
    _, records = read_answer_file(main)
    records = [r for r in records if r.get("task") == s.task]
    tps = metrics.mean_tokens_per_second(records) if records else 0.0
    mal = metrics.mean_accept_length(records) if records else None
    print(f"{s.method} on {s.task}: {n} answer(s) merged from {s.num_shards} shards into {main}; "
          f"mean {tps:.1f} tokens/s per answer"
          + (f", mean accepted length {mal:.2f} tokens/step" if mal is not None else ""))
    if swift and s.layer_cache is not None and s.layer_cache.exists() and not s.args.cache_hit:
        with contextlib.suppress(Exception):
            info = json.loads(s.layer_cache.read_text())
            print(f"best skip set over the shards: {_fmt_skip(info.get('skip'))} (ratio "
                  f"{info.get('skip_ratio')}, matchness {info.get('matchness')}); saved to "
                  f"{s.layer_cache}")
    return 0


def _merge_layer_caches(path: Path) -> None:
    """Keep the best-scoring shard layer cache as the run's cache."""
    pattern = re.compile(re.escape(path.stem) + r"\.shard\d+" + re.escape(path.suffix) + "$")
    if not path.parent.is_dir():
        return
    found = [p for p in path.parent.iterdir() if pattern.match(p.name)]
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


# ----------------------------------------------------------------------------------------------
# entry point


def main(method: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(method).parse_args(argv)
    swift_cfg = check_args(args, method)
    td = load_instances(args)
    s = resolve_settings(args, method, swift_cfg)
    if s.parent:
        return run_parent(s, td, argv)
    return run_one(s, td)
