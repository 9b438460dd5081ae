"""CUDA graph capture for the decode step and the vision tower, beside threads that keep working.

`torch.cuda.graph` empties the device and pinned-memory caches before every capture and captures
in the "global" mode, where a page-locked allocation on any other thread breaks the capture. The
graphs here are captured while the input threads already make pinned page inputs, and dozens
of them in a row: so one side stream, the "thread_local" mode (only this thread's own unsafe
calls are refused) and no cache emptying between captures. Every capture runs on one stream per
device, as `torch.cuda.graph`'s do: the caching allocator reuses a memory pool's blocks only on
the stream that freed them, so graphs that share a pool share memory only when captured on one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

_streams: dict[int, torch.cuda.Stream] = {}  # the capture stream of each device


def warm(run: Callable[[], object], times: int = 1) -> None:
    """Run `run` eagerly on a side stream before its capture, so what it builds lazily (kernels
    chosen and compiled, cached tables) exists outside the graph's pool."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(times):
            run()
    torch.cuda.current_stream().wait_stream(stream)


def capture(record: Callable[[], object], pool=None) -> tuple[torch.cuda.CUDAGraph, object]:
    """Record `record()`'s kernels as a graph (its memory from `pool`, shared when given) and return
    the graph with what `record` returned: the tensors a replay rewrites. Warm-up runs, where
    needed, are the caller's, before this."""
    graph = torch.cuda.CUDAGraph()
    device = torch.cuda.current_device()
    if device not in _streams:
        _streams[device] = torch.cuda.Stream(device)
    stream = _streams[device]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            output = record()
        except BaseException:
            with contextlib.suppress(Exception):  # the capture is already broken; the first error says why
                graph.capture_end()
            raise
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, output
