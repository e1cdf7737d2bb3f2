"""Plain autoregressive decoding on the engine, and the result type shared with SWIFT."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from model.engine import Engine
from model.errors import UserError
from model.sampling import SamplingConfig

SCRATCH_SLOTS = 160  # cache slots past the longest sequence: draft chain, padded tree, layer-search window blocks


@dataclass
class GenerationResult:
    """One generation. accept_lengths: tokens committed per decoding step, bonus token included (vanilla: all 1)."""

    tokens: list[int]
    num_new_tokens: int
    num_steps: int
    accept_lengths: list[int]
    num_drafted: int
    wall_time_s: float
    stats: dict = field(default_factory=dict)


def cache_capacity(max_prompt_len: int, max_new_tokens: int) -> int:
    return max_prompt_len + max_new_tokens + SCRATCH_SLOTS


def check_lengths(engine: Engine, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len <= 0:
        raise UserError("the prompt is empty after tokenization.")
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    limit = engine.args.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise UserError(f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) exceeds the model's context "
                        f"of {limit} positions. Use a shorter prompt or a smaller --max-new-tokens.")
    if cache_capacity(prompt_len, max_new_tokens) > engine.max_seq_len:
        raise UserError(f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) does not fit the KV cache "
                        f"of {engine.max_seq_len} slots that was allocated; allocate it for the longest prompt.")


def cut_at_eos(tokens: list[int], eos_ids, limit: int) -> list[int]:
    tokens = tokens[:limit]
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def vanilla_generate(engine: Engine, prompt_ids: list[int], max_new_tokens: int,
                     sampling: SamplingConfig = SamplingConfig(), eos_ids=()) -> GenerationResult:
    """Autoregressive decoding: plain steps in graph chunks of up to 8; the host reads each chunk's tokens (the only
    host sync in the loop) and stops at EOS or the budget."""
    check_lengths(engine, len(prompt_ids), max_new_tokens)
    dev = engine.device
    sync(dev)
    t0 = time.perf_counter()
    engine.start(prompt_ids, sampling)
    P, eos = len(prompt_ids), set(eos_ids)
    tokens = engine.seq[P:P + 1].tolist()
    while len(tokens) < max_new_tokens and tokens[-1] not in eos and not eos.intersection(tokens[-8:]):
        n = engine.decode_chunk(max_new_tokens - len(tokens))
        engine.decode(n, sampling)
        tokens += engine.seq[engine.length - n:engine.length].tolist()  # sync: EOS check
    tokens = cut_at_eos(tokens, eos, max_new_tokens)
    sync(dev)
    wall = time.perf_counter() - t0
    return GenerationResult(tokens=tokens, num_new_tokens=len(tokens), num_steps=len(tokens),
                            accept_lengths=[1] * len(tokens), num_drafted=0, wall_time_s=wall,
                            stats={"method": "vanilla"})
