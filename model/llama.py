"""A compact LLaMA-family decoder (Llama, Mistral, Qwen2) whose forward pass takes a layer-skip set.

forward(idx, cache_pos, rope_pos, mask, skip=None, gates=None) -> logits

* `cache_pos` are the KV-cache slots written by the T input tokens; `rope_pos` their rotary positions. They differ
  for token trees (slots are consecutive, positions follow tree depth).
* `mask` is an explicit bool mask `[B, 1, T, S]` over all S cache slots (True = may attend).
* `skip` (LayerSkip) removes whole attention / MLP sub-layers: the residual stream passes unchanged and a skipped
  attention sub-layer writes no KV. This is the draft model of self-speculative decoding.
* `gates` (two bool tensors `[n_layers, T]`, True = keep) apply a *per-token* skip set inside one forward, so several
  candidate skip sets can be scored in one batched pass (each candidate is a block of tokens). Sub-layers still run
  for every token; a gated-off token keeps its residual unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import attention
from model.config import ModelArgs
from model.kv_cache import KVCache
from model.linear import linear


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

    def to_bits(self, n_layers: int) -> list[int]:
        """2*n_layers bits: attention bits of layers 0..L-1, then MLP bits."""
        return [int(i in self.attn) for i in range(n_layers)] + [int(i in self.mlp) for i in range(n_layers)]


NO_SKIP = LayerSkip()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused kernel on GPU


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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [B, T, 1, D] in x's dtype (rotate-half convention of HF checkpoints)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Parameters of an attention sub-layer (the computation lives in the functions below)."""

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


# The per-sub-layer computations are plain functions of tensors, so that `enable_compile` can hand them to
# torch.compile once (one compiled graph per input shape, shared by all layers) and fuse their elementwise work.
# Each sub-layer ends with its residual add *and* the RMSNorm of whichever sub-layer runs next (`next_w`: that
# sub-layer's norm weight, or the final norm's), so that a compiled add and norm are one kernel; the next sub-layer
# receives the residual stream x and its normalised copy xn.
def attn_in(xn, wqkv, bqkv, cos, sin, n_q: int, n_kv: int, hd: int):
    """Fused q/k/v projection of the normalised input, RoPE on q and k. Returns q folded for grouped-query attention
    [B, n_kv, g*T, hd] (the g query heads of a KV head stacked on the query axis: no K/V repeat) and keys and values
    stacked [2, B, n_kv, T, hd] (written to the cache by one kernel; compiled, the stack fuses into the RoPE kernel)."""
    B, T, _ = xn.shape
    qkv = linear(xn, wqkv, bqkv).view(B, T, n_q + 2 * n_kv, hd)
    qk = apply_rope(qkv[:, :, : n_q + n_kv], cos, sin)
    g = n_q // n_kv
    q = qk[:, :, :n_q].reshape(B, T, n_kv, g, hd).permute(0, 2, 3, 1, 4).reshape(B, n_kv, g * T, hd)
    kv = torch.stack((qk[:, :, n_q:], qkv[:, :, n_q + n_kv:])).transpose(2, 3)
    return q, kv


def attn_out(x, o, wo, bo, gate, next_w, eps: float, n_q: int, hd: int):
    """Unfold the attention output, project, add to the residual (kept unchanged where `gate` is False); returns the
    new residual and its RMSNorm with `next_w`."""
    B, T, _ = x.shape
    n_kv = o.shape[1]
    o = o.reshape(B, n_kv, n_q // n_kv, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, n_q * hd)
    h = x + linear(o, wo, bo)
    h = h if gate is None else torch.where(gate, h, x)
    return h, F.rms_norm(h, (h.shape[-1],), next_w, eps)


def mlp(x, xn, w13, b13, w2, b2, gate, next_w, eps: float):
    gate_up = linear(xn, w13, b13)
    a, b = gate_up.chunk(2, dim=-1)
    h = x + linear(F.silu(a) * b, w2, b2)
    h = h if gate is None else torch.where(gate, h, x)
    return h, F.rms_norm(h, (h.shape[-1],), next_w, eps)


EAGER = {"attn_in": attn_in, "attn_out": attn_out, "mlp": mlp}
COMPILED = dict(EAGER)  # replaced by torch.compile'd versions in enable_compile()


def enable_compile(n_devices: int = 1) -> None:
    """Compile the sub-layer functions with torch.compile (GPU). CUDA graphs are still captured by the engine.
    Each device a placed model spans needs its own graphs (dynamo guards on the device): room for `n_devices` sets."""
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64 * max(1, n_devices))
    for name, fn in (("attn_in", attn_in), ("attn_out", attn_out), ("mlp", mlp)):
        COMPILED[name] = torch.compile(fn, dynamic=False, fullgraph=True)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, xn, cos, sin, cache, cache_pos, mask, skip_attn=False, skip_mlp=False,
                attn_gate=None, mlp_gate=None, kv_len=None, eager=False, next_w=None):
        """x: residual stream; xn: x normalised for this block's first sub-layer that runs. `next_w`: the norm weight
        of the sub-layer that runs after this block (the final norm after the last layer). Returns (x, xn) likewise.
        `mask`: additive bias [B, 1, g*T, kv_len] already expanded for grouped queries (Transformer.forward).
        `eager` bypasses compiled sub-layer functions (prompts have arbitrary lengths: no recompiles)."""
        KERNELS = EAGER if eager else COMPILED
        eps = self.ffn_norm.eps
        if not skip_attn:
            a = self.attention
            q, kv = KERNELS["attn_in"](xn, a.wqkv.weight, a.wqkv.bias, cos, sin, a.n_heads, a.n_kv, a.hd)
            keys, values = cache.update(self.layer, cache_pos, kv)
            if kv_len is not None:  # attend only over the slots in use (bucketed), not the whole cache
                keys, values = keys[:, :, :kv_len], values[:, :, :kv_len]
            o = attention(q, keys, values, mask)
            after = next_w if skip_mlp else self.ffn_norm.weight
            x, xn = KERNELS["attn_out"](x, o, a.wo.weight, a.wo.bias, attn_gate, after, eps, a.n_heads, a.hd)
        if not skip_mlp:
            f = self.feed_forward
            x, xn = KERNELS["mlp"](x, xn, f.w13.weight, f.w13.bias, f.w2.weight, f.w2.bias, mlp_gate, next_w, eps)
        return x, xn

    def first_norm(self, skip_attn: bool, skip_mlp: bool, following):
        """The norm weight of this block's first sub-layer that runs (`following` when both are skipped)."""
        if not skip_attn:
            return self.attention_norm.weight
        return following if skip_mlp else self.ffn_norm.weight


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
        # devices; None = everything on one device (the plain path below)
        self.stages: list[tuple[torch.device, int, int]] | None = None

    def setup_cache(self, max_seq_len: int, batch_size: int = 1) -> KVCache:
        """Allocate the static KV cache in the model's dtype: all layers in one tensor on the model's device, or, for
        a model placed over several devices (model/placement.py), one tensor per stage on the stage's device."""
        w = self.output.weight
        groups = [(d, hi - lo) for d, lo, hi in self.stages] if self.stages else None
        self.cache = KVCache(self.args.n_layers, batch_size, self.args.n_kv_heads, max_seq_len, self.args.head_dim,
                             dtype=w.dtype, device=w.device, groups=groups)
        return self.cache

    def rope(self, rope_pos: torch.Tensor, dtype):
        freqs = rope_pos.float()[..., None] * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, idx: torch.Tensor, cache_pos: torch.Tensor, rope_pos: torch.Tensor, mask: torch.Tensor,
                skip: LayerSkip | None = None, gates: tuple[torch.Tensor, torch.Tensor] | None = None,
                last_only: bool = False, kv_len: int | None = None, eager: bool = False) -> torch.Tensor:
        assert self.cache is not None, "call setup_cache() first"
        if rope_pos.dim() == 1:
            rope_pos = rope_pos[None].expand(idx.shape[0], -1)
        if mask.dim() == 2:
            mask = mask[None, None]
        if kv_len is not None:
            mask = mask[..., :kv_len]
        if self.args.sliding_window is not None:  # committed slot j holds position j: seen from p iff j > p - window
            slots = torch.arange(mask.shape[-1], device=mask.device)
            mask = mask & (slots > rope_pos[:, None, :, None] - self.args.sliding_window)
        x = self.tok_embeddings(idx)
        g = self.args.n_heads // self.args.n_kv_heads
        if g > 1:  # rows ordered (query head in group, token), as Attention folds them
            mask = mask.repeat(1, 1, g, 1)
        # one additive bias for all layers (SDPA would otherwise convert a bool mask in every layer)
        mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        cos, sin = self.rope(rope_pos, x.dtype)
        skip = skip or NO_SKIP
        if self.stages is not None:
            x, xn = self._forward_stages(x, cos, sin, cache_pos, mask, skip, gates, kv_len, eager)
        else:
            x, xn = self._run_layers(x, 0, self.args.n_layers, self.norm.weight, cos, sin, cache_pos, mask, skip,
                                     gates, kv_len, eager)
        if last_only:
            xn = xn[:, -1:]
        return linear(xn, self.output.weight, self.output.bias).float()

    def _run_layers(self, x, lo, hi, final_w, cos, sin, cache_pos, mask, skip, gates, kv_len, eager):
        """Layers lo..hi-1 on x; returns (x, xn) with xn = RMSNorm(x, final_w). Each block hands the next one x and its
        normalised copy (the norm fused into the previous sub-layer); only the first norm runs on its own."""
        nexts, following = [None] * (hi - lo), final_w  # norm weight of what runs after each block, given the skips
        for i in range(hi - 1, lo - 1, -1):
            nexts[i - lo] = following
            following = self.layers[i].first_norm(i in skip.attn, i in skip.mlp, following)
        xn = F.rms_norm(x, (x.shape[-1],), following, self.norm.eps)
        for i in range(lo, hi):
            ga = gm = None
            if gates is not None:
                ga, gm = gates[0][i - lo][None, :, None], gates[1][i - lo][None, :, None]
            x, xn = self.layers[i](x, xn, cos, sin, self.cache, cache_pos, mask, i in skip.attn, i in skip.mlp, ga, gm,
                                   kv_len, eager, nexts[i - lo])
        return x, xn

    def _forward_stages(self, x, cos, sin, cache_pos, mask, skip, gates, kv_len, eager):
        """The layer loop of a model placed over several devices: at each stage boundary the hidden state moves to the
        stage's device, and the per-forward inputs (rotary tables, mask bias, cache slots, gates) are copied there
        once per stage (a no-op when the stage shares the previous device). Each stage normalises its own input (a
        norm weight lives on one device), so the fused norm of a stage's last sub-layer is unused except on the last."""
        xn = None
        for dev, lo, hi in self.stages:
            x = x.to(dev, non_blocking=True)
            c, s_, m, cp = (t.to(dev, non_blocking=True) for t in (cos, sin, mask, cache_pos))
            g = None if gates is None else (gates[0][lo:hi].to(dev, non_blocking=True),
                                            gates[1][lo:hi].to(dev, non_blocking=True))
            last = hi == self.args.n_layers
            final_w = self.norm.weight if last else self.layers[hi - 1].ffn_norm.weight
            x, xn = self._run_layers(x, lo, hi, final_w, c, s_, cp, m, skip, g, kv_len, eager)
        return x, xn
