"""Fused, batch-invariant Triton kernels for the passes of decoding (one token, a draft step, a verified token tree).

Every kernel here gives each output row a result that depends on that row's inputs only, computed in one fixed
order whatever the number of rows in the call and whatever the other rows hold:

* `gemm.py`: y = epilogue(prologue(x) @ w.T) for up to a few hundred rows, one block shape per weight shape (never
  per row count), no split reductions; the RMSNorm of the input, SiLU-gating, bias and the residual add are fused in.
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
"""

from __future__ import annotations

import os

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = tl = None


def interpreting() -> bool:
    """Triton's CPU interpreter runs the kernels on CPU tensors (TRITON_INTERPRET=1): how the tests check them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device) -> bool:
    """Whether the kernels can run on tensors of `device` here."""
    if triton is None:
        return False
    return str(device).startswith("cuda") or interpreting()
