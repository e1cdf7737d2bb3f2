"""The batch-invariant Triton kernels (model/kernels/) in Triton's CPU interpreter: each against a PyTorch reference,
and each row's bits independent of the number of rows, of the neighbouring rows, and of where a tree node's own key
sits. bf16 is not checked here (the interpreter's bf16 matrix product reinterprets the bits); scripts/gpu_selftest.py
checks bf16 on the GPU, and the engine checks the kernels against the PyTorch ops on its first use there."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from model import kernels
from model.backends import Backends
from model.engine import Engine
from model.errors import UserError
from model.kernels.attention import Extents, attention, reference_mask
from model.kernels.gemm import Config, gemm
from model.kernels.gemm import gemm as _gemm
from model.kernels.rope import rope_write
from model.ops import apply_rope
from tests.helpers import hf_config, hf_model, ours_from_hf

pytest.importorskip("triton", reason="triton is installed by scripts/setup.sh")
pytestmark = pytest.mark.skipif(not kernels.interpreting() and not torch.cuda.is_available(),
                                reason="the kernels run on CPU tensors only in Triton's interpreter")
DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}


def _close(got, ref, dtype):
    scale = max(1.0, ref.abs().max().item())
    assert (got.float() - ref.float()).abs().max().item() <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("n,k,M,rb", [(40, 96, 5, 1), (37, 50, 5, 1), (16, 130, 5, 1), (37, 50, 21, 2)])
def test_gemm_matches_pytorch(n, k, M, rb, split, dtype):
    """Plain, with bias, with the RMSNorm prologue, the SiLU-gated gate/up product, and a product adding into a
    gated residual; shapes that are not multiples of the blocks (masked tails); one K range or three; one row block
    per program or two (the second partly masked)."""
    cfg = Config(16, 32, 1, 1, split=split)
    g = torch.Generator().manual_seed(n * k)
    gemm = functools.partial(_gemm, rb=rb)
    x = torch.randn(M, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / 8).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    _close(gemm(x, w, bias=b, cfg=cfg), F.linear(x.float(), w.float(), b.float()), dtype)
    nw = torch.randn(k, generator=g).to(dtype)
    xn = (F.rms_norm(x.float(), (k,), eps=1e-5).to(dtype).float() * nw.float()).to(dtype)
    _close(gemm(x, w, norm=nw, eps=1e-5, cfg=cfg), F.linear(xn.float(), w.float()), dtype)
    w2 = (torch.randn(2 * n, k, generator=g) / 8).to(dtype)
    b2 = torch.randn(2 * n, generator=g).to(dtype)
    gate, up = F.linear(xn.float(), w2.float(), b2.float()).to(dtype).float().chunk(2, dim=1)
    _close(gemm(x, w2, bias=b2, norm=nw, eps=1e-5, glu=True, cfg=cfg), F.silu(gate).to(dtype).float() * up, dtype)
    r = torch.randn(M, n, generator=g).to(dtype)
    keep = torch.arange(M) % 3 != 1
    want = torch.where(keep[:, None], r.float() + F.linear(x.float(), w.float()), r.float())
    r0 = r.clone()
    assert gemm(x, w, residual=r, keep=keep, cfg=cfg) is None
    _close(r, want, dtype)
    assert torch.equal(r[~keep], r0[~keep])  # gated-off rows keep their residual exactly


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rb", [1, 2])
@pytest.mark.parametrize("variant", ["plain", "norm-glu", "residual-split"])
def test_gemm_rows_are_bit_identical_whatever_the_batch(variant, dtype, rb):
    """A row's result for M = 1 equals its result among 1..64 other rows, with other neighbours, bit for bit, with one
    or two row blocks per program."""
    g = torch.Generator().manual_seed(7)
    n, k = 48, 64
    w = (torch.randn(2 * n if variant == "norm-glu" else n, k, generator=g) / 8).to(dtype)
    nw = torch.randn(k, generator=g).to(dtype)
    row = torch.randn(1, k, generator=g).to(dtype)
    resid = torch.randn(1, n, generator=g).to(dtype)

    def run(x, r):
        b = rb if x.shape[0] > 16 else 1
        if variant == "plain":
            return gemm(x, w, rb=b)
        if variant == "norm-glu":
            return gemm(x, w, norm=nw, eps=1e-6, glu=True, rb=b)
        gemm(x, w, residual=r, cfg=Config(16, 32, 1, 1, split=2), rb=b)
        return r

    alone = run(row.clone(), resid.clone())
    for M in (2, 7, 16, 17, 33, 64):
        for at in (0, M // 2, M - 1):
            x = torch.randn(M, k, generator=g).to(dtype)
            x[at] = row[0]
            r = torch.randn(M, n, generator=g).to(dtype)
            r[at] = resid[0]
            assert torch.equal(run(x, r)[at], alone[0]), (M, at)


def _cache(n_kv, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_kv, S, D, generator=g).to(dtype), torch.randn(n_kv, S, D, generator=g).to(dtype)


def _sdpa(q, k, v, ext, g):
    n_kv, R, D = q.shape
    T = R // g
    mask = reference_mask(ext, k.shape[1])
    qr = q.view(n_kv, T, g, D).permute(0, 2, 1, 3).float()
    o = F.scaled_dot_product_attention(qr, k[:, None].float().expand(-1, g, -1, -1),
                                       v[:, None].float().expand(-1, g, -1, -1),
                                       attn_mask=mask[None, None].expand(n_kv, g, -1, -1))
    return o.permute(2, 0, 1, 3).reshape(T, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [0, 50])
def test_attention_matches_sdpa(dtype, window):
    """Rows with different prefixes (0, inside a chunk, at chunk boundaries), runs of several keys, a window."""
    n_kv, g, D, S = 2, 3, 32, 384
    k, v = _cache(n_kv, S, D, dtype)
    prefix = torch.tensor([0, 100, 128, 257, 300])
    slot = torch.tensor([200, 201, 202, 350, 351])
    run_lo = slot.clone()
    run_lo[4] = 340
    ext = Extents(prefix, run_lo, slot, torch.tensor([10, 101, 131, 258, 310]), window)
    q = torch.randn(n_kv, 5 * g, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    _close(attention(q, k, v, ext), _sdpa(q, k, v, ext, g), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tree_node_attention_equals_sequential_decoding_bitwise(dtype):
    """A tree pass: nodes at depths 1..4 after a root at slot R, each seeing [0, R + depth) and its own slot (a leaf in
    a scratch slot). Each row equals the same query decoded alone (prefix = its position, own key at its position)
    bit for bit, when the leaf's key is copied to where sequential decoding would have it."""
    n_kv, g, D, S, R = 2, 2, 32, 512, 261
    k, v = _cache(n_kv, S, D, dtype, seed=3)
    depth = torch.tensor([0, 1, 2, 3, 4, 2])  # root, chain 1..4, a leaf at depth 2 in slot R + 5
    slot = R + torch.arange(6)
    q = torch.randn(n_kv, 6 * g, D, generator=torch.Generator().manual_seed(4)).to(dtype)
    tree = attention(q, k, v, Extents(R + depth, slot, slot, R + depth))
    for i in range(6):
        kk, vv = k.clone(), v.clone()
        p = R + int(depth[i])
        kk[:, p], vv[:, p] = k[:, slot[i]], v[:, slot[i]]
        one = torch.tensor([p])
        alone = attention(q.view(n_kv, 6, g, D)[:, i].contiguous(), kk, vv, Extents(one, one, one, one))
        assert torch.equal(alone[0], tree[i]), i


def test_rope_write_matches_pytorch():
    n_q, n_kv, D, T = 4, 2, 16, 3
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(T, (n_q + 2 * n_kv) * D, generator=g)
    kc, vc = torch.zeros(n_kv, 64, D), torch.zeros(n_kv, 64, D)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    pos, slots = torch.tensor([3, 7, 9]), torch.tensor([10, 11, 40])
    q = rope_write(qkv, pos, slots, inv, kc, vc, n_q, n_kv)
    x = qkv.view(T, n_q + 2 * n_kv, D)
    f = pos[:, None].float() * inv
    emb = torch.cat((f, f), -1)[:, None]
    qk = apply_rope(x[:, :n_q + n_kv], emb.cos(), emb.sin())
    want_q = qk[:, :n_q].reshape(T, n_kv, n_q // n_kv, D).permute(1, 0, 2, 3).reshape(n_kv, -1, D)
    assert (q - want_q).abs().max() <= 1e-5
    assert (kc[:, slots].transpose(0, 1) - qk[:, n_q:]).abs().max() <= 1e-5
    assert torch.equal(vc[:, slots].transpose(0, 1), x[:, n_q + n_kv:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_tree_logits_equal_sequential_decode_bitwise(dtype):
    """Through the whole model with the Triton kernels: a verification-shaped pass (root + chain at consecutive
    slots) gives each token the bits that decoding it alone gives."""
    from model.llama import Pass
    hf = hf_model(hf_config("llama", num_hidden_layers=2), seed=2, scale=4)
    model, _ = ours_from_hf(hf)
    model = model.to(dtype)
    eng = Engine(model, 128, Backends(kernels="triton"))
    prompt = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(2)).tolist()
    chain = [5, 17, 42]
    eng.start(prompt)
    R = len(prompt)
    eng.seq[R:R + 4] = torch.tensor([eng.seq[R].item()] + chain)
    seq = eng.seq.clone()
    slot = R + torch.arange(4)
    tree = eng.logits(eng.forward(Pass(seq[R:R + 4], eng.ext(slot, slot, slot, slot))))
    for i in range(4):
        p = torch.tensor([R + i])
        alone = eng.logits(eng.forward(Pass(seq[R + i:R + i + 1], eng.ext(p, p, p, p))))
        assert torch.equal(alone[0], tree[i]), i


@pytest.mark.parametrize("name,value,needle", [("SWIFT_GEMM_NORM", "row", "must be one of two-pass, rows"),
                                               ("SWIFT_GEMM_NORM_BLOCK", "100", "power of two"),
                                               ("SWIFT_GEMM_NORM_BLOCK", "wide", "power of two"),
                                               ("SWIFT_PDL", "yes", "must be 0 or 1")])
def test_a_mistyped_kernel_setting_is_an_error_not_a_quiet_fallback(name, value, needle, monkeypatch):
    """The products read these settings on every call; a typo raised inside the engine's kernel self-check, which
    took it for a kernel failure and, with --kernels auto, ran the whole run on the PyTorch ops with only a note."""
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(Backends, "resolve", lambda self, device: Backends("triton", "off"))
    model, _ = ours_from_hf(hf_model(hf_config("llama", num_hidden_layers=2), seed=1))
    with pytest.raises(UserError, match=needle):
        Engine(model, 256, Backends(kernels="auto"))


def test_dependent_launch_is_asked_for_and_only_given_where_it_runs(monkeypatch):
    """Dependent launches (unset or SWIFT_PDL=1) add the launch attribute and the kernels' wait
    (model/kernels/__init__.py) only on a GPU that has them; SWIFT_PDL=0, or any other device: the plain launch.
    tests/compile_sm90.py checks the compiled kernels."""
    from model import kernels as K
    monkeypatch.delenv("SWIFT_PDL", raising=False)
    monkeypatch.setattr(K, "pdl_supported", lambda device: True)
    assert K.launch("cuda:0") == dict(PDL=True, launch_pdl=True) and K.settings()["SWIFT_PDL"] == "1"
    monkeypatch.setenv("SWIFT_PDL", "0")
    assert K.launch("cuda:0") == dict(PDL=False) and K.settings()["SWIFT_PDL"] == "0"
    monkeypatch.setenv("SWIFT_PDL", "1")
    assert K.launch("cuda:0") == dict(PDL=True, launch_pdl=True) and K.settings()["SWIFT_PDL"] == "1"
    with K.dependent_launches(False):
        assert K.launch("cuda:0") == dict(PDL=False)
    assert K.launch("cuda:0") == dict(PDL=True, launch_pdl=True)
    monkeypatch.setattr(K, "pdl_supported", lambda device: False)
    assert K.launch("cuda:0") == dict(PDL=False)
    monkeypatch.undo()
    monkeypatch.setenv("SWIFT_PDL", "1")
    K.pdl_supported.cache_clear()
    assert not K.pdl_supported("cpu") and K.launch(torch.device("cpu")) == dict(PDL=False)
    # on the CPU the interpreter runs the kernels as before with the setting on
    x, w = torch.randn(3, 64), torch.randn(32, 64)
    assert torch.allclose(gemm(x, w), x @ w.T, atol=1e-4)


def test_graphs_with_switchable_nodes_are_captured_with_plain_launches(monkeypatch):
    """A switched-off graph node is an empty node: a dependently launched kernel after it would not wait for the
    kernel before it. So a tracked capture (model/graphs.py) launches its kernels without PDL; other captures keep
    the setting."""
    from model import graphs
    from model import kernels as K
    monkeypatch.setenv("SWIFT_PDL", "1")
    monkeypatch.setattr(K, "pdl_supported", lambda device: True)
    seen = {}
    monkeypatch.setattr(graphs, "_capture", lambda fn, pool, track: seen.setdefault(track, K.launch("cuda:0")))
    graphs.capture(lambda: None, track=True)
    graphs.capture(lambda: None, track=False)
    assert seen == {True: dict(PDL=False), False: dict(PDL=True, launch_pdl=True)}


def test_engine_refuses_disagreeing_kernels(monkeypatch):
    """The engine compares the kernels with the PyTorch ops on its own weights: `triton` refuses to run wrong
    kernels, `auto` falls back to the PyTorch ops with a warning and records it."""
    from model import ops as O
    real = O.TritonOps.mlp
    monkeypatch.setattr(O.TritonOps, "mlp", lambda self, block, x, gate=None: real(self, block, x, gate).mul_(1.5))
    hf = hf_model(hf_config("llama", num_hidden_layers=2), seed=1)
    model, _ = ours_from_hf(hf)
    with pytest.raises(UserError, match="disagree"):
        Engine(model, 256, Backends(kernels="triton"))
    monkeypatch.setattr(Backends, "resolve", lambda self, device: Backends("triton", "off"))
    with pytest.warns(RuntimeWarning, match="disagree"):
        eng = Engine(model, 256, Backends(kernels="auto"))
    assert eng.ops.name == "torch" and eng.backends.kernels == "torch" and "disagree" in eng.kernel_note


def test_device_tree_follows_the_host_tree_rule():
    """The device-built tree (model/tree.py DeviceTree) has the nodes, tokens and depths of the host rule
    (branch_counts + build_tree) for random confidences and chain lengths, and a context branch off the chain node
    where it parts from the chain."""
    from model.swift.config import DEFAULT_TREE_RULE
    from model.tree import DeviceTree, branch_counts, build_tree
    g = torch.Generator().manual_seed(0)
    D, K, n = 6, 8, 32
    dt = DeviceTree(DEFAULT_TREE_RULE, n, n, "cpu")
    for trial in range(20):
        table = torch.randperm(90, generator=g)[:D * K].view(D, K) + 5
        top1 = torch.rand(D, generator=g)
        C = int(torch.randint(1, D + 1, (1,), generator=g))
        t = dt.build(table, top1, torch.tensor([C]), torch.zeros(4, dtype=torch.long), torch.tensor([0]),
                     torch.tensor([3]))
        tree = build_tree(branch_counts(top1[:C].tolist(), DEFAULT_TREE_RULE, n))
        want_tok = [3] + [int(table[d, r]) for d, r in tree.src]
        assert t.tokens[:tree.size].tolist() == want_tok and t.depth[:tree.size].tolist() == list(tree.depth)
        assert (t.tokens[tree.size:] == 3).all() and (t.depth[tree.size:] == 0).all()  # pads
    # a context branch sharing the chain's first two tokens hangs off chain node 2
    ctx = torch.tensor([int(table[0, 0]), int(table[1, 0]), 77, 78])
    t = dt.build(table, torch.ones(D), torch.tensor([4]), ctx, torch.tensor([4]), torch.tensor([3]))
    assert int(t.at) == 2 and int(t.blen) == 2
    assert t.tokens[t.bnode[:2]].tolist() == [77, 78] and t.depth[t.bnode[:2]].tolist() == [3, 4]
    assert t.prefix[t.bnode[:2]].tolist() == [3, 3] and t.run_lo[t.bnode[0]] == t.bnode[0]
    # an alternative equal to its chain sibling (a proposed chain keeps older alternatives) is not a candidate
    table[1, 2] = table[1, 0]
    t = dt.build(table, torch.zeros(D), torch.tensor([3]), torch.zeros(4, dtype=torch.long), torch.tensor([0]),
                 torch.tensor([3]))
    assert t.valid[1, 0] and not t.valid[1, 2] and t.valid[1, 1] and t.valid[1, 3]


def test_tuned_block_shapes_come_from_the_file_then_the_table(tmp_path, monkeypatch):
    """SWIFT_GEMM_TUNED (the tuned.json of scripts/gpu_selftest.py --tune) wins over TUNED, which wins over the
    heuristic; a block shape keyed by (N, K) only."""
    from model.kernels import gemm as G
    path = tmp_path / "tuned.json"
    path.write_text('{"96,64": [32, 64, 4, 4, 2]}')
    monkeypatch.setenv("SWIFT_GEMM_TUNED", str(path))
    G._tuned_file.cache_clear()
    monkeypatch.setitem(G.TUNED, (96, 64), Config(16, 128))
    monkeypatch.setitem(G.TUNED, (48, 64), Config(64, 64))
    assert G.config(96, 64) == Config(32, 64, 4, 4, split=2)
    assert G.config(48, 64) == Config(64, 64)
    assert G.config(40, 96) == G.heuristic(40, 96)
    monkeypatch.delenv("SWIFT_GEMM_TUNED")
    G._tuned_file.cache_clear()
    with pytest.raises(ValueError):
        Config(8, 64)


def _normed_product(glu: bool, rows: int, seed: int):
    """Input rows [rows, 160] and a product with its fused RMSNorm (48 outputs, large inputs), as a function of the
    rows given and the row blocks per program."""
    g = torch.Generator().manual_seed(seed)
    n, k = 48, 160
    w = (torch.randn(2 * n if glu else n, k, generator=g) / 8)
    nw = torch.randn(k, generator=g)
    x = torch.randn(rows, k, generator=g) * 30
    return x, lambda xs, rb=None: gemm(xs, w, norm=nw, eps=1e-6, glu=glu, cfg=Config(16, 32, 1, 1), rb=rb)


@pytest.mark.parametrize("glu", [False, True])
def test_one_pass_norm_equals_the_separate_pass_to_rounding(glu, monkeypatch):
    """The RMSNorm summed in the product's K loop (SWIFT_GEMM_NORM=one-pass, rstd applied to the sums) and the
    separate pass over x first (the default) compute the same product; the one-pass rows stay batch-invariant."""
    x, product = _normed_product(glu, 9, seed=3)
    two = product(x)
    monkeypatch.setenv("SWIFT_GEMM_NORM", "one-pass")
    one = product(x)
    _close(one, two, torch.float32)
    assert torch.equal(product(x[4:5])[0], one[4])


@pytest.mark.parametrize("glu", [False, True])
def test_a_wider_norm_slice_keeps_rows_batch_invariant(glu, monkeypatch):
    """SWIFT_GEMM_NORM_BLOCK=W sums the RMSNorm's squares W columns at a time (`norm_block`): the same product to
    rounding, each row's bits the same for 1, 9 and 33 rows (two row blocks per program), and a width that is not a
    power of two refused."""
    from model.kernels.gemm import norm_block
    x, product = _normed_product(glu, 33, seed=5)
    narrow = product(x)
    monkeypatch.setenv("SWIFT_GEMM_NORM_BLOCK", "128")
    assert norm_block(160, 32) == 128 and norm_block(40, 32) == 64
    wide = product(x, rb=2)
    _close(wide, narrow, torch.float32)
    for rows in (slice(4, 5), slice(0, 9)):
        assert torch.equal(product(x[rows]), wide[rows])
    monkeypatch.setenv("SWIFT_GEMM_NORM_BLOCK", "100")
    with pytest.raises(ValueError, match="power of two"):
        norm_block(160, 32)


@pytest.mark.parametrize("glu", [False, True])
@pytest.mark.parametrize("block", ["", "64"])
def test_the_row_by_row_norm_pass_keeps_rows_batch_invariant(glu, block, monkeypatch):
    """SWIFT_GEMM_NORM=rows sums each row's squares on its own (the whole row in one slice, or 64 columns at a time):
    the same product as the default pass to rounding; each row's bits the same for 1, 9 and 33 rows, with one row
    block per program or two, wherever the row sits in its block; an unknown mode refused."""
    from model.kernels.gemm import norm_mode
    x, product = _normed_product(glu, 33, seed=7)
    tile = product(x)
    monkeypatch.setenv("SWIFT_GEMM_NORM", "rows")
    monkeypatch.setenv("SWIFT_GEMM_NORM_BLOCK", block)
    assert norm_mode() == "rows"
    by_row = product(x, rb=2)
    _close(by_row, tile, torch.float32)
    assert not torch.equal(by_row, tile)  # another summation order: the mode did change the pass
    assert torch.equal(product(x, rb=1), by_row)
    for rows in (slice(4, 5), slice(0, 9), slice(20, 29)):
        assert torch.equal(product(x[rows]), by_row[rows])
    monkeypatch.setenv("SWIFT_GEMM_NORM", "fast")
    with pytest.raises(ValueError, match="SWIFT_GEMM_NORM must be one of two-pass, rows, one-pass"):
        product(x[:1])


@pytest.mark.parametrize("glu", [False, True])
def test_the_norm_from_a_row_kernel_keeps_rows_batch_invariant(glu, monkeypatch):
    """SWIFT_GEMM_NORM=row-kernel: each row's rstd from a kernel of its own (`_rstd_kernel`), read by the product: the
    same product as the default pass to rounding; each row's bits the same for 1, 9 and 33 rows, with one row block
    per program or two; and the same rstd as the row-by-row pass inside the product, whose sums it repeats."""
    x, product = _normed_product(glu, 33, seed=9)
    tile = product(x)
    monkeypatch.setenv("SWIFT_GEMM_NORM", "rows")
    inside = product(x, rb=2)
    monkeypatch.setenv("SWIFT_GEMM_NORM", "row-kernel")
    pre = product(x, rb=2)
    _close(pre, tile, torch.float32)
    assert not torch.equal(pre, tile)  # another summation order: the mode did change the pass
    assert torch.equal(pre, inside)
    assert torch.equal(product(x, rb=1), pre)
    for rows in (slice(4, 5), slice(0, 9), slice(20, 29)):
        assert torch.equal(product(x[rows]), pre[rows])


def test_wide_rows_take_the_norm_from_the_row_kernel_by_default(monkeypatch):
    """Unless SWIFT_GEMM_NORM says otherwise, rows of ROW_KERNEL_MIN_K columns or more get their rstd from the row
    kernel (one launch, one program per row) and narrower rows from the pass inside the product: chosen by the
    weight's width, so a row's bits stay the same for every row count."""
    from model.kernels import gemm as G
    monkeypatch.delenv("SWIFT_GEMM_NORM", raising=False)
    assert G.norm_mode(G.ROW_KERNEL_MIN_K) == "row-kernel" and G.norm_mode(4096) == "row-kernel"
    assert G.norm_mode(G.ROW_KERNEL_MIN_K - 1) == "two-pass" and G.norm_mode(576) == "two-pass"
    launches = []
    kernel = G._rstd_kernel

    class Recorder:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]
    monkeypatch.setattr(G, "_rstd_kernel", Recorder())
    g = torch.Generator().manual_seed(11)

    def product(k, rows):
        w = torch.randn(16, k, generator=g) / 32
        nw = torch.randn(k, generator=g)
        x = torch.randn(rows, k, generator=g) * 30
        return lambda xs: gemm(xs, w, norm=nw, eps=1e-6, cfg=Config(16, 256, 1, 1)), x
    wide, x = product(G.ROW_KERNEL_MIN_K, 5)
    default = wide(x)
    assert launches == [(5,)]
    assert torch.equal(wide(x[2:3])[0], default[2]) and launches[-1] == (1,)
    w_ranges = torch.randn(16, G.ROW_KERNEL_MIN_K, generator=g) / 32  # the product in 2 K ranges: the same rstd
    ranges = [gemm(xs, w_ranges, norm=torch.ones(G.ROW_KERNEL_MIN_K), eps=1e-6, cfg=Config(16, 256, 1, 1, split=2))
              for xs in (x, x[3:4])]
    assert torch.equal(ranges[1][0], ranges[0][3]) and launches[-2:] == [(5,), (1,)]
    monkeypatch.setenv("SWIFT_GEMM_NORM", "row-kernel")
    assert torch.equal(wide(x), default)
    monkeypatch.setenv("SWIFT_GEMM_NORM", "two-pass")
    _close(wide(x), default, torch.float32)
    narrow, xn = product(576, 3)
    monkeypatch.delenv("SWIFT_GEMM_NORM")
    narrow(xn)
    assert len(launches) == 5  # the two-pass calls, wide and narrow, launched no row kernel


def test_attention_reads_expanded_extents_as_their_values():
    """The layer search scores its candidates with one window start for every row, passed as an expanded (stride 0)
    view; the kernels must see that value in every row, as with a materialised copy."""
    n_kv, g, D, S, T = 2, 3, 32, 384, 6
    k, v = _cache(n_kv, S, D, torch.float32, seed=4)
    q = torch.randn(n_kv, T * g, D, generator=torch.Generator().manual_seed(5))
    start = torch.tensor([150])
    slot = 200 + torch.arange(T)
    ext = Extents(start.expand(T), torch.full((T,), 200), slot, 140 + torch.arange(T))
    dense = Extents(start.repeat(T), ext.run_lo, slot, ext.pos)
    got = attention(q, k, v, ext)
    assert torch.equal(got, attention(q, k, v, dense))
    _close(got, _sdpa(q, k, v, dense, g), torch.float32)
