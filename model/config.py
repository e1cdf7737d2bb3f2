"""Model hyper-parameters, built from a Hugging Face config by an explicit mapping (no name guessing).

A config.json (a plain dict) is first turned into the transformers config class of its architecture, so that absent
fields take exactly the defaults transformers would use (Mistral's 4096-token sliding window, Qwen2's
`max_window_layers`, the llama3 RoPE's `original_max_position_embeddings`, ...). Every field that transformers reads
for these architectures and that changes the computed logits is either mapped onto ModelArgs or refused with a
UserError; fields that transformers ignores for them (`pretraining_tp`, soft-capping and qk-norm fields of other
architectures, ...) are ignored here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.errors import UserError

# architecture name in config.json -> whether q/k/v projections always carry a bias
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": False,
    "MistralForCausalLM": False,
    "Qwen2ForCausalLM": True,
}
_CONFIG_CLASSES = {"LlamaForCausalLM": "LlamaConfig", "MistralForCausalLM": "MistralConfig",
                   "Qwen2ForCausalLM": "Qwen2Config"}
# The LLaMA-2-7B shape (an HF config dict), for random-weight benchmarks (scripts/bench_engine.py, profile_kernels.py).
LLAMA2_7B_SHAPE = dict(architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
# The two small real models' shapes, for random-weight kernel checks (scripts/gpu_selftest.py).
SMOLLM2_135M_SHAPE = dict(architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                          tie_word_embeddings=True)
QWEN25_05B_SHAPE = dict(architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896, intermediate_size=4864,
                        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                        tie_word_embeddings=False)
# The LLaMA-2-13B shape, for the loading measurement (scripts/measure_loading.py).
LLAMA2_13B_SHAPE = dict(LLAMA2_7B_SHAPE, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40)
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


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
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2; Llama with attention_bias)
    o_bias: bool = False  # the attention output projection carries a bias (Llama with attention_bias)
    mlp_bias: bool = False  # gate/up/down projections carry a bias (Llama with mlp_bias)
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    sliding_window: int | None = None  # every layer: a query at position p sees keys at positions > p - window
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf_config(cls, cfg) -> "ModelArgs":
        """Map a `transformers` PretrainedConfig (or a plain dict of config.json) onto ModelArgs; refuse what the
        decoder does not implement."""
        arch = _architecture(cfg)
        c = _transformers_config(cfg, arch) if isinstance(cfg, dict) else cfg
        _refuse_unsupported(c, arch)
        theta, rope = _rope(c)
        n_heads, dim = c.num_attention_heads, c.hidden_size
        eos = getattr(c, "eos_token_id", None)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        llama_bias = arch == "LlamaForCausalLM" and bool(getattr(c, "attention_bias", False))
        return cls(
            architecture=arch,
            vocab_size=c.vocab_size,
            dim=dim,
            n_layers=c.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(c, "head_dim", None) or dim // n_heads,
            intermediate_size=c.intermediate_size,
            norm_eps=c.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=rope,
            qkv_bias=SUPPORTED_ARCHITECTURES[arch] or llama_bias,
            o_bias=llama_bias,
            mlp_bias=arch == "LlamaForCausalLM" and bool(getattr(c, "mlp_bias", False)),
            tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            max_position_embeddings=getattr(c, "max_position_embeddings", 4096),
            sliding_window=_sliding_window(c, arch),
            eos_token_ids=eos,
        )


def _architecture(cfg) -> str:
    """The architecture named by `architectures` (or, lacking it, by `model_type`). A config whose model_type names
    another supported architecture is refused: transformers builds the model from model_type, so the two disagree."""
    get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
    archs, model_type = get("architectures") or [], get("model_type")
    arch = archs[0] if archs else _MODEL_TYPES.get(model_type, model_type)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"unsupported architecture '{arch}' (model_type '{model_type}'). This project runs the "
            f"LLaMA family: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}. Pass a checkpoint of one of these.")
    if model_type in _MODEL_TYPES and _MODEL_TYPES[model_type] != arch:
        raise UserError(f"the config names architecture '{arch}' but model_type '{model_type}', which transformers "
                        f"builds as {_MODEL_TYPES[model_type]}; the two compute different things. Fix `architectures` "
                        f"or `model_type` in config.json so that they agree.")
    return arch


def _transformers_config(cfg: dict, arch: str):
    """config.json as the transformers config class of `arch`, with transformers' defaults for absent fields."""
    import transformers
    config_class = getattr(transformers, _CONFIG_CLASSES[arch])
    try:
        return config_class.from_dict(dict(cfg))
    except Exception as e:  # noqa: BLE001 - transformers' validation errors are the user's config problems
        raise UserError(f"the config is not a valid {config_class.__name__} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}). Fix config.json.") from e


def _refuse_unsupported(c, arch: str) -> None:
    """Refuse config fields that transformers applies to this architecture and that the decoder does not implement."""
    act = getattr(c, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UserError(f"unsupported activation hidden_act='{act}' in {arch}; only SiLU-gated MLPs are supported. "
                        f"Use a checkpoint with hidden_act 'silu'.")
    quant = getattr(c, "quantization_config", None)
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise UserError(f"the config has a quantization_config (quant_method '{method}'): its weights are packed "
                        f"in a quantized format this loader does not read. Use an unquantized (float16/bfloat16/"
                        f"float32) checkpoint, or a GGUF file.")


def _rope(c) -> tuple[float, dict]:
    """(rope theta, scaling dict or {}) from the config's standardized `rope_parameters`."""
    params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    layer_types = set(getattr(c, "layer_types", None) or ())
    if layer_types & set(params):
        raise UserError(f"the config gives per-layer-type RoPE parameters (rope_parameters keyed by "
                        f"{sorted(layer_types & set(params))}); this decoder uses one RoPE for all layers. Use a "
                        f"checkpoint with a single rope_parameters dict.")
    rope = dict(params)
    theta = rope.pop("rope_theta", None) or getattr(c, "rope_theta", None) or 10000.0
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"unsupported RoPE scaling type '{rope_type}' (rope_parameters / rope_scaling); supported: "
                        f"{', '.join(SUPPORTED_ROPE_TYPES)}. Use a checkpoint with one of these.")
    # transformers reads partial_rotary_factor for the scaled types only (the default RoPE of these models ignores it)
    if rope_type != "default" and float(rope.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise UserError(f"partial_rotary_factor={rope['partial_rotary_factor']} with RoPE type '{rope_type}': "
                        f"rotating only part of each head is not implemented. Use a checkpoint without it.")
    if rope_type == "default":
        return theta, {}
    rope["rope_type"] = rope_type
    if rope_type == "llama3":  # transformers' default when the field is absent
        rope.setdefault("original_max_position_embeddings", getattr(c, "max_position_embeddings", 8192))
    return theta, rope


def _sliding_window(c, arch: str) -> int | None:
    """The attention window of every layer, or None. Mistral applies `sliding_window` to all layers; Qwen2 only to
    the layers that `layer_types` marks "sliding_attention" (from `max_window_layers` on, with `use_sliding_window`),
    which is supported when that is all layers or none. Llama ignores the field."""
    window = getattr(c, "sliding_window", None)
    if window is None or arch == "LlamaForCausalLM":
        return None
    if arch == "MistralForCausalLM":
        return int(window)
    sliding = [t == "sliding_attention" for t in (getattr(c, "layer_types", None) or ())]
    if not any(sliding):
        return None
    if all(sliding):
        return int(window)
    first = sliding.index(True)
    raise UserError(f"this Qwen2 config applies a sliding window of {window} tokens only to some layers "
                    f"(use_sliding_window with max_window_layers={getattr(c, 'max_window_layers', first)}: layers "
                    f"{first}.. of {len(sliding)}); a per-layer window is not implemented. Set use_sliding_window to "
                    f"false in config.json (exact while prompt + output stay within {window} tokens) or use "
                    f"another checkpoint.")
