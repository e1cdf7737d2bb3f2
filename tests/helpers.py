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


def causal_mask(T: int, S: int, start: int = 0) -> torch.Tensor:
    pos = torch.arange(start, start + T)
    return torch.arange(S)[None, :] <= pos[:, None]
