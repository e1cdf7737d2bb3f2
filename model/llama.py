"""A compact LLaMA-family decoder (Llama, Mistral, Qwen2) whose forward pass takes a layer-skip set.

    x = model(p, ops, skip=NO_SKIP, gates=None)    # residual stream after the last layer, [T, dim]
    logits = model.logits(x, ops)                  # [T, vocab] float32 (final norm fused in)

* `p` (`Pass`) holds the T input tokens and what each of them attends to (`Extents`: the cache slot its keys and
  values are written to, its rotary position, the committed prefix and the run of slots it sees). Slots and
  positions differ for token trees (slots are consecutive, positions follow tree depth).
* `ops` is the implementation of the sub-layers (model/ops.py: PyTorch ops or the fused Triton kernels), chosen
  once by the engine (model/backends.py), not global state.
* `skip` (LayerSkip) removes whole attention / MLP sub-layers: the residual stream passes unchanged and a skipped
  attention sub-layer writes no KV. This is the draft model of self-speculative decoding.
* `gates` (two bool tensors `[n_layers, T]`, True = keep) apply a *per-token* skip set inside one forward, so several
  candidate skip sets can be scored in one batched pass (each candidate is a block of tokens). Sub-layers still run
  for every token; a gated-off token keeps its residual unchanged.
* `mark(key)` / `mark(None)` is called around every sub-layer when given: a graph capture records which kernels
  belong to which sub-layer (model/graphs.py), so that a skip set can switch them off later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn

from model.config import ModelArgs
from model.kernels.attention import Extents
from model.kv_cache import KVCache


@dataclass(frozen=True)
class LayerSkip:
    """Which sub-layers the draft skips: layer indices whose attention / MLP sub-layer is bypassed."""

    attn: frozenset = frozenset()
    mlp: frozenset = frozenset()

    @classmethod
    def of(cls, attn=(), mlp=()) -> "LayerSkip":
        return cls(frozenset(int(i) for i in attn), frozenset(int(i) for i in mlp))

    def __len__(self) -> int:
        return len(self.attn) + len(self.mlp)

    def to_dict(self) -> dict:
        return {"attn": sorted(self.attn), "mlp": sorted(self.mlp)}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSkip":
        return cls.of(d.get("attn", ()), d.get("mlp", ()))


NO_SKIP = LayerSkip()


@dataclass
class Pass:
    """The inputs of one forward pass besides the weights: T token ids and what each attends to. `kv_len` bounds the
    slots the PyTorch path attends over (a static bucket for CUDA graphs); the Triton path reads the extents."""

    tokens: torch.Tensor  # [T] long
    ext: Extents
    kv_len: int | None = None

    def to(self, device) -> "Pass":
        e = self.ext
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Pass(move(self.tokens), replace(e, prefix=move(e.prefix), run_lo=move(e.run_lo), slot=move(e.slot),
                                               pos=move(e.pos)), self.kv_len)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies, including the `linear` and `llama3` scaling types."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = args.rope_scaling
    kind = sc.get("rope_type", "default") if sc else "default"
    if kind == "linear":
        inv = inv / sc["factor"]
    elif kind == "llama3":
        factor, lo, hi = sc["factor"], sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        old = sc.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv.float()



class Attention(nn.Module):
    """Parameters of an attention sub-layer (the computation lives in model/ops.py)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)


class FeedForward(nn.Module):
    """Parameters of a SiLU-gated MLP sub-layer; gate and up projections fused in `w13`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=args.mlp_bias)


class TransformerBlock(nn.Module):
    """The parameters of one layer: norm + attention, norm + MLP."""

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.cache: KVCache | None = None
        # set by model/placement.py: [(device, first layer, end layer)] per stage when the layers span several
        # devices; None = everything on one device
        self.stages: list[tuple[torch.device, int, int]] | None = None

    def setup_cache(self, max_seq_len: int) -> KVCache:
        """Allocate the static KV cache in the model's dtype: all layers in one tensor on the model's device, or, for
        a model placed over several devices (model/placement.py), one tensor per stage on the stage's device."""
        w = self.output.weight
        groups = [(d, hi - lo) for d, lo, hi in self.stages] if self.stages else None
        self.cache = KVCache(self.args.n_layers, self.args.n_kv_heads, max_seq_len, self.args.head_dim,
                             dtype=w.dtype, device=w.device, groups=groups)
        return self.cache

    def forward(self, p: Pass, ops, skip: LayerSkip = NO_SKIP, gates=None, mark: Callable | None = None):
        """The residual stream [T, dim] after the last layer (module docstring)."""
        assert self.cache is not None, "call setup_cache() first"
        x = self.tok_embeddings(p.tokens)
        for dev, lo, hi in self.stages or [(None, 0, self.args.n_layers)]:
            q = p if dev is None else p.to(dev)
            x = x if dev is None else x.to(dev, non_blocking=True)
            g = None if gates is None or dev is None else (gates[0].to(dev), gates[1].to(dev))
            ctx = ops.begin(self, q.ext, q.kv_len, x.dtype)
            for i in range(lo, hi):
                block = self.layers[i]
                ga, gm = (None, None) if gates is None else ((g or gates)[0][i], (g or gates)[1][i])
                if i not in skip.attn:
                    mark and mark(("attn", i))
                    x = ops.attention(block, i, x, ctx, self.cache, ga)
                    mark and mark(None)
                if i not in skip.mlp:
                    mark and mark(("mlp", i))
                    x = ops.mlp(block, x, gm)
                    mark and mark(None)
        return x

    def logits(self, x: torch.Tensor, ops, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm + LM head, float32 logits [T, V]; `weight` replaces the head (a draft's reduced vocabulary)."""
        return ops.head(x, self.norm.weight, self.norm.eps, self.output.weight if weight is None else weight,
                        self.output.bias if weight is None else None)
