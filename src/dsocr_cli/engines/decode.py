"""Continuous batching for the native DeepSeek-OCR-2: a fixed set of decode slots over a
preallocated KV cache. A page that finishes leaves its slot at once and the next page takes it,
so a batch no longer runs as long as its longest page.

Why not `generate`: it keeps every row of a batch until the longest one ends (with pages of
256..2,000 tokens, half the rows idle), grows its cache by concatenation every step (the
allocator churns) and cannot take a new page into a running batch. Here each page is prefilled
alone through the model's own forward (vision encoder included, so its memory is one page's),
its keys and values are copied into a free slot, and one decode step advances every slot:
the text decoder's own modules (norms, projections, rotary embedding, MoE) with the cache
written per slot at that slot's position. The step has fixed shapes, so on CUDA it is captured
once as a CUDA graph and replayed, which removes the launch overhead that bounds decoding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsocr_cli.engines.ngram import ban_repeats

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    item: object  # what the caller gave (a page); returned with its tokens
    started: float


class SlotDecoder:
    """Greedy decoding of many sequences in `slots` lanes of one static cache."""

    def __init__(
        self,
        model,
        slots: int,
        max_new_tokens: int,
        max_prompt: int,
        eos_id: int,
        ngram: tuple[int, int] = (0, 0),
        exempt_ids: tuple[int, ...] = (),
        use_graph: bool = True,
    ):
        text = model.model.language_model
        attention = text.layers[0].self_attn
        config = text.config
        self.model, self.text, self.lm_head = model, text, model.lm_head
        self.slots, self.max_new, self.eos = slots, max_new_tokens, eos_id
        self.ngram, self.window = ngram
        self.max_len = max_prompt + max_new_tokens
        self.device = model.lm_head.weight.device
        dtype = model.lm_head.weight.dtype
        shape = (slots, config.num_key_value_heads, self.max_len, attention.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in text.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in text.layers]
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)  # next write index
        self.generated = torch.zeros(slots, dtype=torch.long, device=self.device)  # tokens so far
        self.history = torch.full((slots, max_new_tokens + 1), -1, dtype=torch.long, device=self.device)
        self.next_ids = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.exempt = torch.tensor(exempt_ids, dtype=torch.long, device=self.device)
        self.lanes = torch.arange(slots, device=self.device)
        self.cache_index = torch.arange(self.max_len, device=self.device)
        self.use_graph = use_graph and self.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None

    # ---- the decode step: fixed shapes, no host synchronisation ----

    def _step(self) -> None:
        ids = self.next_ids
        position = self.positions
        hidden = self.text.embed_tokens(ids)[:, None, :]
        cos, sin = self.text.rotary_emb(hidden, position[:, None])
        visible = (self.cache_index[None, :] <= position[:, None])[:, None, None, :]
        for i, layer in enumerate(self.text.layers):
            hidden = hidden + self._attend(layer.self_attn, layer.input_layernorm(hidden), cos, sin, visible, i)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.adjust(self.lm_head(self.text.norm(hidden)[:, -1, :]).float())
        chosen = logits.argmax(dim=-1)
        self.history[self.lanes, self.generated] = chosen
        self.next_ids.copy_(chosen)
        self.positions.add_(1).clamp_(max=self.max_len - 1)
        self.generated.add_(1).clamp_(max=self.max_new)  # idle lanes run on in place

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits before the greedy choice: the repetition ban (the benchmark adds forced lengths)."""
        if self.ngram > 1:
            logits = ban_repeats(self.history, self.generated, logits, self.ngram, self.window, self.exempt)
        return logits

    def _attend(self, attn, x, cos, sin, visible, layer: int):
        from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import apply_rotary_pos_emb

        batch = x.shape[0]
        q = attn.q_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.keys[layer][self.lanes, :, self.positions] = k[:, :, 0]
        self.values[layer][self.lanes, :, self.positions] = v[:, :, 0]
        out = F.scaled_dot_product_attention(
            q,
            self.keys[layer],
            self.values[layer],
            attn_mask=visible,
            scale=attn.scaling,
            enable_gqa=attn.num_key_value_groups > 1,
        )
        return attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))

    def _advance(self) -> None:
        if not self.use_graph:
            self._step()
            return
        if self.graph is None:
            self.graph = self._capture()
        if self.graph is None:
            self.use_graph = False  # capture failed once: decode eagerly from now on, no retries
            self._step()
        else:
            self.graph.replay()

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        """Record the step once; its buffers are the slots' state, so replays see every refill.
        The warm-up steps run on copies of the state, which is then restored."""
        saved = [t.clone() for t in (self.positions, self.generated, self.history, self.next_ids)]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
        except Exception as exc:  # an op that cannot be captured: decode eagerly instead
            log.warning("decoding without a CUDA graph (%s)", str(exc).splitlines()[0][:200])
            graph = None
        for tensor, value in zip((self.positions, self.generated, self.history, self.next_ids), saved, strict=True):
            tensor.copy_(value)
        return graph

    # ---- admission and completion ----

    def _admit(self, lane: int, prefill: Callable[[object], tuple], item) -> _Slot:
        """Prefill one page alone and move its keys and values into `lane`."""
        started = time.perf_counter()
        first_logits, layer_kv, length = prefill(item)
        if length + self.max_new > self.max_len:
            raise ValueError(f"prompt of {length} tokens exceeds the decoder's room ({self.max_len - self.max_new})")
        for i, (k, v) in enumerate(layer_kv):
            self.keys[i][lane, :, :length] = k[0, :, -length:]
            self.values[i][lane, :, :length] = v[0, :, -length:]
        self.history[lane].fill_(-1)
        first = first_logits.float().argmax(dim=-1)
        self.history[lane, 0] = first
        self.next_ids[lane] = first
        self.positions[lane] = length
        self.generated[lane] = 1
        return _Slot(item, started)

    def run(self, items: Iterable, prefill: Callable[[object], tuple]) -> Iterator[tuple[object, list, str, float]]:
        """Yield (item, generated ids with EOS if reached, finish, seconds) as each sequence ends;
        finish is 'eos' or 'length', or 'error' with the exception in place of the ids."""
        pending = iter(items)
        active: dict[int, _Slot] = {}
        exhausted = False
        while True:
            for lane in range(self.slots):
                while lane not in active and not exhausted:  # a page that fails its prefill frees the lane again
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    try:
                        active[lane] = self._admit(lane, prefill, item)
                    except Exception as exc:  # this page alone fails
                        yield item, exc, "error", 0.0
            if not active:
                return  # only when every lane is free and nothing is left to admit
            yield from self._finished(active)
            if active:
                self._advance()

    def _finished(self, active: dict[int, _Slot]) -> Iterator[tuple[object, list, str, float]]:
        last = self.history[self.lanes, (self.generated - 1).clamp(min=0)]
        done = (last == self.eos) | (self.generated >= self.max_new)
        lanes = [lane for lane in done.nonzero().flatten().tolist() if lane in active]  # one sync per step
        for lane in lanes:
            slot = active.pop(lane)
            count = int(self.generated[lane])
            ids = self.history[lane, :count].tolist()
            finish = "eos" if ids and ids[-1] == self.eos else "length"
            yield slot.item, ids, finish, time.perf_counter() - slot.started
