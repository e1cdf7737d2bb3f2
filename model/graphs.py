"""CUDA graphs: capture a pass once, replay it; and switch parts of a captured graph off without capturing again.

`capture(fn)` records `fn`'s GPU work into a graph after one warm-up call on a side stream (lazy initialisation
and kernel compilation must not land inside a capture).

`capture(fn, track=True)` also records which graph nodes each marked region of `fn` created (`fn(mark)` calls
`mark(key)` where a region starts and `mark(None)` where it ends). `Graph.enable(key, on)` then turns those nodes
on or off in the instantiated graph (`cudaGraphNodeSetEnabled`: a disabled kernel node is an empty node). This is
how one captured draft graph serves every skip set of the layer search: the kernels of a skipped sub-layer are
switched off, so a new skip set costs a few hundred host calls instead of a new capture. It needs the runtime's
graph API through ctypes and a PyTorch that keeps the raw graph (`CUDAGraph(keep_graph=True)`); `tracking_works()`
says whether both are there, else callers capture one graph per skip set instead. A tracked graph's kernels are
launched one after the other (no programmatic dependent launch, model/kernels/__init__.py): a kernel that waits
for the one before it through a switched-off node would not wait at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Callable, Hashable

import torch

from model.kernels import dependent_launches

_RT = None


def _runtime():
    """The CUDA runtime library this process uses (ctypes), found among the loaded shared objects; None if absent."""
    global _RT
    if _RT is None:
        _RT = False
        try:
            torch.cuda.init()
            paths = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcudart" in line})
            for path in paths:
                lib = ctypes.CDLL(path)
                if hasattr(lib, "cudaGraphNodeSetEnabled") and hasattr(lib, "cudaGraphGetNodes"):
                    _RT = lib
                    break
        except Exception:  # noqa: BLE001 - no usable runtime: callers fall back to one graph per skip set
            _RT = False
    return _RT or None


def tracking_works() -> bool:
    return (torch.cuda.is_available() and _runtime() is not None
            and hasattr(torch.cuda.CUDAGraph, "raw_cuda_graph_exec"))


def _check(err: int, what: str) -> None:
    if err != 0:
        raise RuntimeError(f"{what} failed with CUDA error {err}")


def _capturing_graph(stream: torch.cuda.Stream) -> tuple[int, int]:
    """(graph being captured on `stream`, its last node) from cudaStreamGetCaptureInfo (12.3+ signature with edge
    data; on older runtimes the extra argument is ignored)."""
    rt = _runtime()
    fn = getattr(rt, "cudaStreamGetCaptureInfo_v3", None) or rt.cudaStreamGetCaptureInfo
    status, cid, graph = ctypes.c_int(), ctypes.c_ulonglong(), ctypes.c_void_p()
    deps, edges, ndeps = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_size_t()
    _check(fn(ctypes.c_void_p(stream.cuda_stream), ctypes.byref(status), ctypes.byref(cid), ctypes.byref(graph),
              ctypes.byref(deps), ctypes.byref(edges), ctypes.byref(ndeps)), "cudaStreamGetCaptureInfo")
    last = ctypes.cast(deps, ctypes.POINTER(ctypes.c_void_p))[ndeps.value - 1] if ndeps.value else None
    return graph.value, last


def _node_count(graph: int) -> int:
    n = ctypes.c_size_t(0)
    _check(_runtime().cudaGraphGetNodes(ctypes.c_void_p(graph), None, ctypes.byref(n)), "cudaGraphGetNodes")
    return n.value


def _nodes(graph: int) -> list[int]:
    rt = _runtime()
    n = ctypes.c_size_t(_node_count(graph))
    arr = (ctypes.c_void_p * max(1, n.value))()
    _check(rt.cudaGraphGetNodes(ctypes.c_void_p(graph), arr, ctypes.byref(n)), "cudaGraphGetNodes")
    return [arr[i] for i in range(n.value)]


def gpu_ms(fn: Callable, reps: int = 5, before: Callable | None = None) -> float:
    """GPU milliseconds per call of `fn` (CUDA events around `reps` calls, after one untimed call); `before` runs
    ahead of every call (e.g. putting the engine's cursor back), inside the timed region."""
    if before:
        before()
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        if before:
            before()
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


class Graph:
    """A captured graph, its output, and (when tracked) the nodes of each marked region."""

    def __init__(self, graph: torch.cuda.CUDAGraph, out, regions: dict | None = None):
        self.graph, self.out, self.regions = graph, out, regions or {}
        self._off: set = set()

    def replay(self):
        self.graph.replay()
        return self.out

    def enable(self, key: Hashable, on: bool) -> None:
        """Switch the nodes of region `key` on or off (no-op when already so)."""
        if (key in self._off) != on:
            return
        rt, exe = _runtime(), ctypes.c_void_p(self.graph.raw_cuda_graph_exec())
        for node in self.regions[key]:
            _check(rt.cudaGraphNodeSetEnabled(exe, ctypes.c_void_p(node), ctypes.c_uint(int(on))),
                   "cudaGraphNodeSetEnabled")
        (self._off.discard if on else self._off.add)(key)


def capture(fn: Callable, pool=None, track: bool = False) -> Graph:
    """Graph of `fn` (called as `fn(mark)` when `track`, else `fn()`), after one warm-up call on a side stream.
    The garbage collector is held off meanwhile: freeing an old graph during a capture invalidates the capture."""
    gc.collect()
    gc.disable()
    try:
        with dependent_launches(False) if track else contextlib.nullcontext():
            return _capture(fn, pool, track)
    finally:
        gc.enable()


def _capture(fn: Callable, pool, track: bool) -> Graph:
    noop = lambda key: None  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(noop) if track else fn()
    torch.cuda.current_stream().wait_stream(side)
    if not track:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        return Graph(graph, out)
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    marks: list = []  # (key or None, node count, last node)

    def mark(key):
        g, last = _capturing_graph(torch.cuda.current_stream())
        marks.append((key, _node_count(g), last))

    with torch.cuda.graph(graph, pool=pool):
        out = fn(mark)
    graph.instantiate()
    nodes = _nodes(graph.raw_cuda_graph())
    regions: dict = {}
    for (key, start, _), (end_key, end, last) in zip(marks[::2], marks[1::2]):
        if key is None or end_key is not None:
            raise RuntimeError("graph regions must be marked as begin (key) / end (None) pairs")
        if end > start and nodes[end - 1] != last:  # the node list must be in capture order
            raise RuntimeError("graph nodes are not listed in capture order; cannot map regions to nodes")
        regions.setdefault(key, []).extend(nodes[start:end])
    return Graph(graph, out, regions)
