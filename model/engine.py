"""Static-shape forward passes over one KV cache, replayed from CUDA graphs on GPU (plain eager calls on CPU).

Every pass is (tokens[T], cache slots[T], rope positions[T], mask[T, S]) with T from a small fixed set; inputs are
copied into static buffers shared by all graphs of the same T, so a replay costs a handful of tiny copies plus the
graph. A graph is keyed by (T, skip set, head); heads post-process logits inside the graph (argmax, top-k, sampling)
so that only a few numbers ever leave the GPU.

A model placed over several devices (model/placement.py, pipeline placement for batch 1) runs eagerly: CUDA graphs
are turned off (a graph is captured on one device), static inputs live on the first device (where the embedding
is), and the logits are copied back from the last device before the head runs, so every output of `prefill`,
`decode` and `block` is on `engine.device` (the first device) as callers expect.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from model.backends import Backends
from model.llama import NO_SKIP, LayerSkip, Transformer

MAX_GRAPHS = 64
KV_BUCKET = 256  # attention reads the first ceil(used / KV_BUCKET) * KV_BUCKET cache slots, not all of them


class _Static:
    def __init__(self, T: int, S: int, device):
        self.tok = torch.zeros(T, dtype=torch.long, device=device)
        self.cpos = torch.arange(T, dtype=torch.long, device=device)
        self.rpos = torch.zeros(T, dtype=torch.long, device=device)
        self.mask = torch.zeros(T, S, dtype=torch.bool, device=device)
        self.noise = None  # exponential noise [1, vocab] for sampling heads, drawn outside graphs
        self.gates = None  # per-token keep flags [n_layers, T] (attention, MLP) for batched skip-set scoring


def capture_graph(fn: Callable, pool=None) -> tuple:
    """(graph, output) of `fn` captured into a CUDA graph, after one warm-up call on a side stream (lazy
    initialisations, autotuning and compilation must not land inside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class Engine:
    def __init__(self, model: Transformer, max_seq_len: int, backends: Backends | None = None,
                 cuda_graphs: bool | None = None):
        self.model = model
        self.args = model.args
        self.device = model.tok_embeddings.weight.device  # inputs and outputs: the first device
        self.multi_device = getattr(model, "stages", None) is not None
        self.cache = model.setup_cache(max_seq_len)
        self.max_seq_len = max_seq_len
        self.arange = torch.arange(max_seq_len, device=self.device)
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        if self.multi_device:
            self.cuda_graphs = False  # eager on multi-device
        self._static: dict[int, _Static] = {}
        self._graphs: OrderedDict = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self.graph_captures = 0
        self.backends = (backends or Backends()).resolve(self.device)
        from model import attention, linear
        attention.set_backend("auto" if self.backends.kernels == "triton" else "sdpa")
        linear.set_backend("auto" if self.backends.kernels == "triton" else "torch")
        if self.device.type == "cuda":  # GEMV backend per weight shape, before anything is compiled or captured
            linear.prepare(model)
        if (self.backends.kernels == "triton" and self.device.type == "cuda") or self.backends.use_compile:
            from model.llama import enable_compile
            enable_compile(len({d for d, _, _ in model.stages}) if self.multi_device else 1)
            self.warm_up_shapes()

    # ---- plumbing -------------------------------------------------------------------------------------------------
    def static(self, T: int) -> _Static:
        if T not in self._static:
            self._static[T] = _Static(T, self.max_seq_len, self.device)
        return self._static[T]

    def kv_len(self, used: int) -> int:
        return min(self.max_seq_len, -(-used // KV_BUCKET) * KV_BUCKET)

    def _forward(self, st: _Static, skip: LayerSkip, head: Callable, gates, kv_len: int):
        logits = self.model(st.tok[None], st.cpos, st.rpos, st.mask, skip=skip, gates=gates, kv_len=kv_len)[0]
        if self.multi_device:
            logits = logits.to(self.device)
        return head(logits, st)

    @torch.inference_mode()
    def run(self, T: int, skip: LayerSkip, head_name: str, head: Callable, gates=None, kv_len: int | None = None):
        """Run the model on static(T)'s current contents; replay a captured graph when enabled. `head(logits, static)`
        post-processes the logits inside the graph."""
        st = self.static(T)
        kv_len = kv_len or self.max_seq_len
        if not self.cuda_graphs:
            return self._forward(st, skip, head, gates, kv_len)
        key = (T, skip, head_name, gates is not None, kv_len)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(lambda: self._forward(st, skip, head, gates, kv_len))
            self._graphs[key] = entry
            if len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, fn):
        # Warm-up runs write the same K/V the replay will write (same static inputs), so they are harmless.
        entry = capture_graph(fn, self._pool)
        self.graph_captures += 1
        return entry

    @torch.inference_mode()
    def warm_up_shapes(self) -> None:
        """Run every static shape once (plain and gated, decode and all tree / scoring sizes), so that compilation
        happens here and not inside a timed generation. Writes only scratch K/V at slots [0, 128)."""
        from model.tree import BUCKETS
        n = self.args.n_layers
        self.decode(torch.zeros(1, dtype=torch.long, device=self.device), 0)
        for T in BUCKETS:
            if T > self.max_seq_len:
                continue
            intra = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
            tok = torch.zeros(T, dtype=torch.long, device=self.device)
            self.block(T, tok, 0, 0, self.arange[:T], intra)
            keep = torch.ones(n, T, dtype=torch.bool, device=self.device)
            self.block(T, tok, 0, 0, self.arange[:T], intra, gates=(keep, keep))

    @torch.inference_mode()
    def warm_up_decode(self, head_name: str = "logits", head=None, noise: bool = False) -> None:
        """Capture the one-token graph of `head` for every KV-length bucket now, so that no capture lands inside a
        timed generation (the first method timed would otherwise pay for captures the later ones reuse). Writes
        scratch K/V at the last slot of each bucket, which any later pass overwrites before it can attend to it."""
        tok = torch.zeros(1, dtype=torch.long, device=self.device)
        for end in range(KV_BUCKET, self.max_seq_len + KV_BUCKET, KV_BUCKET):
            self.decode(tok, min(end, self.max_seq_len) - 1, head_name=head_name, head=head, noise=noise)

    # ---- passes ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Eager forward of a prompt chunk at slots start.. (causal, sees everything before); last position's logits."""
        T = tokens.shape[0]
        pos = self.arange[start:start + T]
        mask = self.arange[None, :] <= pos[:, None]
        return self.model(tokens[None].to(self.device), pos, pos, mask, last_only=True, eager=True)[0, -1] \
            .to(self.device)

    @torch.inference_mode()
    def decode(self, tok: torch.Tensor, pos: int, skip: LayerSkip = NO_SKIP, head_name="logits", head=None,
               noise: bool = False):
        """One token at slot `pos` (rope position `pos`), attending slots [0, pos]. With `noise`, fresh Exp(1) noise
        is drawn (eagerly, from the global generator) into the static buffer a sampling head reads."""
        st = self.static(1)
        if noise:
            if st.noise is None:
                st.noise = torch.empty(1, self.args.vocab_size, device=self.device)
            st.noise.exponential_(1)
        st.tok.copy_(tok.reshape(1))
        st.cpos.fill_(pos)
        st.rpos.fill_(pos)
        torch.le(self.arange, pos, out=st.mask[0])
        return self.run(1, skip, head_name, head or _identity, kv_len=self.kv_len(pos + 1))

    @torch.inference_mode()
    def block(self, T: int, tokens: torch.Tensor, prefix: int, start: int, rope_pos: torch.Tensor,
              intra: torch.Tensor, head_name="logits", head=None, skip: LayerSkip = NO_SKIP, gates=None):
        """T tokens at slots [start, start+T) that see slots [0, prefix) plus `intra` [T, T] among themselves."""
        st = self.static(T)
        st.tok.copy_(tokens)
        torch.add(self.arange[:T], start, out=st.cpos)
        st.rpos.copy_(rope_pos)
        torch.lt(self.arange.expand(T, -1), prefix, out=st.mask)
        st.mask[:, start:start + T] = intra
        if gates is not None:
            if st.gates is None:
                st.gates = (torch.ones_like(gates[0]), torch.ones_like(gates[1]))
            st.gates[0].copy_(gates[0])
            st.gates[1].copy_(gates[1])
        return self.run(T, skip, head_name, head or _identity, st.gates if gates is not None else None,
                        kv_len=self.kv_len(start + T))


def _identity(x, st=None):
    return x
