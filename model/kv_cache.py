"""Static, preallocated KV cache: one tensor per device group (a single tensor for all layers on one device).

Speculative tokens are written at slots past the committed length. Accepting them is bookkeeping (the caller moves
its committed length); rejecting them is doing nothing. The only data movement ever needed is `move`, which copies
the K/V of an accepted tree slot into its place, for every layer of a group at once (one gather + one scatter per
group; a single-device model has exactly one group). Nothing is ever cloned.

A model placed over several devices (model/placement.py) gets one group per pipeline stage: `groups` lists
(device, number of consecutive layers) and each layer is mapped to (group, local index).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype=torch.float32,
                 device=None, groups: list[tuple] | None = None):
        super().__init__()
        self.max_seq_len = max_seq_len
        groups = groups or [(device, n_layers)]
        if sum(n for _, n in groups) != n_layers:
            raise ValueError(f"cache groups {groups} do not cover {n_layers} layers")
        self.tensors: list[torch.Tensor] = []  # per group [n, 2, n_kv, S, hd]
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (keys, values) [n_kv, S, hd]
        for g, (dev, n) in enumerate(groups):
            t = torch.zeros((n, 2, n_kv_heads, max_seq_len, head_dim), dtype=dtype, device=dev)
            self.register_buffer(f"kv{g}", t, persistent=False)
            self.tensors.append(t)
            self._layers += [(t[i, 0], t[i, 1]) for i in range(n)]
        self.layer_group = [(g, i) for g, (_, n) in enumerate(groups) for i in range(n)]

    @property
    def kv(self) -> torch.Tensor:
        """The single cache tensor [n_layers, 2, n_kv, S, hd] of a one-device model."""
        if len(self.tensors) != 1:
            raise AttributeError("this cache spans several device groups; use .tensors")
        return self.tensors[0]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer i, [n_kv, S, hd] views into the cache."""
        return self._layers[i]

    def update(self, i: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values [n_kv, T, hd] of layer i at `slots` [T] (on the layer's device)."""
        keys, values = self._layers[i]
        keys.index_copy_(1, slots, k.to(keys.dtype))
        values.index_copy_(1, slots, v.to(values.dtype))

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the entries at slots `src` to slots `dst` (1-D long tensors of equal length), in every layer."""
        for t in self.tensors:
            s, d = src.to(t.device, non_blocking=True), dst.to(t.device, non_blocking=True)
            t.index_copy_(3, d, t.index_select(3, s))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)
