"""Checkpoint loading (model/loading.py, model/config.py): sharded safetensors and .bin checkpoints, configs with
biases and sliding windows against transformers, refusals of unknown tensors and unsupported config fields, layer
placement at load time, hub file choice, sentencepiece tokenizers and the host-memory measurement script."""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.backends import Backends
from model.config import ModelArgs
from model.engine import Engine
from model.errors import UserError
from model.generate import vanilla_generate
from model.loading import build_model, convert_hf_state_dict, load_model, load_tokenizer
from tests.helpers import full_logits, hf_config, hf_model, ours_from_hf, teacher_forced_logits

REPO_ROOT = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    return full_logits(model, ids)


def _reference(hf, ids):
    with torch.no_grad():
        return hf(ids[None]).logits[0].float()


def _save_bin_shards(state: dict, folder: Path, n: int, extra: dict | None = None) -> None:
    """pytorch_model-0000i-of-0000n.bin shards with their index, the way older transformers saved them."""
    names = list(state)
    per = -(-len(names) // n)
    weight_map = {}
    for i in range(n):
        file = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: state[k].clone() for k in names[i * per:(i + 1) * per]}
        if i == 0 and extra:
            part.update(extra)
        torch.save(part, folder / file)
        weight_map.update({k: file for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny untied Llama saved as one safetensors file, as sharded safetensors and as sharded .bin."""
    root = tmp_path_factory.mktemp("llama")
    hf = hf_model(hf_config("llama", tie_word_embeddings=False), seed=1)
    hf.save_pretrained(root / "single")
    hf.save_pretrained(root / "sharded", max_shard_size="30KB")
    (root / "bin").mkdir()
    shutil.copy(root / "single" / "config.json", root / "bin")
    inv_freq = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}  # saved by old LLaMA conversions
    _save_bin_shards(hf.state_dict(), root / "bin", 3, extra=inv_freq)
    return hf, root


# ---- formats -------------------------------------------------------------------------------------------------------
def test_sharded_safetensors_and_bin_give_the_unsharded_logits(llama, monkeypatch):
    hf, root = llama
    assert len(list((root / "sharded").glob("model-*-of-*.safetensors"))) > 3
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    import safetensors.torch

    def whole_file(*a, **k):
        raise AssertionError("the loader must stream tensors, not read whole files")

    monkeypatch.setattr(safetensors.torch, "load_file", whole_file)
    real_load, load_kwargs = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: load_kwargs.append(k) or real_load(*a, **k))
    ids = torch.randint(0, 97, (40,))
    single = _logits(load_model(str(root / "single"))[0], ids)
    assert (single - _reference(hf, ids)).abs().max().item() <= 1e-4
    for folder in ("sharded", "bin"):
        assert torch.equal(_logits(load_model(str(root / folder))[0], ids), single), folder
    assert len(load_kwargs) == 3 and all(k.get("mmap") and k.get("weights_only") for k in load_kwargs)


def test_legacy_single_bin_and_dtype(llama, tmp_path):
    """A single pytorch_model.bin in the legacy (non-zip) format, which cannot be memory-mapped, still loads; the
    weights arrive in the requested dtype."""
    hf, root = llama
    shutil.copy(root / "single" / "config.json", tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    ids = torch.randint(0, 97, (20,))
    assert torch.equal(_logits(load_model(str(tmp_path))[0], ids), _logits(load_model(str(root / "single"))[0], ids))
    half, _ = load_model(str(root / "sharded"), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    want = hf.state_dict()["model.layers.1.mlp.up_proj.weight"].to(torch.bfloat16)
    assert torch.equal(half.layers[1].feed_forward.w13.weight[96:], want)


# ---- configs against transformers ----------------------------------------------------------------------------------
def _no_bias(model):
    for p_name, p in model.named_parameters():
        if p_name.endswith(("wo.bias", "w13.bias", "w2.bias")):
            p.zero_()


def _no_window(model):
    model.args = dataclasses.replace(model.args, sliding_window=None)


CONFIGS = {  # name: (arch, config fields, how to switch the feature off in our model: the check must depend on it)
    "llama-attention-bias": ("llama", dict(attention_bias=True), _no_bias),
    "llama-mlp-bias": ("llama", dict(mlp_bias=True), _no_bias),
    "mistral-sliding-window": ("mistral", dict(sliding_window=16), _no_window),
    "qwen2-window-on-all-layers": ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0),
                                   _no_window),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_variants_match_transformers(case, tmp_path):
    arch, kw, switch_off = CONFIGS[case]
    hf = hf_model(hf_config(arch, **kw), seed=2, scale=3)
    hf.save_pretrained(tmp_path)
    model, args = load_model(str(tmp_path))
    ids = torch.randint(0, 97, (100,))  # longer than the window
    ref = _reference(hf, ids)
    assert (_logits(model, ids) - ref).abs().max().item() <= 1e-4
    switch_off(model)
    assert (_logits(model, ids) - ref).abs().max().item() > 1e-3  # the feature matters for these logits
    if "bias" in case:
        assert args.o_bias == kw.get("attention_bias", False) and args.mlp_bias == kw.get("mlp_bias", False)
    else:
        assert args.sliding_window == 16


def test_fields_transformers_ignores_are_accepted(tmp_path):
    """pretraining_tp and other architectures' soft-capping / qk-norm fields do not change transformers' Llama."""
    hf = hf_model(hf_config("llama", pretraining_tp=2, attn_logit_softcapping=30.0, final_logit_softcapping=15.0,
                            use_qk_norm=True, sliding_window=8), seed=3, scale=3)
    hf.save_pretrained(tmp_path)
    model, args = load_model(str(tmp_path))
    assert args.sliding_window is None
    ids = torch.randint(0, 97, (40,))
    assert (_logits(model, ids) - _reference(hf, ids)).abs().max().item() <= 1e-4


def test_sliding_window_decode_matches_transformers_generate():
    """Token-by-token decoding through the engine past the window: every step's logits match transformers' forward
    over the whole sequence, with the PyTorch ops and with the Triton kernels, and greedy generation matches
    transformers' greedy generate."""
    hf = hf_model(hf_config("mistral", sliding_window=12), seed=4, scale=4)
    model, _ = ours_from_hf(hf)
    prompt = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(4))
    want = hf.generate(prompt[None], attention_mask=torch.ones(1, 30, dtype=torch.long), max_new_tokens=40,
                       do_sample=False, eos_token_id=None, pad_token_id=0)[0, 30:].tolist()
    eng = Engine(model, 256)
    assert vanilla_generate(eng, prompt.tolist(), 40).tokens == want
    full = prompt.tolist() + want
    ref = _reference(hf, torch.tensor(full))
    for kernels, steps in (("torch", 40), ("triton", 6)):
        e = Engine(model, 256, Backends(kernels=kernels))
        assert e.ops.name == kernels
        got = teacher_forced_logits(e, full[:30 + steps], 30)
        for i, logits in enumerate(got):
            assert (logits - ref[29 + i]).abs().max().item() <= 1e-4, (kernels, 29 + i)


# ---- refusals ------------------------------------------------------------------------------------------------------
def _rewrite_single(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file
    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_unknown_missing_and_misshapen_tensors_are_named(llama, tmp_path):
    _, root = llama
    unknown = tmp_path / "unknown"
    shutil.copytree(root / "single", unknown)
    _rewrite_single(unknown, lambda sd: sd.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}))
    with pytest.raises(UserError, match=r"1 tensor\(s\).*'model.layers.0.self_attn.q_norm.weight'.*silently"):
        load_model(str(unknown))
    missing = tmp_path / "missing"
    shutil.copytree(root / "single", missing)
    _rewrite_single(missing, lambda sd: sd.pop("model.layers.3.mlp.down_proj.weight"))
    with pytest.raises(UserError, match=r"lacks 1 tensor\(s\).*'model.layers.3.mlp.down_proj.weight'"):
        load_model(str(missing))
    shape = tmp_path / "shape"
    shutil.copytree(root / "single", shape)
    cfg = json.loads((shape / "config.json").read_text())
    (shape / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=80)))
    with pytest.raises(UserError, match=r"'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' has shape "
                                        r"\((96, 64|64, 96)\), but the config implies \((80, 64|64, 80)\)"):
        load_model(str(shape))
    shards = tmp_path / "shards"
    shutil.copytree(root / "sharded", shards)
    (shards / "model-00002-of-00022.safetensors").unlink()
    with pytest.raises(UserError, match="model-00002-of-00022.safetensors"):
        load_model(str(shards))


def test_biases_the_config_does_not_declare_are_refused(tmp_path):
    """The failure the config fields used to hide: a checkpoint with biases and a config that says it has none."""
    hf = hf_model(hf_config("llama", attention_bias=True))
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, attention_bias=False)))
    with pytest.raises(UserError, match=r"16 tensor\(s\).*'model.layers.0.self_attn.k_proj.bias'.*attention_bias"):
        load_model(str(tmp_path))
    with pytest.raises(UserError, match="q_proj.bias"):  # the in-memory conversion refuses them too
        convert_hf_state_dict(hf.state_dict(), ModelArgs.from_hf_config(dict(cfg, attention_bias=False)))


BASE = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=97, hidden_size=64,
            intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
REFUSED = {
    "yarn-rope": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "RoPE scaling type 'yarn'"),
    "dynamic-rope": (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "RoPE scaling type 'dynamic'"),
    "partial-rotary": (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, partial_rotary_factor=0.5),
                       "partial_rotary_factor=0.5"),
    "gelu": (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    "quantized": (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "quantization_config.*gptq"),
    "qwen2-layered-window": (dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=True,
                                  sliding_window=16, max_window_layers=2), "max_window_layers=2.*layers 2"),
    "arch-vs-model-type": (dict(model_type="mistral"), "model_type 'mistral'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_config_fields_are_refused(case, tmp_path):
    fields, message = REFUSED[case]
    with pytest.raises(UserError, match=message) as info:
        ModelArgs.from_hf_config(dict(BASE, **fields))
    assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps(dict(BASE, **fields)))
    with pytest.raises(UserError, match=message):  # before any weight is looked for
        load_model(str(tmp_path))


def test_config_defaults_follow_transformers():
    assert ModelArgs.from_hf_config(dict(BASE, architectures=["MistralForCausalLM"],
                                         model_type="mistral")).sliding_window == 4096
    qwen = dict(BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2", sliding_window=16)
    assert ModelArgs.from_hf_config(dict(qwen, use_sliding_window=True, max_window_layers=4)).sliding_window is None
    assert ModelArgs.from_hf_config(dict(qwen, use_sliding_window=False, max_window_layers=0)).sliding_window is None
    llama3 = ModelArgs.from_hf_config(dict(BASE, max_position_embeddings=512, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}))
    assert llama3.rope_scaling["original_max_position_embeddings"] == 512
    assert ModelArgs.from_hf_config(dict(BASE, partial_rotary_factor=0.5)).rope_scaling == {}  # ignored there too


# ---- placement at load time ----------------------------------------------------------------------------------------
def test_layers_are_loaded_onto_their_devices(tmp_path):
    hf = hf_model(hf_config("llama", tie_word_embeddings=True), seed=5)
    hf.save_pretrained(tmp_path, max_shard_size="30KB")
    ref, _ = load_model(str(tmp_path))
    placed, _ = load_model(str(tmp_path), devices=["cpu", "meta"])  # meta: where each weight goes, without a GPU
    assert placed.stages == [(torch.device("cpu"), 0, 2), (torch.device("meta"), 2, 4)]
    assert [next(layer.parameters()).device.type for layer in placed.layers] == ["cpu", "cpu", "meta", "meta"]
    assert placed.norm.weight.is_meta and placed.output.weight.is_meta and not placed.tok_embeddings.weight.is_meta
    assert torch.equal(placed.tok_embeddings.weight, ref.tok_embeddings.weight)
    assert torch.equal(placed.layers[1].attention.wqkv.weight, ref.layers[1].attention.wqkv.weight)
    two, _ = load_model(str(tmp_path), devices=["cpu", "cpu"])
    assert two.output.weight is two.tok_embeddings.weight  # one device: the tied weight stays shared
    ids = torch.randint(0, 97, (24,))
    assert (_logits(two, ids) - _logits(ref, ids)).abs().max().item() <= 1e-5


# ---- hub -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """snapshot_download replaced by a copy from a local 'repository' folder of the files the patterns match."""
    import huggingface_hub
    repo, snap, calls = tmp_path / "repo", tmp_path / "snapshot", []
    repo.mkdir()

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append(list(allow_patterns))
        snap.mkdir(exist_ok=True)
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, snap / f.name)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repo, snap, calls


def test_hub_fetches_safetensors_only_when_there_are_some(llama, fake_hub):
    _, root = llama
    repo, snap, calls = fake_hub
    for f in (root / "sharded").iterdir():
        shutil.copy(f, repo)
    for f in (root / "bin").glob("pytorch_model*"):
        shutil.copy(f, repo)
    (repo / "consolidated.safetensors").write_bytes(b"not for transformers")
    model, _ = load_model("owner/model")
    assert len(calls) == 1
    assert not list(snap.glob("*.bin")) and not (snap / "consolidated.safetensors").exists()
    ids = torch.randint(0, 97, (16,))
    assert torch.equal(_logits(model, ids), _logits(load_model(str(root / "single"))[0], ids))


def test_hub_falls_back_to_bin_shards(llama, fake_hub):
    _, root = llama
    repo, snap, calls = fake_hub
    for f in (root / "bin").iterdir():
        shutil.copy(f, repo)
    (repo / "training_args.bin").write_bytes(b"not weights")
    model, _ = load_model("owner/model")
    assert len(calls) == 2 and "pytorch_model*.bin" in calls[1]
    assert sorted(p.name for p in snap.glob("*.bin")) == [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    ids = torch.randint(0, 97, (16,))
    assert torch.equal(_logits(model, ids), _logits(load_model(str(root / "single"))[0], ids))


# ---- sentencepiece tokenizer ---------------------------------------------------------------------------------------
def _train_sentencepiece() -> bytes:
    import sentencepiece as spm
    text = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(200)] + ["def f(x): return x + 1"] * 50
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=out, vocab_size=80, model_type="bpe",
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return out.getvalue()


def test_sentencepiece_only_tokenizer_loads(tmp_path, fake_hub):
    import sentencepiece as spm
    proto = _train_sentencepiece()
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(proto)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False}))  # as LLaMA-2's tokenizer_config.json
    sp = spm.SentencePieceProcessor(model_proto=proto)
    text = "the lazy fox returns x + 1"
    for source in (str(folder), "owner/tokenizer"):
        if source == "owner/tokenizer":
            for f in folder.iterdir():
                shutil.copy(f, fake_hub[0])
        tok = load_tokenizer(source)
        ids = tok(text).input_ids
        assert ids == [1] + sp.encode(text) and tok.eos_token_id == 2
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (fake_hub[1] / "tokenizer.model").is_file()


def test_tokenizers_with_missing_files_are_refused(tmp_path):
    """A sentencepiece tokenizer.model without tokenizer_config.json loads but drops LLaMA-2's <s>; a folder whose
    tokenizer files are missing loads an almost empty tokenizer (every prompt one token). Both are refused."""
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(_train_sentencepiece())
    with pytest.raises(UserError, match="no tokenizer_config.json"):
        load_tokenizer(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    (folder / "config.json").write_text(json.dumps({"vocab_size": 80}))
    assert len(load_tokenizer(str(folder))) == 80  # the tokenizer the config asks for
    (folder / "tokenizer.model").unlink()
    with pytest.raises(UserError, match=r"has \d+ tokens but the model's vocabulary has 80: its files are missing"):
        load_tokenizer(str(folder))


def test_model_ids_and_meta_checkpoints(tmp_path):
    """The Hugging Face cache's snapshot folder is named by its commit: the model id is the model's name. Meta's
    original format is pointed to the conversion script."""
    from model.loading import model_name
    assert model_name("/x/models--meta-llama--Llama-2-7b-hf/snapshots/0123abc/") == "Llama-2-7b-hf"
    assert model_name("models/smollm2-135m/hf") == "smollm2-135m" and model_name("/x/y.gguf") == "y"
    meta = tmp_path / "llama-2-7b"
    meta.mkdir()
    (meta / "params.json").write_text("{}")
    (meta / "consolidated.00.pth").write_bytes(b"")
    for path in (meta, meta / "consolidated.00.pth"):
        with pytest.raises(UserError, match="convert_llama_weights_to_hf"):
            load_model(str(path), device="cpu")


def test_kernels_asked_for_by_name_where_they_cannot_run_is_a_user_error(monkeypatch):
    """--kernels triton where the kernels cannot run (a CPU without the interpreter) is a one-line error, not a
    traceback; --kernels auto falls back to the PyTorch ops."""
    from model import kernels
    model, _ = ours_from_hf(hf_model(hf_config("llama", num_hidden_layers=2), seed=1))
    monkeypatch.setattr(kernels, "available", lambda device: False)
    with pytest.raises(UserError, match="--kernels triton: the Triton kernels do not run on cpu"):
        Engine(model, 64, Backends(kernels="triton"))
    monkeypatch.setattr(Backends, "resolve", lambda self, device: Backends("triton", "off"))
    assert Engine(model, 64, Backends(kernels="auto")).ops.name == "torch"


# ---- host memory ---------------------------------------------------------------------------------------------------
def test_measure_loading_peak_is_about_one_shard():
    """The measurement script at a small shape on the CPU: converting bf16 shards to float32, the loader's peak host
    memory beyond the loaded model stays about one shard (reading the whole state dict first costs more than the
    whole checkpoint)."""
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "measure_loading.py"), "--shape", "tiny", "--vocab", "4000",
           "--shard-size", "8MB", "--device", "cpu", "--dtype", "float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["n_shards"] >= 6 and r["max_shard_bytes"] <= 8e6 and r["peak_reset"]
    assert r["host_model_bytes"] == r["model_bytes"] == 4 * r["params"]
    assert r["peak_extra_bytes"] <= 2 * r["max_shard_bytes"]
    assert r["peak_extra_bytes"] <= 0.35 * r["checkpoint_bytes"]
    assert r["load_s"] > 0


def _measure_loading():
    """scripts/measure_loading.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("measure_loading", REPO_ROOT / "scripts" / "measure_loading.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpoint_tensors(folder) -> dict:
    """Every tensor of a sharded safetensors checkpoint folder, by name."""
    from safetensors.torch import load_file
    return {k: v for f in sorted(folder.glob("model-*.safetensors")) for k, v in load_file(str(f)).items()}


def test_measure_loading_checkpoint_is_random_normal_and_reused(tmp_path):
    """The benchmark checkpoint: every tensor of its shape, normal with std 0.02 (norms 1), no two tensors alike (each a
    different run of the value pool), the same bits for the same seed, and a folder that holds it is reused."""
    ml = _measure_loading()
    cfg = dict(ml.SHAPES["tiny"], vocab_size=4000)

    def tensors(folder):
        ml.write_checkpoint(folder, cfg, 8_000_000)
        return _checkpoint_tensors(folder)

    a = tensors(tmp_path / "a")
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(s) for k, s in ml.hf_tensor_shapes(cfg)}
    weights = [v for k, v in a.items() if not k.endswith("norm.weight")]
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in a.items() if k.endswith("norm.weight"))
    for v in weights:
        assert v.dtype == torch.bfloat16 and abs(v.float().std().item() - 0.02) < 0.002 and abs(v.float().mean()) < 2e-3
    firsts = {tuple(v.flatten()[:64].tolist()) for v in weights}
    assert len(firsts) == len(weights)  # no two tensors start alike
    b = tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    stamp = (tmp_path / "b" / "config.json").stat().st_mtime_ns
    ml.write_checkpoint(tmp_path / "b", cfg, 8_000_000)
    assert (tmp_path / "b" / "config.json").stat().st_mtime_ns == stamp  # reused, not written again


def test_measure_loading_checkpoint_tensors_are_runs_of_one_pool(tmp_path, monkeypatch):
    """Each tensor is a rotated run of one pool of values, repeated when the tensor is larger than the pool (drawing
    every value of a 13B checkpoint one tensor at a time took minutes); a folder written another way is rewritten."""
    ml = _measure_loading()
    cfg = dict(ml.SHAPES["tiny"], vocab_size=4000)
    folder = tmp_path / "c"
    ml.write_checkpoint(folder, cfg, 8_000_000)
    monkeypatch.setattr(ml, "POOL", 1000)
    ml.write_checkpoint(folder, cfg, 8_000_000)  # another pool: written again
    assert json.loads((folder / ml.MARKER).read_text())["values"] == "pool of 1000"
    t = _checkpoint_tensors(folder)
    pool = None
    for name, v in t.items():
        if name.endswith("norm.weight"):
            continue
        flat = v.flatten()
        assert flat.numel() > 1000 and torch.equal(flat[1000:], flat[:-1000])  # the pool, repeated
        ring = torch.sort(flat[:1000].float()).values
        pool = ring if pool is None else pool
        assert torch.equal(ring, pool)  # the same values, rotated


def test_random_weight_models_keep_float32_rotary_frequencies():
    """A random-weight model in bf16 (benchmarks, the self-test) rotates with float32 frequencies, as a loaded
    checkpoint does: bf16 frequencies would turn high-frequency dims by whole radians at a few hundred positions."""
    from model.config import SMOLLM2_135M_SHAPE
    from model.llama import rope_inv_freq
    args = ModelArgs.from_hf_config(dict(SMOLLM2_135M_SHAPE, num_hidden_layers=2))
    model = build_model(args, None, dtype=torch.bfloat16)
    assert model.inv_freq.dtype == torch.float32 and torch.equal(model.inv_freq, rope_inv_freq(args))
    assert model.output.weight.dtype == torch.bfloat16
