"""Pipeline placement (batch 1): a model too large for one GPU is split by layer over several devices.

The decoder layers are cut into contiguous *stages*, one per entry of `devices`. Stage 0 also holds the token
embedding (and the rotary frequencies: the engine's static inputs live there); the last stage holds the final norm
and the lm_head, so logits come out on the last device and the engine copies them back to the first.
Only the hidden state `x` [B, T, dim] crosses a stage boundary; each stage keeps its own KV-cache tensor (see
`KVCache`). Stages run one after the other (no micro-batching: decoding is batch 1, so there is nothing to overlap).

Tied embeddings: when the first and last devices differ, the lm_head gets its own copy of the embedding matrix on the
last device (the model is untied; one extra vocab x dim matrix of memory) so that neither the token lookup nor the
head needs a cross-device hop. On one device (e.g. ["cpu", "cpu"] in tests) the weight stays shared.

The same device may appear several times (e.g. ["cpu", "cpu"]): the stages are then still distinct (separate cache
tensors, a boundary between them), which is how the multi-device code paths are tested without GPUs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from model.errors import UserError


def chunk_sizes(n_layers: int, n_devices: int, weights: Sequence[float] | None = None) -> list[int]:
    """Layers per device: proportional to `weights` (relative capacity per device; default equal), rounded by
    largest remainder with ties to the earlier device, at least one each. With equal weights the chunks differ by at
    most one layer and the *last* devices get the smaller ones (the last device also carries the norm and lm_head)."""
    if n_devices < 1:
        raise UserError("layer placement needs at least one device.")
    if n_layers < n_devices:
        raise UserError(f"cannot split {n_layers} layers over {n_devices} devices: each device needs at least one "
                        f"layer; name fewer devices.")
    w = [1.0] * n_devices if weights is None else [float(x) for x in weights]
    if len(w) != n_devices or any(not x > 0 for x in w):
        raise UserError(f"placement weights {list(weights or [])} must be {n_devices} positive numbers.")
    quota = [n_layers * x / sum(w) for x in w]
    sizes = [int(q) for q in quota]
    order = sorted(range(n_devices), key=lambda i: (-(quota[i] - sizes[i]), i))
    for i in order[: n_layers - sum(sizes)]:
        sizes[i] += 1
    for i in range(n_devices):  # every device gets a layer: borrow from the largest chunk (latest on ties)
        while sizes[i] == 0:
            j = max(range(n_devices), key=lambda k: (sizes[k], k))
            sizes[j] -= 1
            sizes[i] += 1
    return sizes


def split_layers(n_layers: int, devices: Sequence, weights: Sequence[float] | None = None) -> list[torch.device]:
    """Device of each layer: contiguous chunks in the order of `devices`, sized by `chunk_sizes`."""
    devs = [torch.device(d) for d in devices]
    out: list[torch.device] = []
    for d, k in zip(devs, chunk_sizes(n_layers, len(devs), weights)):
        out += [d] * k
    return out


def plan_stages(n_layers: int, devices: Sequence, weights: Sequence[float] | None = None
                ) -> list[tuple[torch.device, int, int]]:
    """[(device, first layer, end layer)] per entry of `devices`: contiguous chunks sized by `chunk_sizes`."""
    devs = [torch.device(d) for d in devices]
    stages, start = [], 0
    for d, k in zip(devs, chunk_sizes(n_layers, len(devs), weights)):
        stages.append((d, start, start + k))
        start += k
    return stages


def parameter_device(name: str, stages: Sequence[tuple[torch.device, int, int]]) -> torch.device:
    """The device that owns parameter `name` (a Transformer parameter name) under `stages`, as `place_model` puts
    it: the embedding on the first stage, a layer's weights on its stage, the final norm and the head on the last.
    The loader allocates each parameter there directly, so that no weight passes through another device."""
    if name.startswith("layers."):
        layer = int(name.split(".", 2)[1])
        return next(d for d, lo, hi in stages if lo <= layer < hi)
    return stages[0][0] if name.startswith("tok_embeddings.") else stages[-1][0]


def place_model(model: nn.Module, devices: Sequence, weights: Sequence[float] | None = None) -> nn.Module:
    """Move `model` (a Transformer, e.g. loaded on CPU) onto `devices` by layer, in place; returns it. Parameters
    already on their device (as `load_model` allocates them) are not copied.

    Records `model.layer_devices` (device per layer) and `model.stages` [(device, start, end)] (None for a single
    device, so the single-device code paths stay exactly as they were), which `Transformer.forward`, `setup_cache`
    and `Engine` read. Any existing KV cache is dropped: call `setup_cache` (or build the Engine) afterwards."""
    devs = [torch.device(d) for d in devices]
    stages = plan_stages(len(model.layers), devs, weights)
    first, last = devs[0], devs[-1]
    tied = model.output.weight is model.tok_embeddings.weight
    model.tok_embeddings.to(first)
    model.inv_freq = model.inv_freq.to(first)  # rotary tables are made from the engine's inputs, on the first device
    for d, lo, hi in stages:
        for i in range(lo, hi):
            model.layers[i].to(d)
    model.norm.to(last)
    if tied and first != last:  # untie: the head gets its own copy on the last device
        model.output.weight = nn.Parameter(model.tok_embeddings.weight.detach().to(last), requires_grad=False)
    elif tied:
        model.output.weight = model.tok_embeddings.weight
    else:
        model.output.to(last)
    model.layer_devices = [d for d, lo, hi in stages for _ in range(lo, hi)]
    model.stages = stages if len(stages) > 1 else None
    model.cache = None
    return model
