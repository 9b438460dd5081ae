#!/usr/bin/env python3
"""Paged decode attention on the GPU at DeepSeek-OCR-2's decoder sizes (10 heads of 128, bf16, blocks
of 64): first correctness against the fp32 reference (eager and replayed from a CUDA graph), then time
per call and the bandwidth reached reading K and V. One JSON line per measurement on stdout.

    python scripts/bench_attention.py            # checks, default kernel at several batches, reference
    python scripts/bench_attention.py --sweep    # also splits x tokens-per-step x warps at batch 192
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsocr_cli.engines.kernels.paged_attention import (  # noqa: E402
    num_splits_for,
    paged_decode_attention,
    reference_paged_decode_attention,
    triton_decode_ready,
    triton_paged_decode_attention,
)

HEADS, DIM, BLOCK = 10, 128, 64
SCALE = DIM**-0.5


def lengths(kind: str, batch: int, seed: int = 0) -> list[int]:
    """'uniform:N' is N tokens a row; 'mixed' is mostly 1,000-3,000 with a few long rows and a 0 and a 1."""
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("uniform:"):
        return [int(kind.split(":")[1])] * batch
    lens = torch.randint(1000, 3001, (batch,), generator=gen)
    long = max(1, batch // 20)
    lens[:long] = torch.randint(3000, 10_001, (long,), generator=gen)
    lens[long : long + 2] = torch.tensor([0, 1])[: max(0, min(2, batch - long))]
    return lens[torch.randperm(batch, generator=gen)].tolist()


def problem(lens: list[int], dtype=torch.bfloat16, spare_blocks: int = 0, seed: int = 0):
    """q and caches on the GPU with every row's blocks scattered over the pool in random order."""
    torch.manual_seed(seed)
    needed = [-(-n // BLOCK) for n in lens]
    max_blocks, num_blocks = max(needed), sum(needed) + spare_blocks + 1
    k_cache = torch.randn(num_blocks, BLOCK, HEADS, DIM, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    order = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    table = torch.zeros(len(lens), max_blocks, dtype=torch.int32, device="cuda")
    used = 0
    for row, count in enumerate(needed):
        table[row, :count] = order[used : used + count]
        used += count
    q = torch.randn(len(lens), HEADS, DIM, device="cuda", dtype=dtype)
    return q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32, device="cuda")


def fp32_reference(q, k_cache, v_cache, table, lens, rows: int = 16):
    """The reference in fp32, a few rows at a time so the gathered copy stays small."""
    q, k_cache, v_cache = q.float(), k_cache.float(), v_cache.float()
    chunks = [slice(i, i + rows) for i in range(0, q.shape[0], rows)]
    parts = [reference_paged_decode_attention(q[c], k_cache, v_cache, table[c], lens[c], SCALE) for c in chunks]
    return torch.cat(parts)


def timed_ms(fn, repeats: int = 20) -> float:
    """Mean GPU time of one call over `repeats` back-to-back calls, after warm-up."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def kv_bytes(lens, k_cache) -> int:
    return sum(lens) * HEADS * DIM * k_cache.element_size() * 2


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def check(batch: int) -> None:
    """Eager and graph-replayed kernel against the fp32 reference, with lengths changed between replays."""
    lens = lengths("mixed", batch)
    q, k_cache, v_cache, table, lens_t = problem(lens, spare_blocks=batch)
    want = fp32_reference(q, k_cache, v_cache, table, lens_t)
    eager = paged_decode_attention(q, k_cache, v_cache, table, lens_t, SCALE)
    bf16_ref = reference_paged_decode_attention(q, k_cache, v_cache, table, lens_t, SCALE)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = paged_decode_attention(q, k_cache, v_cache, table, lens_t, SCALE)
    grown = [min(n + 1, -(-n // BLOCK) * BLOCK) if n else 0 for n in lens]  # one more token where the block has room
    lens_t.copy_(torch.tensor(grown, dtype=torch.int32))
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    replay_want = fp32_reference(q, k_cache, v_cache, table, lens_t)
    errors = {
        "eager": (eager.float() - want).abs().max().item(),
        "bf16_reference": (bf16_ref.float() - want).abs().max().item(),
        "graph_replay": (captured.float() - replay_want).abs().max().item(),
    }
    zero_rows = (lens_t == 0).nonzero().flatten()
    ok = all(err < 2e-2 for err in errors.values()) and bool((captured[zero_rows] == 0).all())
    emit(check="bf16 vs fp32 reference", batch=batch, max_abs_error=errors, ok=ok)
    if not ok:
        raise SystemExit("kernel disagrees with the reference")


def measure(kind: str, batch: int, reference: bool = False, **knobs) -> dict:
    """Time one configuration (graph-replayed, as the decoder runs it) and report GB/s of K and V read."""
    lens = lengths(kind, batch)
    tensors = problem(lens)
    call = (
        (lambda: reference_paged_decode_attention(*tensors, SCALE))
        if reference
        else (lambda: triton_paged_decode_attention(*tensors, SCALE, **knobs))
    )
    eager_ms = timed_ms(call)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph_ms = timed_ms(graph.replay)
    splits = knobs.get("num_splits") or num_splits_for(batch, HEADS, tensors[3].shape[1])
    row = {
        "path": "reference" if reference else "triton",
        "lens": kind,
        "batch": batch,
        "kv_tokens": sum(lens),
        "num_splits": None if reference else splits,
        "block_n": None if reference else knobs.get("block_n", 128),
        "num_warps": None if reference else knobs.get("num_warps", 4),
        "ms_eager": round(eager_ms, 4),
        "ms_graph": round(graph_ms, 4),
        "kv_gb": round(kv_bytes(lens, tensors[1]) / 1e9, 3),
        "gb_per_s": round(kv_bytes(lens, tensors[1]) / graph_ms / 1e6, 1),
    }
    emit(**row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="try splits x block_n x warps at batch 192")
    args = parser.parse_args()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__, triton_ready=triton_decode_ready("cuda"))
    check(192)
    for kind, batch in [("uniform:2000", 192), ("mixed", 192), ("mixed", 256), ("mixed", 64), ("mixed", 8),
                        ("uniform:10000", 1), ("uniform:2000", 16)]:  # fmt: skip
        measure(kind, batch)
    measure("uniform:2000", 192, reference=True)
    if args.sweep:
        best = {}
        for kind in ("uniform:2000", "mixed"):
            for splits, block_n, warps in itertools.product((2, 4, 8, 16), (64, 128), (4, 8)):
                row = measure(kind, 192, num_splits=splits, block_n=block_n, num_warps=warps)
                if kind not in best or row["ms_graph"] < best[kind]["ms_graph"]:
                    best[kind] = row
        emit(best=best)


if __name__ == "__main__":
    main()
