"""Static, preallocated KV cache for all layers in one tensor.

Speculative tokens are written at slots past the committed length. Accepting them is bookkeeping (the caller moves
its committed length); rejecting them is doing nothing. The only data movement ever needed is `move`, which copies
the K/V of a few accepted tree slots into their contiguous places, for every layer at once (one gather + one scatter).
Nothing is ever cloned.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype=torch.float32, device=None):
        super().__init__()
        self.max_seq_len = max_seq_len
        shape = (n_layers, 2, batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("kv", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, layer: int, cache_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k/v `[B, n_kv, T, D]` at slots `cache_pos` `[T]` of `layer`; return the layer's full K and V."""
        keys, values = self.kv[layer, 0], self.kv[layer, 1]
        keys.index_copy_(2, cache_pos, k.to(keys.dtype))
        values.index_copy_(2, cache_pos, v.to(values.dtype))
        return keys, values

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the entries at slots `src` to slots `dst` (1-D long tensors of equal length), in every layer."""
        self.kv.index_copy_(4, dst, self.kv.index_select(4, src))

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()
