"""Cached layer configurations: the skip set found for a (model, task), saved as a small JSON file and reused
(`--cache-hit`) to skip the optimization phase."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from model.errors import UserError
from model.llama import LayerSkip

FORMAT = "swift-layer-config/1"


def save_layer_config(path: str, model_id: str, architecture: str, n_layers: int, task: str, skip: LayerSkip,
                      ratio: float, matchness: float) -> None:
    data = {"format": FORMAT, "model_id": model_id, "architecture": architecture, "num_layers": n_layers,
            "task": task, "skip": skip.to_dict(), "skip_ratio": ratio, "matchness": matchness,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, p)


def load_layer_config(path: str, model_id: str, n_layers: int, task: str | None = None) -> tuple[LayerSkip, dict]:
    """Read and validate a cached configuration for this model; mismatches are user errors."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"layer-config cache '{path}' does not exist. Run once without --cache-hit to create it "
                        f"(it is written after the optimization phase).")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"layer-config cache '{path}' is not valid JSON ({e}). Delete it and run without "
                        f"--cache-hit to rebuild it.") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or "skip" not in data:
        raise UserError(f"'{path}' is not a SWIFT layer-config cache (expected format '{FORMAT}').")
    if data.get("model_id") != model_id or data.get("num_layers") != n_layers:
        raise UserError(f"layer-config cache '{path}' was made for model '{data.get('model_id')}' with "
                        f"{data.get('num_layers')} layers, but this run uses '{model_id}' with {n_layers} layers. "
                        f"Use the cache of this model or run without --cache-hit.")
    if task is not None and data.get("task") not in (None, task):
        raise UserError(f"layer-config cache '{path}' was made for task '{data.get('task')}', not '{task}'. "
                        f"Pass that task's cache or run without --cache-hit.")
    try:
        skip = LayerSkip.from_dict(data["skip"])
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"layer-config cache '{path}' has a malformed 'skip' entry ({e}).") from e
    bad = [i for i in (*skip.attn, *skip.mlp) if not 0 < i < n_layers - 1]
    if bad:
        raise UserError(f"layer-config cache '{path}' skips layers {bad} outside 1..{n_layers - 2} "
                        f"(the first and last layer are always kept).")
    return skip, data
