"""Sampling settings, logits -> probabilities, and the lossless acceptance rule for token trees.

Acceptance (one parent node, candidate children c_1..c_m in order, distinct tokens proposed deterministically by the
draft, target distribution p at the parent): candidate c_i is accepted with probability

    p(c_i) / (1 - sum_{j<i} p(c_j))

which is speculative sampling's min(1, p/q) with q = one-hot(c_i), applied to the residual distribution left after
rejecting c_1..c_{i-1} (the residual of a one-hot draft is p with that token removed and renormalised). If every
candidate is rejected, the token is drawn from p with all candidates removed. The produced token is therefore an exact
sample of p (recursive rejection sampling over siblings). Greedy decoding is the limit: accept c_i iff c_i = argmax p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off

    def __post_init__(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise UserError(f"top-k must be >= 0 (0 = off), got {self.top_k}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def logits_to_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p warping over the last dimension; returns float32 probabilities."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return torch.softmax(logits, dim=-1)


def accept_probability(p_child, rejected_mass):
    """Probability of accepting a candidate with target probability `p_child` after siblings holding
    `rejected_mass` of the target distribution were rejected (see the module docstring). Floats or tensors."""
    if isinstance(p_child, torch.Tensor):
        return torch.where(rejected_mass < 1.0, p_child / (1.0 - rejected_mass).clamp_min(1e-30),
                           torch.zeros_like(p_child))
    return p_child / (1.0 - rejected_mass) if rejected_mass < 1.0 else 0.0


def sample_from_probs(probs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One sample per row by the exponential race: argmax p/E with E ~ Exp(1), no host sync. Inside a CUDA graph,
    pass `noise` drawn outside it, so that the random stream does not depend on when graphs were captured."""
    if noise is None:
        noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1)


def next_token(logits: torch.Tensor, cfg: SamplingConfig, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids from logits `[..., V]` (greedy or sampled)."""
    if cfg.greedy:
        return torch.argmax(logits, dim=-1)
    return sample_from_probs(logits_to_probs(logits, cfg), noise)
