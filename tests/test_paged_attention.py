"""Paged decode attention: the reference against plain per-row attention over contiguous keys, and the
Triton kernel against the reference (natively on CUDA, or under Triton's interpreter on CPU)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsocr_cli.engines.kernels.paged_attention import (
    _probe,
    paged_decode_attention,
    reference_paged_decode_attention,
    split_variants,
    triton_decode_ready,
    triton_paged_decode_attention,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def paged_problem(lens, q_heads, kv_heads, dim, block_size, dtype=torch.float32, device="cpu", seed=0, spare=3):
    """Random q and caches with each row's blocks at shuffled physical places. Every cache slot that
    holds no row's token is NaN, and table entries past a row's blocks point at arbitrary blocks, so
    reading anything outside the filled tokens shows up in the output."""
    gen = torch.Generator().manual_seed(seed)
    max_blocks = max(1, max(-(-n // block_size) for n in lens))
    needed = [-(-n // block_size) for n in lens]
    num_blocks = sum(needed) + spare
    order = torch.randperm(num_blocks, generator=gen)
    table = torch.randint(0, num_blocks, (len(lens), max_blocks), generator=gen, dtype=torch.int32)
    filled = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    used = 0
    for row, (n, count) in enumerate(zip(lens, needed, strict=True)):
        table[row, :count] = order[used : used + count].to(torch.int32)
        used += count
        filled[table[row, :count].long()] = (torch.arange(count * block_size) < n).view(count, block_size)
    k_cache, v_cache = (torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen) for _ in range(2))
    for cache in (k_cache, v_cache):
        cache[~filled] = float("nan")
    q = torch.randn(len(lens), q_heads, dim, generator=gen)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    move = {"device": device, "dtype": dtype}
    return q.to(**move), k_cache.to(**move), v_cache.to(**move), table.to(device), lens_t.to(device)


def contiguous_attention(q, k_cache, v_cache, table, lens, scale):
    """Row by row: lay the row's blocks end to end, cut at its length, plain softmax attention."""
    q, k_cache, v_cache = q.float(), k_cache.float(), v_cache.float()
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros_like(q)
    for row, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        blocks = table[row, : -(-n // k_cache.shape[1])].long()
        keys = k_cache[blocks].flatten(0, 1)[:n].transpose(0, 1).repeat_interleave(group, 0)
        values = v_cache[blocks].flatten(0, 1)[:n].transpose(0, 1).repeat_interleave(group, 0)
        out[row] = F.scaled_dot_product_attention(q[row][:, None], keys, values, scale=scale)[:, 0]
    return out


CASES = [  # (lens, q_heads, kv_heads, dim, block_size)
    ([0, 1, 17, 64, 3], 4, 4, 16, 16),
    ([5, 0, 130, 1], 8, 2, 32, 32),
    ([200, 64, 65], 6, 3, 16, 64),
    ([1], 4, 1, 16, 128),
]


@pytest.mark.parametrize("lens,q_heads,kv_heads,dim,block_size", CASES)
def test_reference_matches_contiguous_attention(lens, q_heads, kv_heads, dim, block_size):
    problem = paged_problem(lens, q_heads, kv_heads, dim, block_size, seed=len(lens))
    got = reference_paged_decode_attention(*problem, scale=0.3)
    want = contiguous_attention(*problem, scale=0.3)
    assert got.shape == problem[0].shape and got.dtype == problem[0].dtype
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[torch.tensor(lens) == 0] == 0).all()


def test_cpu_dispatch_is_the_reference():
    problem = paged_problem([3, 0, 40], 4, 4, 16, 16)
    torch.testing.assert_close(paged_decode_attention(*problem, scale=0.25), contiguous_attention(*problem, 0.25))


def test_the_load_compiles_ahead_only_the_few_variants_the_buckets_run(monkeypatch):
    """Each variant is two compiles on a fresh machine, while the first page waits: the batch sizes
    the load hands to `compile_ahead` (the buckets of the most lanes) need five at the model's 10
    heads, where every batch size up to 256 needed 50."""
    from types import SimpleNamespace

    from dsocr_cli.engines import hf
    from dsocr_cli.engines.kernels import paged_attention

    asked = []
    monkeypatch.setattr(paged_attention, "compile_ahead", lambda *args: asked.append(args))
    text = SimpleNamespace(num_attention_heads=10, num_key_value_heads=10, hidden_size=1280)
    hf.compile_decode_kernels(SimpleNamespace(text_config=text), 160, torch.bfloat16)
    ((q_heads, _, head_dim, _, max_blocks, _, _, batches),) = asked
    assert (q_heads, head_dim, max_blocks) == (10, 128, 160)
    assert 32 in batches, "the bucket a run starts with"
    assert len(split_variants(batches, q_heads, max_blocks)) == 5
    assert len(split_variants(range(1, 257), q_heads, max_blocks)) == 50


def kernel_device() -> str:
    if torch.cuda.is_available() and HAS_TRITON:
        return "cuda"
    if INTERPRETED and HAS_TRITON:
        return "cpu"
    pytest.skip("the Triton kernel needs CUDA, or TRITON_INTERPRET=1 on CPU")


KERNEL_CASES = [(*case, {}) for case in CASES] + [  # default knobs, then one split, then several small steps
    (*CASES[0], {"num_splits": 1}),
    (*CASES[1], {"num_splits": 3, "block_n": 16}),
]


@pytest.mark.parametrize("lens,q_heads,kv_heads,dim,block_size,knobs", KERNEL_CASES)
def test_triton_kernel_matches_reference_fp32(lens, q_heads, kv_heads, dim, block_size, knobs):
    device = kernel_device()
    problem = paged_problem(lens, q_heads, kv_heads, dim, block_size, device=device, seed=len(lens))
    got = triton_paged_decode_attention(*problem, scale=0.3, **knobs)
    want = reference_paged_decode_attention(*problem, scale=0.3)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_the_readiness_check_passes_while_the_default_dtype_is_bf16():
    """The check runs beside the model's load, which sets the process-wide default dtype to bf16 for a
    while: its tensors must not follow it, or a working kernel is judged broken and never used."""
    device = kernel_device()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        assert _probe(torch.device(device))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="needs Triton installed")
def test_triton_kernel_under_the_interpreter_on_cpu():
    """CI has no GPU: run the kernel tests above in a child process with Triton's interpreter, which
    must be chosen before Triton is first imported."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    tests = [
        f"{Path(__file__)}::{name}"
        for name in (
            "test_triton_kernel_matches_reference_fp32",
            "test_the_readiness_check_passes_while_the_default_dtype_is_bf16",
        )
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(KERNEL_CASES) + 1} passed" in done.stdout


cuda_only = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")


@cuda_only
def test_triton_kernel_matches_reference_bf16_at_model_size():
    lens = torch.randint(1, 3000, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    lens[:4] = [0, 1, 9_999, 64]
    problem = paged_problem(lens, 10, 10, 128, 64, dtype=torch.bfloat16, device="cuda")
    got = paged_decode_attention(*problem, scale=128**-0.5)
    fp32 = [t.float() if t.is_floating_point() else t for t in problem]
    want = reference_paged_decode_attention(*fp32, scale=128**-0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


@cuda_only
def test_triton_kernel_replays_in_a_cuda_graph():
    """Captured once, replayed after the lengths and tables change in place: the replay must follow."""
    q, k_cache, v_cache, table, lens = paged_problem([50, 0, 300, 7], 4, 2, 64, 16, device="cuda")
    assert triton_decode_ready(q.device)  # checked once, before capture, as the decoder does
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125)
    q2, k2, v2, table2, lens2 = paged_problem([299, 33, 0, 1], 4, 2, 64, 16, device="cuda", seed=5)
    assert k2.shape[0] <= k_cache.shape[0] and table2.shape == table.shape
    for buffer, new in ((q, q2), (table, table2), (lens, lens2)):
        buffer.copy_(new)
    k_cache[: k2.shape[0]], v_cache[: k2.shape[0]] = k2, v2
    graph.replay()
    torch.testing.assert_close(out, reference_paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125))
