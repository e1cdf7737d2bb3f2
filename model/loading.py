"""Load a LLaMA-family checkpoint into our Transformer: a local HF folder, a hub id, or a GGUF file.

Weights are mapped with an explicit key map (`weight_map`: HF name -> rows of one of our parameters; q/k/v and
gate/up projections are fused). A checkpoint folder is streamed: every parameter is first allocated, uninitialised
and in the target dtype, on the device that owns it (each stage's device for a model placed over several devices,
model/placement.py); then the shards are read one by one, tensor by tensor (safetensors `safe_open`, or a
memory-mapped `torch.load` of a .bin shard), and each tensor is converted and copied straight into its slice. The
host so holds about one shard at a time, never the whole state dict.

Nothing is dropped silently: a checkpoint tensor the map does not know, a tensor it needs but cannot find, or a
tensor of the wrong shape is a UserError that names them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from model.config import ModelArgs
from model.errors import UserError
from model.llama import Transformer, rope_inv_freq
from model.placement import parameter_device, place_model, plan_stages

# files a hub download fetches besides the weights: config, tokenizer (tokenizer.json or a sentencepiece
# tokenizer.model), chat template, generation config and the shard indexes
HUB_FILES = ["*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"]
HUB_SAFETENSORS = ["model*.safetensors"]
HUB_BIN = ["pytorch_model*.bin"]
# (index file, single file, pattern) per format, in the order transformers prefers them
WEIGHT_FORMATS = (("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
                  ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin"))
_SHOWN = 5  # names listed in an error message


@dataclass(frozen=True)
class Target:
    """Rows [start, start + rows) along dim 0 of our parameter `param`; all of it when `rows` is None."""

    param: str
    start: int = 0
    rows: int | None = None


def weight_map(args: ModelArgs, head_copy: bool = False) -> dict[str, tuple[Target, ...]]:
    """HF tensor name -> the parameter slices it fills. An empty tuple marks a tensor that is known and carries
    nothing the model uses: the head of tied embeddings (transformers ties it to the embedding too) and the rotary
    frequencies old checkpoints saved (recomputed from the config). `head_copy`: the embedding also fills
    output.weight (tied embeddings whose head is placed on another device, model/placement.py)."""
    embed = (Target("tok_embeddings.weight"),) + ((Target("output.weight"),) if head_copy else ())
    m = {"model.embed_tokens.weight": embed, "model.norm.weight": (Target("norm.weight"),),
         "lm_head.weight": () if args.tie_embeddings else (Target("output.weight"),)}
    q, kv, inter = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim, args.intermediate_size
    qkv_rows = {"q_proj": (0, q), "k_proj": (q, kv), "v_proj": (q + kv, kv)}
    for i in range(args.n_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        m[hf + "input_layernorm.weight"] = (Target(ours + "attention_norm.weight"),)
        m[hf + "post_attention_layernorm.weight"] = (Target(ours + "ffn_norm.weight"),)
        m[hf + "self_attn.rotary_emb.inv_freq"] = ()
        for kind, present in (("weight", True), ("bias", args.qkv_bias)):
            for proj, (start, rows) in qkv_rows.items():
                if present:
                    m[f"{hf}self_attn.{proj}.{kind}"] = (Target(f"{ours}attention.wqkv.{kind}", start, rows),)
        for kind, present in (("weight", True), ("bias", args.o_bias)):
            if present:
                m[f"{hf}self_attn.o_proj.{kind}"] = (Target(f"{ours}attention.wo.{kind}"),)
        for kind, present in (("weight", True), ("bias", args.mlp_bias)):
            if present:
                m[f"{hf}mlp.gate_proj.{kind}"] = (Target(f"{ours}feed_forward.w13.{kind}", 0, inter),)
                m[f"{hf}mlp.up_proj.{kind}"] = (Target(f"{ours}feed_forward.w13.{kind}", inter, inter),)
                m[f"{hf}mlp.down_proj.{kind}"] = (Target(f"{ours}feed_forward.w2.{kind}"),)
    return m


def _names_list(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(f"'{n}'" for n in names[:_SHOWN]) + more


def check_names(names: Iterable[str], wmap: dict, args: ModelArgs) -> None:
    """Refuse a checkpoint whose tensor names do not match `wmap` exactly: unknown names (which would otherwise be
    dropped, computing something other than the checkpoint's model), names given twice, and needed names absent."""
    seen, twice = set(), set()
    for n in names:
        (twice if n in seen else seen).add(n)
    unknown = sorted(seen - set(wmap))
    if unknown:
        raise UserError(
            f"the checkpoint has {len(unknown)} tensor(s) that the {args.architecture} model built from its config "
            f"does not use: {_names_list(unknown)}. Loading would silently drop them and compute something other "
            f"than the checkpoint's model. If config.json is wrong for these weights (for example a missing "
            f"attention_bias or mlp_bias), fix it; otherwise this variant of the architecture is not supported.")
    if twice:
        raise UserError(f"the checkpoint holds tensor(s) {_names_list(sorted(twice))} in more than one file. Remove "
                        f"the stray weight files from the folder (the index names the ones in use).")
    missing = sorted(n for n, targets in wmap.items() if targets and n not in seen)
    if missing:
        raise UserError(
            f"the checkpoint lacks {len(missing)} tensor(s) that its {args.architecture} config needs: "
            f"{_names_list(missing)}. Check that every weight file is present (a sharded checkpoint lists them in its "
            f"index) and that config.json belongs to these weights (layer count, tied embeddings, biases).")


def _copy_into(params: dict, targets: tuple[Target, ...], name: str, tensor: torch.Tensor) -> None:
    """Copy one checkpoint tensor into its slices: one copy converts the dtype and crosses to the device."""
    for t in targets:
        p = params[t.param]
        dst = p if t.rows is None else p.narrow(0, t.start, t.rows)
        if dst.shape != tensor.shape:
            raise UserError(f"checkpoint tensor '{name}' has shape {tuple(tensor.shape)}, but the config implies "
                            f"{tuple(dst.shape)}. config.json does not describe these weights; fix it or re-fetch "
                            f"the checkpoint.")
        dst.copy_(tensor)


def _allocate(args: ModelArgs, dtype, device_of: Callable[[str], torch.device]) -> Transformer:
    """The model with uninitialised parameters in `dtype`, each allocated directly on `device_of(name)` (nothing is
    built on the CPU first). Tied embeddings stay one shared tensor unless the head lives on another device."""
    with torch.device("meta"):
        model = Transformer(args)
    for mod_name, mod in model.named_modules():
        for p_name, p in list(mod.named_parameters(recurse=False)):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            setattr(mod, p_name, nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device_of(full)),
                                              requires_grad=False))
    if args.tie_embeddings and device_of("output.weight") == device_of("tok_embeddings.weight"):
        model.output.weight = model.tok_embeddings.weight
    model.inv_freq = rope_inv_freq(args).to(device_of("tok_embeddings.weight"))  # replaces the meta buffer
    return model.requires_grad_(False).eval()


def _head_copied(args: ModelArgs, device_of) -> bool:
    return args.tie_embeddings and device_of("output.weight") != device_of("tok_embeddings.weight")


def build_model(args: ModelArgs, state_dict: dict | None, device="cpu", dtype=torch.float32) -> Transformer:
    """Instantiate the model from a state dict in our parameter names (`convert_hf_state_dict`); with
    `state_dict=None` the weights are random (normal, std 0.02) — for benchmarks/tests."""
    device = torch.device(device)
    if state_dict is None:
        with device:
            model = Transformer(args)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            torch.nn.init.normal_(p, std=0.02)
        model = model.to(dtype).requires_grad_(False).eval()
        model.inv_freq = rope_inv_freq(args).to(device)  # rotary frequencies stay float32, as for a checkpoint
        return model
    model = _allocate(args, dtype, lambda name: device)
    params = dict(model.named_parameters())
    expected = {name: (Target(name),) for name in params}
    extra, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
    if missing or extra:
        raise UserError(f"the state dict does not match the {args.architecture} config: missing "
                        f"{_names_list(missing) or 'nothing'}, unexpected {_names_list(extra) or 'nothing'}.")
    with torch.no_grad():
        for name, tensor in state_dict.items():
            _copy_into(params, expected[name], name, tensor)
    return model


def convert_hf_state_dict(hf: dict, args: ModelArgs) -> dict:
    """Map a HF LlamaForCausalLM-style state dict onto Transformer's parameter names (fused q/k/v and gate/up are
    concatenated), refusing unknown or missing tensors like the streaming loader."""
    wmap = weight_map(args)
    check_names(hf, wmap, args)
    pieces = defaultdict(list)
    for name, tensor in hf.items():
        for t in wmap[name]:
            pieces[t.param].append((t.start, tensor))
    return {param: torch.cat([t for _, t in sorted(parts, key=lambda x: x[0])], dim=0) if len(parts) > 1
            else parts[0][1] for param, parts in pieces.items()}


# ---- checkpoint files ----------------------------------------------------------------------------------------------
def _read_index(index: Path) -> list[str]:
    """The shard files a `*.index.json` names, in order."""
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"'{index}' is not a valid shard index ({type(e).__name__}: {e}); re-fetch the "
                        f"checkpoint.") from e
    absent = [f for f in files if not (index.parent / f).is_file()]
    if absent:
        raise UserError(f"the shard index '{index.name}' names {len(absent)} file(s) missing from '{index.parent}': "
                        f"{_names_list(absent)}. The download is incomplete; fetch the checkpoint again.")
    return files


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, picked as transformers picks them: safetensors before pytorch_model .bin; for
    each format its index if there is one, else the single file, else every file of the format's pattern."""
    for index_name, single, pattern in WEIGHT_FORMATS:
        if (folder / index_name).is_file():
            return [folder / f for f in _read_index(folder / index_name)]
        if (folder / single).is_file():
            return [folder / single]
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise UserError(f"'{folder}' has a config.json but no weights (model*.safetensors or pytorch_model*.bin, "
                    f"sharded with an index or single). Fetch the checkpoint's weight files into it.")


class _Shard:
    """One weight file, read lazily: its tensor names first (safetensors: the header only; .bin: the memory-mapped
    pickle), then its tensors one at a time, each dropped before the next is read."""

    def __init__(self, path: Path):
        self.path = path
        self.is_bin = path.suffix == ".bin"
        self._bin: dict | None = None

    def _fail(self, e: Exception) -> UserError:
        return UserError(f"could not load the model: could not read the weight file '{self.path}' ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}). The file is damaged or incomplete; fetch it again.")

    def _load_bin(self) -> dict:
        if self._bin is None:
            try:
                self._bin = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # the legacy (non-zip) format cannot be memory-mapped: read it whole
                    raise self._fail(e) from e
                self._bin = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
                raise self._fail(e) from e
            if not isinstance(self._bin, dict):
                raise self._fail(TypeError(f"it holds a {type(self._bin).__name__}, not a state dict"))
        return self._bin

    def names(self) -> list[str]:
        if self.is_bin:
            return list(self._load_bin())
        from safetensors import safe_open
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise self._fail(e) from e

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.is_bin:
            sd, self._bin = self._load_bin(), None
            while sd:
                name = next(iter(sd))
                yield name, sd.pop(name)
            return
        from safetensors import safe_open
        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _fill(model: Transformer, wmap: dict, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy (name, tensor) pairs, consumed one at a time, into the model's pre-allocated parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors:
            _copy_into(params, wmap[name], name, tensor)


def _stream_folder(folder: Path, args: ModelArgs, dtype, device_of) -> Transformer:
    """Check the names of every shard, allocate the model, then copy the shards in tensor by tensor."""
    shards = [_Shard(p) for p in weight_files(folder)]
    wmap = weight_map(args, head_copy=_head_copied(args, device_of))
    check_names((n for s in shards for n in s.names()), wmap, args)
    model = _allocate(args, dtype, device_of)
    for shard in shards:
        _fill(model, wmap, shard.tensors())
    return model


# ---- where a checkpoint is -----------------------------------------------------------------------------------------
def _download(repo_id: str) -> Path:
    """Fetch a hub repository's config, tokenizer and weights: its safetensors, or, when it has none, its
    pytorch_model*.bin shards (older repos). Both calls reuse what the hub cache already holds."""
    from huggingface_hub import snapshot_download
    folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_SAFETENSORS))
    if not any(folder.glob("*.safetensors")):
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_BIN))
    return folder


META_HINT = ("params.json and consolidated.*.pth are Meta's original checkpoint format: convert it to a Hugging Face "
             "folder first, with transformers' convert_llama_weights_to_hf.py")


def resolve_checkpoint(path: str) -> tuple[Path, str | None]:
    """Return (folder, gguf_file) for a local folder, a .gguf file, or a hub id (downloaded)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p.parent, p.name
    if p.is_dir():
        return p, None
    if p.exists():
        hint = f" ({META_HINT})" if p.suffix == ".pth" else ""
        raise UserError(f"'{path}' is a file but not a .gguf model; pass a model folder, a .gguf file or a hub "
                        f"id{hint}.")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.startswith((".", "/")):
        try:
            return _download(path), None
        except Exception as e:  # noqa: BLE001 - any hub failure is the same user-facing problem
            raise UserError(f"model '{path}' is not a local path and could not be fetched from the Hugging Face hub "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). Check the "
                            f"spelling, pass a local folder, or fetch the default model with "
                            f"`python3 scripts/fetch_models.py`.") from e
    raise UserError(f"model path '{path}' does not exist. Pass a Hugging Face model folder, a .gguf file or a hub "
                    f"id (owner/name); `python3 scripts/fetch_models.py` fetches the small default model.")


def _check_sentencepiece_only(folder: Path) -> None:
    """A tokenizer given only as a sentencepiece tokenizer.model (LLaMA-2, CodeLLaMA) is converted by transformers,
    which needs the sentencepiece and protobuf packages: say so instead of failing deep inside the conversion. Without
    tokenizer_config.json it loads, but transformers cannot tell how the model uses it: LLaMA-2's `<s>` at the start
    of every prompt is silently left out, so that is refused too."""
    if not (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise UserError(f"the tokenizer in '{folder}' is a sentencepiece tokenizer.model (no tokenizer.json); "
                            f"reading it needs the '{package}' package: `python3 -m pip install {package}` (it is "
                            f"in requirements.txt).")
    if not (folder / "tokenizer_config.json").is_file():
        raise UserError(f"'{folder}' has a sentencepiece tokenizer.model but no tokenizer_config.json, which says how "
                        f"the model uses it (for LLaMA-2, the <s> that starts every prompt). Copy "
                        f"tokenizer_config.json from the model's Hugging Face repository into the folder.")


def _check_tokenizer_size(folder: Path, tokenizer) -> None:
    """A tokenizer far smaller than the model's vocabulary is a tokenizer whose files are missing (transformers
    builds an almost empty one from tokenizer_config.json alone, and every prompt becomes one token)."""
    try:
        vocab = int(json.loads((folder / "config.json").read_text()).get("vocab_size") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return
    if vocab and len(tokenizer) < vocab // 2:
        have = sorted(f.name for f in folder.iterdir() if f.name.startswith(("tokenizer", "vocab", "merges")))
        raise UserError(f"the tokenizer in '{folder}' has {len(tokenizer)} tokens but the model's vocabulary has "
                        f"{vocab}: its files are missing (found: {', '.join(have) or 'none'}). The folder needs "
                        f"tokenizer.json, or tokenizer.model with tokenizer_config.json, from the model's "
                        f"repository.")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    folder, gguf = resolve_checkpoint(path)
    if not gguf:
        _check_sentencepiece_only(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf) if gguf else \
            AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not load a tokenizer from '{path}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}). The folder needs tokenizer.json or "
                        f"tokenizer.model with tokenizer_config.json.") from e
    if not gguf:
        _check_tokenizer_size(folder, tokenizer)
    return tokenizer


def _read_config(folder: Path) -> ModelArgs:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        meta = (folder / "params.json").is_file() or any(folder.glob("consolidated.*.pth"))
        raise UserError(f"'{folder}' is not a model folder: it has no config.json. Pass a Hugging Face model "
                        f"folder, a .gguf file or a hub id{f' ({META_HINT})' if meta else ''}.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"'{cfg_path}' is not valid JSON ({e}).") from e
    return ModelArgs.from_hf_config(cfg)


def _read_gguf(folder: Path, gguf: str) -> tuple[ModelArgs, dict]:
    """(args, HF state dict) of a GGUF file, dequantized by transformers' GGUF reader (whole, in float32)."""
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
        raise UserError(f"could not read GGUF file '{folder / gguf}' ({type(e).__name__}: {str(e)[:200]}). It needs "
                        f"the `gguf` package and a LLaMA-family GGUF.") from e
    return args, dict(hf.state_dict())


def _device_plan(args: ModelArgs, device, devices) -> Callable[[str], torch.device]:
    """parameter name -> the device it is allocated on: `device`, or its stage's device when `devices` is given."""
    if devices is None:
        one = torch.device(device)
        return lambda name: one
    stages = plan_stages(args.n_layers, devices)
    return lambda name: parameter_device(name, stages)


def load_model(path: str, device="cpu", dtype=torch.float32, devices=None) -> tuple[Transformer, ModelArgs]:
    """Load weights from a HF folder (safetensors or pytorch_model .bin, single or sharded), a hub id, or a GGUF file
    (through transformers' GGUF reader), streamed onto `device` in `dtype`.

    `devices` (a list of two or more devices, e.g. ["cuda:0", "cuda:1"]) places the layers across them
    (model/placement.py): each weight is loaded straight onto the device of the stage that owns it; `device` is then
    ignored. A list of one device is the same as `device=`."""
    if devices is not None and len(devices) == 1:
        device, devices = devices[0], None
    folder, gguf = resolve_checkpoint(path)
    args, hf_state = _read_gguf(folder, gguf) if gguf else (_read_config(folder), None)
    device_of = _device_plan(args, device, devices)
    if hf_state is None:
        model = _stream_folder(folder, args, dtype, device_of)
    else:
        wmap = weight_map(args, head_copy=_head_copied(args, device_of))
        check_names(hf_state, wmap, args)
        model = _allocate(args, dtype, device_of)
        _fill(model, wmap, hf_state.items())
        del hf_state
    if devices is not None:
        place_model(model, devices)  # records the stages; every parameter is already on its device
    return model, args


def model_name(path: str) -> str:
    """A short id for output files: the folder or file name (the parent's when the folder is called `hf`; the
    model's name for a snapshot folder of the Hugging Face cache, `models--owner--name/snapshots/<commit>`)."""
    p = Path(path.rstrip("/"))
    if p.suffix == ".gguf":
        return p.stem
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name.split("--")[-1]
    return p.parent.name if p.name == "hf" and p.parent.name else p.name


def default_eos_ids(args: ModelArgs, tokenizer) -> tuple[int, ...]:
    ids = set(args.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))
