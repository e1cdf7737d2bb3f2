"""Tiny random-weight LLaMA-family models for CPU tests, built through transformers so both sides share weights."""

from __future__ import annotations

import torch

from model.config import ModelArgs
from model.engine import Engine
from model.loading import build_model, convert_hf_state_dict

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


def hf_config(arch: str = "llama", **kw):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    name = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[arch]
    return cls(**{**TINY, "architectures": [name], **kw})


def hf_model(cfg, seed: int = 0, scale: float = 1.0):
    """A transformers model with random weights; `scale` > 1 sharpens its distributions (more peaked argmax)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.02 * scale)
    return m


def ours_from_hf(hf) -> tuple:
    args = ModelArgs.from_hf_config(hf.config)
    return build_model(args, convert_hf_state_dict(hf.state_dict(), args)), args


def tiny_engine(arch="llama", seed=0, scale=1.0, max_seq_len=512, **kw):
    hf = hf_model(hf_config(arch, **kw), seed, scale)
    model, args = ours_from_hf(hf)
    return Engine(model, max_seq_len), hf


@torch.inference_mode()
def full_logits(model, ids: torch.Tensor, skip=None, gates=None, S: int | None = None) -> torch.Tensor:
    """Logits [T, V] of every position of `ids` in one causal pass through the PyTorch ops (a fresh cache of S
    slots), with an optional skip set or per-token gates."""
    from model.kernels.attention import Extents
    from model.llama import Pass
    from model.ops import TorchOps
    T = ids.shape[0]
    from model.llama import NO_SKIP
    model.setup_cache(S or -(-(T + 8) // 128) * 128)
    pos, zeros = torch.arange(T), torch.zeros(T, dtype=torch.long)
    ops = TorchOps()
    x = model(Pass(ids, Extents(zeros, zeros, pos, pos, model.args.sliding_window or 0)), ops, skip=skip or NO_SKIP,
              gates=gates)
    return model.logits(x, ops)


@torch.inference_mode()
def pass_logits(engine, tokens, prefix, run_lo, slot, pos, skip=None, gates=None) -> torch.Tensor:
    """Logits [T, V] of one pass of `tokens` through the engine's ops with the given extents (lists or tensors)."""
    from model.llama import NO_SKIP, Pass
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=engine.device)  # noqa: E731
    p = Pass(t(tokens), engine.ext(t(prefix), t(run_lo), t(slot), t(pos)), engine.kv_len(len(tokens)))
    return engine.logits(engine.forward(p, skip=skip or NO_SKIP, gates=gates))


@torch.inference_mode()
def teacher_forced_logits(engine, tokens: list[int], start: int) -> list[torch.Tensor]:
    """Prefill tokens[:start], then decode tokens[start:] one at a time through the engine's ops (the decode path):
    the logits [V] after each of tokens[start - 1], tokens[start], ... (the first from the prefill)."""
    out = [engine.start(tokens[:start])]
    for pos in range(start, len(tokens)):
        engine.seq[pos] = tokens[pos]
        cur = engine.cursor.clone()
        out.append(engine.logits(engine.forward(engine.one_step(cur)))[0])
        engine.cursor.add_(1)
        engine.length += 1
    return out


class FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay runs the captured function."""

    def __init__(self, fn, track):
        self.fn, self.track, self.regions, self.replays = fn, track, {}, 0

    def replay(self):
        self.replays += 1
        return self.fn(lambda key: None) if self.track else self.fn()

    def enable(self, key, on):
        pass
