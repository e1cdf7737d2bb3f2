"""Fused, batch-invariant Triton kernels for the passes of decoding (one token, a draft step, a verified token tree).

Every kernel here gives each output row a result that depends on that row's inputs only, computed in one fixed
order whatever the number of rows in the call and whatever the other rows hold:

* `gemm.py`: y = epilogue(prologue(x) @ w.T) for up to a few hundred rows, one block shape per weight shape (never
  per row count), no split of K that depends on the row count; the RMSNorm of the input, SiLU-gating, bias and the
  residual add are fused in (for rows of 2048 columns or more, the norm's rstd comes from a small kernel of its own
  run before the product).
* `rope.py`: rotary embedding of q and k, and the key/value write into the cache, one program per (token, head).
* `attention.py`: attention over the cache where a query row sees the slots `[0, prefix)` (reduced in fixed chunks
  aligned to absolute slots, merged in slot order) and then a short run of slots ending with its own (merged one
  key at a time). A token tree's node and the same token decoded alone see the same prefix slots, so they reduce
  identically even when the node's own key sits in a scratch slot.

So a verification pass over a token tree and plain decoding give the same bits for the same token at the same
position; greedy SWIFT is token-identical to vanilla decoding in bf16 as well as in float32.

Two more files hold the SWIFT cycle's bookkeeping around the passes, a few kernels instead of about two hundred
small PyTorch operations per cycle: `tree.py` (the token tree, greedy acceptance and commit) and `topk.py` (the end of
a draft step: top-k ids, top-1 probability, the draft table's writes).

On CPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`), which is how the tests check them.

Programmatic dependent launch (Hopper and later; on by default, `SWIFT_PDL=0` turns it off): every kernel here
is then launched with the launch attribute that lets the GPU start it while the kernel before it is still running,
and its first instructions wait for that kernel to finish and its writes to be visible (`enter`). Nothing a kernel
computes changes, nor the order in which kernels read and write memory; what overlaps is the next kernel's launch and
its programs' start-up. Measured on an H100 (docs/RESULTS.md): SmolLM2-135M decodes 16% faster (1334 against 1152
tok/s), the Qwen2.5-0.5B shape 10%; the LLaMA-2-7B shape, bound by its weight bytes, is unchanged (-0.7%). Graphs whose
kernel nodes are switched off after capture (model/graphs.py) are captured with plain launches
(`dependent_launches(False)`): a switched-off node is an empty node, and the kernel after it would no longer wait for
the one before it. SWIFT's graphs of many rows at once (the tree's verification, the layer search's scoring) can be
captured either way (`SwiftConfig.multirow_launches`, dependent by default).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = tl = None

try:  # grid dependency control: Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton, or none
    gdc_launch_dependents = gdc_wait = None

PDL_ENV = "SWIFT_PDL"
_launches = threading.local()  # .dependent: True or False inside `dependent_launches`, else SWIFT_PDL decides
ROW_KERNEL_MIN_K = 2048  # gemm.norm_mode's default: the RMSNorm's rstd from a kernel of its own for rows this wide
SETTINGS_ENV = ("SWIFT_GEMM_NORM", "SWIFT_GEMM_NORM_BLOCK", "SWIFT_GEMM_TUNED")  # recorded when set


def interpreting() -> bool:
    """Triton's CPU interpreter runs the kernels on CPU tensors (TRITON_INTERPRET=1): how the tests check them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device) -> bool:
    """Whether the kernels can run on tensors of `device` here."""
    if triton is None:
        return False
    return str(device).startswith("cuda") or interpreting()


def pdl_requested() -> bool:
    """SWIFT_PDL: "1" or unset asks for programmatic dependent launch (where the GPU has it), "0" does not;
    ValueError otherwise."""
    value = os.environ.get(PDL_ENV, "1") or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{PDL_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


@functools.lru_cache(maxsize=None)
def pdl_supported(device: str) -> bool:
    """Whether kernels on `device` can be launched dependently: a CUDA GPU of compute capability 9.0 or later and
    a Triton with grid dependency control (never in the interpreter)."""
    if triton is None or gdc_wait is None or interpreting() or not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 9


def launch(device) -> dict:
    """The launch arguments every kernel call here adds: the kernel's PDL switch and, when on, the launch attribute."""
    dev = str(device)
    if dev == "cuda":
        import torch

        dev = f"cuda:{torch.cuda.current_device()}"
    asked = getattr(_launches, "dependent", None)
    on = (pdl_requested() if asked is None else asked) and pdl_supported(dev)
    return dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)


@contextlib.contextmanager
def dependent_launches(on: bool):
    """Kernels launched inside (on this thread) are launched dependently (where the GPU can) or each after the one
    before it has finished, whatever SWIFT_PDL says: off for graphs whose kernel nodes are switched off after
    capture and for the multi-row graphs (`Engine.run(..., plain_launches=True)`); on and off for an A/B in one
    process (scripts/gpu_selftest.py)."""
    before = getattr(_launches, "dependent", None)
    _launches.dependent = on
    try:
        yield
    finally:
        _launches.dependent = before


def settings() -> dict:
    """The kernel settings this process runs with (the environment variables of this package that are set, the
    RMSNorm pass when SWIFT_GEMM_NORM leaves it to the default, and whether dependent launches are asked for), for
    benchmarks to record beside their numbers."""
    norm = {} if os.environ.get("SWIFT_GEMM_NORM") else {
        "norm_pass": f"two-pass below {ROW_KERNEL_MIN_K} columns, row-kernel from {ROW_KERNEL_MIN_K}"}
    return ({k: os.environ[k] for k in SETTINGS_ENV if os.environ.get(k)} | norm
            | {PDL_ENV: "1" if pdl_requested() else "0"})


if triton is None:  # the kernel modules import `enter` and define nothing with it
    enter = None
else:
    @triton.jit
    def enter(PDL: tl.constexpr):
        """A kernel's first step: with PDL, wait until the kernel before it has finished and its writes are visible,
        then let the next kernel launch (after the wait, so at most two kernels are ever resident)."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
