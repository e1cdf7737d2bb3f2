"""Loading the model and tokenizer of a run: the checkpoint is checked before any answer file is
looked at, and one loaded model is kept per process, so that in-process callers that run several
methods on one model (`scripts/run_suite.py`) load its weights once."""

from __future__ import annotations

import json
from pathlib import Path

from model.errors import UserError

_CACHE: dict = {}


def check_checkpoint(s) -> None:
    """A missing or broken --model-path is the first thing reported, before an existing answer
    file is compared with this run (which would otherwise blame the configuration)."""
    from model.loading import resolve_checkpoint

    folder, gguf = resolve_checkpoint(s.load_path)
    if gguf is None and not (folder / "config.json").is_file():
        raise UserError(f"'{folder}' is not a model folder: it has no config.json. Pass a Hugging "
                        f"Face model folder, a .gguf file or a hub id.")


def load(s):
    """(model, ModelArgs, tokenizer) of the run with settings ``s``."""
    import torch
    from model.loading import load_model, load_tokenizer

    placed = [str(d) for d in s.layer_devices] if s.layer_devices else None
    key = (s.load_path, str(s.device), s.dtype_name, tuple(placed or ()))
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()
    try:
        model, margs = load_model(s.load_path, device=s.device, dtype=getattr(torch, s.dtype_name),
                                  devices=placed)
    except (UserError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - broken files (bad safetensors, ...) are user problems
        raise UserError(f"could not load the model from {s.model_path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}. Check that the "
                        f"folder holds a complete LLaMA-family checkpoint (config.json and "
                        f"*.safetensors) or re-fetch it; --debug shows the traceback.") from exc
    tokenizer = load_tokenizer(s.load_path)
    _CACHE[key] = (model, margs, tokenizer)
    return model, margs, tokenizer


def model_args_for_oom(s):
    """ModelArgs from the folder's config.json, for an out-of-memory message during loading."""
    from model.config import ModelArgs

    try:
        cfg = json.loads((Path(s.load_path) / "config.json").read_text())
        return ModelArgs.from_hf_config(cfg)
    except Exception:  # noqa: BLE001
        return None
