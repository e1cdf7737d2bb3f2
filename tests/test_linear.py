"""The batch-1 GEMV kernel (model/linear.py) against F.linear in Triton's CPU interpreter, and the dispatch rules of
`linear` (which calls may take the kernel, what each backend does). Speed, bf16 and the "auto" timing are GPU matters:
scripts/gpu_selftest.py and scripts/bench_engine.py check them there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import attention as A
from model import linear as L

triton = pytest.importorskip("triton", reason="triton is installed by scripts/setup.sh")
needs_interpreter = pytest.mark.skipif(not A.interpreting(), reason="the kernel runs on CPU only in the interpreter")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,bias", [(24, 64, False), (37, 50, True), (5, 130, False)])
def test_kernel_equals_f_linear(n, k, bias, dtype):
    """Row and column counts that are not multiples of the blocks (masked tails), with and without bias."""
    torch.manual_seed(n * k)
    x = torch.randn(1, 1, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    got = L.triton_gemv(x, w, b)
    assert got.shape == (1, 1, n) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=tol)


@needs_interpreter
def test_custom_op_matches_and_has_a_fake():
    """swift::gemv (what compiled code calls) returns the kernel's result; its fake gives shape and dtype."""
    x, w = torch.randn(1, 48), torch.randn(20, 48)
    torch.testing.assert_close(L.gemv(x, w), F.linear(x, w), atol=1e-4, rtol=1e-4)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        out = L.gemv(mode.from_tensor(x), mode.from_tensor(w))
    assert out.shape == (1, 20) and out.dtype == torch.float32


def test_dispatch_rules(monkeypatch):
    """CPU tensors, several rows, fp32 or a transposed weight never take the kernel; 'torch' never; 'auto' only for a
    weight shape `prepare` decided for; set_backend refuses unknown names."""
    calls = []
    monkeypatch.setattr(L, "gemv", lambda x, w, b=None: calls.append(tuple(w.shape)) or F.linear(x, w, b))
    monkeypatch.setattr(L, "suits", lambda x, w: x.numel() == x.shape[-1] and w.stride(1) == 1)  # as if on CUDA
    monkeypatch.setattr(L, "_choice", {})
    w = torch.randn(6, 8)
    one, many = torch.randn(1, 1, 8), torch.randn(1, 3, 8)
    for backend, expect in (("torch", 0), ("triton", 1), ("auto", 0)):
        monkeypatch.setattr(L, "BACKEND", backend)
        calls.clear()
        torch.testing.assert_close(L.linear(one, w), F.linear(one, w))
        L.linear(many, w)
        L.linear(one, torch.randn(8, 6).t())  # column stride 6: not a row-major weight
        assert len(calls) == expect, backend
    L._choice[L._key(w)] = True
    L.linear(one, w)
    assert calls == [(6, 8)]
    with pytest.raises(ValueError, match="linear backend"):
        L.set_backend("cublas")


def test_real_suits_is_gpu_half_precision_single_row():
    w = torch.randn(6, 8, dtype=torch.bfloat16)
    assert not L.suits(torch.randn(1, 8, dtype=torch.bfloat16), w)  # CPU
    assert L.prepare(torch.nn.Linear(8, 6)) is None  # nothing on CUDA: no decisions, no error
