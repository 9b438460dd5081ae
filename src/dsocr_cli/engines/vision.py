"""SAM's attention with its relative-position bias folded into the dot product.

Every SAM block adds a decomposed relative-position bias to its attention scores:
bias[q, k] = rel_h[q, row(k)] + rel_w[q, col(k)], where rel_h and rel_w are small (one value per
query and key row or column). transformers builds the whole (batch, heads, N, N) bias and hands it
to SDPA as a mask: for the 1,024-pixel view N is 4,096, and writing and copying that tensor took
more GPU time than the attention itself (about a quarter of a prefill of A4 pages, measured on
the bench GPU; docs/BENCHMARKS.md). The same sum is a dot product: each query gets its rel_h and
rel_w rows appended (divided by the softmax scale), each key the one-hot of its row and column,
and SDPA's fused kernels add the bias inside the score without ever storing it. Same result up to
floating-point rounding (the bias is summed in the kernel's float32 instead of in bf16 first).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as modeling


class FoldedSamAttention(modeling.DeepseekOcr2SamVisionAttention):
    """transformers' SAM attention with the bias folded into SDPA's dot product (same weights)."""

    def forward(self, hidden_states: torch.Tensor, output_attentions=None) -> tuple[torch.Tensor, None]:
        """Same arguments and output as transformers' forward, but attention weights are never returned
        (SDPA does not make them)."""
        batch, height, width, _ = hidden_states.shape
        heads = self.num_attention_heads
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (batch, heads, tokens, head_dim)
        dim = query.shape[-1]
        if self.use_rel_pos:
            rel_h, rel_w = self._relative_terms(query, height, width)
            query = torch.cat([query, rel_h / self.scale, rel_w / self.scale], dim=-1)
            places = _one_hot_places(height, width, query.dtype, query.device)
            key = torch.cat([key, places.expand(batch, heads, -1, -1)], dim=-1)
            pad = -query.shape[-1] % 8  # the fused kernels want head sizes in multiples of 8
            query, key = F.pad(query, (0, pad)), F.pad(key, (0, pad))
            value = F.pad(value, (0, query.shape[-1] - dim))
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)[..., :dim]
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, heads * dim)
        return self.proj(out), None

    def _relative_terms(self, query: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """rel_h (batch, heads, tokens, height) and rel_w (..., width): each query's bias towards
        every key row and every key column, as transformers computes them."""
        batch, heads, tokens, dim = query.shape
        grid = query.reshape(batch * heads, height, width, dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid, self._table(height, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid, self._table(width, self.rel_pos_w))
        return rel_h.reshape(batch, heads, tokens, height), rel_w.reshape(batch, heads, tokens, width)

    def _table(self, size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        """transformers' get_rel_pos for a side of `size`, kept until the weights change: it builds
        its index on the host, and the upload made the host wait for the GPU in every block of every
        prefill, so the launches of a prefill could not run ahead of its kernels."""
        tables = self.__dict__.setdefault("_tables", {})
        key = (size, rel_pos.data_ptr(), rel_pos._version, rel_pos.dtype)
        if key not in tables:
            tables[key] = self.get_rel_pos(size, size, rel_pos)
        return tables[key]


@functools.lru_cache(maxsize=16)
def _one_hot_places(height: int, width: int, dtype, device) -> torch.Tensor:
    """(1, 1, tokens, height + width): the one-hot of each key's row, then of its column."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.cat([F.one_hot(rows, height), F.one_hot(cols, width)], dim=-1).to(dtype)[None, None]


def fold_sam_attention(model) -> int:
    """Switch every SAM attention block of a loaded model to the folded one; returns how many.
    Weights and modules stay transformers' own; only the forward changes."""
    count = 0
    for module in model.modules():
        if type(module) in (modeling.DeepseekOcr2SamVisionAttention, modeling.DeepseekOcr2SamVisionSdpaAttention):
            module.__class__ = FoldedSamAttention
            count += 1
    return count
