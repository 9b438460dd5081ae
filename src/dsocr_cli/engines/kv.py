"""A paged KV cache: keys and values live in fixed-size blocks handed out as sequences grow.

A preallocated row per sequence (`prompt + max_new_tokens` long) lets memory, not the tokens
actually held, decide how many pages decode at once: at the default 8,192 new tokens a row costs
about 570 MB, and most of it is never filled. Here a sequence holds only the blocks its tokens
need, so the number in flight is set by what they hold, and attention reads only filled blocks.

The allocator lives on the host (the scheduler knows every sequence's length without asking the
GPU); the block table it maintains is mirrored on the device, where the decode step reads it.
Block 0 is never handed out: free lanes point at it, so a step can write their (ignored) keys
and values somewhere harmless without a branch.
"""

from __future__ import annotations

import torch

TRASH_BLOCK = 0


class PagedKV:
    """Per-layer block pools, a free list, and the (lanes x blocks) table that maps them."""

    def __init__(
        self,
        layers: int,
        blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        lanes: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.block_size = block_size
        self.max_blocks = -(-max_len // block_size)
        shape = (blocks, block_size, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.table = torch.full((lanes, self.max_blocks), TRASH_BLOCK, dtype=torch.int32, device=device)
        self.free: list[int] = list(range(blocks - 1, TRASH_BLOCK, -1))  # pop() hands out low numbers first
        self.owned: list[list[int]] = [[] for _ in range(lanes)]
        self.capacity = blocks - 1
        self._pending: list[tuple[int, int, int]] = []  # (lane, logical block, physical block) to copy

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` positions."""
        return -(-tokens // self.block_size)

    def ensure(self, lane: int, tokens: int) -> bool:
        """Give `lane` blocks for `tokens` positions; False (nothing taken) when the pool is short."""
        need = self.blocks_for(tokens) - len(self.owned[lane])
        if need <= 0:
            return True
        if need > len(self.free):
            return False
        for _ in range(need):
            block = self.free.pop()
            self._pending.append((lane, len(self.owned[lane]), block))
            self.owned[lane].append(block)
        return True

    def release(self, lane: int) -> None:
        """Return a lane's blocks to the pool and point its table row at the trash block."""
        self.free.extend(reversed(self.owned[lane]))
        self.owned[lane] = []
        self._pending = [p for p in self._pending if p[0] != lane]
        self.table[lane].fill_(TRASH_BLOCK)

    def move(self, source: int, target: int) -> None:
        """Hand a sequence's blocks to another lane (compaction): only the table row moves."""
        self.flush()
        self.owned[target], self.owned[source] = self.owned[source], []
        self.table[target].copy_(self.table[source])
        self.table[source].fill_(TRASH_BLOCK)

    def flush(self) -> None:
        """Copy the table entries made since the last flush to the device, in one transfer."""
        if not self._pending:
            return
        lanes, columns, blocks = upload(self._pending, torch.long, self.table.device).unbind(1)
        self.table.index_put_((lanes, columns), blocks.to(torch.int32))
        self._pending.clear()

    def slots(self, lane: int, start: int, stop: int) -> torch.Tensor:
        """Flat cache indices (block * block_size + offset) of positions start..stop-1 of a lane."""
        positions = torch.arange(start, stop)
        blocks = torch.tensor(self.owned[lane], dtype=torch.long)[positions // self.block_size]
        return upload(blocks * self.block_size + positions % self.block_size, torch.long, self.table.device)

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store (tokens, heads, dim) keys and values at flat cache indices."""
        width = self.keys[layer].shape[-2:]
        self.keys[layer].view(-1, *width).index_copy_(0, slots, keys.to(self.keys[layer].dtype))
        self.values[layer].view(-1, *width).index_copy_(0, slots, values.to(self.values[layer].dtype))

    @property
    def used(self) -> int:
        """Blocks held by sequences now."""
        return self.capacity - len(self.free)


def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token across every layer."""
    return 2 * layers * kv_heads * head_dim * dtype.itemsize


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values (a list or a CPU tensor) on the device without waiting for it: a plain upload
    synchronises the stream, so the host would stop until every queued step and prefill had run,
    instead of launching the next ones meanwhile. Pinned memory makes the copy asynchronous."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
