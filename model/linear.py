"""Matrix-vector products for batch-1 decoding: a Triton GEMV on GPU, `F.linear` everywhere else.

A decode step of a 7B-shaped model is four weight GEMVs per layer (q/k/v, output, gate/up, down): reading the weights
is the step. cuBLAS' kernels for one input row read them at 3.5-3.8 TB/s on an H200 whose device-to-device copy runs
at 4.3 TB/s, and split-K choices add a reduction kernel per product (outputs/bench_engine_h200/profile_7b.txt). The
kernel here gives each program BLOCK_N whole weight rows, streams them in BLOCK_K slices with fp32 accumulation and
writes its outputs directly (no split-K, no second kernel); `triton.autotune` picks the block shape per (N, K).

`linear(x, w, b)` equals `F.linear(x, w, b)`; it takes the kernel when `BACKEND` allows it and the call suits it (CUDA,
fp16/bf16, one input row, contiguous weight): `"triton"` always, `"auto"` when the kernel timed faster than
`F.linear` for that weight shape (`prepare(model)`, called by the engine before it compiles or captures anything; an
undecided shape stays on `F.linear`), `"torch"` never. The kernel is registered as the custom op `swift::gemv`, so the compiled
sub-layer functions (model/llama.py) keep it as one opaque call. `BACKEND` comes from the SWIFT_LINEAR environment
variable or `set_backend`; the default is "auto".
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from model.attention import interpreting, triton

if triton is not None:
    import triton.language as tl

BACKENDS = ("auto", "triton", "torch")
BACKEND = os.environ.get("SWIFT_LINEAR", "auto")
_choice: dict[tuple, bool] = {}  # (N, K, dtype, device) -> use the kernel ("auto")
_timings: dict[tuple, tuple[float, float]] = {}  # same key -> (kernel ms, F.linear ms) measured by `decide`


def set_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    global BACKEND
    BACKEND = name


def _configs():
    if interpreting():  # one small config: the interpreter runs every program on the CPU
        return [triton.Config({"BLOCK_N": 4, "BLOCK_K": 32}, num_warps=1)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in ((4, 512, 4, 4), (8, 256, 4, 4), (8, 512, 4, 3), (8, 512, 8, 4), (16, 256, 4, 4),
                                 (16, 256, 8, 4), (16, 512, 8, 3), (32, 128, 4, 4), (32, 256, 8, 3),
                                 (2, 1024, 4, 4), (4, 1024, 8, 3))]


if triton is not None:
    @triton.autotune(configs=_configs(), key=["N", "K"])
    @triton.jit
    def _gemv_kernel(X, W, B, Y, N, K, stride_wn, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rn < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            x = tl.load(X + rk, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(W + rn[:, None] * stride_wn + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(B + rn, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=row_ok)


def triton_gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.T (+ b) for x with one row (any leading shape whose product is 1), w [N, K] with unit column stride."""
    K = x.shape[-1]
    N = w.shape[0]
    xs = x.reshape(K).contiguous()
    y = torch.empty(N, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _gemv_kernel[grid](xs, w, b if b is not None else y, y, N, K, w.stride(0), HAS_BIAS=b is not None)
    return y.view(*x.shape[:-1], N)


@torch.library.custom_op("swift::gemv", mutates_args=())
def gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel as an opaque op for torch.compile'd code (CUDA; CPU tensors only under Triton's interpreter)."""
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        return triton_gemv(x, w, b)


@gemv.register_fake
def _(x, w, b=None):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def suits(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and w.dtype == x.dtype
            and x.numel() == x.shape[-1] and w.dim() == 2 and w.stride(1) == 1)


def _graph_time(calls: list) -> float:
    """GPU time (ms) of one call, from a CUDA graph that replays `calls` in a row: no launch cost, as in the engine."""
    from model.engine import capture_graph  # the engine imports the model, which imports this module

    graph, _ = capture_graph(lambda: [c() for c in calls])  # its warm-up call autotunes the kernel
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (3 * len(calls))


def time_both(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
              l2_bytes: int = 256 << 20) -> tuple[float, float]:
    """(kernel, F.linear) GPU ms per product, cycling over copies of `w` that together exceed the L2 cache, as a
    decode step's weights do (each layer's are read once per step)."""
    n = max(1, min(64, -(-l2_bytes // (w.numel() * w.element_size()))))
    ws = [w] + [w.clone() for _ in range(n - 1)]
    kernel = _graph_time([lambda v=v: triton_gemv(x, v, b) for v in ws])
    torch_ = _graph_time([lambda v=v: F.linear(x, v, b) for v in ws])
    return kernel, torch_


def _key(w: torch.Tensor) -> tuple:
    return (w.shape[0], w.shape[1], w.dtype, w.device)


def decide(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> bool:
    """"auto": time the kernel (after its autotuning) against F.linear for this weight shape, once per process, and
    remember the faster; on a kernel error, or outputs that disagree beyond bf16 rounding, F.linear. Eager only (not
    inside torch.compile tracing or a CUDA-graph capture): `prepare` calls it for every weight of a model."""
    key = _key(w)
    if key not in _choice:
        try:
            with torch.cuda.device(x.device):
                ref = F.linear(x, w, b)
                got = triton_gemv(x, w, b)
                tol = 2e-2 * ref.abs().max().clamp_min(1.0)
                _choice[key] = False
                if bool(((got - ref).abs().max() <= tol).item()):
                    _timings[key] = kernel, torch_ = time_both(x, w, b)
                    _choice[key] = kernel < torch_
        except Exception:  # noqa: BLE001 - any kernel failure means: use F.linear
            _choice[key] = False
    return _choice[key]


@torch.inference_mode()
def prepare(model: torch.nn.Module) -> None:
    """Decide the backend of every distinct weight shape of `model`'s linear layers ("auto", CUDA), before any
    compilation or graph capture reads the decisions."""
    if BACKEND != "auto" or triton is None:
        return
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.is_cuda and _key(mod.weight) not in _choice:
            w = mod.weight
            x = torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device)
            if suits(x, w):
                decide(x, w, mod.bias)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b), through the Triton GEMV where BACKEND and the call allow (module docstring). Traceable: under
    "auto" it only reads the decisions `prepare` made (an undecided shape uses F.linear)."""
    if BACKEND == "torch" or not suits(x, w):
        return F.linear(x, w, b)
    if BACKEND == "auto" and not _choice.get(_key(w), False):
        return F.linear(x, w, b)
    return gemv(x, w, b)


def choices() -> dict:
    """The per-shape decisions of "auto" so far, for benchmark records:
    {"NxK dtype": {"kernel": bool, "kernel_us": .., "torch_us": ..}}."""
    out = {}
    for key, v in _choice.items():
        n, k, dt, _ = key
        t = _timings.get(key)
        out[f"{n}x{k} {str(dt).replace('torch.', '')}"] = dict(kernel=v, **({} if t is None else dict(
            kernel_us=round(t[0] * 1e3, 2), torch_us=round(t[1] * 1e3, 2))))
    return out
