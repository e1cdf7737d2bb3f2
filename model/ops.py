"""The computation of a decoder's sub-layers, in two interchangeable implementations.

`Transformer.forward` (model/llama.py) walks the layers and calls, for every sub-layer that runs,
`ops.attention(block, i, x, ctx, cache, gate)` or `ops.mlp(block, x, gate)`, then `ops.head(...)` for logits:

* `TorchOps`: PyTorch ops (cuBLAS products, SDPA over an explicit mask), optionally `torch.compile`d. The reference,
  the CPU path and the prefill of every method.
* `TritonOps`: the fused batch-invariant kernels of `model/kernels/`: per layer a normed q/k/v product, a RoPE +
  cache write, attention (split + combine), the output product adding into the residual; a normed gate/up product
  and a SiLU-gated down product adding into the residual. The residual stream is updated in place, so switching a
  sub-layer's kernels off in a captured graph skips it exactly (model/graphs.py).

A gate (bool [T], one per row) keeps the residual of rows whose flag is False unchanged: it scores several skip sets
in one batched pass (each candidate's tokens gate off the sub-layers it skips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels.attention import Extents, reference_mask


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, 1, D] in x's dtype (rotate-half convention of HF checkpoints)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _attn_in(x, nw, eps: float, wqkv, bqkv, cos, sin, n_q: int, n_kv: int, hd: int):
    """RMSNorm, fused q/k/v product, RoPE. q [1, n_q, T, hd]; k, v [n_kv, T, hd]."""
    T = x.shape[0]
    qkv = F.linear(F.rms_norm(x, (x.shape[-1],), nw, eps), wqkv, bqkv).view(T, n_q + 2 * n_kv, hd)
    qk = apply_rope(qkv[:, : n_q + n_kv], cos, sin)
    return qk[:, :n_q].transpose(0, 1)[None], qk[:, n_q:].transpose(0, 1), qkv[:, n_q + n_kv:].transpose(0, 1)


def _attn_out(x, o, wo, bo, gate):
    """Project the attention output [1, n_q, T, hd] and add it to the residual (unchanged where `gate` is False)."""
    T = x.shape[0]
    h = x + F.linear(o[0].transpose(0, 1).reshape(T, -1), wo, bo)
    return h if gate is None else torch.where(gate[:, None], h, x)


def _mlp(x, nw, eps: float, w13, b13, w2, b2, gate):
    a, b = F.linear(F.rms_norm(x, (x.shape[-1],), nw, eps), w13, b13).chunk(2, dim=-1)
    h = x + F.linear(F.silu(a) * b, w2, b2)
    return h if gate is None else torch.where(gate[:, None], h, x)


class TorchOps:
    """Reference implementation (module docstring). `compile` fuses each sub-layer's elementwise work."""

    name = "torch"
    inplace = False

    def __init__(self, compile: bool = False, n_devices: int = 1):
        self.fns = {"attn_in": _attn_in, "attn_out": _attn_out, "mlp": _mlp}
        if compile:
            import torch._dynamo
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64 * n_devices)
            self.fns = {k: torch.compile(f, dynamic=False, fullgraph=True) for k, f in self.fns.items()}

    def begin(self, model, ext: Extents, kv_len: int | None, dtype) -> dict:
        """Per-pass inputs shared by every layer: rotary tables and the additive attention bias."""
        S = kv_len or model.cache.max_seq_len
        freqs = ext.pos.float()[:, None] * model.inv_freq.to(ext.pos.device)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        bias = torch.zeros(ext.slot.shape[0], S, dtype=dtype, device=ext.slot.device)
        bias.masked_fill_(~reference_mask(ext, S), float("-inf"))
        return dict(cos=emb.cos().to(dtype), sin=emb.sin().to(dtype), bias=bias, S=S, ext=ext)

    def attention(self, block, i: int, x, ctx: dict, cache, gate=None):
        a, S = block.attention, ctx["S"]
        q, k, v = self.fns["attn_in"](x, block.attention_norm.weight, block.attention_norm.eps, a.wqkv.weight,
                                      a.wqkv.bias, ctx["cos"], ctx["sin"], a.n_heads, a.n_kv, a.hd)
        cache.update(i, ctx["ext"].slot, k, v)
        keys, values = cache.layer(i)
        o = F.scaled_dot_product_attention(q, keys[None, :, :S], values[None, :, :S], attn_mask=ctx["bias"],
                                           enable_gqa=a.n_heads != a.n_kv)
        return self.fns["attn_out"](x, o, a.wo.weight, a.wo.bias, gate)

    def mlp(self, block, x, gate=None):
        f, n = block.feed_forward, block.ffn_norm
        return self.fns["mlp"](x, n.weight, n.eps, f.w13.weight, f.w13.bias, f.w2.weight, f.w2.bias, gate)

    def head(self, x, norm_w, eps: float, w, b=None) -> torch.Tensor:
        return F.linear(F.rms_norm(x, (x.shape[-1],), norm_w, eps), w, b).float()


class TritonOps:
    """The fused batch-invariant kernels (module docstring); residual updated in place."""

    name = "triton"
    inplace = True

    def begin(self, model, ext: Extents, kv_len: int | None, dtype) -> dict:
        return dict(ext=ext, inv_freq=model.inv_freq.to(ext.pos.device))

    def attention(self, block, i: int, x, ctx: dict, cache, gate=None):
        from model.kernels.attention import attention
        from model.kernels.gemm import gemm
        from model.kernels.rope import rope_write
        a, n = block.attention, block.attention_norm
        qkv = gemm(x, a.wqkv.weight, bias=a.wqkv.bias, norm=n.weight, eps=n.eps)
        keys, values = cache.layer(i)
        q = rope_write(qkv, ctx["ext"].pos, ctx["ext"].slot, ctx["inv_freq"], keys, values, a.n_heads, a.n_kv)
        o = attention(q, keys, values, ctx["ext"])
        gemm(o, a.wo.weight, bias=a.wo.bias, residual=x, keep=gate)
        return x

    def mlp(self, block, x, gate=None):
        from model.kernels.gemm import gemm
        f, n = block.feed_forward, block.ffn_norm
        act = gemm(x, f.w13.weight, bias=f.w13.bias, norm=n.weight, eps=n.eps, glu=True)
        gemm(act, f.w2.weight, bias=f.w2.bias, residual=x, keep=gate)
        return x

    def head(self, x, norm_w, eps: float, w, b=None) -> torch.Tensor:
        from model.kernels.gemm import gemm
        return gemm(x, w, bias=b, norm=norm_w, eps=eps, out_dtype=torch.float32)
