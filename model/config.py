"""Model hyper-parameters, built from a Hugging Face config by an explicit mapping (no name guessing)."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.errors import UserError

# architecture name in config.json -> whether q/k/v projections carry a bias
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": False,
    "MistralForCausalLM": False,
    "Qwen2ForCausalLM": True,
}
# The LLaMA-2-7B shape (an HF config dict), for random-weight benchmarks (scripts/bench_engine.py, profile_kernels.py).
LLAMA2_7B_SHAPE = dict(architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class ModelArgs:
    architecture: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": "llama3", "factor": ..., ...} or empty
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf_config(cls, cfg) -> "ModelArgs":
        """Map a `transformers` PretrainedConfig (or a plain dict of config.json) onto ModelArgs."""
        get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        archs = get("architectures") or []
        arch = archs[0] if archs else _MODEL_TYPES.get(get("model_type"), get("model_type"))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UserError(
                f"unsupported architecture '{arch}' (model_type '{get('model_type')}'). This project runs the "
                f"LLaMA family: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}. Pass a checkpoint of one of these.")
        if get("hidden_act", "silu") not in ("silu", "swish"):
            raise UserError(f"unsupported activation '{get('hidden_act')}' in {arch}; only SiLU-gated MLPs are supported.")
        n_heads = get("num_attention_heads")
        dim = get("hidden_size")
        rope = dict(get("rope_parameters") or get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or get("rope_theta") or 10000.0
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3", "linear"):
            raise UserError(f"unsupported RoPE scaling type '{rope_type}'; supported: default, linear, llama3.")
        rope["rope_type"] = rope_type
        eos = get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        window = get("sliding_window") if (arch == "MistralForCausalLM" or get("use_sliding_window", False)) else None
        return cls(
            architecture=arch,
            vocab_size=get("vocab_size"),
            dim=dim,
            n_layers=get("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads") or n_heads,
            head_dim=get("head_dim") or dim // n_heads,
            intermediate_size=get("intermediate_size"),
            norm_eps=get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=rope if rope_type != "default" else {},
            qkv_bias=SUPPORTED_ARCHITECTURES[arch] or bool(get("attention_bias", False)),
            tie_embeddings=bool(get("tie_word_embeddings", False)),
            max_position_embeddings=get("max_position_embeddings", 4096),
            sliding_window=window,
            eos_token_ids=eos,
        )
