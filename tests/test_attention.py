"""The split-KV attention kernel (model/attention.py) against SDPA, run in Triton's CPU interpreter.

bf16 is not checked here: the interpreter's bf16 matrix product is wrong (it reinterprets the bits), so bf16 is
checked on the GPU by the kernel's own first-call comparison with SDPA and by scripts/gpu_selftest.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from model import attention as A
from tests.helpers import tiny_engine

triton = pytest.importorskip("triton", reason="triton is installed by scripts/setup.sh")


def _interpreter_works() -> bool:
    """Old triton interpreters fail with numpy 2.4 on any loop with a runtime bound; say so instead of failing."""
    if not A.interpreting():
        return False
    q = torch.randn(1, 1, 1, 16)
    try:
        A.triton_attention(q, q, q, torch.zeros(1, 1, 1, 1))
        return True
    except Exception:  # noqa: BLE001
        return False


pytestmark = pytest.mark.skipif(not _interpreter_works(),
                                reason=f"triton {triton.__version__}'s CPU interpreter does not run here "
                                       "(scripts/setup.sh installs one that does)")


@pytest.fixture
def kernel_backend():
    old = A.BACKEND
    A.set_backend("triton")
    yield
    A.set_backend(old)


def _case(H, M, N, D, dtype, used=None, tree=False, seed=0):
    """q [1, H, M, D]; k/v as slices of a larger cache tensor (strided like the engine's); an additive bias that hides
    slots >= `used` (the bucket's unused tail) and, for `tree`, a random ancestor pattern."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, 1, H, N + 37, D, generator=g).to(dtype)
    k, v = cache[0, :, :, :N], cache[1, :, :, :N]
    q = torch.randn(1, H, M, D, generator=g).to(dtype)
    allowed = torch.ones(M, N, dtype=torch.bool)
    if used is not None:
        allowed[:, used:] = False
    if tree:
        allowed &= torch.rand(M, N, generator=g) < 0.6
        allowed[:, 0] = True
    bias = torch.zeros(1, 1, M, N, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    return q, k, v, bias


@pytest.mark.parametrize("H,M,N,D,used,tree", [
    (3, 3, 256, 64, 200, False),  # SmolLM2-like decode: g=3 rows per KV head, bucketed keys, unused tail masked
    (2, 1, 64, 128, None, False),  # one query row, one key block: no split (the direct path)
    (3, 48, 512, 64, 300, True),  # a 16-node tree x g=3: several row blocks, whole masked chunks past `used`
    (2, 5, 77, 16, None, True),  # keys not a multiple of the block size
])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float16, 2e-3)])
def test_kernel_matches_sdpa(H, M, N, D, used, tree, dtype, tol):
    q, k, v, bias = _case(H, M, N, D, dtype, used, tree)
    got = A.triton_attention(q, k, v, bias).float()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float())
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= tol


def test_split_plan_covers_keys_in_whole_blocks():
    for bh, rows, keys in [(3, 3, 256), (32, 1, 768), (3, 192, 1000), (1, 1, 1), (8, 4, 4096)]:
        n_split, chunk = A.split_plan(bh, rows, keys)
        assert chunk % A.BLOCK_N == 0
        assert (n_split - 1) * chunk < keys <= n_split * chunk  # every chunk holds keys, together all of them
        programs = bh * -(-rows // A.BLOCK_M) * n_split
        assert programs >= min(A.TARGET_PROGRAMS, bh * -(-rows // A.BLOCK_M) * -(-keys // A.BLOCK_N)) // 2
    assert A.split_plan(3, 3, 256)[0] > 1  # few programs without splitting: the keys are split
    assert A.split_plan(64, 256, 256)[0] == 1  # plenty of programs already: one chunk


def test_model_logits_with_kernel_equal_sdpa(kernel_backend, monkeypatch):
    """Prefill, decode steps and a tree block of a tiny GQA model: the kernel gives SDPA's logits (fp32)."""
    calls = []
    real = A.triton_attention
    monkeypatch.setattr(A, "triton_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    eng, _ = tiny_engine(max_seq_len=300)
    prompt = torch.tensor([5, 9, 2, 44, 17, 3, 8])
    outs = {}
    for backend in ("triton", "sdpa"):
        A.set_backend(backend)
        logits = [eng.prefill(prompt)]
        tok = int(logits[0].argmax())
        for pos in range(len(prompt), len(prompt) + 3):
            lg = eng.decode(torch.tensor([tok]), pos)[-1]
            logits.append(lg)
            tok = int(lg.argmax())
        T, start = 8, len(prompt) + 3
        intra = torch.ones(T, T, dtype=torch.bool).tril()
        intra[4:, 1:4] = False  # two branches off node 0
        rope = torch.tensor([0, 1, 2, 3, 1, 2, 3, 4]) + start
        logits.append(eng.block(T, torch.arange(10, 10 + T), start, start, rope, intra))
        outs[backend] = logits
    n_layers = eng.args.n_layers
    assert len(calls) == 5 * n_layers  # every attention of the triton pass ran the kernel, none of the SDPA pass
    assert calls[-1][2] == 2 * 8  # the tree block: g=2 query heads per KV head x 8 nodes
    for a, b in zip(outs["triton"], outs["sdpa"]):
        assert (a - b).abs().max().item() <= 1e-4


def test_failed_self_check_falls_back_to_sdpa(monkeypatch):
    """Under the automatic backend a kernel that disagrees with SDPA on its first call is turned off, with a warning,
    and the call's result is SDPA's."""
    q, k, v, bias = _case(3, 3, 128, 64, torch.float32, used=100)
    monkeypatch.setattr(A, "BACKEND", "auto")
    monkeypatch.setattr(A, "kernel_suits", lambda q, k: True)
    monkeypatch.setattr(A, "triton_attention", lambda q, k, v, b: torch.zeros_like(q))
    monkeypatch.setattr(A, "_status", {"checked": False, "ok": True, "reason": ""})
    with pytest.warns(RuntimeWarning, match="disabled"):
        out = A.attention(q, k, v, bias)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    assert A.kernel_status()["ok"] is False and "difference" in A.kernel_status()["reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.attention(q, k, v, bias)  # no second check, no second warning


def test_passed_self_check_keeps_kernel(monkeypatch):
    q, k, v, bias = _case(3, 3, 128, 64, torch.float32, used=100)
    calls = []
    real = A.triton_attention
    monkeypatch.setattr(A, "BACKEND", "auto")
    monkeypatch.setattr(A, "kernel_suits", lambda q, k: True)
    monkeypatch.setattr(A, "triton_attention", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(A, "_status", {"checked": False, "ok": True, "reason": ""})
    A.attention(q, k, v, bias)
    A.attention(q, k, v, bias)
    assert A.kernel_status()["ok"] is True
    assert len(calls) == 3  # the checked call, its own result, the next call


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="backend"):
        A.set_backend("flash")
