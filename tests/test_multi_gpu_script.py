"""scripts/multi_gpu.py on CPU (devices cpu,cpu): the data-parallel and layer-placement paths it drives on GPUs, with
the real SmolLM2 in float32, where every identity check must hold (--strict)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "multi_gpu.py"
pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def _module():
    spec = importlib.util.spec_from_file_location("multi_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_multi_device_check_on_two_cpu_devices(smollm2_path, shared_data_dir, tmp_path):
    out = tmp_path / "mg"
    rc = _module().main(["--model-path", str(smollm2_path), "--data-dir", str(shared_data_dir), "--devices", "cpu,cpu",
                         "--num-samples", "2", "--max-new-tokens", "16", "--out", str(out), "--strict",
                         "--swift-args", "--context-window 4 --num-candidates 2 --max-opt-iter 3 --no-guard",
                         "--", "--warmup", "0"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["identical"] == {"dp2 merged == dp1": {"same": 2, "of": 2},
                              "placed vanilla == dp1": {"same": 2, "of": 2},
                              "placed swift == placed vanilla": {"same": 2, "of": 2}}
    assert set(s["end_to_end_s"]) == {"dp1", "dp2", "placed_vanilla", "placed_swift"}
    assert all(v > 0 for v in s["generation_s"].values())
    assert (out / "dp2" / "vanilla.shard0.jsonl").exists() or (out / "dp2" / "vanilla.jsonl").exists()
    lines = (out / "placed" / "swift.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["config"]["layer_devices"] == ["cpu", "cpu"]
    accepted = [a for line in lines[1:] for a in json.loads(line)["choices"][0]["accept_lengths"]]
    assert max(accepted) > 1  # the placed SWIFT drafted and verified tokens, not only plain steps
    md = (out / "summary.md").read_text()
    assert "| placed swift == placed vanilla | 2 / 2 |" in md and "speedup" in md


def test_rejects_mixed_or_single_devices(tmp_path):
    mod = _module()
    for bad in ("cuda:0", "cpu,cuda:0", "cpu"):
        with pytest.raises(SystemExit, match="two or more devices"):
            mod.main(["--devices", bad, "--out", str(tmp_path)])
