"""The token tree's bookkeeping around a verification pass, as two single-program kernels.

`DeviceTree.build` (model/tree.py) and the acceptance and commit of `Verifier._cycle` (model/swift/acceleration.py)
are about 170 small tensor operations per cycle. Inside a CUDA graph each is a kernel of one or two microseconds, so
on a small model they cost a third of a decoding step. Here they are two kernels:

* `build`: the same tree as `DeviceTree.build`, plus the pass's absolute extents (prefix, run start, slot and
  position per node), in one program;
* `accept_greedy`: from the full model's argmax per node, the greedy acceptance (the chain while its tokens equal
  their parent's argmax, then an alternative leaf or the context branch, then the bonus token), the committed tokens
  written into `seq`, the report the host reads, and the source/destination slots of the K/V moves.

Both compute exactly what the PyTorch code computes (tests/test_tree_kernels.py compares them on random trees); they
hold integers only, so there is no rounding to agree on. Sampling keeps the PyTorch acceptance (model/sampling.py).
"""

from __future__ import annotations

import torch

from model.kernels import enter, launch, tl, triton
from model.tree import DeviceTree, DeviceTreeTensors


def _p2(n: int) -> int:
    return max(2, triton.next_power_of_2(int(n)))


if triton is not None:
    _BIG = tl.constexpr(1 << 30)  # compiled kernels read only constexpr globals

    @triton.jit
    def _build_kernel(TABLE, TOP1, CHAIN, CTX, CLEN, SEQ, CURSOR, THR, CNT,
                      TOKENS, DEPTH, PREFIX, RUN_LO, EXT, CAND, CTOK, BNODE, META,
                      D, K, B, N_RULE, max_nodes, n,
                      D_P: tl.constexpr, K_P: tl.constexpr, B_P: tl.constexpr, N_P: tl.constexpr,
                      R_P: tl.constexpr, PDL: tl.constexpr):
        enter(PDL)
        R = tl.load(CURSOR)
        C = tl.load(CHAIN)
        clen = tl.load(CLEN)
        root = tl.load(SEQ + R)
        d = tl.arange(0, D_P)
        dm = d < D
        c = tl.arange(0, K_P)  # candidate columns 0..K-1 (draft top-k) and K (the branch)
        b = tl.arange(0, B_P)
        bm = b < B
        j = tl.arange(0, N_P)
        jm = j < n
        # the context branch: the part it shares with the chain, then the rest off chain node `at`
        ctx = tl.load(CTX + b, mask=bm, other=-1)
        chain_b = tl.load(TABLE + b * K, mask=bm & (b < D), other=-1)
        same = bm & (b < D) & (b < clen) & (b < C) & (ctx == chain_b)
        at = tl.minimum(tl.min(tl.where(same, _BIG, b), axis=0), B)  # leading matches
        blen = tl.maximum(clen - at, 0)
        first_b = tl.load(CTX + tl.minimum(at, B - 1))
        # alternatives per depth row from the confidence rule, within the node budget, in depth order
        top1 = tl.load(TOP1 + d, mask=dm, other=1.0)
        t = tl.arange(0, R_P)
        thr = tl.load(THR + t, mask=t < N_RULE, other=0.0)
        rule = tl.sum(((top1[:, None] < thr[None, :]) & (t < N_RULE)[None, :]).to(tl.int64), axis=1)
        rule = tl.minimum(rule, N_RULE - 1)
        want = tl.load(CNT + rule, mask=dm, other=1) - 1
        extras = tl.where(dm & (d < C), tl.minimum(tl.maximum(want, 0), K - 1), 0)
        budget = max_nodes - 1 - C - blen
        extras = tl.minimum(extras, tl.maximum(budget - (tl.cumsum(extras, axis=0) - extras), 0))
        before = tl.cumsum(extras, axis=0) - extras
        base = 1 + C + tl.sum(extras, axis=0)  # the branch's first node
        # candidates [D, K + 1]: node index (n: not in the tree) and token
        m2 = dm[:, None] & (c < K)[None, :]
        tab = tl.load(TABLE + d[:, None] * K + c[None, :], mask=m2, other=-1)
        tab0 = tl.load(TABLE + d * K, mask=dm, other=-1)
        alt = (c[None, :] >= 1) & (c[None, :] <= extras[:, None]) & (tab != tab0[:, None])
        alt = alt & ~((d[:, None] == at) & (blen > 0) & (tab == first_b))
        chain = (c[None, :] == 0) & (d < C)[:, None]
        node = tl.where(c[None, :] == 0, d[:, None] + 1, C + before[:, None] + c[None, :])
        cand = tl.where(m2 & (chain | alt), node, n)
        cand = tl.where((c[None, :] == K) & (d[:, None] == at) & (blen > 0), base, cand)
        ctok = tl.where((c == K)[None, :], first_b, tab)
        mc = dm[:, None] & (c <= K)[None, :]
        tl.store(CAND + d[:, None] * (K + 1) + c[None, :], cand, mask=mc)
        tl.store(CTOK + d[:, None] * (K + 1) + c[None, :], ctok, mask=mc)
        bnode = tl.where(b < blen, base + b, n)
        tl.store(BNODE + b, bnode, mask=bm)
        tl.store(META, blen)
        tl.store(META + 1, at)
        # nodes, with the pass's absolute extents EXT [4, n] (prefix, run start, slot, position): pads first (the
        # root's token at depth 0, seeing the committed prefix), then the chain and alternatives, then the branch
        zero = j * 0
        tl.store(TOKENS + j, zero + root, mask=jm)
        tl.store(DEPTH + j, zero, mask=jm)
        tl.store(PREFIX + j, zero, mask=jm)
        tl.store(RUN_LO + j, j, mask=jm)
        tl.store(EXT + j, zero + R, mask=jm)
        tl.store(EXT + n + j, R + j, mask=jm)
        tl.store(EXT + 2 * n + j, R + j, mask=jm)
        tl.store(EXT + 3 * n + j, zero + R, mask=jm)
        tl.debug_barrier()  # the stores below overwrite some of those
        put = m2 & (cand < n)
        dep = d[:, None] + 1 + c[None, :] * 0
        tl.store(TOKENS + cand, tab, mask=put)
        tl.store(DEPTH + cand, dep, mask=put)
        tl.store(PREFIX + cand, dep, mask=put)  # chain nodes and alternatives see [0, R + depth)
        tl.store(EXT + cand, R + dep, mask=put)
        tl.store(EXT + 3 * n + cand, R + dep, mask=put)
        bput = bm & (b < blen) & (bnode < n)
        btok = tl.load(CTX + tl.minimum(at + b, B - 1), mask=bm, other=0)
        bdep = at + 1 + b
        tl.store(TOKENS + bnode, btok, mask=bput)
        tl.store(DEPTH + bnode, bdep, mask=bput)
        tl.store(PREFIX + bnode, b * 0 + at + 1, mask=bput)  # up to the chain node it hangs off ...
        tl.store(RUN_LO + bnode, b * 0 + base, mask=bput)  # ... then the branch before it
        tl.store(EXT + bnode, R + at + 1 + b * 0, mask=bput)
        tl.store(EXT + n + bnode, R + base + b * 0, mask=bput)
        tl.store(EXT + 3 * n + bnode, R + bdep, mask=bput)

    @triton.jit
    def _accept_kernel(PRED, TOKENS, TABLE, CAND, CTOK, BNODE, BLEN, CHAIN, CURSOR, SEQ, REPORT, MOVES,
                       D, K, B, n,
                       D_P: tl.constexpr, K_P: tl.constexpr, B_P: tl.constexpr, O_P: tl.constexpr, PDL: tl.constexpr):
        enter(PDL)
        R = tl.load(CURSOR)
        C = tl.load(CHAIN)
        blen = tl.load(BLEN)
        d = tl.arange(0, D_P)
        dm = d < D
        c = tl.arange(0, K_P)
        m2 = dm[:, None] & (c <= K)[None, :]
        cand = tl.load(CAND + d[:, None] * (K + 1) + c[None, :], mask=m2, other=n)
        ctok = tl.load(CTOK + d[:, None] * (K + 1) + c[None, :], mask=m2, other=-1)
        parent = tl.load(PRED + tl.minimum(d, n - 1), mask=dm, other=-2)  # chain node d's argmax
        ok = m2 & (cand < n) & (ctok == parent[:, None])
        first = tl.min(tl.where(ok, c[None, :], _BIG), axis=1)
        first = tl.where(first == _BIG, -1, first)  # per depth row: the accepted candidate, -1 none
        a = tl.min(tl.where(dm & (d < C) & (first == 0), _BIG, d), axis=0)  # chain tokens accepted
        a = tl.minimum(a, D)
        row = tl.minimum(a, D - 1)
        r = tl.sum(tl.where(d == row, first, 0), axis=0)
        has_leaf = (r >= 1) & (r < K)
        has_branch = r == K
        # along the branch: each node's child token against that node's argmax
        b = tl.arange(0, B_P)
        bm = b < B
        bnode = tl.load(BNODE + b, mask=bm, other=n)
        child = tl.load(BNODE + b + 1, mask=(b + 1) < B, other=n)
        nxt = tl.where((b + 1) < B, tl.load(TOKENS + tl.minimum(child, n - 1), mask=bm, other=0), 0)
        b_ok = nxt == tl.load(PRED + tl.minimum(bnode, n - 1), mask=bm, other=-2)
        run = tl.min(tl.where(bm & b_ok & ((b + 1) < blen), _BIG, b), axis=0)
        nb = tl.where(has_branch, 1 + tl.minimum(run, B), 0)  # branch tokens accepted
        leaf = tl.load(CAND + row * (K + 1) + tl.minimum(tl.maximum(r, 0), K))
        last_b = tl.load(BNODE + tl.maximum(nb - 1, 0))
        bonus_node = tl.where(has_branch, last_b, tl.where(has_leaf, leaf, a))
        bonus = tl.load(PRED + bonus_node)
        n_side = tl.where(has_leaf, 1, nb)
        # committed tokens: the accepted chain, the accepted off-chain nodes, the bonus (the rest: stale chain / 0)
        o = tl.arange(0, O_P)
        n_out = D + B + 1
        i = o - a
        side = tl.load(BNODE + i, mask=(i >= 0) & (i < B), other=n)
        side = tl.where(has_leaf, leaf, side)
        out = tl.load(TABLE + o * K, mask=o < D, other=0)
        side_tok = tl.load(TOKENS + tl.minimum(side, n - 1), mask=o < n_out, other=0)
        out = tl.where((i >= 0) & (i < n_side), side_tok, out)
        out = tl.where(o == a + n_side, bonus, out)
        tl.store(SEQ + R + 1 + o, out, mask=o < n_out)
        tl.store(REPORT + 4 + o, out, mask=o < n_out)
        tl.store(REPORT, a + n_side + 1)
        tl.store(REPORT + 1, a)
        tl.store(REPORT + 2, has_leaf.to(tl.int64))
        tl.store(REPORT + 3, nb)
        # K/V moves [2, B]: accepted off-chain node -> its place after the chain; unused ones copy a scratch slot
        # onto itself
        bside = tl.where(has_leaf, leaf, bnode)
        keep = b < n_side
        scratch = R + n + b
        tl.store(MOVES + b, tl.where(keep, R + bside, scratch), mask=bm)
        tl.store(MOVES + B + b, tl.where(keep, R + a + 1 + b, scratch), mask=bm)


def build(tree: DeviceTree, table, top1, chain, ctx, clen, seq, cursor) -> tuple[DeviceTreeTensors, torch.Tensor]:
    """`tree.build` (model/tree.py, same arguments but the root's token, read here from `seq` at the `cursor`) in
    one kernel; returns the tree and the pass's absolute extents [4, n] (prefix, run start, slot, position)."""
    D, K = table.shape
    B, n, dev = ctx.shape[0], tree.size, table.device
    nodes = torch.empty(4, n, dtype=torch.long, device=dev)  # tokens, depth, prefix, run_lo
    cand, ctok = torch.empty(2, D, K + 1, dtype=torch.long, device=dev)
    bnode, meta = torch.empty(B, dtype=torch.long, device=dev), torch.empty(2, dtype=torch.long, device=dev)
    ext = torch.empty(4, n, dtype=torch.long, device=dev)
    R_n = tree.counts.shape[0]
    _build_kernel[(1,)](table, top1, chain, ctx, clen, seq, cursor, tree.thresholds, tree.counts, *nodes, ext, cand,
                        ctok, bnode, meta, D, K, B, R_n, tree.max_nodes, n,
                        D_P=_p2(D), K_P=_p2(K + 1), B_P=_p2(B), N_P=_p2(n), R_P=_p2(R_n), **launch(dev))
    return DeviceTreeTensors(*nodes, cand, ctok, bnode, meta[:1], meta[1:]), ext


def accept_greedy(pred, t: DeviceTreeTensors, table, chain, cursor, seq, report) -> torch.Tensor:
    """Greedy acceptance and commit of the verified tree `t` from the full model's argmax per node `pred` (what
    `accept_and_commit` in model/swift/acceleration.py computes with PyTorch ops): writes the committed tokens into
    `seq` after the cursor and the report into `report`; returns the K/V moves [2, B] (source and destination slots).
    The cursor is left for the caller to advance by report[0]."""
    D, K = table.shape
    B = t.bnode.shape[0]
    moves = torch.empty(2, B, dtype=torch.long, device=table.device)
    _accept_kernel[(1,)](pred, t.tokens, table, t.cand, t.ctok, t.bnode, t.blen, chain, cursor, seq, report, moves,
                         D, K, B, t.size, D_P=_p2(D), K_P=_p2(K + 1), B_P=_p2(B), O_P=_p2(D + B + 1),
                         **launch(table.device))
    return moves
