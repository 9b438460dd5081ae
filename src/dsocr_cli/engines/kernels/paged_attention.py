"""Decode attention over a paged KV cache: one query token per row against that row's filled blocks.

Why a kernel: a decode step reads every cached key and value once and does little arithmetic with them,
so it is bound by memory bandwidth. Gathering the blocks into a dense tensor first (the reference) reads
and writes the cache twice more. The Triton path reads each block in place through the block table.

Why two stages ("flash decoding"): one program per (row, head) leaves the GPU idle when few rows are
long. Stage one splits each row's tokens into NUM_SPLITS block-aligned ranges, one program each, and
keeps fp32 partial outputs with their log-sum-exp; stage two merges the splits of each (row, head).
NUM_SPLITS depends only on shapes, so the grid is fixed and the call is CUDA-graph capturable: a
program whose range lies past its row's length returns at once, and nothing waits on the host.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU and MPS installs without Triton decode through the reference
    triton = None

log = logging.getLogger(__name__)

# Stage-one programs to aim for: 8 splits at 192 rows x 10 heads, the measured best (0.59 ms for 192 rows of
# 2,000 tokens on an H200, 3.3 TB/s); fewer splits leave long rows as the tail, more add merge work.
_TARGET_PROGRAMS = 15_360
_MAX_SPLITS = 64
_LOG2E = 1.4426950408889634
_ready: dict[int, bool] = {}
_warned: set[str] = set()


def reference_paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale: float) -> torch.Tensor:
    """The contract in plain torch (gather + masked scaled_dot_product_attention): the CPU/MPS path and
    the tests' reference. Fixed shapes and no host sync, so it is CUDA-graph capturable too.

    q: (B, Hq, D); k_cache, v_cache: (num_blocks, block_size, Hkv, D); block_table: (B, max_blocks) int32;
    seq_lens: (B,) int32. Rows with seq_len 0 return zeros. Returns (B, Hq, D) in q.dtype."""
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    tokens = torch.arange(block_table.shape[1] * block_size, device=q.device)
    physical = block_table.long().clamp(0, num_blocks - 1)[:, tokens // block_size]
    visible = tokens < seq_lens.to(q.device, torch.long)[:, None]  # (B, L)
    hidden = ~visible[..., None, None]  # unfilled slots may hold anything, NaN included: zero them
    keys = k_cache[physical, tokens % block_size].masked_fill(hidden, 0).transpose(1, 2)
    values = v_cache[physical, tokens % block_size].masked_fill(hidden, 0).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q[:, :, None].to(keys.dtype),
        keys,
        values,
        attn_mask=visible[:, None, None],
        scale=scale,
        enable_gqa=q.shape[1] != kv_heads,
    )[:, :, 0]
    return torch.where(visible[:, :1, None], out, 0).to(q.dtype)


def triton_decode_ready(device) -> bool:
    """True where the Triton kernel can run: a CUDA device, Triton importable, and a tiny launch that
    matches the reference. Checked once per device; the first call must come before any graph capture."""
    device = torch.device(device)
    if device.type != "cuda" or triton is None or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _ready:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("triton_decode_ready must run once before CUDA graph capture")
        _ready[index] = _probe(torch.device("cuda", index))
    return _ready[index]


def paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale: float) -> torch.Tensor:
    """One decode step's attention over a paged cache.
    q: (B, Hq, D); k_cache, v_cache: (num_blocks, block_size, Hkv, D), Hq a multiple of Hkv;
    block_table: (B, max_blocks) int32, row b's logical block j lives in physical block block_table[b, j];
    seq_lens: (B,) int32, tokens in row b's cache (the current token's K/V already written).
    Rows with seq_len 0 return zeros. Returns (B, Hq, D) in q.dtype."""
    if triton_decode_ready(q.device):
        return triton_paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)
    if q.device.type == "cuda" and str(q.device) not in _warned:
        _warned.add(str(q.device))
        log.warning("Triton decode attention is unavailable on %s; using the slower gather reference", q.device)
    return reference_paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)


def compile_ahead(q_heads, kv_heads, head_dim, block_size, max_blocks, dtype, device, batches) -> None:
    """Launch the kernels on empty rows once per variant (one per NUM_SPLITS) that these batch sizes
    use, with the decoder's strides and head counts: Triton compiles each or loads it from its disk
    cache now, not in the eager warm-up before a capture. On a stream of its own, waited for alone."""
    if not triton_decode_ready(device):
        return
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        cache = torch.zeros((2, block_size, kv_heads, head_dim), dtype=dtype, device=device)
        for batch in split_variants(batches, q_heads, max_blocks).values():
            q = torch.zeros((batch, q_heads, head_dim), dtype=dtype, device=device)
            table = torch.zeros((batch, max_blocks), dtype=torch.int32, device=device)
            lens = torch.zeros(batch, dtype=torch.int32, device=device)
            triton_paged_decode_attention(q, cache, cache, table, lens, 1.0)
    stream.synchronize()


def split_variants(batches, q_heads: int, max_blocks: int) -> dict[int, int]:
    """A batch size for each kernel variant these batch sizes run ({NUM_SPLITS: batch}). Each
    variant is two Triton compiles of seconds each on a fresh machine, so the load compiles the
    few that the buckets of the most lanes run, not one per batch size (1..256 rows: 50 variants)."""
    return {num_splits_for(batch, q_heads, max_blocks): batch for batch in sorted(batches)}


def num_splits_for(batch: int, q_heads: int, max_blocks: int) -> int:
    """How many ranges stage one cuts each row into: enough programs to fill the GPU, never more than
    the blocks a row can hold. Shapes only, so a captured graph keeps it."""
    wanted = math.ceil(_TARGET_PROGRAMS / max(batch * q_heads, 1))
    return max(1, min(wanted, max_blocks, _MAX_SPLITS))


def triton_paged_decode_attention(
    q,
    k_cache,
    v_cache,
    block_table,
    seq_lens,
    scale: float,
    num_splits: int | None = None,
    block_n: int = 128,
    num_warps: int = 4,
) -> torch.Tensor:
    """The two-stage Triton path, without the readiness check (the benchmark and tests call it directly,
    also under Triton's interpreter on CPU). The keywords are tuning knobs; the defaults are the benchmark's
    best. Programs run heads first, so a row's heads read each cached token's keys and values together."""
    batch, q_heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if q_heads % kv_heads or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("paged attention needs Hq a multiple of Hkv and caches contiguous in the head dim")
    if batch == 0:
        return torch.empty_like(q)
    q, block_table, seq_lens = q.contiguous(), block_table.contiguous(), seq_lens.contiguous()
    splits = num_splits or num_splits_for(batch, q_heads, block_table.shape[1])
    parts = torch.empty((batch, q_heads, splits, dim), dtype=torch.float32, device=q.device)
    lse = torch.empty((batch, q_heads, splits), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    block_d = triton.next_power_of_2(dim)
    _split_kernel[(q_heads, batch, splits)](
        q, k_cache, v_cache, block_table, seq_lens, parts, lse, scale * _LOG2E, q_heads,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_table.stride(0),
        GROUP=q_heads // kv_heads, BLOCK_SIZE=block_size, NUM_SPLITS=splits,
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_N=max(block_n, 16),
        num_warps=num_warps, num_stages=2,
    )  # fmt: skip
    _merge_kernel[(batch, q_heads)](
        parts, lse, seq_lens, out,
        out.stride(0), out.stride(1),
        BLOCK_SIZE=block_size, NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits),
        HEAD_DIM=dim, BLOCK_D=block_d,
        num_warps=4,
    )  # fmt: skip
    return out


def _probe(device: torch.device) -> bool:
    """A tiny ragged GQA launch checked against the reference: catches a Triton that imports but cannot
    compile or launch here (old driver, missing compiler) before the decoder relies on it. Every dtype is
    explicit: it runs beside the model's load, which sets the process-wide default dtype for a while."""
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(3, 4, 32, generator=gen, dtype=torch.float32).to(device)
        k_cache, v_cache = (torch.randn(8, 16, 2, 32, generator=gen, dtype=torch.float32).to(device) for _ in range(2))
        table = torch.randperm(8, generator=gen)[:6].view(3, 2).to(device, torch.int32)
        lens = torch.tensor([0, 1, 29], dtype=torch.int32, device=device)
        got = triton_paged_decode_attention(q, k_cache, v_cache, table, lens, 0.2)
        want = reference_paged_decode_attention(q, k_cache, v_cache, table, lens, 0.2)
        if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            return True
        error = (got - want).abs().max().item()
    except Exception as failure:  # any failure means "not ready": the reference still works
        log.warning("Triton decode attention failed its check on %s: %s", device, failure)
        return False
    log.warning("Triton decode attention differs from the reference on %s by up to %.2g; not used", device, error)
    return False


if triton is not None:

    @triton.jit
    def _split_kernel(
        Q, K, V, Table, Lens, Parts, Lse, scale_log2, q_heads,
        stride_qb, stride_qh,
        stride_kn, stride_kt, stride_kh,
        stride_vn, stride_vt, stride_vh,
        stride_tb,
        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """Stage one: online softmax over one block-aligned range of one row, for one query head."""
        head, row, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        seq_len = tl.load(Lens + row)
        span = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_SIZE) * BLOCK_SIZE
        start = split * span
        end = tl.minimum(start + span, seq_len)
        if start >= end:
            return
        kv_head = head // GROUP
        dims = tl.arange(0, BLOCK_D)
        in_dim = dims < HEAD_DIM
        q = tl.load(Q + row * stride_qb + head * stride_qh + dims, mask=in_dim, other=0.0).to(tl.float32)
        q = q * scale_log2  # scores in log2 units: exp2 below is exp of the scaled score
        top = -float("inf")
        total = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for first in range(start, end, BLOCK_N):
            tokens = first + tl.arange(0, BLOCK_N)
            filled = tokens < end
            block = tl.load(Table + row * stride_tb + tokens // BLOCK_SIZE, mask=filled, other=0).to(tl.int64)
            slot = tokens % BLOCK_SIZE
            both = filled[:, None] & in_dim[None, :]
            k_at = K + block[:, None] * stride_kn + slot[:, None] * stride_kt + kv_head * stride_kh + dims[None, :]
            v_at = V + block[:, None] * stride_vn + slot[:, None] * stride_vt + kv_head * stride_vh + dims[None, :]
            k = tl.load(k_at, mask=both, other=0.0).to(tl.float32)
            v = tl.load(v_at, mask=both, other=0.0).to(tl.float32)  # both loads in flight before the math
            scores = tl.where(filled, tl.sum(k * q[None, :], 1), -float("inf"))
            new_top = tl.maximum(top, tl.max(scores, 0))
            shrink = tl.exp2(top - new_top)
            weights = tl.exp2(scores - new_top)
            acc = acc * shrink + tl.sum(weights[:, None] * v, 0)
            total = total * shrink + tl.sum(weights, 0)
            top = new_top
        where = (row * q_heads + head) * NUM_SPLITS + split
        tl.store(Parts + where * HEAD_DIM + dims, acc / total, mask=in_dim)
        tl.store(Lse + where, top + tl.log2(total))

    @triton.jit
    def _merge_kernel(
        Parts, Lse, Lens, Out, stride_ob, stride_oh,
        BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """Stage two: weigh each non-empty split's output by its share of the row's softmax mass."""
        row, head = tl.program_id(0), tl.program_id(1)
        seq_len = tl.load(Lens + row)
        span = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_SIZE) * BLOCK_SIZE
        splits = tl.arange(0, BLOCK_S)
        used = (splits < NUM_SPLITS) & (splits * span < seq_len)  # the ranges stage one filled
        dims = tl.arange(0, BLOCK_D)
        in_dim = dims < HEAD_DIM
        base = (row * tl.num_programs(1) + head) * NUM_SPLITS
        lse = tl.load(Lse + base + splits, mask=used, other=-float("inf"))
        weights = tl.where(used, tl.exp2(lse - tl.max(lse, 0)), 0.0)
        parts_at = Parts + (base + splits[:, None]) * HEAD_DIM + dims[None, :]
        parts = tl.load(parts_at, mask=used[:, None] & in_dim[None, :], other=0.0)
        total = tl.sum(weights, 0)
        merged = tl.sum(weights[:, None] * parts, 0) / tl.where(total > 0, total, 1.0)
        tl.store(Out + row * stride_ob + head * stride_oh + dims, merged.to(Out.dtype.element_ty), mask=in_dim)
