"""A LLaMA-shaped model with planted layer redundancy, for measuring SWIFT at shapes whose weights we do not have.

A random-weight model is no test bed for layer skipping: its next token is a near-tie that rounding alone flips, so
no skip set reproduces it, and nothing in it is redundant. This module writes weights by hand instead, so that

* the full model's greedy text is a fixed walk over an alphabet of T tokens (`PlantedTask.successor`), decided with a
  wide margin (bf16 rounding never flips it) and with confident logits;
* every sub-layer outside the planted set matters: each votes for the right next token of two alphabet tokens (as
  the edges of a ring over the text's cycle), and a token is predicted wrongly without all its votes. Skipping such
  sub-layers costs their tokens, so the layer search sees a graded landscape whose top is the planted set alone;
* the planted sub-layers (a share `ratio` of layers 1..L-2, the paper's r) change nothing, except that some of them
  (`CARRIERS` per token) redirect `n_flips` alphabet tokens: there the full model and a draft without the planted
  set disagree, which sets the draft's acceptance (about 1 - n_flips / (T - n_flips) on the model's own text).

All other weights are small noise (the bytes a step reads are those of a real checkpoint of that shape). The residual
stream carries a large constant in coordinate 0 (so RMSNorm divides by an almost fixed value and a sub-layer's output
is a fixed linear map of its input), the current token's one-hot code, and one vote counter per alphabet token; the
LM head reads the counters. Votes are exactly 1.0 in bf16, so the counters are exact integers. The full model's vote
for the right successor g(t) of token t is `n_t + 1` (the embedding's 1 plus its n_t voters); a wrong token w(t)
starts at `n_t + 0.5` in the embedding. An MLP votes through a constant gate (the constant coordinate) times its
one-hot input; an attention sub-layer attends to the positions holding the same token (their codes, rows of a
Hadamard matrix in the slowest rotary frequencies, match) and copies their one-hot code. Over long distances even the
slowest frequencies turn (LLaMA-2's heads, 32-token alphabet: 0.2 rad at 600 tokens) and other tokens' positions
enter the softmax: keep texts within several hundred tokens.

These models measure the system's cost structure, not a model's quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelArgs
from model.llama import LayerSkip, Transformer, rope_inv_freq

CONST = 1000.0  # the residual's constant coordinate
LOGIT_MARGIN = 20.0  # logits per unit of vote: the right token leads the wrong one by 10
ATTN_SHARPNESS = 5.0  # query/key code scale: same-token positions win the softmax by far
CARRIERS = 4  # planted sub-layers that carry one redirected token (at least)


@dataclass(frozen=True)
class PlantedTask:
    """What the planted model does: its alphabet (vocabulary ids, in the order of the unflipped walk), the full
    model's next token for each, the planted skip set, the redirected tokens and each sub-layer's voted tokens."""

    tokens: tuple[int, ...]
    successor: dict
    planted: LayerSkip
    flipped: tuple[int, ...]
    votes: dict  # ("attn" | "mlp", layer) -> alphabet tokens whose right successor the sub-layer votes for

    def text(self, start: int, n: int) -> list[int]:
        """The full model's greedy text: `n` tokens from `start` on (start included)."""
        out = [start]
        while len(out) < n:
            out.append(self.successor[out[-1]])
        return out

    def start_tokens(self) -> list[int]:
        """The alphabet tokens on the full model's cycle (the walk from any of them stays on it)."""
        seen, t = [], self.tokens[0]
        while t not in seen:
            seen.append(t)
            t = self.successor[t]
        return seen[seen.index(t):]

    def expected_acceptance(self) -> float:
        """The share of the cycle's tokens whose next token a draft without the planted set gets right."""
        cycle = self.start_tokens()
        return 1 - sum(t in self.flipped for t in cycle) / len(cycle)


def planted_set(n_layers: int, ratio: float, seed: int) -> LayerSkip:
    """round(ratio * 2(L-2)) sub-layers of layers 1..L-2, drawn at random."""
    g = torch.Generator().manual_seed(seed)
    dims = 2 * (n_layers - 2)
    pick = torch.randperm(dims, generator=g)[:round(ratio * dims)].tolist()
    h = n_layers - 2
    return LayerSkip.of(attn=[1 + i for i in pick if i < h], mlp=[1 + i - h for i in pick if i >= h])


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def build_planted(args: ModelArgs, ratio: float = 0.45, n_flips: int = 0, alphabet: int = 32, noise: float = 2e-3,
                  seed: int = 0, device="cpu", dtype=torch.float32) -> tuple[Transformer, PlantedTask]:
    """The planted model of `args`' shape (module docstring) and what it does."""
    T, d, hd, L = alphabet, args.dim, args.head_dim, args.n_layers
    pairs = max(4, _pow2(T) // 4)  # rotary pairs of the codes: a Hadamard matrix of 2 * pairs rows and its negation
    if not (4 <= T <= hd and T <= args.intermediate_size and 1 + 2 * T <= d and 2 * pairs <= hd // 2):
        raise ValueError(f"an alphabet of {T} tokens does not fit this shape (4 <= T <= head_dim, T <= the MLP's "
                         f"width, 1 + 2T <= dim, {2 * pairs} code dims <= head_dim / 2)")
    if L < 3:
        raise ValueError("needs at least 3 layers")
    if args.tie_embeddings:
        raise ValueError("needs an untied LM head (the head reads the vote counters, the embedding writes the code)")
    g = torch.Generator().manual_seed(seed)
    planted = planted_set(L, ratio, seed)
    skippable = [(k, i) for i in range(1, L - 1) for k in ("attn", "mlp")]
    important = [s for s in skippable if s[1] not in (planted.attn if s[0] == "attn" else planted.mlp)]
    plant = [s for s in skippable if s not in important]
    # the alphabet: vocabulary ids and the walk t_i -> t_{i+1}; wrong answer w(t) = the predecessor
    ids = (torch.randperm(args.vocab_size - 1, generator=g)[:T] + 1).tolist()
    nxt = {ids[i]: ids[(i + 1) % T] for i in range(T)}
    wrong = {ids[i]: ids[(i - 1) % T] for i in range(T)}
    flipped = tuple(ids[i] for i in range(0, T, max(2, T // max(1, n_flips)))[:n_flips])
    successor = {t: (nxt[nxt[t]] if t in flipped else nxt[t]) for t in ids}
    # the important sub-layers vote like the edges of a ring over the cycle's tokens: sub-layer k for tokens k and
    # k + 1 (beyond one lap, chords k, k + C/2), and a token is predicted right only with all its votes. Skipping any
    # voter costs tokens of the cycle, and from any skip set, keeping one more voter (the first of a run of skipped
    # neighbours) wins a token back: the search sees a graded landscape with the planted set alone at its top. The
    # cycle fits the search's 32-token window when the alphabet does. Never a redirected token: there a draft without
    # the planted set is wrong whatever it keeps, so its voter could be skipped unseen
    ring = [t for t in PlantedTask(tuple(ids), successor, planted, flipped, {}).start_tokens() if t not in flipped]
    C = len(ring)
    if C == 0 and important:
        raise ValueError(f"{n_flips} redirected tokens leave no token of the alphabet of {T} to vote for")
    order = torch.randperm(len(important), generator=g).tolist()
    votes = {}
    for n, k in enumerate(order):
        a = n % C
        b = (a + 1) % C if n < C else (a + C // 2) % C
        votes[important[k]] = tuple(sorted({ring[a], ring[b]}))
    n_votes = {t: sum(t in v for v in votes.values()) for t in ids}
    # a redirected token t (no voters) starts with need - 0.5 for nxt(t) in the embedding, and `need` planted
    # sub-layers each vote for nxt(nxt(t)): all of them outvote nxt(t) by 0.5, one fewer does not. A draft must keep
    # every carrier to follow the redirection, i.e. skip as many voters instead, which costs more than it gains: the
    # planted set stays the search's optimum
    if flipped and not plant:
        raise ValueError("redirected tokens need planted sub-layers to carry them: raise `ratio` or set n_flips=0")
    carry, need = {s: [] for s in plant}, min(len(plant), CARRIERS)
    for t in flipped:
        for j in torch.randperm(len(plant), generator=g)[:need].tolist():
            carry[plant[j]].append(t)

    device = torch.device(device)
    with device:  # built in place (a 13B shape is 26 GB in bf16): noise drawn on the device, then the design
        model = Transformer(args).to(dtype).requires_grad_(False).eval()
    model.inv_freq = rope_inv_freq(args).to(device)  # rotary frequencies stay float32, as for a checkpoint
    _fill_noise(model, noise, torch.Generator(device=device).manual_seed(seed), T)
    index = {t: j for j, t in enumerate(ids)}  # residual coordinates: 1 + j the code of token j, 1 + T + j its counter
    vote = {t: 1 + T + j for t, j in index.items()}
    rms = CONST / d ** 0.5  # RMSNorm's divisor: the constant coordinate dominates
    with torch.no_grad():
        emb = model.tok_embeddings.weight
        for j, t in enumerate(ids):
            emb[t].zero_()
            emb[t, 0] = CONST
            emb[t, 1 + j] = 1.0
            if t in flipped:
                emb[t, vote[nxt[t]]] = need - 0.5
            else:
                emb[t, vote[nxt[t]]] = 1.0
                emb[t, vote[wrong[t]]] = n_votes[t] + 0.5
        out = model.output.weight
        for t in ids:
            out[t, :1 + 2 * T] = 0.0
            out[t, vote[t]] = LOGIT_MARGIN * rms
        codes = torch.cat([_hadamard(2 * pairs), -_hadamard(2 * pairs)])[:T]  # [T, 2 * pairs]
        code_dims = list(range(hd // 2 - pairs, hd // 2)) + list(range(hd - pairs, hd))
        for (kind, layer), targets in [*((s, [(t, nxt[t]) for t in v]) for s, v in votes.items()),
                                       *((s, [(t, nxt[nxt[t]]) for t in v]) for s, v in carry.items() if v)]:
            block = model.layers[layer]
            if kind == "mlp":
                _mlp_votes(block.feed_forward, args, targets, index, vote, rms)
            else:
                _attn_votes(block.attention, args, targets, index, vote, rms, codes, code_dims)
    return model, PlantedTask(tuple(ids), successor, planted, flipped,
                              {s: tuple(v) for s, v in votes.items()})


def _fill_noise(model: Transformer, noise: float, g: torch.Generator, T: int) -> None:
    """Small noise everywhere, except where it would leak into the designed coordinates: the constant coordinate's
    column of every input projection and the designed rows of every output projection stay zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            p.normal_(0.0, noise, generator=g)
            if name.endswith(("wqkv.weight", "w13.weight")) or name == "output.weight":
                p[:, 0] = 0.0
            if name.endswith(("wo.weight", "w2.weight")):
                p[:1 + 2 * T] = 0.0


def _mlp_votes(ff, args: ModelArgs, targets, index, vote, rms) -> None:
    """Unit j = alphabet index of t: gate = the constant coordinate (SiLU ~ identity there), up = t's code, down = one
    vote for the target's counter."""
    inter = args.intermediate_size
    w13, w2 = ff.w13.weight, ff.w2.weight
    z = 10.0
    act = z * torch.sigmoid(torch.tensor(z)).item()  # SiLU(z)
    for t, target in targets:
        j = index[t]
        w13[j].zero_()
        w13[j, 0] = z / (CONST / rms)  # x_0 = CONST / rms
        w13[inter + j].zero_()
        w13[inter + j, 1 + j] = rms  # x_code = 1 / rms
        w2[:, j] = 0.0
        w2[vote[target], j] = 1.0 / act


def _attn_votes(attn, args: ModelArgs, targets, index, vote, rms, codes, code_dims) -> None:
    """Head 0 (and its key/value head): query and key = the token's Hadamard code in the slowest rotary dims, so a
    query attends to the positions of the same token; value = the token's one-hot code; output = one vote."""
    hd, nq, nkv = args.head_dim, args.n_heads, args.n_kv_heads
    wqkv, wo = attn.wqkv.weight, attn.wo.weight
    q_rows, k_rows, v_rows = range(0, hd), range(nq * hd, nq * hd + hd), range((nq + nkv) * hd, (nq + nkv) * hd + hd)
    lam = ATTN_SHARPNESS * rms
    T = len(index)
    for rows in (q_rows, k_rows, v_rows):
        wqkv[list(rows)] = 0.0
    wo[:, :hd] = 0.0
    dims = torch.tensor(code_dims)
    for rows in (q_rows, k_rows):  # every token's code (the head must tell all tokens apart)
        wqkv[rows.start + dims, 1:1 + T] = (lam * codes.T).to(wqkv)
    wqkv[v_rows.start:v_rows.start + T, 1:1 + T] = rms * torch.eye(T, dtype=wqkv.dtype, device=wqkv.device)
    for t, target in targets:
        wo[vote[target], index[t]] = 1.0
