"""Load a LLaMA-family checkpoint into our Transformer: a local HF folder, a hub id, or a GGUF file.

Weights are mapped with an explicit key map (HF name -> our name); q/k/v and gate/up projections are fused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from model.config import ModelArgs
from model.errors import UserError
from model.llama import Transformer, rope_inv_freq

_LAYER_MAP = {
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}
_TOP_MAP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
            "lm_head.weight": "output.weight"}
_FUSED = {  # our fused name -> HF parts in order
    "attention.wqkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attention.wqkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "feed_forward.w13.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def convert_hf_state_dict(hf: dict, args: ModelArgs) -> dict:
    """Map a HF LlamaForCausalLM-style state dict onto Transformer's parameter names."""
    out = {ours: hf[theirs] for theirs, ours in _TOP_MAP.items() if theirs in hf}
    for i in range(args.n_layers):
        pre = f"model.layers.{i}."
        for theirs, ours in _LAYER_MAP.items():
            out[f"layers.{i}.{ours}"] = hf[pre + theirs]
        for ours, parts in _FUSED.items():
            if pre + parts[0] in hf:
                out[f"layers.{i}.{ours}"] = torch.cat([hf[pre + p] for p in parts], dim=0)
    if args.tie_embeddings:
        out.pop("output.weight", None)
    elif "output.weight" not in out:
        raise UserError("checkpoint has no lm_head.weight but its config says the embeddings are not tied.")
    return out


def build_model(args: ModelArgs, state_dict: dict | None, device="cpu", dtype=torch.float32) -> Transformer:
    """Instantiate the model; with `state_dict=None` the weights are random (normal, std 0.02) — for benchmarks/tests."""
    device = torch.device(device)
    if state_dict is None:
        with device:
            model = Transformer(args)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            torch.nn.init.normal_(p, std=0.02)
        return model.to(dtype).requires_grad_(False).eval()
    with torch.device("meta"):
        model = Transformer(args)
    expected = set(model.state_dict().keys()) - ({"output.weight"} if args.tie_embeddings else set())
    missing, extra = expected - set(state_dict), set(state_dict) - expected
    if missing or extra:
        raise UserError(f"checkpoint does not match the {args.architecture} config: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(extra)[:5]}.")
    state_dict = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=False, assign=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.inv_freq = rope_inv_freq(args).to(device)  # the meta-device buffer is replaced
    return model.requires_grad_(False).eval()


def _read_safetensors_folder(folder: Path) -> dict:
    from safetensors.torch import load_file
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        bins = list(folder.glob("pytorch_model*.bin"))
        if bins:
            sd = {}
            for b in bins:
                sd.update(torch.load(b, map_location="cpu", weights_only=True))
            return sd
        raise UserError(f"'{folder}' has a config.json but no weights (*.safetensors or pytorch_model*.bin).")
    sd = {}
    for f in files:
        sd.update(load_file(str(folder / f)))
    return sd


def resolve_checkpoint(path: str) -> tuple[Path, str | None]:
    """Return (folder, gguf_file) for a local folder, a .gguf file, or a hub id (downloaded)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p.parent, p.name
    if p.is_dir():
        return p, None
    if p.exists():
        raise UserError(f"'{path}' is a file but not a .gguf model; pass a model folder, a .gguf file or a hub id.")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
            folder = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                            "*.jinja", "*.txt"])
        except Exception as e:  # noqa: BLE001 - any hub failure is the same user-facing problem
            raise UserError(f"model '{path}' is not a local path and could not be fetched from the Hugging Face hub "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Check the spelling, pass a local "
                            f"folder, or fetch the default model with `python3 scripts/fetch_models.py`.") from e
        return Path(folder), None
    raise UserError(f"model path '{path}' does not exist. Pass a Hugging Face model folder, a .gguf file or a hub "
                    f"id (owner/name); `python3 scripts/fetch_models.py` fetches the small default model.")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    folder, gguf = resolve_checkpoint(path)
    try:
        return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf) if gguf else \
            AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not load a tokenizer from '{path}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}). The folder needs tokenizer.json or "
                        f"tokenizer.model with tokenizer_config.json.") from e


def load_model(path: str, device="cpu", dtype=torch.float32, devices=None) -> tuple[Transformer, ModelArgs]:
    """Load weights from a HF folder (safetensors), a hub id, or a GGUF file (through transformers' GGUF reader).

    `devices` (a list of two or more devices, e.g. ["cuda:0", "cuda:1"]) places the layers across them
    (model/placement.py): the weights are loaded on the CPU, then each stage is moved to its device; `device` is then
    ignored. A list of one device is the same as `device=`."""
    if devices is not None and len(devices) == 1:
        device, devices = devices[0], None
    if devices is not None:
        from model.placement import place_model
        model, args = load_model(path, device="cpu", dtype=dtype)
        return place_model(model, devices), args
    folder, gguf = resolve_checkpoint(path)
    if gguf:
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
            cfg = AutoConfig.from_pretrained(str(folder), gguf_file=gguf)
            args = ModelArgs.from_hf_config(cfg)
            kw = {}
            try:
                from transformers import GgufConfig
                kw["quantization_config"] = GgufConfig(dequantize=True)
            except ImportError:
                pass
            hf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32, **kw)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise UserError(f"could not read GGUF file '{path}' ({type(e).__name__}: {str(e)[:200]}). It needs the "
                            f"`gguf` package and a LLaMA-family GGUF.") from e
        sd = {k: v for k, v in hf.state_dict().items()}
        del hf
    else:
        cfg_path = folder / "config.json"
        if not cfg_path.exists():
            raise UserError(f"'{folder}' is not a model folder: it has no config.json. Pass a Hugging Face model "
                            f"folder, a .gguf file or a hub id.")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"'{cfg_path}' is not valid JSON ({e}).") from e
        args = ModelArgs.from_hf_config(cfg)
        sd = _read_safetensors_folder(folder)
    return build_model(args, convert_hf_state_dict(sd, args), device=device, dtype=dtype), args


def model_name(path: str) -> str:
    """A short id for output files: the folder or file name (the parent's when the folder is called `hf`)."""
    p = Path(path.rstrip("/"))
    if p.suffix == ".gguf":
        return p.stem
    return p.parent.name if p.name == "hf" and p.parent.name else p.name


def default_eos_ids(args: ModelArgs, tokenizer) -> tuple[int, ...]:
    ids = set(args.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))
