"""One decoding stream over a static KV cache: prefill, plain decoding steps, and the graph machinery SWIFT builds on.

State on the device: `seq` (the stream's token ids: prompt, then generated tokens) and `cursor` (the slot of the
last committed token, whose keys and values are not written yet: the next pass's input). The host mirrors the
committed length in `length`. Every pass derives its slots, positions and attention extents from `cursor` on the
device, so a captured graph serves every position of every stream: there are no per-position graphs, and a pass
needs no host input but the replay itself.

`run(key, fn)` runs `fn` as a CUDA graph (captured on first use, replayed after; `graph_captures` counts the
captures, so callers can check that nothing is captured while timed) or eagerly on CPU / a model placed over several
devices. `warm_up_decode` captures the plain-decoding graphs before anything is timed.

The sub-layer implementation (`ops`, model/ops.py) follows `backends` (model/backends.py): the fused Triton kernels
when they pass a self-check against the PyTorch ops on this device's real weights, else PyTorch. Prompts are always
prefilled with the PyTorch ops (any length, SDPA); every method shares the prefill. With CUDA graphs the prefill is
a graph per prompt-length bucket (`prefill_len`: the prompt padded to 1/8 of its power of two, at least 64 tokens):
eagerly, its ~20 operations per layer cost a host launch each (12-21 ms per SmolLM2 answer on an H200, against
well under 1 ms of GPU work), and that host time varied between methods.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from dataclasses import replace
from typing import Callable

import torch

from model import graphs, kernels
from model.backends import Backends
from model.errors import UserError
from model.kernels.attention import Extents
from model.llama import NO_SKIP, LayerSkip, Pass, Transformer
from model.ops import TorchOps, TritonOps
from model.sampling import SamplingConfig, next_token

MAX_GRAPHS = 256
KV_BUCKET = 256  # the PyTorch path attends over the first ceil(used / KV_BUCKET) * KV_BUCKET slots
ALIGN = 128  # cache slots are allocated in whole attention chunks
DECODE_CHUNKS = (1, 2, 4, 8)  # plain steps per graph replay (the host looks for EOS between replays)
PREFILL_STEP = 64  # prompts are prefilled padded to a multiple of max(64, 1/8 of their power of two) (graphs)


def prefill_len(prompt_len: int) -> int:
    """The prompt-length bucket of the prefill graphs: at most 1/8 (at least 64 tokens) more than the prompt."""
    step = max(PREFILL_STEP, 1 << max(0, prompt_len.bit_length() - 4))
    return -(-prompt_len // step) * step


class Engine:
    def __init__(self, model: Transformer, max_seq_len: int, backends: Backends | None = None,
                 cuda_graphs: bool | None = None):
        self.model = model
        self.args = model.args
        self.device = model.tok_embeddings.weight.device  # inputs and outputs: the first device
        self.multi_device = model.stages is not None
        self.max_seq_len = -(-max_seq_len // ALIGN) * ALIGN
        self.cache = model.setup_cache(self.max_seq_len)
        on_cuda = self.device.type == "cuda" and not self.multi_device
        self.cuda_graphs = on_cuda if cuda_graphs is None else (cuda_graphs and not self.multi_device)
        self.window = self.args.sliding_window or 0
        self.seq = torch.zeros(self.max_seq_len, dtype=torch.long, device=self.device)
        self.cursor = torch.zeros(1, dtype=torch.long, device=self.device)
        self.arange = torch.arange(self.max_seq_len, device=self.device)
        self.length = 0
        # new tokens the device may have committed past `length` that the host has not read yet (the earlier cycles
        # of a group of SWIFT cycles read together): `kv_len` bounds the passes by both
        self.ahead = 0
        self.reference = TorchOps()
        self.ops, self.backends, self.kernel_note = self._choose_ops((backends or Backends()), model)
        self._graphs: OrderedDict = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._buffers: dict = {}
        self.graph_captures = 0
        self.pad_prefill = self.cuda_graphs  # prefill in graphs of `prefill_len` tokens (eagerly: tests)

    # ---- backends -------------------------------------------------------------------------------------------------
    def _choose_ops(self, requested: Backends, model):
        self.asked = requested
        ops, b, note = self._choose_passes(requested, model)
        if requested.tails == "kernels" and (b.kernels != "triton" or self.multi_device):  # the tails need both
            why = note or "the layers are placed on several devices"
            raise RuntimeError(f"the tail kernels need the Triton passes on one device ({why}); ask for tails auto "
                               f"or torch")
        if self.multi_device:
            b = replace(b, tails="torch")
        return ops, b, note

    def _choose_passes(self, requested: Backends, model):
        b = requested.resolve(self.device)
        n_dev = len({d for d, _, _ in model.stages}) if self.multi_device else 1
        torch_ops = lambda: TorchOps(compile=b.compile == "on", n_devices=n_dev)  # noqa: E731
        if b.kernels == "torch":
            return torch_ops(), b, None
        from model.kernels import gemm
        try:
            gemm.check_settings()
            kernels.pdl_requested()
        except ValueError as exc:
            raise UserError(f"{exc} (an environment setting of the Triton kernels; see model/kernels/)") from None
        if not kernels.available(self.device):
            if requested.kernels == "triton":
                raise UserError(f"--kernels triton: the Triton kernels do not run on {self.device} (they need a CUDA "
                                f"GPU and the triton package); use --kernels auto or torch.")
            note = f"the Triton kernels do not run on {self.device}; using the PyTorch ops"
            return torch_ops(), replace(b, kernels="torch", tails="torch"), note
        problem = self._kernels_disagree(TritonOps())
        if problem is None:
            return TritonOps(), b, None
        note = f"the Triton kernels disagree with the PyTorch ops on this device ({problem}); using the PyTorch ops"
        if requested.kernels == "triton":
            raise UserError(f"--kernels triton: the Triton kernels disagree with the PyTorch ops on this device "
                            f"({problem}); use --kernels auto (which then runs the PyTorch ops) or torch.")
        warnings.warn(note, RuntimeWarning)
        return torch_ops(), replace(b, kernels="torch", tails="torch"), note

    @torch.inference_mode()
    def _kernels_disagree(self, ops) -> str | None:
        """Compare one decode step (a 150-token random prefix, so several attention chunks) of `ops` with the PyTorch
        ops on the model's own weights; None when they agree to the dtype's rounding."""
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            n = min(150, self.max_seq_len - 1)
            prompt = torch.randint(0, self.args.vocab_size, (n + 1,), generator=g).to(self.device)
            ar = self.arange[:n]
            zeros = torch.zeros_like(ar)
            self.model(Pass(prompt[:n], self.ext(zeros, zeros, ar, ar)), self.reference)
            last = self.arange[n:n + 1]
            p = Pass(prompt[n:], self.ext(last, last, last, last))
            ref = self.model.logits(self.model(p, self.reference), self.reference)
            got = self.model.logits(self.model(p, ops), ops)
            err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
            tol = 1e-3 if self.model.output.weight.dtype == torch.float32 else 0.1  # bf16: 32 layers of rounding
            return None if err <= tol else f"max relative difference {err:.3g} > {tol}"
        except Exception as e:  # noqa: BLE001 - any kernel failure means: use the PyTorch ops
            return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    # ---- plumbing -------------------------------------------------------------------------------------------------
    def ext(self, prefix, run_lo, slot, pos) -> Extents:
        return Extents(prefix, run_lo, slot, pos, self.window)

    def kv_len(self, extra: int) -> int | None:
        """Slots the PyTorch path attends over for a pass reaching `extra` slots past the committed length (a static
        bucket); None for the Triton path, which reads the extents."""
        if self.ops.inplace:
            return None
        used = self.length + self.ahead + extra
        return min(self.max_seq_len, -(-used // KV_BUCKET) * KV_BUCKET)

    def forward(self, p: Pass, skip: LayerSkip = NO_SKIP, gates=None, mark=None) -> torch.Tensor:
        return self.model(p, self.ops, skip=skip, gates=gates, mark=mark)

    def logits(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model.logits(x, self.ops, weight)
        return out.to(self.device) if self.multi_device else out

    def buffer(self, key, shape, dtype=torch.float32) -> torch.Tensor:
        """A static buffer (graph input drawn or filled outside the graph), made once per key."""
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(shape, dtype=dtype, device=self.device)
        return self._buffers[key]

    @torch.inference_mode()
    def run(self, key, fn: Callable, track: bool = False, plain_launches: bool = False):
        """`fn()` (`fn(mark)` when `track`) as a replayed CUDA graph, captured on first use; eagerly without graphs.
        `plain_launches`: the graph launches each kernel after the one before it has finished, whatever SWIFT_PDL
        says (a graph of its own: the key records it)."""
        if not self.cuda_graphs:
            return fn(lambda k: None) if track else fn()
        return self.graph(key, fn, track, plain_launches).replay()

    def has_graph(self, key, plain_launches: bool = False) -> bool:
        return self._graph_key(key, plain_launches) in self._graphs

    @staticmethod
    def _graph_key(key, plain_launches: bool):
        return (*key, "plain launches") if plain_launches else key

    def graph(self, key, fn: Callable, track: bool = False, plain_launches: bool = False) -> graphs.Graph:
        key = self._graph_key(key, plain_launches)
        entry = self._graphs.get(key)
        if entry is None:
            # a capture first runs `fn` once for real (graphs.capture's warm-up call): a pass that advances the cursor
            # (plain steps, a verification's commit) would then advance it twice with the replay that follows. Every
            # pass derives its slots from the cursor and rewrites what it reads, so with the cursor put back the
            # replay repeats the warm-up call's work exactly, and a graph first used inside a stream acts once
            cursor = self.cursor.clone()
            with kernels.dependent_launches(False) if plain_launches else contextlib.nullcontext():
                entry = graphs.capture(fn, self._pool, track=track)
            self.cursor.copy_(cursor)
            self.graph_captures += 1
            self._graphs[key] = entry
            if len(self._graphs) > MAX_GRAPHS:  # the least recently used, but never a prefill graph: warm-up
                old = next((k for k in self._graphs if k[0] != "prefill"), None)  # captured those for the
                if old is not None:  # timed prompts, once per bucket, so they are the least recently used
                    del self._graphs[old]
        else:
            self._graphs.move_to_end(key)
        return entry

    # ---- passes ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, prompt_ids: list[int], sampling: SamplingConfig = SamplingConfig()) -> torch.Tensor:
        """Prefill the prompt (PyTorch ops; with `pad_prefill`, padded to its `prefill_len` bucket in that bucket's
        graph) and commit the first generated token: seq[P] is the token after the prompt, `cursor` = P (its keys
        and values come with the next pass), `length` = P + 1. Returns the prompt's last logits [V]."""
        P = len(prompt_ids)
        self.seq[:P] = torch.tensor(prompt_ids, dtype=torch.long)
        if self.pad_prefill:  # rows past the prompt write keys and values past it: later passes overwrite them
            B = min(self.max_seq_len, prefill_len(P))  # before any pass reads them, and the prompt never sees them
            last = self.buffer("prefill_last", (1,), torch.long)
            last.fill_(P - 1)
            try:
                logits = self.run(("prefill", B), lambda: self._prefill(B, last)).clone()
            except RuntimeError as exc:  # a capture this device refuses: the eager prefill, from now on
                if self.has_graph(("prefill", B)) or not self.cuda_graphs or isinstance(exc, torch.OutOfMemoryError):
                    raise
                warnings.warn(f"the prefill graph of {B} tokens could not be captured ({str(exc)[:200]}); "
                              f"prefilling eagerly", RuntimeWarning)
                self.pad_prefill = False
                logits = self._prefill(P, None)
        else:
            logits = self._prefill(P, None)
        self.seq[P:P + 1] = next_token(logits, sampling)
        self.cursor.fill_(P)
        self.length, self.ahead = P + 1, 0
        return logits[0]

    def _prefill(self, n: int, last: torch.Tensor | None) -> torch.Tensor:
        """The first n slots' pass (PyTorch ops) and the logits [1, V] of row `last` (None: the last row)."""
        ar = self.arange[:n]
        zeros = torch.zeros_like(ar)
        x = self.model(Pass(self.seq[:n], self.ext(zeros, zeros, ar, ar), None if last is None else n),
                       self.reference)
        return self.model.logits(x[-1:] if last is None else x.index_select(0, last), self.reference).to(self.device)

    def one_step(self, pos: torch.Tensor) -> Pass:
        """The pass of the token at slot `pos` [1] (its own rotary position), attending slots [0, pos]."""
        return Pass(self.seq.index_select(0, pos), self.ext(pos, pos, pos, pos), self.kv_len(DECODE_CHUNKS[-1]))

    @torch.inference_mode()
    def decode(self, n: int, sampling: SamplingConfig = SamplingConfig()) -> None:
        """n plain decoding steps with the full model from the cursor: fills seq[length, length + n)."""
        assert n in DECODE_CHUNKS, n
        noise = None
        if not sampling.greedy:  # exponential-race noise, drawn outside the graph from the global generator
            noise = self.buffer(("noise", n), (n, self.args.vocab_size))
            noise.exponential_(1)

        def steps():
            for d in range(n):
                pos = self.cursor + d
                logits = self.logits(self.forward(self.one_step(pos)))
                nxt = next_token(logits, sampling, None if noise is None else noise[d:d + 1])
                self.seq.index_copy_(0, pos + 1, nxt)
            self.cursor.add_(n)

        self.run(("decode", n, sampling, self.kv_len(DECODE_CHUNKS[-1])), steps)
        self.length += n

    def decode_chunk(self, remaining: int) -> int:
        """The largest plain-step chunk that fits `remaining` tokens."""
        return max(c for c in DECODE_CHUNKS if c <= max(1, remaining))

    @torch.inference_mode()
    def warm_up_prefill(self, prompts) -> int:
        """Prefill each distinct prompt length of `prompts` once, untimed (with graphs: each `prefill_len` bucket,
        captured here): eager PyTorch ops do lazy work per new input shape (tens of ms on an H200), and that work
        must not land in the timed answers of whichever method meets a length first. Leaves the stream empty;
        returns the lengths (buckets) warmed."""
        lengths = {}
        for ids in prompts:
            P = len(ids)
            lengths.setdefault(min(self.max_seq_len, prefill_len(P)) if self.pad_prefill else P, ids)
        padded = self.pad_prefill
        for ids in lengths.values():
            self.start(ids)
        if padded and not self.pad_prefill:  # a capture was refused: warm the eager prefill of every length
            return self.warm_up_prefill(prompts)
        self.length = 0
        self.cursor.zero_()
        return len(lengths)

    @torch.inference_mode()
    def warm_up_decode(self, sampling: SamplingConfig = SamplingConfig()) -> None:
        """Capture every plain-decoding graph now (each chunk size; for the PyTorch path each KV-length bucket), so
        that no capture lands inside a timed generation. Runs on scratch positions and leaves the stream empty."""
        if not self.cuda_graphs:
            return
        lengths = [0] if self.ops.inplace else range(0, self.max_seq_len - DECODE_CHUNKS[-1], KV_BUCKET)
        for length in lengths:
            for n in DECODE_CHUNKS:
                self.length = length
                self.cursor.fill_(max(0, length - 1))
                self.decode(n, sampling)
        self.length = 0
