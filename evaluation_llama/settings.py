"""The settings of one run: checked in one place, then frozen and handed on whole.

`check_flags` checks what needs neither torch nor the data (so a typo is reported at once) and
builds the method's own configuration; `resolve` adds what needs torch (the device, the dtype,
the output paths) and returns a frozen `Settings`. A shard process receives the parent's
`Settings` as JSON (`to_json` / `from_json`), never a rewritten command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from data import default_data_dir
from evaluation_llama import methods, paths
from model.errors import UserError


@dataclass(frozen=True)
class Settings:
    """Validated, resolved settings of one run (or of one shard of it)."""

    method: str
    model_path: str  # as given, normalised (recorded)
    load_path: str  # where it is loaded from (the default model is found in the repository)
    model_id: str
    task: str
    data_dir: Optional[str]
    num_samples: Optional[int]
    seed: int
    device: Any  # torch.device
    dtype_name: str
    kernels: str  # model.backends.Backends fields, as asked
    compile: str
    tails: str
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    warmup: int
    chat_template: bool
    answer_file: Path
    overwrite: bool
    num_shards: int
    shard: Optional[int]
    method_config: Any  # the method's own configuration (Method.build_config)
    layer_devices: Optional[tuple] = None  # torch.devices the layers are placed across
    debug: bool = False

    @property
    def parent(self) -> bool:
        """This process starts one process per shard instead of answering."""
        return self.shard is None and self.num_shards > 1

    @property
    def sampling(self):
        from model.sampling import SamplingConfig

        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    @property
    def backends(self):
        from model.backends import Backends

        return Backends(kernels=self.kernels, compile=self.compile, tails=self.tails)

    def for_shard(self, shard: int) -> "Settings":
        """The settings of shard process ``shard`` (the parent has already cleared old files)."""
        return dataclasses.replace(self, shard=shard, overwrite=False)

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["device"] = str(self.device)
        d["layer_devices"] = [str(x) for x in self.layer_devices] if self.layer_devices else None
        d["answer_file"] = str(self.answer_file)
        d["method_config"] = methods.get(self.method).config_to_dict(self.method_config)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        import torch

        d = json.loads(text)
        d["device"] = torch.device(d["device"])
        if d["layer_devices"]:
            d["layer_devices"] = tuple(torch.device(x) for x in d["layer_devices"])
        d["answer_file"] = Path(d["answer_file"])
        d["method_config"] = methods.get(d["method"]).config_from_dict(d["method_config"])
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# checks without torch


def _layer_device_names(text: str) -> list[str]:
    """The comma-separated names of --layer-devices (at least two)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise UserError(f"--layer-devices {text!r} needs at least two comma-separated devices (e.g. "
                        f"cuda:0,cuda:1); for one device use --device.")
    return names


def check_flags(args: argparse.Namespace, method: type[methods.Method]) -> Any:
    """Checks between flags that need neither torch nor the model; returns the method's own
    configuration (``method.build_config``, which validates the method's flags)."""
    if args.temperature == 0 and (args.top_p != 1.0 or args.top_k != 0):
        raise UserError("--top-p and --top-k only apply when sampling; add --temperature > 0 (for "
                        "example --temperature 0.6 --top-p 0.95) or drop them for greedy decoding.")
    config = method.build_config(args)
    if args.tails == "kernels" and args.kernels == "torch":
        raise UserError("--tails kernels needs the Triton passes (--kernels triton or auto); with "
                        "--kernels torch the cycle's tails are PyTorch ops: drop --tails or pass "
                        "--tails torch.")
    if args.tails == "kernels" and args.layer_devices is not None:
        raise UserError("--tails kernels runs on one device; with --layer-devices the cycle's tails "
                        "are PyTorch ops: drop --tails or pass --tails torch.")
    if args.answer_file:
        answer_file = Path(args.answer_file)
        if answer_file.suffix != ".jsonl":
            raise UserError(f"--answer-file {answer_file} must end in .jsonl (JSON Lines).")
        if paths.is_shard(answer_file):
            raise UserError(f"--answer-file {answer_file} looks like a shard file "
                            f"(.shard<i>.jsonl); pass the name of the merged file, and "
                            f"--shard/--num-shards for a shard.")
        if answer_file.is_dir():
            raise UserError(f"--answer-file {answer_file} is a directory; pass a .jsonl file name.")
    if args.model_id is not None and (not args.model_id.strip() or "/" in args.model_id
                                      or args.model_id in (".", "..")):
        raise UserError(f"--model-id {args.model_id!r} cannot name an output folder; pass a plain "
                        f"name such as smollm2-135m.")
    _check_parallelism(args)
    return config


def _check_parallelism(args: argparse.Namespace) -> None:
    if args.num_gpus is not None and args.num_shards is not None and args.num_gpus != args.num_shards:
        raise UserError(f"--num-gpus {args.num_gpus} and --num-shards {args.num_shards} disagree; "
                        f"pass one of them (--num-gpus N starts N processes, one per GPU).")
    num_shards = args.num_shards or args.num_gpus or 1
    if args.layer_devices is not None:
        names = _layer_device_names(args.layer_devices)
        if num_shards > 1:
            flag = "--num-gpus" if args.num_gpus is not None else "--num-shards"
            raise UserError(f"--layer-devices {','.join(names)} splits one model over several devices, "
                            f"but {flag} {num_shards} runs several copies of the whole model; combine "
                            f"neither: use --layer-devices for a model too large for one GPU, or "
                            f"{flag} to spread the instances of a model that fits on one.")
    if args.shard is not None:
        if args.num_shards is None:
            raise UserError("--shard needs --num-shards (the total number of shards).")
        if args.num_gpus is not None:
            raise UserError("--shard runs one shard in this process; drop --num-gpus (the parent "
                            "process that starts the shards is the one that takes --num-gpus).")
        if args.shard >= num_shards:
            raise UserError(f"--shard {args.shard} is out of range for --num-shards {num_shards} "
                            f"(shards are numbered 0..{num_shards - 1}).")


def data_dir(args: argparse.Namespace) -> Optional[str]:
    """--data-dir, else the project's default (`data.default_data_dir`)."""
    return args.data_dir if args.data_dir is not None else default_data_dir()


# ----------------------------------------------------------------------------------------------
# resolution (imports torch)


def _resolve_device(text: str):
    import torch

    text = text.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text!r} is not a torch device; use auto, cpu, cuda or cuda:<i>."
                        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text} asks for a GPU but CUDA is not available here (torch "
                            f"{torch.__version__}); use --device cpu, or install a CUDA build of "
                            f"torch on a machine with an NVIDIA GPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: there are only {torch.cuda.device_count()} visible "
                            f"GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif device.type != "cpu":
        raise UserError(f"--device {text}: only cpu and cuda devices are supported.")
    return device


def _resolve_layer_devices(args: argparse.Namespace) -> Optional[tuple]:
    if args.layer_devices is None:
        return None
    devices = []
    for name in _layer_device_names(args.layer_devices):
        if name.lower() == "auto":
            raise UserError("--layer-devices names each device explicitly (e.g. cuda:0,cuda:1); "
                            "auto is only for --device.")
        try:
            devices.append(_resolve_device(name))
        except UserError as exc:
            raise UserError(str(exc).replace("--device", "--layer-devices", 1)
                            .replace("use --device cpu", "leave out --layer-devices")) from None
    if args.device.strip().lower() != "auto" and _resolve_device(args.device) != devices[0]:
        raise UserError(f"--device {args.device} and --layer-devices {args.layer_devices} disagree; "
                        f"drop --device (the first of --layer-devices is where inputs and outputs "
                        f"live).")
    return tuple(devices)


def _check_gpus(args: argparse.Namespace, device, num_shards: int) -> None:
    import torch

    if device.type != "cuda":
        return
    if device.index is not None:
        raise UserError(f"--device {args.device} names one GPU, but --num-gpus/--num-shards "
                        f"{num_shards} spreads the run over several; use --device cuda (each "
                        f"process gets its own GPU).")
    if num_shards > torch.cuda.device_count():
        raise UserError(f"--num-gpus {num_shards} asks for more GPUs than the "
                        f"{torch.cuda.device_count()} visible here (CUDA_VISIBLE_DEVICES "
                        f"limits which are visible); pass at most --num-gpus "
                        f"{torch.cuda.device_count()}.")


def resolve(args: argparse.Namespace, method: type[methods.Method], config: Any) -> Settings:
    """Resolve device, dtype, model id and output paths; ``config`` from `check_flags`."""
    from model.loading import model_name

    model_path, load_path = paths.resolve_model_path(args.model_path)
    model_id = args.model_id or model_name(model_path)
    if not model_id or "/" in model_id or model_id in (".", ".."):
        raise UserError(f"cannot derive an output name from --model-path {model_path!r}; pass "
                        f"--model-id (a plain name such as smollm2-135m).")
    layer_devices = _resolve_layer_devices(args)
    device = layer_devices[0] if layer_devices else _resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else (
        "bfloat16" if device.type == "cuda" else "float32")
    answer_file = Path(args.answer_file) if args.answer_file else \
        paths.answer_file(model_id, args.task, method.run_name(config), args.temperature, args.outputs)
    num_shards = args.num_shards or args.num_gpus or 1
    if args.shard is None and num_shards > 1:
        _check_gpus(args, device, num_shards)
    config = method.place(config, paths.task_dir(model_id, args.task, args.outputs))
    return Settings(
        method=method.name, model_path=model_path, load_path=load_path, model_id=model_id,
        task=args.task, data_dir=data_dir(args), num_samples=args.num_samples, seed=args.seed,
        device=device, dtype_name=dtype_name, kernels=args.kernels, compile=args.compile,
        tails=args.tails,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, warmup=args.warmup,
        chat_template=bool(args.chat_template), answer_file=answer_file,
        overwrite=bool(args.overwrite), num_shards=num_shards, shard=args.shard,
        method_config=config, layer_devices=layer_devices, debug=bool(args.debug))


def run_config(s: Settings, data_source: str) -> dict:
    """The run configuration recorded in the header and in every record of the answer file."""
    return {
        "model_path": s.model_path,
        "model_id": s.model_id,
        "task": s.task,
        "method": s.method,
        "dtype": s.dtype_name,
        "device": s.device.type,
        "backends": s.backends.to_dict(),  # as asked; each record names the kernels that ran
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "max_new_tokens": s.max_new_tokens,
        "num_samples": s.num_samples,
        "seed": s.seed,
        "chat_template": s.chat_template,
        "data_source": data_source,
        **methods.config_entries(methods.get(s.method), s.method_config),
        # only when given, so that the configuration (and hash) of a single-device run is unchanged
        **({"layer_devices": [str(d) for d in s.layer_devices]} if s.layer_devices else {}),
        # volatile (left out of the configuration hash): where this process runs and writes
        "device_index": s.device.index,
        "shard": s.shard,
        "num_shards": s.num_shards,
    }
