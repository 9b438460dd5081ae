#!/usr/bin/env python3
"""Throughput benchmark of the native engine at full size with random weights (no download).

Builds DeepSeek-OCR-2's real configuration with random weights on the GPU (or reuses a folder
written by --build) and prints one JSON line per configuration: pages/s, generated tok/s, time to
the first finished page, peak GPU memory, finish reasons.

Random weights never choose EOS and never loop, so only output lengths and loops are forced:
EOS is banned before each page's target length and forced at it, and a share of pages (LOOP_SHARE)
repeats a cycle of 100-300 tokens, longer than the n-gram ban's window, so the ban cannot break it
and only the decoder's loop detection ends it; their strict retry then ends at its target. The
mix: pages of 0-6 tiles, 256..2,000 new tokens, loops on 4% of pages. Everything else runs at the
CLI's defaults (--max-new-tokens 8192, lanes and cache from free memory, the default n-gram ban,
retries on).

    python scripts/bench.py --build /tmp/full            # write the random full-size checkpoint
    python scripts/bench.py --model /tmp/full --configs seed,default,e2e,identity
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PAGE_SIZES = [(700, 500), (1000, 800), (1500, 900), (1190, 1684), (1684, 1190), (800, 2000), (1240, 1754)]


def full_config(tokenizer):
    """DeepSeek-OCR-2's published sizes (DEEPSEEK_OCR.md), tokenizer ids from our small tokenizer."""
    from transformers import DeepseekOcr2Config

    return DeepseekOcr2Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_config={
            "sam_config": {
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "global_attn_indexes": [2, 5, 8, 11],
                "window_size": 14,
                "image_size": 1024,
                "patch_size": 16,
                "output_channels": 256,
                "downsample_channels": [512, 896],
            },
            "encoder_config": {
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
            },
        },
        text_config={
            "vocab_size": 129280,
            "hidden_size": 1280,
            "intermediate_size": 6848,
            "num_hidden_layers": 12,
            "num_attention_heads": 10,
            "num_key_value_heads": 10,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "moe_intermediate_size": 896,
            "mlp_layer_types": ["dense"] + ["sparse"] * 11,
            "max_position_embeddings": 8192,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )


def build(folder: Path) -> None:
    import torch
    from transformers import (
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
        GenerationConfig,
    )

    from dsocr_cli.tinymodel import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = DeepseekOcr2ForConditionalGeneration(full_config(tokenizer)).eval()
        torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=tokenizer.pad_token_id)
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"built": str(folder), "params": params}), flush=True)


class ForcedLength:
    """Bans EOS before each row's target length and forces it there: a page of known length.
    Pure tensor ops (no boolean indexing), so it adds no host synchronisation per step."""

    def __init__(self, lengths, prompt_length: int, eos: int):
        import torch

        self.lengths = torch.tensor(lengths)
        self.prompt_length = prompt_length
        self.eos = eos

    def __call__(self, input_ids, scores):
        import torch

        if self.lengths.device != scores.device:
            self.lengths = self.lengths.to(scores.device)
        step = input_ids.shape[1] - self.prompt_length
        eos_column = torch.where(self.lengths > step, float("-inf"), scores[:, self.eos])
        scores = scores.clone()
        scores[:, self.eos] = eos_column
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.eos] = 0.0
        return torch.where((self.lengths <= step)[:, None], forced, scores)


LOOP_SHARE = 0.04  # pages that loop on their first attempt
LOOP_START = 200  # tokens a looping page writes before its cycle begins
CAP = None  # --cap: shorter targets for a CPU smoke run of the code paths
TIMELINES: Path | None = None  # --timeline: where each configuration's decoder timeline goes
SCHEDULE: dict = {}  # --schedule: the decoder's scheduling fields, as an experiment


def page_plan(key: str, index: int) -> tuple[int, int]:
    """(target new tokens, loop period or 0) of a page, fixed by its name: the same page gets the
    same plan in every configuration and in the end-to-end run."""
    rng = random.Random(f"{key}:{index}")
    length = min(2000, max(256, int(rng.gauss(1000, 450))))
    period = rng.randrange(100, 300) if rng.random() < LOOP_SHARE else 0
    return min(length, CAP or length), period


def make_engine_class():
    import torch

    from dsocr_cli.engines.decode import PagedDecoder
    from dsocr_cli.engines.hf import HFEngine

    class BenchDecoder(PagedDecoder):
        """Forced lengths and loops in the paged decoder, per lane, on the device."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.targets = torch.zeros(self.config.lanes, dtype=torch.long, device=self.device)
            self.periods = torch.zeros(self.config.lanes, dtype=torch.long, device=self.device)

        plan = None  # the engine's page_plan, set when the engine builds the decoder

        def run(self, items, feed):
            """The decoder's run, with every wait for the next page (rendering, preprocessing) of
            over a millisecond, in taking it or in asking whether it has arrived, in the timeline
            as an "input-wait" and its seconds in `waits`."""
            self.waits = []
            feed = dataclasses.replace(feed, arrived=self._timed(feed.arrived))
            return super().run(self._waited(iter(items)), feed)

        def _timed(self, call):
            def timed_call(*args):
                began = time.perf_counter()
                result = call(*args)
                ended = time.perf_counter()
                if self.timeline is not None and ended - began > 1e-3:
                    self.timeline.append((ended, "input-wait", len(self.lanes)))
                    self.waits.append((ended - began, len(self.lanes)))
                return result

            return timed_call

        def _waited(self, items):
            take = self._timed(lambda: next(items, None))
            while (item := take()) is not None:
                yield item

        def on_admit(self, lane, seq):
            length, period = self.plan(seq.item)
            self.targets[lane].fill_(length)
            self.periods[lane].fill_(0 if seq.strict else period)  # a retry breaks free of the loop

        def on_move(self, source, target):
            for state in (self.targets, self.periods):
                state[target] = state[source]

        def adjust(self, logits, b):
            logits = super().adjust(logits, b)
            generated, targets, periods = self.generated[:b], self.targets[:b], self.periods[:b]
            eos_column = torch.where(targets > generated, float("-inf"), logits[:, self.config.eos_id])
            logits = logits.clone()
            logits[:, self.config.eos_id] = eos_column
            ending = torch.full_like(logits, float("-inf"))
            ending[:, self.config.eos_id] = 0.0
            logits = torch.where((targets <= generated)[:, None], ending, logits)
            earlier = self.history[:b].gather(1, (generated - periods).clamp(min=0)[:, None]).clamp(min=0)
            cycling = torch.full_like(logits, float("-inf")).scatter(1, earlier, 0.0)
            loops = (periods > 0) & (generated >= LOOP_START)
            return torch.where(loops[:, None], cycling, logits)

    class BenchEngine(HFEngine):
        name = "bench"
        decoder_class = BenchDecoder

        @staticmethod
        def plan(page) -> tuple[int, int]:
            return page_plan(page.source.key, page.index)

        def decoder_for(self, prompt, start=True):
            decoder = super().decoder_for(prompt, start)
            decoder.plan = self.plan
            if decoder.timeline is None:  # once per decoder: the run's steps and prefills
                decoder.timeline = []
                # Fields read while running only (shares, grace); the CLI keeps DecoderConfig's.
                decoder.config = dataclasses.replace(decoder.config, **SCHEDULE)
            return decoder

        def logits_processors(self, pages, prompt_length, strict=False):
            forced = ForcedLength([self.plan(p)[0] for p in pages], prompt_length, self.eos_id)
            return super().logits_processors(pages, prompt_length, strict) + [forced]

    return BenchEngine


def pages_for(count: int, seed: int):
    """In-memory pages of 0-6 tiles with a little text each."""
    rng = random.Random(seed)
    return pages_of([PAGE_SIZES[rng.randrange(len(PAGE_SIZES))] for _ in range(count)])


def pages_of(sizes: list[tuple[int, int]]):
    """In-memory pages of the given sizes, lines of text down each."""
    from PIL import Image, ImageDraw

    from dsocr_cli.types import PageImage, Source

    pages = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(image)
        for line in range(0, h - 40, 28):
            draw.text((30, 20 + line), f"line {line} of page {i} " * 4, fill="black")
        pages.append(PageImage(Source(Path(f"p{i}"), "image", f"p{i}"), 0, image))
    return pages


def write_corpus(folder: Path, pages: int, seed: int) -> int:
    """A folder as users have them: multi-page A4 PDFs (6 tiles a page at 144 DPI) and single
    images of every size, about half the pages each, in a folder of its own that is emptied first
    (a larger corpus left there by an earlier run would be read too). Returns the page count."""
    import shutil

    import pymupdf

    if folder.exists():
        strangers = [p.name for p in folder.iterdir() if not re.fullmatch(r"(doc\d+\.pdf|img\d+\.png)", p.name)]
        if strangers:
            raise SystemExit(
                f"{folder} holds {len(strangers)} file(s) the benchmark did not write ({strangers[0]}); "
                "use another --folder"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    written = 0
    for doc_index in range(10**6):
        if written >= pages:
            break
        if doc_index % 2 == 0:
            count = min(pages - written, rng.randrange(1, 12))
            with pymupdf.open() as doc:
                for n in range(count):
                    page = doc.new_page(width=595, height=842)
                    text = "\n".join(f"Section {n}.{k}: the quick brown fox jumps over the lazy dog" for k in range(40))
                    page.insert_text((50, 60), text, fontsize=9)
                doc.save(folder / f"doc{doc_index:04d}.pdf")
            written += count
        else:
            from PIL import Image, ImageDraw

            w, h = PAGE_SIZES[rng.randrange(len(PAGE_SIZES))]
            image = Image.new("RGB", (w, h), "white")
            ImageDraw.Draw(image).text((30, 30), f"image {doc_index}", fill="black")
            image.save(folder / f"img{doc_index:04d}.png")
            written += 1
    return written


@functools.cache
def corpus(folder: Path, count: int) -> tuple[int, tuple]:
    """The e2e corpus, written once per process whichever configuration asks first, and its
    sources as discovery finds them: the engine-only and e2e configurations read the same pages."""
    from dsocr_cli.discover import discover

    pages = write_corpus(folder, count, seed=5)
    sources, _ = discover([str(folder)])
    return pages, tuple(sources)


def timed(engine, pages: int, name: str, predictions) -> dict:
    """Run `predictions` (an iterator of Predictions) against the clock; the fields every config reports."""
    import torch

    cuda = engine.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first, tokens, finishes, retried = None, 0, {}, 0
    for prediction in predictions:
        first = first or time.perf_counter() - start
        tokens += prediction.tokens
        finishes[prediction.finish] = finishes.get(prediction.finish, 0) + 1
        retried += prediction.attempts > 1
    seconds = time.perf_counter() - start
    return {
        "config": name,
        "pages": pages,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 3),
        "tok_per_s": round(tokens / seconds, 1),
        "first_page_s": round(first or 0.0, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "finish": finishes,
        "retried": retried,
    }


def decoder_fields(engine, name: str) -> dict:
    """The decoder's side of a run (lanes, cache, steps, occupancy, waits); its whole timeline goes
    to `<name>.timeline.json` in --timeline's folder, where one is given."""
    decoder = engine.decoder
    if TIMELINES and decoder.timeline:
        start = decoder.timeline[0][0]
        events = [[round(t - start, 4), kind, lanes] for t, kind, lanes in decoder.timeline]
        TIMELINES.mkdir(parents=True, exist_ok=True)
        (TIMELINES / f"{name}.timeline.json").write_text(json.dumps(events))
    return {
        "lanes": decoder.config.lanes,
        "cache_blocks": decoder.config.blocks,
        "graphs": len(decoder.graphs),
        "view_graphs": len(engine.views.graphs),
        "steps": decoder.steps,
        "preemptions": decoder.preemptions,
        "prefill_s": round(decoder.prefill_seconds, 2),
        "occupancy": occupancy(decoder.timeline or []),
        "retry_timeline": retry_timeline(decoder.timeline or []),
        "input_waits": input_waits(getattr(decoder, "waits", [])),
    }


def input_waits(waits: list) -> dict:
    """How long the decoder waited for its next page (over 1 ms each), in all and while lanes ran."""
    running = [seconds for seconds, lanes in waits if lanes]
    return {
        "count": len(waits),
        "seconds": round(sum(s for s, _ in waits), 2),
        "while_running": len(running),
        "seconds_while_running": round(sum(running), 2),
        "longest_ms": round(1000 * max((s for s, _ in waits), default=0.0), 1),
    }


def occupancy(events: list) -> dict:
    """Lanes running per decode step, and how the run's time splits into steps and the gaps between."""
    steps = [(t, lanes) for t, kind, lanes in events if kind == "step"]
    if not steps:
        return {}
    lanes = sorted(n for _, n in steps)
    # Back-to-back steps (no prefill or retry between them): their spacing is one step's GPU time
    # plus whatever the host adds between steps.
    gaps = sorted(b[0] - a[0] for a, b in zip(events, events[1:], strict=False) if a[1] == "step" and b[1] == "step")
    return {
        "mean_lanes": round(sum(lanes) / len(lanes), 1),
        "median_lanes": lanes[len(lanes) // 2],
        "steps_below_32_lanes": sum(n < 32 for n in lanes),
        "median_step_ms": round(1000 * gaps[len(gaps) // 2], 2) if gaps else None,
        "span_s": round(steps[-1][0] - steps[0][0], 2),
    }


def retry_timeline(events: list) -> dict:
    """Decode steps around the first retry: do the other lanes keep stepping while it is re-admitted?"""
    retries = [t for t, kind, _ in events if kind.startswith("retry")]
    if not retries:
        return {}
    at = retries[0]
    steps = [t for t, kind, _ in events if kind == "step" and at - 2.0 <= t <= at + 2.0]
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    return {
        "retries": len(retries),
        "steps_2s_before": sum(t < at for t in steps),
        "steps_2s_after": sum(t >= at for t in steps),
        "longest_gap_ms": round(1000 * max(gaps, default=0.0), 1),
        "median_gap_ms": round(1000 * sorted(gaps)[len(gaps) // 2], 1) if gaps else None,
    }


def engine_from(engine_class, base, options, device: str, model: str):
    """A fresh engine on the loaded model: its own decoder and graphs, and the load's kernel
    compilation to wait for before its first capture, as the CLI's engine does."""
    engine = engine_class(base.model, base.processor, options, device, base.dtype, model)
    engine.kernels = base.kernels
    return engine


def engine_options(model: str, device: str, **overrides):
    """The CLI's defaults (options.EngineOptions), as a user runs them."""
    from dsocr_cli.options import EngineOptions

    return EngineOptions(model=model, device=device, **overrides)


def measure_default(
    engine_class, base, model: str, device: str, count: int, folder: Path, name: str = "default"
) -> dict:
    """Engine only, at the CLI's defaults, on the end-to-end run's own pages (the same corpus,
    rendered as the pipeline renders it, so the same sizes, target lengths and loops): pages with
    their inputs made ahead and the decoder's first graph captured, outside the clock (the other
    graphs, once the first page is out, inside it). What the pipeline costs is then the difference."""
    from concurrent.futures import ThreadPoolExecutor

    from dsocr_cli.options import TASK_PROMPTS, RenderOptions
    from dsocr_cli.render import render

    prompt = TASK_PROMPTS["markdown"]
    engine = engine_from(engine_class, base, engine_options(model, device), device, model)
    engine.decoder_for(prompt)
    prepare = engine.preparer(prompt)
    _, sources = corpus(folder / "in", count)
    rendered = [page for source in sources for page in render(source, RenderOptions())]
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(prepare, rendered))
    stream = (prediction for _, prediction in engine.stream(iter(pages), prompt))
    return timed(engine, len(pages), name, stream) | decoder_fields(engine, name)


def measure_e2e(engine_class, base, model: str, device: str, count: int, folder: Path, name="e2e", window=None) -> dict:
    """The whole pipeline on a folder of PDFs and images: discover, render and preprocess (worker
    pool), engine, grounding, writers, at the CLI's defaults. The clock starts once the model is
    loaded, as in the CLI: the decoder's start-up (graph capture, beside the first pages' rendering)
    is inside it, and `warm_up_s` says how long it took. `window` (start, seconds): torch.profiler
    over that stretch of the run (see `Window`)."""
    import shutil

    import torch

    from dsocr_cli.options import Options, OutputOptions
    from dsocr_cli.pipeline import Pipeline
    from dsocr_cli.writers.tree import TreeOutput

    pages, sources = corpus(folder / "in", count)
    shutil.rmtree(folder / "out", ignore_errors=True)
    options = Options(engine=engine_options(model, device), output=OutputOptions(out=folder / "out"))
    engine = engine_from(engine_class, base, options.engine, device, model)
    engine.prepare_in_renderer = name == "e2e-renderer"
    if name == "e2e-eager-views":  # the vision tower as transformers' eager code, for comparison
        engine.views.warm_up = lambda sides: False
    if window:
        engine._prefill = Window(engine._prefill, *window)
    output = TreeOutput(folder / "out", options.output)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    marks = FirstMarks(engine, started)
    try:
        summary = Pipeline(options, engine, output).run(list(sources))
    finally:
        output.close()
    seconds = time.perf_counter() - started
    finishes = {}
    for doc in summary.documents:
        for page in doc.pages:
            finishes[page.prediction.finish] = finishes.get(page.prediction.finish, 0) + 1
    return (
        {
            "config": name,
            "documents": len(sources),
            "done": summary.count("done"),
            "pages": summary.pages,
            "pages_planned": pages,
            "tokens": summary.tokens,
            "seconds": round(seconds, 2),
            "pages_per_s": round(summary.pages / seconds, 3),
            "tok_per_s": round(summary.tokens / seconds, 1),
            "first_page_s": marks.page_out or 0.0,
            "first_prefill_s": first_event(engine, "prefill", started),
            "first_marks_s": marks.marks
            | {
                "first_step": first_event(engine, "step", started),
                "start_rest": first_event(engine, "start-rest", started),
            },
            "first_page_tokens": marks.first_tokens,
            "warm_up_s": start_up(engine),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if device == "cuda" else None,
            "finish": finishes,
            "retried": sum(p.prediction.attempts > 1 for d in summary.documents for p in d.pages),
        }
        | decoder_fields(engine, name)
        | ({"window": engine._prefill.result} if window else {})
    )


class Window:
    """torch.profiler (host and GPU) over a stretch of a run, started and stopped at prefills on
    the decoding thread: how busy the GPU is there, and where the host's time goes."""

    def __init__(self, prefill, start: float, seconds: float):
        self.prefill, self.start, self.seconds = prefill, start, seconds
        self.began = time.perf_counter()
        self.profiler = None
        self.opened = 0.0
        self.result: dict = {}

    def __call__(self, group, prompt):
        from torch.profiler import ProfilerActivity, profile

        now = time.perf_counter() - self.began
        if self.profiler is None and not self.result and now >= self.start:
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.opened = time.perf_counter()
        elif self.profiler is not None and now >= self.start + self.seconds:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.opened
            self.profiler.__exit__(None, None, None)
            self.result = window_summary(self.profiler, wall)
            self.profiler = None
        return self.prefill(group, prompt)


def window_summary(prof, wall: float) -> dict:
    """The GPU's busy share of the window (union of kernel intervals) and the host operations
    that took the most time on the threads the profiler saw."""
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type.name == "CUDA" and not e.name.startswith(("Memcpy", "Memset"))
    )
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    span = (kernels[-1][1] - kernels[0][0]) if kernels else 0.0
    host = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_s": round(wall, 2),
        "gpu_busy": round(busy / span, 3) if span else None,
        "kernels": len(kernels),
        "host_top": [[e.key[:60], round(e.self_cpu_time_total / 1000, 1), e.count] for e in host[:25]],
    }


class FirstMarks:
    """When the first page reached the engine, the first prefill was called and launched, and the
    first page came back with how many tokens (seconds from the start): where its time goes."""

    def __init__(self, engine, started: float):
        self.started, self.marks = started, {}
        stream, prefill = engine.stream, engine._prefill

        def first_in(pages):
            for page in pages:
                self.mark("page_reached_engine")
                yield page

        def launched(group, prompt):
            self.mark("prefill_called")
            result = prefill(group, prompt)
            self.mark("prefill_launched")
            return result

        def first_out(pages, prompt):
            for page, prediction in stream(first_in(pages), prompt):
                if hasattr(prediction, "tokens") and self.page_out is None:
                    self.page_out = round(time.perf_counter() - self.started, 2)
                    self.first_tokens = prediction.tokens
                yield page, prediction

        self.page_out: float | None = None
        self.first_tokens = None
        engine.stream = first_out
        engine._prefill = launched

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, round(time.perf_counter() - self.started, 2))


def first_event(engine, kind: str, started: float) -> float | None:
    """Seconds from the start to the decoder's first event of a kind in its timeline: the end of
    the first prefill ("prefill": the first page rendered, its inputs made, in the decoder) or
    the first decode step ("step")."""
    times = [t for t, event, _ in engine.decoder.timeline or [] if event == kind]
    return round(times[0] - started, 2) if times else None


def measure_seed(engine_class, base, model: str, device: str, tokens: int) -> dict:
    """The seed's pattern: one page at a time through generate, transformers' default (eager)
    experts and its own no_repeat_ngram_size=20."""
    from dsocr_cli.options import TASK_PROMPTS

    options = engine_options(model, device, max_new_tokens=tokens, no_repeat_ngram=0, decoder="generate")
    engine = engine_from(engine_class, base, options, device, model)
    engine.plan = staticmethod(lambda page: (tokens, 0))
    engine.model.set_experts_implementation("eager")
    engine.model.generation_config.no_repeat_ngram_size = 20
    pages = pages_for(1, seed=2)
    engine.predict(pages, "<image>\nFree OCR. ")  # warm-up
    try:

        def predictions():  # a generator, so predict runs inside the clock
            yield from engine.predict(pages, TASK_PROMPTS["markdown"])

        return timed(engine, 1, "seed", predictions())
    finally:
        engine.model.generation_config.no_repeat_ngram_size = None
        if device == "cuda":
            engine.model.set_experts_implementation("grouped_mm")


def identity(engine_class, base, model: str, device: str, count: int, tokens: int) -> dict:
    """How many pages decode to the same tokens continuously batched as one at a time (generate)."""
    from dsocr_cli.options import TASK_PROMPTS

    pages = pages_for(count, seed=3)
    options = engine_options(model, device, max_new_tokens=tokens + 1, retry_unfinished=False)
    engine = engine_from(engine_class, base, options, device, model)
    engine.plan = staticmethod(lambda page: (tokens, 0))
    prompt = TASK_PROMPTS["markdown"]
    single = {p.source.key: engine.predict([p], prompt)[0].text for p in pages}
    streamed = {p.source.key: pred.text for p, pred in engine.stream(iter(pages), prompt)}
    differ = [k for k in single if single[k] != streamed[k]]
    first_difference = {}
    for key in differ[:4]:
        a, b = single[key], streamed[key]
        first_difference[key] = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
    return {
        "config": "identity",
        "pages": count,
        "tokens_per_page": tokens,
        "identical": count - len(differ),
        "first_differing_char": first_difference,
        "lanes": engine.decoder.config.lanes,
    }


def start_up(engine) -> dict:
    """Seconds of start-up: before the first pages (waiting for the kernels the load compiles, then
    the decoder's first bucket), and what was captured once a first page was out (the other
    buckets, the vision graphs)."""
    decoder = engine.decoder
    rest = sum(v for b, v in decoder.capture_seconds.items() if b != decoder.start_bucket)
    return {
        "before_first_pages": round(engine.warm_up_seconds.get("decoder", 0.0), 2),
        "waiting_for_kernels": round(engine.warm_up_seconds.get("kernels", 0.0), 2),
        "other_buckets": round(rest, 2),
        "per_bucket": {b: round(v, 2) for b, v in decoder.capture_seconds.items()},
        "views": round(engine.warm_up_seconds.get("views", 0.0), 2),
    }


def warm_up(engine_class, base, model: str, device: str) -> dict:
    """What the start costs after the model is loaded: building the decoder and capturing its
    graphs (per decode bucket) and the vision graphs, all of them at once here. Run twice, in two
    processes, to see what kernel caches on disk (Triton's, CUDA's) save on a second start."""
    from dsocr_cli.options import TASK_PROMPTS

    engine = engine_from(engine_class, base, engine_options(model, device), device, model)
    began = time.perf_counter()
    decoder = engine.decoder_for(TASK_PROMPTS["markdown"])
    decoder.warm_up()  # what a run captures once its first page has ended
    engine.capture_views()
    return {
        "config": "warmup",
        "seconds": round(time.perf_counter() - began, 2),
        "parts_s": start_up(engine),
        "per_view_graph_s": {f"{side}x{n}": round(v, 2) for (side, n), v in engine.views.capture_seconds.items()},
    }


def profile(engine_class, base, model: str, device: str, lanes: int) -> dict:
    """torch.profiler over one eager decode step at `lanes` and one prefill group: the share of
    GPU time in attention, MoE experts and everything else."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from dsocr_cli.options import TASK_PROMPTS

    prompt = TASK_PROMPTS["markdown"]
    engine = engine_from(engine_class, base, engine_options(model, device), device, model)
    decoder = engine.decoder_for(prompt)
    pages = [engine.preparer(prompt)(p) for p in pages_for(4, seed=7)]
    result = {"config": "profile", "lanes": lanes}
    # Fill `lanes` lanes with copies of prefilled pages at their real lengths.
    group = [(p, []) for p in pages]
    logits, layer_kv, lengths = engine._prefill(group, prompt)
    from dsocr_cli.engines.decode import _Sequence

    for i in range(lanes):
        row = i % len(pages)
        decoder._place([_Sequence(pages[row], time.perf_counter())], logits[row : row + 1],
                       [(k[row : row + 1], v[row : row + 1]) for k, v in layer_kv], [lengths[row]])  # fmt: skip
    decoder.kv.flush()
    torch.cuda.synchronize()
    for label, work in (
        ("decode_step", lambda: decoder._step(lanes)),
        ("prefill_4_pages", lambda: engine._prefill(group, prompt)),
    ):
        work()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            work()
            torch.cuda.synchronize()
        result[label] = kernel_shares(prof)
    return result


def syncs(engine_class, base, model: str, device: str, count: int = 8) -> dict:
    """Where the decoder makes the host wait for the GPU: every synchronising call (torch's CUDA
    sync debug mode) over `count` pages, prefills and decode steps, counted by the line that made it."""
    import collections
    import warnings

    import torch

    from dsocr_cli.engines.decode import Feed
    from dsocr_cli.options import TASK_PROMPTS

    prompt = TASK_PROMPTS["markdown"]
    engine = engine_from(engine_class, base, engine_options(model, device), device, model)
    decoder = engine.decoder_for(prompt)
    pages = [engine.preparer(prompt)(p) for p in pages_for(count, seed=7)]
    feed = Feed(prefill=lambda group: engine._prefill(group, prompt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            ended = sum(1 for _ in decoder.run(iter(pages), feed))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught)
    return {"config": "syncs", "pages": ended, "steps": decoder.steps, "syncs": dict(places.most_common(30))}


def kernel_shares(prof) -> dict:
    """GPU kernel time split into attention, experts and the rest, by kernel name."""
    groups = {"attention": 0.0, "experts": 0.0, "other": 0.0}
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
        if not cuda_us or event.key.startswith(("aten::", "cudaLaunch", "ProfilerStep")):
            continue
        name = event.key.lower()
        if any(w in name for w in ("split_kernel", "merge_kernel", "flash", "attention", "fmha", "sdpa", "softmax")):
            groups["attention"] += cuda_us
        elif any(w in name for w in ("grouped", "moe", "expert", "histc", "sort", "index_add", "scatter_add")):
            groups["experts"] += cuda_us
        else:
            groups["other"] += cuda_us
    total = sum(groups.values()) or 1.0
    return {"gpu_ms": round(total / 1000, 2)} | {k: round(v / total, 3) for k, v in groups.items()}


def run(model: str, names: list[str], device: str, count: int, folder: Path, window=None) -> None:
    import torch
    import transformers

    from dsocr_cli.engines.hf import load

    base = load(engine_options(model, device))
    engine_class = make_engine_class()
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(json.dumps({"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__}), flush=True)
    for name in names:
        if name == "seed":
            result = measure_seed(engine_class, base, model, device, 256)
        elif name == "default":
            result = measure_default(engine_class, base, model, device, count, folder)
        elif name in ("e2e", "e2e-renderer", "e2e-eager-views"):
            result = measure_e2e(engine_class, base, model, device, count, folder, name, window)
        elif name == "identity":
            result = identity(engine_class, base, model, device, 64 if device == "cuda" else 4, 48)
        elif name == "warmup":
            result = warm_up(engine_class, base, model, device)
        elif name == "syncs":
            result = syncs(engine_class, base, model, device)
        elif name.startswith("profile"):
            result = profile(engine_class, base, model, device, int(name.partition("-")[2] or 128))
        else:
            raise SystemExit(f"unknown configuration {name}")
        print(json.dumps(result), flush=True)
        gc.collect()  # the configuration's engine and decoder (cache, graphs), or the next one's peak counts them
        if device == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="write a random full-size checkpoint here and exit")
    parser.add_argument("--model", help="checkpoint folder written by --build")
    parser.add_argument("--configs", default="seed,default,e2e,identity")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test on the tiny model")
    parser.add_argument("--pages", type=int, default=256, help="pages in the default and e2e configurations")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/dsocr-bench"), help="where e2e writes its corpus")
    parser.add_argument("--cap", type=int, help="cap each page's target length (a CPU smoke run, not a measurement)")
    parser.add_argument("--schedule", default="", help="FIELD=VALUE,...: the decoder's prefill shares and grace")
    parser.add_argument("--timeline", type=Path, help="write each configuration's decoder timeline here")
    parser.add_argument(
        "--window", help="START,SECONDS: profile that stretch of the e2e run (GPU busy share, host time)"
    )
    args = parser.parse_args()
    global CAP, SCHEDULE, TIMELINES
    CAP = args.cap
    TIMELINES = args.timeline
    SCHEDULE = {k: float(v) for k, v in (item.split("=") for item in args.schedule.split(",") if item)}
    if set(SCHEDULE) - {"prefill_share", "first_prefill_share", "prefill_grace"}:
        parser.error("--schedule takes prefill_share, first_prefill_share and prefill_grace")
    if args.build:
        build(args.build)
    if args.model:
        window = tuple(float(v) for v in args.window.split(",")) if args.window else None
        run(args.model, args.configs.split(","), args.device, args.pages, args.folder, window)


if __name__ == "__main__":
    main()
