"""What keeps a long unattended run safe: signals, the answer-file lock, early write checks and
out-of-memory messages that say what the run needs.

* `Interrupts`: SIGINT/SIGTERM end a run (exit 130), but never while an answer is being written;
* `exclusive`: two runs on one answer file at the same time are refused (advisory lock);
* `check_writable`: the answer file's place is checked before the model is loaded, without
  creating anything (a failed run leaves no empty folder);
* `oom_error`: CUDA out-of-memory as a message with the memory the weights and the KV cache need.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from model.errors import UserError


class Interrupts:
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

    def __enter__(self) -> "Interrupts":
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


def check_writable(path: Path) -> None:
    """Fail early (before the model is loaded) when the answer file's folder cannot be made or
    written; creates nothing (the folder is made with the first answer)."""
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the folder of the answer file {path} ({existing} is not a "
                        f"folder); choose a writable place with --answer-file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "its folder" if existing == folder else f"{existing}, where its folder would be made,"
        raise UserError(f"cannot write the answer file {path}: {where} is not writable; choose a "
                        f"writable place with --answer-file.")


# ----------------------------------------------------------------------------------------------
# memory estimate for out-of-memory messages


def param_count(args) -> int:
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
        weights = param_count(args) * elem
    kv = args.n_layers * 2 * args.n_kv_heads * capacity * args.head_dim * elem
    return weights, kv


def oom_error(s, args, capacity: Optional[int], longest: Optional[int], model=None) -> UserError:
    """The message for an out-of-memory error of the run with settings ``s`` (its dtype_name,
    model_path, device, layer_devices and max_new_tokens); ``args``: the model's ModelArgs when
    known."""
    import torch
    from model.generate import SCRATCH_SLOTS, cache_capacity

    gib = 1024 ** 3
    if args is None:
        need = f"the {s.dtype_name} weights of {s.model_path} alone do not fit"
    else:
        cap = capacity or cache_capacity(1, s.max_new_tokens)
        weights, kv = memory_needs(args, s.dtype_name, cap, model)
        need = (f"this run needs about {weights / gib:.2f} GiB for the {s.dtype_name} weights plus "
                f"{kv / gib:.2f} GiB for the KV cache ({cap} slots = longest prompt "
                f"{longest if longest is not None else '?'} + --max-new-tokens "
                f"{s.max_new_tokens} + {SCRATCH_SLOTS} scratch; {args.n_layers} layers x "
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
