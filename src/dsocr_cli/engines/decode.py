"""Continuous batching for the native DeepSeek-OCR-2 over a paged KV cache.

Why not `generate`: it keeps every row of a batch until the longest one ends, grows its cache by
concatenation every step and cannot take a new page into a running batch. Here pages stream
through a set of lanes: a page is prefilled (several per forward, vision encoder included) and
its keys and values are written into cache blocks (engines/kv.py); one decode step advances every
lane with the text decoder's own modules and an attention that reads only filled blocks
(engines/kernels); a page that ends frees its lane and blocks at once.

The scheduler, in one loop: admit a bounded group of pages (so running lanes never wait long),
launch a step that advances every lane one token, hand the pages that ended before it to the
caller while it runs, then collect what it finished. A page that loops (a repeated span
longer than the n-gram ban's window, detected on the device) or hits the token limit is admitted
again as a new sequence with the strict ban: a retry never blocks the other lanes. When blocks
run out, the most recently admitted sequence is preempted: its blocks are freed and it is resumed
later by recomputing its cache from its prompt and the tokens it had, never failed.

The decode step has fixed shapes per batch-size bucket, so on CUDA each bucket is captured once
as a CUDA graph and replayed; lanes are compacted so the smallest bucket that holds them runs.
A run starts with one bucket's graph and at most its lanes; the other buckets are captured once
the first page is out, where more pages are left, so the first pages do not wait for graphs a full
batch needs and a short run never captures them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from dsocr_cli.engines.graphs import capture, warm
from dsocr_cli.engines.kernels.paged_attention import paged_decode_attention
from dsocr_cli.engines.kv import TRASH_BLOCK, PagedKV, upload
from dsocr_cli.engines.ngram import ban_repeats, looping

log = logging.getLogger(__name__)

# (item, [(item, kept ids)]) -> (first-token logits (n, vocab), per-layer (keys, values) of shape
# (n, heads, padded length, dim) left-padded, prompt lengths)
Prefill = Callable[[list[tuple[object, list[int]]]], tuple[torch.Tensor, list, list[int]]]


@dataclass
class _Sequence:
    item: object  # what the caller gave (a page); returned with its tokens
    started: float
    strict: bool = False  # a retry: the strict n-gram ban
    order: int = 0  # admission order: the latest admitted is preempted first
    kept: list[int] = field(default_factory=list)  # tokens generated before a preemption


@dataclass(frozen=True)
class _Snapshot:
    """How each lane stood after a step: (how it ended: 0 running, else a key of `_ENDS`; tokens),
    on the host once `done` has passed; `owners` are the sequences the lanes held at that step."""

    state: torch.Tensor  # (2, bucket)
    done: torch.cuda.Event | None
    owners: dict[int, _Sequence]


@dataclass(frozen=True)
class Finished:
    """One sequence's end: its generated ids (EOS included if reached) or the exception it raised."""

    item: object
    ids: list[int] | Exception
    finish: str  # eos, length, repetition or error
    seconds: float
    attempts: int = 1


def _same(item):
    return item


@dataclass(frozen=True)
class Feed:
    """What the decoder needs to know about the caller's items (pages); all but `prefill` optional."""

    prefill: Prefill
    measure: Callable[[object], int] | None = None  # an item's prompt tokens before its prefill, where known
    forget: Callable[[object], object] = _same  # the item to keep once prefilled (bulky inputs dropped)
    renew: Callable[[object], object] = _same  # an item going back to the queue: start remaking its inputs
    ready: Callable[[object], bool] = lambda item: True  # whether a renewed item's inputs are made
    arrived: Callable[[], bool] = lambda: True  # whether the next new item can be taken without waiting
    start_rest: Callable[[], None] = lambda: None  # start-up work the first pages do not wait for


@dataclass(frozen=True)
class DecoderConfig:
    """How the decoder is sized and decodes; the engine fills it from the options and the free GPU memory."""

    lanes: int  # sequences in flight at most
    max_new_tokens: int
    max_prompt: int  # the longest prompt a page can give, in tokens
    eos_id: int
    blocks: int  # cache blocks of `block_size` tokens (one is reserved)
    block_size: int = 64
    ngram: tuple[int, int] = (0, 0)  # (n, window) of the windowed no-repeat ban; n < 2: off
    strict_ngram: tuple[int, int] = (20, 256)  # the ban of a retry
    exempt_ids: tuple[int, ...] = ()  # tokens never banned (table cells)
    retry: bool = True  # admit a page that looped or hit the limit again, strictly
    prefill_tokens: int = 4608  # prompt tokens prefilled per forward at most
    prefill_share: float = 0.5  # of the run's time at most spent prefilling while lanes are running
    # Until the decoder's first sequence ends (a page, or a loop cut for its retry), prefills take
    # less of the time, so the first pages decode at nearly full speed instead of beside a batch
    # filling at half the GPU's time; once per decoder, not per run (worker processes run often)...
    first_prefill_share: float = 0.1
    # ...but the run starts with a burst: prefills may run this many seconds ahead of their share,
    # so more pages (the shortest of them ends first) decode from the start; never further ahead.
    prefill_grace: float = 0.5
    # Lanes the decoder starts with: their bucket's graph alone is captured before the first pages,
    # the other buckets once a first page is out; until then the lanes stay within it.
    start_lanes: int = 32
    loop_span: int = 256  # a loop: the last loop_span tokens equal those some period earlier...
    loop_period: int = 512  # ...of at most this many tokens
    loop_every: int = 32  # steps between loop checks
    use_graph: bool = True


class PagedDecoder:
    """Greedy decoding of many sequences over one paged cache."""

    def __init__(self, model, config: DecoderConfig):
        text = model.model.language_model
        attention = text.layers[0].self_attn
        self.model, self.text, self.lm_head, self.config = model, text, model.lm_head, config
        self.device = model.lm_head.weight.device
        self.max_len = config.max_prompt + config.max_new_tokens
        if config.blocks - 1 < -(-self.max_len // config.block_size):
            raise ValueError(f"{config.blocks} cache blocks cannot hold one sequence of {self.max_len} tokens")
        lanes, device = config.lanes, self.device
        self.kv = PagedKV(
            len(text.layers),
            config.blocks,
            config.block_size,
            text.config.num_key_value_heads,
            attention.head_dim,
            lanes,
            self.max_len,
            model.lm_head.weight.dtype,
            device,
        )
        self.positions = torch.zeros(lanes, dtype=torch.long, device=device)  # next write index
        self.generated = torch.zeros(lanes, dtype=torch.long, device=device)  # tokens so far
        self.history = torch.full((lanes, config.max_new_tokens + 1), -1, dtype=torch.long, device=device)
        self.next_ids = torch.zeros(lanes, dtype=torch.long, device=device)
        pin = device.type == "cuda"
        self.host_state = [torch.zeros(2 * lanes, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self.active = torch.zeros(lanes, dtype=torch.bool, device=device)
        self.strict = torch.zeros(lanes, dtype=torch.bool, device=device)
        self.exempt = torch.tensor(config.exempt_ids, dtype=torch.long, device=device)
        self.buckets = buckets_for(lanes)
        self.use_graph = config.use_graph and device.type == "cuda"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_seconds: dict[int, float] = {}  # per bucket, for the start-up's record
        self.pool = None  # the graphs' shared memory pool
        self.rest_started = False  # the graphs and work a run's first pages did not wait for
        self.lanes: dict[int, _Sequence] = {}  # lane -> the sequence in it
        self.lengths = [0] * lanes  # host mirror of `positions`: what each lane's cache holds
        self.queue: deque[_Sequence] = deque()  # preempted and retried sequences, before new pages
        # Ended sequences whose tokens are being copied to the host: (sequence, finish, ids, copied)
        self.closing: deque[tuple[_Sequence, str, torch.Tensor, torch.cuda.Event | None]] = deque()
        self.steps = 0
        self.ended = 0  # sequences that ended (retries included) in the decoder's life
        self.delivered = 0  # Finished handed to the caller in this run
        self.input_done = False  # this run's items have all been taken
        self.admitted = 0
        self.preemptions = 0
        self.prefill_clock = PrefillClock(device)
        self.timeline: list[tuple[float, str, int]] | None = None  # (time, event, count) when recording

    # ---- the decode step: fixed shapes per bucket, no host synchronisation ----

    def _step(self, b: int) -> None:
        position, active, table = self.positions[:b], self.active[:b], self.kv.table[:b]
        hidden = self.text.embed_tokens(self.next_ids[:b])[:, None, :]
        cos, sin = self.text.rotary_emb(hidden, position[:, None])
        size = self.config.block_size
        slots = table.gather(1, (position // size)[:, None]).squeeze(1).long() * size + position % size
        seq_lens = torch.where(active, position + 1, 0).to(torch.int32)
        for i, layer in enumerate(self.text.layers):
            x = layer.input_layernorm(hidden)
            hidden = hidden + self._attend(layer.self_attn, x, cos, sin, slots, table, seq_lens, i)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.adjust(self.lm_head(self.text.norm(hidden)[:, -1, :]).float(), b)
        chosen = logits.argmax(dim=-1)
        generated = self.generated[:b]
        self.history[:b].scatter_(1, generated[:, None], chosen[:, None])
        self.next_ids[:b].copy_(chosen)
        step = active.long()
        position.add_(step)
        generated.add_(step).clamp_(max=self.config.max_new_tokens)

    def adjust(self, logits: torch.Tensor, b: int) -> torch.Tensor:
        """Logits before the greedy choice: the repetition bans (the benchmark adds forced lengths)."""
        history, generated = self.history[:b], self.generated[:b]
        (n, window), (strict_n, strict_window) = self.config.ngram, self.config.strict_ngram
        normal = ban_repeats(history, generated, logits, n, window, self.exempt) if n > 1 else logits
        strict = ban_repeats(history, generated, logits, strict_n, strict_window, self.exempt)
        return torch.where(self.strict[:b, None], strict, normal)

    def _attend(self, attn, x, cos, sin, slots, table, seq_lens, layer: int):
        from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import apply_rotary_pos_emb

        batch = x.shape[0]
        q = attn.q_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.kv.write(layer, slots, k[:, :, 0], v[:, :, 0])
        out = paged_decode_attention(
            q[:, :, 0], self.kv.keys[layer], self.kv.values[layer], table, seq_lens, attn.scaling
        )
        return attn.o_proj(out.reshape(batch, 1, -1))

    def warm_up(self, sizes: Iterable[int] | None = None) -> None:
        """Capture the graphs of these buckets (every bucket by default) not yet captured, largest
        first, all into one shared memory pool. A run starts with `start_bucket` alone; the rest
        are captured once a first page is out, where the run has more pages left (`_start_rest`)."""
        if not self.use_graph:
            return
        for b in sorted(self.buckets if sizes is None else sizes, reverse=True):
            if b in self.graphs:
                continue
            began = time.perf_counter()
            graph = self._capture(b, self.pool)
            self.capture_seconds[b] = time.perf_counter() - began
            if graph is None:
                self.use_graph = False
                self.graphs.clear()
                return
            self.graphs[b] = graph
            self.pool = graph.pool()

    def _capture(self, b: int, pool) -> torch.cuda.CUDAGraph | None:
        """Record bucket b's step; its buffers are the lanes' state, so replays see every refill.
        The warm-up steps run on the live state, which is then restored; the block table points
        every lane at the trash block meanwhile, so sequences already running keep their cache."""
        saved = [t.clone() for t in (self.positions, self.generated, self.history, self.next_ids, self.kv.table)]
        self.kv.table.fill_(TRASH_BLOCK)
        try:
            warm(lambda: self._step(b), times=2)
            graph, _ = capture(lambda: self._step(b), pool)
        except Exception as exc:  # an op that cannot be captured: decode eagerly instead
            log.warning("decoding without CUDA graphs (%s)", str(exc).splitlines()[0][:200])
            graph = None
        finally:  # an interrupt too: the running sequences' state comes back
            for tensor, value in zip(
                (self.positions, self.generated, self.history, self.next_ids, self.kv.table), saved, strict=True
            ):
                tensor.copy_(value)
        return graph

    @property
    def start_bucket(self) -> int:
        """The one bucket captured before a run's first pages: it holds `start_lanes`."""
        return next(size for size in self.buckets if size >= min(self.config.start_lanes, self.config.lanes))

    def _open_lanes(self) -> int:
        """The lanes admissions may fill: all of them, or the largest captured bucket's while the
        other buckets wait to be captured."""
        if self.use_graph and self.graphs and max(self.graphs) < max(self.buckets):
            return max(self.graphs)
        return self.config.lanes

    def _start_rest(self) -> None:
        """Once a first page is out, the start-up work it did not wait for: the other buckets' graphs
        and the caller's (`Feed.start_rest`: the vision graphs). Not where the run's items are all
        taken and the sequences left fit the lanes open (a run of exactly those lanes still pays)."""
        if self.rest_started or not self.delivered:
            return
        if self.input_done and len(self.lanes) + len(self.queue) <= self._open_lanes():
            return  # the rest of the run fits the lanes it has
        self.rest_started = True
        if self.timeline is not None:
            self.timeline.append((time.perf_counter(), "start-rest", len(self.lanes)))
        self.warm_up()
        self.feed.start_rest()

    def _bucket(self) -> int:
        """The smallest batch size that holds every occupied lane, of those captured where graphs run."""
        sizes = self.graphs if self.use_graph and self.graphs else self.buckets
        return min((size for size in sizes if size > max(self.lanes)), default=max(self.buckets))

    def _advance(self) -> None:
        b = self._bucket()
        for lane in self.lanes:
            self.lengths[lane] += 1
        graph = self.graphs.get(b) if self.use_graph else None
        if graph is not None:
            graph.replay()
        else:
            self._step(b)
        self.steps += 1
        if self.timeline is not None:
            self.timeline.append((time.perf_counter(), "step", len(self.lanes)))

    # ---- the scheduler ----

    def run(self, items: Iterable, feed: Feed) -> Iterator[Finished]:
        """Yield a Finished for every item as it ends (retries already done, so each item once)."""
        self.feed = feed
        pending = iter(items)
        exhausted = False
        self.prefill_clock = PrefillClock(self.device)
        self.prefill_allowed, self.allowed_at = self.config.prefill_grace, time.perf_counter()
        self.closing.clear()  # an abandoned run's pages are not this run's
        self.delivered = 0
        self.input_done = False
        ended: list[Finished] = []
        previous: _Snapshot | None = None  # the last step launched, its ends not yet read
        while True:
            if (not exhausted or self.queue) and self._may_prefill():
                exhausted = yield from self._admit(pending)
            self._start_rest()
            launched = None
            if self.lanes:
                self._reserve()
                self._compact()
                self.kv.flush()
                self._advance()
                launched = self._snapshot()
            # The host runs one step ahead: this step is queued behind the previous one before the
            # previous one's ends are read, and the caller handles pages (parsing, writing) while
            # both run, so the host's work between steps no longer leaves the GPU idle. A sequence
            # that ended is stepped once more, harmlessly: its tokens are read up to its end.
            yield from ended
            self.delivered += len(ended)
            if previous is not None:
                self._collect(previous)
            ended = list(self._closed(wait=launched is None))
            previous = launched
            if previous is None and not ended and not self.lanes and exhausted and not self.queue:
                return

    @property
    def prefill_seconds(self) -> float:
        """The run's prefill time so far: on CUDA the GPU's, of the prefills that have passed."""
        self.prefill_clock.running()
        return self.prefill_clock.seconds

    def _may_prefill(self) -> bool:
        """Prefill shares the GPU with running lanes: while any run, one prefill is queued at a time
        and prefills take at most `prefill_share` of the time (less until the decoder's first
        sequence ended), at most `prefill_grace` seconds ahead of it, so admissions never stall
        decoding. Time in which no prefill ran (graphs being captured, no page made yet) is not
        saved up beyond that grace: spent at once, it would hold the lanes for seconds."""
        now = time.perf_counter()
        share = self.config.prefill_share if self.ended else self.config.first_prefill_share
        running = self.prefill_clock.running()  # counts the prefills that have passed
        self.prefill_allowed += share * (now - self.allowed_at)
        self.prefill_allowed = min(self.prefill_allowed, self.prefill_clock.seconds + self.config.prefill_grace)
        self.allowed_at = now
        if not self.lanes:
            return True
        return not running and self.prefill_clock.seconds <= self.prefill_allowed

    def _admit(self, pending: Iterator) -> Iterator[Finished]:
        """Prefill one group of waiting sequences into free lanes; return True once `pending` is empty.
        Queued sequences (preempted, retried) come first, each once its inputs are remade; while
        lanes run, one whose inputs are still being made lets new pages pass, and a new page is
        taken only once it has arrived (`Feed.arrived`), so that running lanes never wait for one."""
        group, tokens, exhausted = [], 0, False
        free = self._open_lanes() - len(self.lanes)
        spare = len(self.kv.free)
        measure = self.feed.measure or (lambda item: self.config.max_prompt)
        while len(group) < free:
            seq = next((s for s in self.queue if not self.lanes or self.feed.ready(s.item)), None)
            if seq is None:
                if self.lanes and not self.feed.arrived():
                    break  # the next page is still being made: decode meanwhile, never wait for it
                item = next(pending, _END) if not exhausted else _END
                if item is _END:
                    exhausted = self.input_done = True
                    break
                seq = _Sequence(item, time.perf_counter())
                self.queue.appendleft(seq)
            need = measure(seq.item) + len(seq.kept)
            blocks = self.kv.blocks_for(need + 1) + self._headroom()
            if group and (tokens + need > self.config.prefill_tokens or blocks > spare):
                break
            if not group and blocks > spare and self.lanes:
                break  # wait for running sequences to free blocks
            self.queue.remove(seq)
            group.append(seq)
            tokens += need
            spare -= blocks
        if group:
            began = self.prefill_clock.start()
            yield from self._prefill_group(group)
            self.prefill_clock.stop(began)
        return exhausted and not self.queue

    def _headroom(self) -> int:
        """Blocks kept free per admission so running sequences can grow a while before preempting."""
        return max(1, len(self.lanes) // 8)

    def _prefill_group(self, group: list[_Sequence]) -> Iterator[Finished]:
        """Prefill a group; when it fails, split it, so that only a sequence failing alone is lost."""
        try:
            logits, layer_kv, lengths = self.feed.prefill([(s.item, s.kept[:-1]) for s in group])
        except Exception as exc:
            if len(group) == 1:
                log.debug("prefill failed", exc_info=True)
                seq = group[0]
                yield Finished(seq.item, exc, "error", 0.0, 2 if seq.strict else 1)
                return
            half = len(group) // 2
            yield from self._prefill_group(group[:half])
            yield from self._prefill_group(group[half:])
            return
        for seq in group:
            seq.item = self.feed.forget(seq.item)
        self._place(group, logits, layer_kv, lengths)
        if self.timeline is not None:
            self.timeline.append((time.perf_counter(), "prefill", len(group)))

    def _place(self, group: list[_Sequence], logits: torch.Tensor, layer_kv: list, lengths: list[int]) -> None:
        """Write each prefilled sequence's keys and values into blocks of a free lane."""
        free = [lane for lane in range(self.config.lanes) if lane not in self.lanes]
        placed, slots = [], []
        for row, seq in enumerate(group):
            lane = free[len(placed)]
            if not self.kv.ensure(lane, lengths[row] + 1):  # +1: the first decode step writes there
                self.queue.appendleft(seq)  # blocks ran short after all: try again later
                continue
            slots.append(self.kv.slots(lane, 0, lengths[row]))
            placed.append((row, lane, seq))
        if not placed:
            return
        slots_all = torch.cat(slots)
        for layer, (keys, values) in enumerate(layer_kv):
            k = torch.cat([keys[row, :, keys.shape[2] - lengths[row] :].transpose(0, 1) for row, _, _ in placed])
            v = torch.cat([values[row, :, values.shape[2] - lengths[row] :].transpose(0, 1) for row, _, _ in placed])
            self.kv.write(layer, slots_all, k, v)
        first = logits.float().argmax(dim=-1)
        for row, lane, seq in placed:
            self._start_lane(lane, seq, first[row], lengths[row])

    def _start_lane(self, lane: int, seq: _Sequence, first: torch.Tensor, length: int) -> None:
        # Device state is set with fill_ and device-side copies: assigning a host value would
        # synchronise the stream and stall the host behind the prefill it has just launched.
        self.history[lane].fill_(-1)
        if seq.kept:  # resumed: the cache now holds the prompt and all kept tokens but the last
            kept = upload(seq.kept, torch.long, self.device)
            self.history[lane, : len(seq.kept)] = kept
            self.next_ids[lane] = kept[-1]
            self.generated[lane].fill_(len(seq.kept))
        else:
            self.history[lane, 0] = first
            self.next_ids[lane] = first
            self.generated[lane].fill_(1)
        self.positions[lane].fill_(length)
        self.active[lane].fill_(True)
        self.strict[lane].fill_(seq.strict)
        self.lengths[lane] = length
        self.admitted += 1
        seq.order = self.admitted
        self.lanes[lane] = seq
        self.on_admit(lane, seq)

    def on_admit(self, lane: int, seq: _Sequence) -> None:
        """A hook for subclasses (the benchmark sets per-lane targets here)."""

    def _reserve(self) -> None:
        """Give every lane a block for the position the next step writes; preempt when short."""
        for lane in sorted(self.lanes, key=lambda lane: self.lanes[lane].order):
            while lane in self.lanes and not self.kv.ensure(lane, self.lengths[lane] + 1):
                victim = max(self.lanes, key=lambda other: self.lanes[other].order)
                self._preempt(victim)

    def _preempt(self, lane: int) -> None:
        """Free a lane's blocks; its sequence waits at the front of the queue with what it generated."""
        count = int(self.generated[lane])
        if count and int(self.history[lane, count - 1]) == self.config.eos_id:
            self._end(lane, "eos", count)  # it ended at a step not read yet: it needs no room
            return
        seq = self.lanes.pop(lane)
        seq.kept = self.history[lane, :count].tolist()
        seq.item = self.feed.renew(seq.item)
        self._clear(lane)
        self.queue.appendleft(seq)
        self.preemptions += 1
        log.debug("preempted a sequence after %d tokens (cache blocks ran out)", len(seq.kept))
        if self.timeline is not None:
            self.timeline.append((time.perf_counter(), "preempt", 1))

    def _clear(self, lane: int) -> None:
        """A lane left empty: its blocks back in the pool and its state that of a free lane."""
        self.kv.release(lane)
        self._reset(lane)

    def _reset(self, lane: int) -> None:
        for state in (self.active, self.positions, self.generated, self.strict):
            state[lane].fill_(0)
        self.lengths[lane] = 0

    def _compact(self) -> None:
        """Move the highest lanes down into free ones when a smaller bucket would then hold them all."""
        needed = next(size for size in self.buckets if size >= len(self.lanes))
        while self.lanes and max(self.lanes) >= needed:
            source = max(self.lanes)
            target = min(lane for lane in range(self.config.lanes) if lane not in self.lanes)
            for state in (self.positions, self.generated, self.history, self.next_ids, self.active, self.strict):
                state[target] = state[source]
            self.kv.move(source, target)
            self.lanes[target] = self.lanes.pop(source)
            self.lengths[target] = self.lengths[source]
            self._reset(source)  # its blocks went with it (kv.move)
            self.on_move(source, target)

    def on_move(self, source: int, target: int) -> None:
        """A hook for subclasses whose per-lane state must follow a compacted sequence."""

    def _snapshot(self) -> _Snapshot:
        """Launch the check of which lanes the step just launched ends (and how), copied to the
        host as it completes; read a step later by `_collect`, without stopping the stream."""
        b = self._bucket()
        generated = self.generated[:b]
        last = self.history[:b].gather(1, (generated - 1).clamp(min=0)[:, None]).squeeze(1)
        eos = last == self.config.eos_id
        ended = eos | (generated >= self.config.max_new_tokens)
        code = torch.where(eos, 1, torch.where(ended, 3, 0))
        if self.steps % self.config.loop_every == 0:
            loops = looping(self.history[:b], generated, self.config.loop_span, self.config.loop_period)
            code = torch.where(loops & ~ended, 2, code)
        code = torch.where(self.active[:b], code, 0)
        state = torch.stack([code, generated])
        if self.device.type != "cuda":
            return _Snapshot(state, None, dict(self.lanes))
        # Two buffers, one filling while the other is read; contiguous, so the copy stays asynchronous.
        host = self.host_state[self.steps % 2][: 2 * b].view(2, b)
        host.copy_(state, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Snapshot(host, done, dict(self.lanes))

    def _collect(self, snapshot: _Snapshot) -> None:
        """End the sequences that ended at a step, each in the lane it holds now (compaction may
        have moved it since); one preempted since is left to end when it resumes."""
        if snapshot.done is not None:
            snapshot.done.synchronize()  # the step read, not the one queued behind it
        codes, counts = snapshot.state.tolist()
        ended = [(lane, kind, counts[lane]) for lane, kind in enumerate(codes) if kind and lane in snapshot.owners]
        if not ended:  # most steps: no lane to look up
            return
        now = {id(seq): lane for lane, seq in self.lanes.items()}
        for lane, kind, count in ended:
            seq = snapshot.owners[lane]
            if id(seq) in now:
                self._end(now[id(seq)], _ENDS[kind], count)

    def _end(self, lane: int, finish: str, count: int) -> None:
        """Free an ended sequence's lane; queue its strict retry, or start copying its tokens out.
        The copy is queued on the stream, so the lane can be refilled at once, and read once it has
        passed (`_closed`): reading the tokens here would make the host wait for the step in flight."""
        seq = self.lanes.pop(lane)
        self.ended += 1
        if finish != "eos" and self.config.retry and not seq.strict:
            self._clear(lane)
            self.queue.append(_Sequence(self.feed.renew(seq.item), seq.started, strict=True))  # after preempted
            if self.timeline is not None:
                self.timeline.append((time.perf_counter(), f"retry-{finish}", count))
            return
        copied = None
        if self.device.type == "cuda":
            ids = torch.empty(count, dtype=torch.long, pin_memory=True)
            ids.copy_(self.history[lane, :count], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        else:
            ids = self.history[lane, :count].clone()
        self._clear(lane)
        self.closing.append((seq, finish, ids, copied))

    def _closed(self, wait: bool) -> Iterator[Finished]:
        """The ended sequences whose tokens have reached the host (all of them when `wait`)."""
        waiting = deque()
        while self.closing:
            seq, finish, ids, copied = self.closing.popleft()
            if copied is not None and not copied.query():
                if not wait:
                    waiting.append((seq, finish, ids, copied))
                    continue
                copied.synchronize()
            seconds = time.perf_counter() - seq.started
            yield Finished(seq.item, ids.tolist(), finish, seconds, 2 if seq.strict else 1)
        self.closing = waiting


_END = object()
_ENDS = {1: "eos", 2: "repetition", 3: "length"}  # a lane's end code in a step's snapshot


class PrefillClock:
    """How long prefills take. On CUDA the host no longer waits for a prefill it launches, so its
    own clock would count only the launch: events around each prefill give the GPU's time, read
    once they have passed, never waited for. Elsewhere the work is synchronous and the host's
    clock is the measure."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()

    def start(self):
        """A mark before a prefill is queued."""
        if not self.cuda:
            return time.perf_counter()
        mark = torch.cuda.Event(enable_timing=True)
        mark.record()
        return mark

    def stop(self, began) -> None:
        """A mark after it; its time counts once the GPU has passed it."""
        if not self.cuda:
            self.seconds += time.perf_counter() - began
            return
        mark = torch.cuda.Event(enable_timing=True)
        mark.record()
        self.pending.append((began, mark))

    def running(self) -> bool:
        """Whether a prefill is still queued or running on the GPU; counts those that have passed."""
        while self.pending and self.pending[0][1].query():
            began, ended = self.pending.popleft()
            self.seconds += began.elapsed_time(ended) / 1000
        return bool(self.pending)


def buckets_for(lanes: int) -> list[int]:
    """Batch sizes the step is captured at: powers of two below `lanes`, and `lanes` itself."""
    sizes, size = [], 1
    while size < lanes:
        sizes.append(size)
        size *= 2
    return [*sizes, lanes]
