"""Which kernels a process runs: chosen once per entry point, handed to `Engine`, recorded in every run config.

* ``kernels``: the decode, draft and verify passes run on
  - ``"triton"``: the fused, batch-invariant Triton kernels (`model/kernels/`): one fixed reduction order per weight
    shape and per query position, so a token tree verified in one pass gives the same bits as the same tokens decoded
    one at a time (greedy SWIFT is token-identical to vanilla in bf16 too);
  - ``"torch"``: PyTorch ops (cuBLAS products, SDPA attention); correct, but tree and one-token passes round
    differently, so bf16 greedy outputs can differ after a near-tie;
  - ``"auto"``: ``triton`` on CUDA when its kernels pass their self-check on this GPU, else ``torch``.
* ``compile``: ``torch.compile`` the sub-layer functions of the ``torch`` path (fuses their elementwise work; CUDA
  graphs are captured either way). ``"auto"`` = on for CUDA. The Triton path is already fused and ignores it.
* ``tails``: the work around a SWIFT cycle's passes (a draft step's top-k and table writes; the tree, the greedy
  acceptance and the commit of a verification)
  - ``"kernels"``: one or two Triton kernels each (`model/kernels/topk.py`, `tree.py`); they need the ``triton``
    passes on one device, and each drafter and verifier checks them first on made-up cycles at its own shapes
    (`model.swift.acceleration.fused_tails`);
  - ``"torch"``: PyTorch ops (about 180 small operations per verification);
  - ``"auto"``: ``kernels`` where the passes run the Triton kernels, falling back to ``torch`` with a warning where
    the check fails. The committed tokens are the same either way; only the launch count differs.

`Backends` is a frozen value: nothing here is process-global state. `resolve(device)` turns the ``auto`` choices
into concrete ones for a device; the engine records the resolved value (`Engine.backends`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from model.errors import UserError

KERNELS = ("auto", "triton", "torch")
COMPILE = ("auto", "on", "off")
TAILS = ("auto", "kernels", "torch")


@dataclass(frozen=True)
class Backends:
    kernels: str = "auto"
    compile: str = "auto"
    tails: str = "auto"

    def __post_init__(self):
        if self.kernels not in KERNELS:
            raise UserError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}.")
        if self.compile not in COMPILE:
            raise UserError(f"compile must be one of {', '.join(COMPILE)}, got {self.compile!r}.")
        if self.tails not in TAILS:
            raise UserError(f"tails must be one of {', '.join(TAILS)}, got {self.tails!r}.")
        if self.tails == "kernels" and self.kernels == "torch":
            raise UserError("the tail kernels (tails=kernels) need the Triton passes: kernels=triton or auto, "
                            "not torch.")

    def resolve(self, device) -> "Backends":
        """Concrete choices for `device` (a torch.device or its name): ``auto`` becomes what runs there."""
        cuda = str(device).startswith("cuda")
        kernels = self.kernels
        if kernels == "auto":
            kernels = "triton" if cuda else "torch"
        compile_ = self.compile
        if compile_ == "auto":
            compile_ = "on" if cuda and kernels == "torch" else "off"
        tails = self.tails
        if tails == "auto":
            tails = "kernels" if kernels == "triton" else "torch"
        elif tails == "kernels" and kernels == "torch":
            raise UserError(f"the tail kernels (tails=kernels) need the Triton passes, which do not run on {device}; "
                            f"ask for tails auto or torch.")
        return replace(self, kernels=kernels, compile=compile_, tails=tails)

    @property
    def use_compile(self) -> bool:
        return self.compile == "on" and self.kernels == "torch"

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["tails"] == "auto":  # as asked and left to the default: the run configurations (and their hashes) of
            del d["tails"]        # answer files written before this field existed stay the same
        return d
