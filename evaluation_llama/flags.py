"""The command line of the evaluation runners: the flags every method shares, plus its own.

This module only parses: a flag's type is checked here (a number where a number is expected),
while what the values mean together is checked once, in `evaluation_llama.settings` and in the
method's own configuration (for SWIFT, `model.swift.config.SwiftConfig`).
"""

from __future__ import annotations

import argparse
import math

from data import TASKS
from evaluation_llama.paths import DEFAULT_MODEL_PATH, OUTPUTS
from model.backends import COMPILE, KERNELS, TAILS
from model.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
SEED_STRIDE = 100003  # torch.manual_seed(seed * SEED_STRIDE + index) before the instance at index
WARMUP_MAX_NEW_TOKENS = 32  # warm-up generations are short: they only compile and capture


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless it already names its default or has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS
        if "default" not in text and not hidden and action.option_strings:
            text += f" (default: {action.default})"
        return text


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are UserErrors (one paragraph, exit 2 through run_cli)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message}. Run with --help for the list of flags and their meaning.")


def number(kind, lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
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
            if lo is not None and hi is None:
                rng = f"> {lo}" if lo_open else f">= {lo}"
            elif lo is None:
                rng = f"< {hi}" if hi_open else f"<= {hi}"
            else:
                rng = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


POS_INT = number(int, 1, what="a positive whole number")
NONNEG_INT = number(int, 0, what="a whole number >= 0")
INT = number(int, what="a whole number")
REAL = number(float, what="a number")


def task_list(text: str) -> list[str]:
    """argparse type of the scripts' --tasks: comma-separated task names, each one of `data.TASKS`."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if not tasks or bad:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(bad) or '(none given)'}; choose from "
                                         f"{', '.join(TASKS)}")
    return tasks


def build_parser(method) -> argparse.ArgumentParser:
    """The parser of the runner of ``method`` (a `evaluation_llama.methods.Method` class): the
    shared flags, then the method's own group (``method.add_flags``)."""
    p = Parser(
        prog=f"python -m {method.entry_module}",
        description=f"Answer the instances of one evaluation task with {method.description}, "
                    f"writing one JSON line per answer (resumable: re-running the same command "
                    f"continues where it stopped). Compare two answer files with "
                    f"`python -m evaluation_llama.speed`.",
        formatter_class=HelpFormatter,
        allow_abbrev=False)  # exact flag names only: a typo is an error, not another flag
    _model_flags(p.add_argument_group("model"))
    _data_flags(p.add_argument_group("data"))
    _generation_flags(p.add_argument_group("generation"))
    _output_flags(p.add_argument_group("output"), method.name, method.answer_names)
    _parallel_flags(p.add_argument_group("parallelism"))
    method.add_flags(p)
    p.add_argument("--debug", action="store_true",
                   help="show full Python tracebacks instead of one-paragraph error messages")
    return p


def _model_flags(g) -> None:
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
    g.add_argument("--kernels", default="auto", choices=KERNELS,
                   help="the decode/draft/verify passes run on the fused batch-invariant Triton "
                        "kernels (triton), on PyTorch ops (torch: cuBLAS/SDPA), or auto = Triton on "
                        "CUDA when its kernels pass their self-check, else torch")
    g.add_argument("--compile", default="auto", choices=COMPILE,
                   help="torch.compile of the torch path's sub-layer functions (fuses their "
                        "elementwise work; CUDA graphs are used either way); auto = on for CUDA "
                        "with the torch kernels")
    g.add_argument("--tails", default="auto", choices=TAILS,
                   help="the work around the passes of a draft/verify cycle (SWIFT, prompt lookup, "
                        "early exit; a draft step's top-k, the tree, acceptance and commit): one or "
                        "two Triton kernels each (kernels; they need the triton passes on one "
                        "device), or about 180 small PyTorch operations per cycle (torch); auto = "
                        "kernels where the passes are Triton's and the tail kernels pass their "
                        "check, else torch. The tokens are the same either way")
    g.add_argument("--chat-template", action="store_true",
                   help="wrap every prompt as one user turn in the tokenizer's chat template "
                        "(for instruction-tuned models); default: plain prompts")


def _data_flags(g) -> None:
    g.add_argument("--task", required=True, choices=TASKS,
                   help="evaluation task (cnndm, gsm8k, tinystories and humaneval are the paper's)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the task's JSON Lines files (default: $SWIFT_DATA_DIR, else "
                        "../shared/data beside the repository when it exists, else the Hugging "
                        "Face hub through the `datasets` package)")
    g.add_argument("--num-samples", type=POS_INT, default=None,
                   help="number of instances to evaluate, drawn with --seed (default: 1000 per "
                        "task, all 164 for humaneval; all of them when fewer exist)")


def _generation_flags(g) -> None:
    g.add_argument("--max-new-tokens", type=POS_INT, default=512,
                   help="most tokens generated per answer")
    g.add_argument("--temperature", type=number(float, 0.0, what="a number >= 0"), default=0.0,
                   help="sampling temperature; 0 means greedy decoding")
    g.add_argument("--top-p", type=number(float, 0.0, 1.0, lo_open=True, what="a number in (0, 1]"),
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


def _output_flags(g, method_name: str, other_names: str = "") -> None:
    g.add_argument("--outputs", default=str(OUTPUTS),
                   help="root of the default output paths: <outputs>/<model-id>/<task>/")
    g.add_argument("--answer-file", default=None,
                   help=f"answer file (default: <outputs>/<model-id>/<task>/{method_name}"
                        f"[-t<temperature>].jsonl{'; ' + other_names if other_names else ''}); "
                        f"an existing file of the same configuration is resumed")
    g.add_argument("--overwrite", action="store_true",
                   help="start the answer file afresh instead of resuming it (also allows replacing "
                        "a file made with another configuration)")


def _parallel_flags(g) -> None:
    g.add_argument("--num-gpus", type=POS_INT, default=None,
                   help="data parallelism over N GPUs: one process per GPU (CUDA_VISIBLE_DEVICES), "
                        "each answering every N-th instance, then the answers are merged; on a "
                        "machine without CUDA the N processes run on the CPU")
    g.add_argument("--num-shards", type=POS_INT, default=None,
                   help="split the instances into N shards (instance k goes to shard k %% N); "
                        "without --shard, one process per shard is started on this machine and "
                        "the shards are merged at the end")
    g.add_argument("--shard", type=NONNEG_INT, default=None,
                   help="answer only shard I of --num-shards (into <answer>.shard<I>.jsonl), by "
                        "hand to spread a run over machines (then run the same command without "
                        "--shard to merge the shard files, which also answers whatever they miss)")
