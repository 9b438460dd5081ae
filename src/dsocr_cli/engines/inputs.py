"""Page inputs for the native engine, made ahead of the GPU by a few threads of this process.

The processor's resize, tiling and normalisation cost 50-300 ms of CPU per page; done on the
thread that drives the GPU, they stall decoding. Threads rather than the render processes: the
work is PIL and numpy, which release the GIL, while a tiled page's inputs (27 MB in bf16) would
have to cross a process boundary; measured end to end on the bench GPU, shipping them from the
render workers was slower than making them here (docs/BENCHMARKS.md, run 7 against run 8, and run 41).
`Preprocess` stays picklable, so a render worker can still run it where that pays.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from dsocr_cli.types import PageImage


@dataclass(frozen=True)
class Preprocess:
    """Makes a page's model inputs (tensors by name, pixels in the model's dtype). Picklable; loads
    the processor once per thread."""

    model: str
    revision: str | None
    prompt: str
    image_kwargs: dict
    dtype: str
    pin: bool = False  # page-locked pixels: their upload to the GPU is asynchronous and several times faster

    def __call__(self, page: PageImage) -> PageImage:
        import torch

        processor = _processor(self.model, self.revision)
        inputs = processor(images=[page.image], text=[self.prompt], return_tensors="pt", **self.image_kwargs)
        dtype = getattr(torch, self.dtype.replace("torch.", ""))
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(dtype).pin_memory() if self.pin else inputs[key].to(dtype)
        return dataclasses.replace(page, inputs=dict(inputs))


def prepared(
    prepare: Callable[[PageImage], PageImage], pages: Iterable[PageImage], threads: int, ahead: int = 32
) -> tuple[Prepared, Callable[[], Iterator[tuple[PageImage, Exception]]]]:
    """Pages with their model inputs, made by `threads` threads up to `ahead` pages in advance
    (see `Prepared`), and a function that yields (page, exception) for pages that failed."""
    ready = Prepared(prepare, pages, threads, ahead)
    return ready, ready.failed


class Prepared:
    """Pages in input order with their model inputs, made by a few threads ahead of the decoder.

    Pages are pulled from `pages` on the calling thread only (the pipeline's generator is not
    thread-safe), two per page handed on, so the window fills without delaying the first page.
    `arrived` tells the decoder whether the next page is made, so that while sequences decode it
    takes a page only when that costs no wait: a page still being made would stall every lane.
    A page that cannot be prepared is set aside for `failed`.
    """

    def __init__(self, prepare: Callable[[PageImage], PageImage], pages: Iterable[PageImage], threads: int, ahead: int):
        from concurrent.futures import ThreadPoolExecutor

        self.prepare, self.source, self.ahead, self.threads = prepare, iter(pages), ahead, max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dsocr-prepare")
        self.window: collections.deque[tuple[PageImage, PageImage | Future]] = collections.deque()
        self.exhausted = False
        self.errors: list[tuple[PageImage, Exception]] = []

    def __iter__(self) -> Prepared:
        return self

    def __next__(self) -> PageImage:
        while True:
            self._pull(2)
            if not self.window:
                self.close()
                raise StopIteration
            page, job = self.window.popleft()
            try:
                return job if isinstance(job, PageImage) else job.result()
            except Exception as exc:  # this page alone cannot be prepared
                self.errors.append((page, exc))

    def arrived(self) -> bool:
        """Whether `next` returns without waiting for the processor: the next page is made, or
        none is left. Never waits for the processor; pulls from `pages` (rendering, which is far
        quicker) only while fewer pages are in the window than threads to make them."""
        while True:
            if len(self.window) < self.threads:
                self._pull(1)
            if not self.window:
                return self.exhausted
            page, job = self.window[0]
            if isinstance(job, PageImage):
                return True
            if not job.done():
                return False
            if job.exception() is None:
                return True
            self.window.popleft()  # a page that failed is set aside here, not waited past in `next`
            self.errors.append((page, job.exception()))

    def unread(self, pages: list[PageImage]) -> None:
        """Put pages already taken (and made) back in front, in their order."""
        self.window.extendleft((page, page) for page in reversed(pages))

    def failed(self) -> Iterator[tuple[PageImage, Exception]]:
        """The pages whose inputs failed since the last call; call it again as more pages go by."""
        while self.errors:
            yield self.errors.pop(0)

    def close(self) -> None:
        """Stop making inputs: pages not started are dropped, those being made are waited for."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _pull(self, count: int) -> None:
        for _ in range(count):
            if self.exhausted or len(self.window) >= self.ahead:
                return
            page = next(self.source, None)
            if page is None:
                self.exhausted = True
            else:
                self.window.append((page, page if page.inputs is not None else self.pool.submit(self.prepare, page)))


def made_meanwhile(ready: Prepared, job: Future, limit: int = 32) -> Prepared:
    """Take pages from `ready` (starting their rendering and inputs) until `job` is done or `limit`
    pages are made, and put them back in front: the first pages then wait for nothing."""
    early: list[PageImage] = []
    while not job.done() and len(early) < limit:
        page = next(ready, None)
        if page is None:
            break
        early.append(page)
    if early:
        ready.unread(early)
    return ready


class Remake:
    """Inputs remade in the background for pages the decoder takes back (a retry, a preempted page),
    so the thread that drives the GPU never runs the processor itself: a page's inputs are dropped
    once it is prefilled (25+ MB each) and made again only for the few that come back."""

    def __init__(self, prepare: Callable[[PageImage], PageImage], threads: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.prepare = prepare
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dsocr-remake")
        self.jobs: dict[int, Future] = {}  # id of the page the decoder holds -> its inputs being made

    def forget(self, page: PageImage) -> PageImage:
        """The page to keep once prefilled: without inputs."""
        self.jobs.pop(id(page), None)
        return dataclasses.replace(page, inputs=None)

    def renew(self, page: PageImage) -> PageImage:
        """Start making the page's inputs again; the decoder keeps the same page object."""
        self.jobs[id(page)] = self.pool.submit(self.prepare, page)
        return page

    def ready(self, page: PageImage) -> bool:
        """Whether the page can be prefilled without waiting for its inputs."""
        job = self.jobs.get(id(page))
        return job is None or job.done()

    def inputs(self, page: PageImage) -> dict | None:
        """The page's inputs: its own, or the remade ones (waiting for them if need be)."""
        if page.inputs is not None:
            return page.inputs
        job = self.jobs.get(id(page))
        return job.result().inputs if job is not None else None

    def close(self) -> None:
        """Stop the threads; remade inputs nobody took are dropped."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.jobs.clear()


_local = threading.local()


def _processor(model: str, revision: str | None):
    """One processor per thread: fast tokenizers refuse concurrent use from several threads."""
    cache = getattr(_local, "processors", None)
    if cache is None:
        cache = _local.processors = {}
    if (model, revision) not in cache:
        cache[model, revision] = _load_processor(model, revision)
    return cache[model, revision]


def _load_processor(model: str, revision: str | None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model, revision=revision)
    processor.tokenizer.padding_side = "left"
    return processor
