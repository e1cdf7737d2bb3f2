"""Core engine: logits vs transformers, cache rollback, tree attention, skip masks, loading errors."""

import json

import pytest
import torch

from model.backends import Backends

from model.config import ModelArgs
from model.engine import Engine
from model.errors import UserError
from model.generate import vanilla_generate
from model.llama import LayerSkip
from model.loading import load_model, load_tokenizer
from model.tree import build_tree
from tests.helpers import full_logits, hf_config, hf_model, ours_from_hf, pass_logits

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

CASES = {
    "llama-gqa-untied": ("llama", dict(tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama3-rope": ("llama", dict(rope_scaling=LLAMA3_ROPE, rope_theta=50000.0)),
    "qwen2-bias": ("qwen2", dict(tie_word_embeddings=False)),
    "mistral": ("mistral", dict(sliding_window=None)),
}


def full_forward(model, ids):
    return full_logits(model, ids)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case):
    arch, kw = CASES[case]
    hf = hf_model(hf_config(arch, **kw), seed=1)
    model, _ = ours_from_hf(hf)
    model.setup_cache(128)
    ids = torch.randint(0, hf.config.vocab_size, (100,))  # past original_max_position_embeddings for llama3
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].float()
    out = full_forward(model, ids)
    assert (out - ref).abs().max().item() <= 1e-4
    if arch == "qwen2":
        assert model.layers[0].attention.wqkv.bias is not None
    if kw.get("tie_word_embeddings"):
        assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()


def test_unsupported_architecture_is_named():
    with pytest.raises(UserError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        ModelArgs.from_hf_config({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="unsupported architecture"):
        load_model(str(tmp_path))
    with pytest.raises(UserError, match="tokenizer"):
        load_tokenizer(str(tmp_path))


def test_load_saved_folder(tmp_path):
    hf = hf_model(hf_config("qwen2"), seed=3)
    hf.save_pretrained(tmp_path)
    model, args = load_model(str(tmp_path))
    assert args.architecture == "Qwen2ForCausalLM" and args.qkv_bias
    model.setup_cache(64)
    ids = torch.randint(0, 97, (20,))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    assert (full_forward(model, ids) - ref).abs().max() <= 1e-4


def test_cache_rollback_gives_identical_logits():
    hf = hf_model(hf_config("llama"), seed=2)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 256)
    ids = torch.randint(0, 97, (30,))
    eng.start(ids[:29].tolist())
    first = pass_logits(eng, [ids[29]], [29], [29], [29], [29])
    spec = torch.randint(0, 97, (8,))  # 8 speculative tokens after the committed length ...
    pass_logits(eng, spec, [30] * 8, [30] * 8, range(30, 38), range(30, 38))
    again = pass_logits(eng, [ids[29]], [29], [29], [29], [29])  # ... rolled back by not moving the length
    assert torch.equal(first, again)
    cont = pass_logits(eng, [5], [30], [30], [30], [30])[0]
    model2, _ = ours_from_hf(hf)
    ref = full_forward(model2, torch.cat([ids, torch.tensor([5])]))[-1]
    assert (cont - ref).abs().max() <= 1e-4


def test_decode_warm_up_leaves_generation_unchanged():
    """warm_up_decode captures the plain-decoding graph of every chunk size and (PyTorch path) every KV-length
    bucket; a generation before and after it is identical. (On CPU the graphs are eager calls: `run` records them.)"""
    from model.engine import DECODE_CHUNKS, KV_BUCKET
    hf = hf_model(hf_config("llama"), seed=3, scale=4.0)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 3 * KV_BUCKET - 40)
    prompt = torch.randint(0, 97, (20,)).tolist()
    before = vanilla_generate(eng, prompt, 40).tokens
    seen = []
    real = eng.run
    eng.run = lambda key, fn, track=False: seen.append(key) or fn()
    eng.cuda_graphs = True
    try:
        eng.warm_up_decode()
    finally:
        eng.cuda_graphs, eng.run = False, real
    buckets = {k[3] for k in seen}
    assert buckets == {KV_BUCKET, 2 * KV_BUCKET, eng.max_seq_len} and {k[1] for k in seen} == set(DECODE_CHUNKS)
    assert len(seen) == len(set(seen)) == len(buckets) * len(DECODE_CHUNKS)
    assert vanilla_generate(eng, prompt, 40).tokens == before


def test_prefill_warm_up_runs_each_prompt_length_once_and_changes_nothing():
    """warm_up_prefill prefills one prompt per distinct length (the lazy per-shape work of the eager prefill
    happens before timing, whichever method runs first) and leaves generation unchanged."""
    hf = hf_model(hf_config("llama"), seed=3, scale=4.0)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 256)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (12, 20, 12, 7, 20)]
    before = vanilla_generate(eng, prompts[1], 24).tokens
    starts = []
    real = eng.start
    eng.start = lambda ids, *a, **k: starts.append(len(ids)) or real(ids, *a, **k)
    try:
        assert eng.warm_up_prefill(prompts) == 3
    finally:
        eng.start = real
    assert sorted(starts) == [7, 12, 20] and eng.length == 0 and int(eng.cursor) == 0
    assert vanilla_generate(eng, prompts[1], 24).tokens == before


def test_a_padded_prefill_gives_the_prompts_logits_and_the_same_generation():
    """With CUDA graphs the prompt is prefilled padded to its `prefill_len` bucket (one graph per bucket): the rows
    past the prompt neither change the prompt's logits nor the tokens that follow (vanilla and SWIFT), whatever the
    previous stream left in those slots; warm_up_prefill then prefills one prompt per bucket."""
    from model.engine import prefill_len
    from model.swift.config import SwiftConfig
    from model.swift.decoding import swift_generate

    assert [prefill_len(n) for n in (1, 64, 65, 511, 512, 513, 1025, 2049)] == [64, 64, 128, 512, 512, 576, 1152, 2304]
    assert all(n <= prefill_len(n) <= max(n + 63, n * 9 // 8) for n in range(1, 5000))
    hf = hf_model(hf_config("llama"), seed=6, scale=4.0)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 512)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (37, 64, 70, 40)]
    want = [(eng.start(p).clone(), vanilla_generate(eng, p, 30).tokens) for p in prompts]
    skip = LayerSkip.of(attn=[1], mlp=[2])
    swift = swift_generate(eng, prompts[2], 30, cfg=SwiftConfig(guard=False), skip=skip).tokens
    eng.pad_prefill = True  # eagerly, as the graph runs it
    for p, (logits, tokens) in zip(prompts, want):
        got = eng.start(p)
        assert torch.allclose(got, logits, atol=1e-5, rtol=1e-5)
        assert vanilla_generate(eng, p, 30).tokens == tokens
    assert swift_generate(eng, prompts[2], 30, cfg=SwiftConfig(guard=False), skip=skip).tokens == swift == want[2][1]
    assert eng.warm_up_prefill(prompts) == 2  # buckets 64 and 128

    def refused(key, fn, track=False):  # a device that refuses the capture: the eager prefill, with a warning
        raise RuntimeError("capture refused")
    eng.run, eng.cuda_graphs = refused, True
    with pytest.warns(RuntimeWarning, match="prefill graph of 64 tokens could not be captured"):
        got = eng.start(prompts[0])
    assert torch.equal(got, want[0][0]) and eng.pad_prefill is False
    eng.pad_prefill = True  # refused during warm-up: every prompt length is then warmed eagerly
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        assert eng.warm_up_prefill(prompts) == 4


def test_graph_eviction_keeps_the_prefill_graphs(monkeypatch):
    """Warm-up captures one prefill graph per bucket of the timed prompts; they are then the least recently used,
    and evicting them would put a capture into a timed answer: the oldest other graph goes instead."""
    from model import engine as engine_mod
    from model import graphs

    monkeypatch.setattr(graphs, "capture", lambda fn, pool=None, track=False: object())
    monkeypatch.setattr(engine_mod, "MAX_GRAPHS", 4)
    hf = hf_model(hf_config("llama"), seed=1)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 256)
    for key in [("prefill", 64), ("prefill", 128)] + [("decode", n) for n in range(6)]:
        eng.graph(key, None)
    assert list(eng._graphs) == [("prefill", 64), ("prefill", 128), ("decode", 4), ("decode", 5)]
    assert eng.graph_captures == 8


def test_tree_logits_equal_sequential_branches():
    hf = hf_model(hf_config("llama"), seed=4)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 256)
    prompt = torch.randint(0, 97, (12,))
    eng.start(prompt[:-1].tolist())
    tree = build_tree((2, 1, 3, 1))
    n = tree.size
    tokens = torch.cat([prompt[-1:], torch.randint(0, 97, (n - 1,))])
    root = len(prompt) - 1
    depth = torch.tensor(tree.depth)
    slots = root + torch.arange(n)  # every node sees the committed prefix, its chain ancestors and itself
    out = pass_logits(eng, tokens, root + depth, slots, slots, root + depth)
    for i in range(n):
        branch, node = [], i
        while node >= 0:
            branch.append(node)
            node = tree.parents[node]
        seq = torch.cat([prompt[:-1], tokens[list(reversed(branch))]])
        ref_model, _ = ours_from_hf(hf)
        ref = full_forward(ref_model, seq)[-1]
        assert (out[i] - ref).abs().max() <= 1e-4, f"node {i}"


def test_skip_nothing_equals_full_and_mlp_skip_matches_hand_reference():
    hf = hf_model(hf_config("llama"), seed=5)
    model, args = ours_from_hf(hf)
    ids = torch.randint(0, 97, (16,))
    T = 16
    pos = torch.arange(T)
    full = full_logits(model, ids)
    assert torch.equal(full, full_logits(model, ids, skip=LayerSkip()))
    skipped = full_logits(model, ids, skip=LayerSkip.of(mlp=[2]))
    # hand reference with transformers' modules: run the decoder layers, leaving out layer 2's MLP residual branch
    with torch.no_grad():
        h = hf.model.embed_tokens(ids[None])
        cos_sin = hf.model.rotary_emb(h, pos[None])
        for i, layer in enumerate(hf.model.layers):
            a = layer.self_attn(layer.input_layernorm(h), position_embeddings=cos_sin,
                                attention_mask=_hf_causal(T))[0]
            h = h + a
            if i != 2:
                h = h + layer.mlp(layer.post_attention_layernorm(h))
        ref = hf.lm_head(hf.model.norm(h))[0]
    assert (skipped - ref).abs().max() <= 1e-4
    assert (skipped - full).abs().max() > 1e-3  # skipping changed something


def _hf_causal(T):
    m = torch.full((T, T), float("-inf")).triu(1)
    return m[None, None]


def test_gated_forward_equals_real_skip():
    hf = hf_model(hf_config("llama", num_hidden_layers=5), seed=6)
    model, args = ours_from_hf(hf)
    eng = Engine(model, 128)
    ids = torch.randint(0, 97, (24,))
    eng.start(ids[:16].tolist())
    skip = LayerSkip.of(attn=[1, 3], mlp=[2])
    window = ids[16:24]
    keep = torch.ones(2, args.n_layers, 8, dtype=torch.bool)
    keep[0, [1, 3]] = False
    keep[1, [2]] = False
    ext = ([16] * 8, [16] * 8, range(16, 24), range(16, 24))  # the window sees the prompt and itself causally
    gated = pass_logits(eng, window, *ext, gates=(keep[0], keep[1]))
    real = pass_logits(eng, window, *ext, skip=skip)
    assert (gated - real).abs().max() <= 1e-5


def test_vanilla_sampling_is_seeded_and_greedy_stops_at_eos():
    hf = hf_model(hf_config("llama"), seed=7, scale=4)
    model, _ = ours_from_hf(hf)
    eng = Engine(model, 256)
    from model.sampling import SamplingConfig
    cfg = SamplingConfig(temperature=0.8, top_p=0.9)
    torch.manual_seed(11)
    a = vanilla_generate(eng, [1, 2, 3, 4], 40, cfg).tokens
    torch.manual_seed(11)
    b = vanilla_generate(eng, [1, 2, 3, 4], 40, cfg).tokens
    assert a == b and len(a) == 40
    g = vanilla_generate(eng, [1, 2, 3, 4], 40).tokens
    eos = g[10]
    cut = vanilla_generate(eng, [1, 2, 3, 4], 40, eos_ids=(eos,)).tokens
    assert cut == g[: g.index(eos) + 1]


@pytest.mark.real_model
def test_real_smollm2_logits_and_greedy_generation(smollm2_path):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    model, _ = load_model(smollm2_path)
    tok = load_tokenizer(smollm2_path)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = list(ids)
    eng = Engine(model, len(ids) + 64 + 200)
    t = torch.tensor(ids)
    with torch.no_grad():
        ref = hf(t[None]).logits[0]
    model2, _ = load_model(smollm2_path)
    assert (full_forward(model2, t) - ref).abs().max() <= 2e-3
    want = hf.generate(t[None], max_new_tokens=64, do_sample=False, eos_token_id=None,
                       pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    got = vanilla_generate(eng, ids, 64).tokens
    assert got == want
    assert "Paris" in tok.decode(got)


def test_compiled_sub_layers_trace_whole_and_keep_outputs(monkeypatch):
    """torch.compile(fullgraph=True) of the sub-layer functions (traced by dynamo + AOT autograd; the aot_eager backend
    needs no C++ compiler): vanilla and greedy SWIFT give the eager engine's tokens."""
    from model import ops
    from model.swift.config import SwiftConfig
    from model.swift.decoding import swift_generate
    from model.swift.layer_search import LayerSearch
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "aot_eager"}))
    hf = hf_model(hf_config("llama"), seed=1, scale=6)
    model, args = ours_from_hf(hf)
    prompt = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = vanilla_generate(Engine(model, 300), prompt, 40).tokens
    eng = Engine(model, 300, Backends(kernels="torch", compile="on"))
    eager = {"attn_in": ops._attn_in, "attn_out": ops._attn_out, "mlp": ops._mlp}
    assert eng.ops.name == "torch" and all(eng.ops.fns[k] is not f for k, f in eager.items())
    assert vanilla_generate(eng, prompt, 40).tokens == ref
    cfg = SwiftConfig(skip_ratio=0.25, context_window=8, guard=False)
    assert swift_generate(eng, prompt, 40, cfg=cfg, search=LayerSearch(args.n_layers, cfg)).tokens == ref


def test_tails_setting_resolves_with_the_passes_and_refuses_what_cannot_run():
    """`Backends.tails`: auto means the tail kernels exactly where the passes are Triton's; the tail kernels asked for
    by name beside PyTorch passes are refused up front (a user error) or, where the engine has to fall back to the
    PyTorch passes, at engine construction; an unset value stays out of the recorded configuration."""
    assert Backends().resolve("cuda").tails == "kernels" and Backends().resolve("cpu").tails == "torch"
    assert Backends("torch").resolve("cuda").tails == "torch"
    assert Backends("triton", tails="torch").resolve("cuda").tails == "torch"
    assert Backends().to_dict() == {"kernels": "auto", "compile": "auto"}  # the hashes of older answer files hold
    assert Backends(tails="torch").to_dict()["tails"] == "torch"
    with pytest.raises(UserError, match="need the Triton passes"):
        Backends("torch", tails="kernels")
    with pytest.raises(UserError, match="tails must be one of"):
        Backends(tails="fused")
    model, _ = ours_from_hf(hf_model(hf_config("llama", num_hidden_layers=2), seed=1))
    assert Engine(model, 64, Backends()).backends.tails == "torch"  # auto on the CPU: the PyTorch passes
    with pytest.raises(UserError, match="which do not run on cpu"):
        Engine(model, 64, Backends(tails="kernels"))  # auto passes are PyTorch's on the CPU
