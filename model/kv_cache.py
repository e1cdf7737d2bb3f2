"""Static, preallocated KV cache: one tensor per device group (a single tensor for all layers on one device).

Speculative tokens are written at slots past the committed length. Accepting them is bookkeeping (the caller moves
its committed length); rejecting them is doing nothing. The only data movement ever needed is `move`, which copies
the K/V of a few accepted tree slots into their contiguous places, for every layer of a group at once (one gather +
one scatter per group; a single-device model has exactly one group). Nothing is ever cloned.

A model placed over several devices (model/placement.py) gets one group per pipeline stage: `groups` lists
(device, number of consecutive layers) and each layer is mapped to (group, local index).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype=torch.float32, device=None, groups: list[tuple] | None = None):
        super().__init__()
        self.max_seq_len = max_seq_len
        groups = groups or [(device, n_layers)]
        if sum(n for _, n in groups) != n_layers:
            raise ValueError(f"cache groups {groups} do not cover {n_layers} layers")
        self.tensors: list[torch.Tensor] = []  # per group [n, 2, B, n_kv, S, hd]
        self._views: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (keys, values) views, made once
        self._layers: list[torch.Tensor] = []  # per layer [2, B, n_kv, S, hd] view (keys and values together)
        for g, (dev, n) in enumerate(groups):
            t = torch.zeros((n, 2, batch_size, n_kv_heads, max_seq_len, head_dim), dtype=dtype, device=dev)
            self.register_buffer(f"kv{g}", t, persistent=False)
            self.tensors.append(t)
            self._views += [(t[i, 0], t[i, 1]) for i in range(n)]
            self._layers += [t[i] for i in range(n)]
        self.layer_group = [(g, i) for g, (_, n) in enumerate(groups) for i in range(n)]

    @property
    def kv(self) -> torch.Tensor:
        """The single cache tensor [n_layers, 2, B, n_kv, S, hd] of a one-device model."""
        if len(self.tensors) != 1:
            raise AttributeError("this cache spans several device groups; use .tensors")
        return self.tensors[0]

    def update(self, layer: int, cache_pos: torch.Tensor, kv: torch.Tensor):
        """Write keys and values `kv` `[2, B, n_kv, T, D]` at slots `cache_pos` `[T]` of `layer` (one kernel for
        both); return the layer's full K and V. `cache_pos` must be on the layer's device (Transformer.forward hands
        each stage its own copy)."""
        dst = self._layers[layer]
        dst.index_copy_(3, cache_pos, kv.to(dst.dtype))
        return self._views[layer]

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the entries at slots `src` to slots `dst` (1-D long tensors of equal length), in every layer."""
        for t in self.tensors:
            s, d = src.to(t.device, non_blocking=True), dst.to(t.device, non_blocking=True)
            t.index_copy_(4, d, t.index_select(4, s))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)
