"""The vision tower and its projector over batches of page views, replayed from CUDA graphs.

A prefill's vision encoder is transformers' eager code: SAM's 12 blocks and the 24-layer encoder
are hundreds of small kernels per batch of views, launched from Python by the thread that
also decodes while other threads take the GIL. Timed on the GPU during a run, prefills took about
twice their kernels' time; replayed graphs gave 9.8% more tokens a second end to end on an H100
(docs/BENCHMARKS.md, run 22). Views come in two sizes only (the global view and
the tiles), so each (side, batch) shape is captured once as a CUDA graph and replayed; a batch of
n views runs as chunks of the captured sizes, each copied into its graph's input, its features
copied out before the next replay. Without CUDA, or where capture fails, the modules run eagerly,
as they do for a run's first pages: the graphs are captured once the first page is out, where
more pages are left than the lanes open.
"""

from __future__ import annotations

import logging
import time

import torch

from dsocr_cli.engines.graphs import capture, warm

log = logging.getLogger(__name__)

CHUNKS = (8, 4, 2, 1)  # captured batch sizes: any count of views is a sum of these


class ViewEncoder:
    """Image features (views, tokens, hidden) of same-size views: graphs where captured, else eager."""

    def __init__(self, model):
        core = model.model
        self.tower, self.projector = core.vision_tower, core.multi_modal_projector
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        # (side, batch) -> (graph, its input, its output)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.capture_seconds: dict[tuple[int, int], float] = {}  # per shape, for the start-up's record

    def eager(self, pixels: torch.Tensor) -> torch.Tensor:
        """transformers' modules as they are: the reference, and the path without graphs."""
        return self.projector(self.tower(pixels).last_hidden_state)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of a batch of views of one side, in order."""
        count, side = pixels.shape[0], pixels.shape[-1]
        if (side, 1) not in self.graphs:
            return self.eager(pixels)
        first = self.graphs[(side, 1)][2]
        features = torch.empty((count, *first.shape[1:]), dtype=first.dtype, device=first.device)
        start = 0
        while start < count:
            size = next(size for size in CHUNKS if size <= count - start)  # every size is captured, or none
            graph, source, output = self.graphs[(side, size)]
            source.copy_(pixels[start : start + size])
            graph.replay()
            features[start : start + size].copy_(output)  # before the next replay reuses the pool
            start += size
        return features

    def warm_up(self, sides: tuple[int, ...]) -> bool:
        """Capture every chunk size of every side (largest first, one memory pool); on failure keep
        none and stay eager. Other threads may make pinned inputs meanwhile, but launch nothing."""
        if self.device.type != "cuda":
            return False
        pool = None
        try:
            with torch.inference_mode():
                for side in sides:
                    for size in CHUNKS:
                        began = time.perf_counter()
                        pool = self._capture(side, size, pool, first=size == CHUNKS[0])
                        self.capture_seconds[side, size] = time.perf_counter() - began
        except Exception as exc:  # an op that cannot be captured: encode views eagerly instead
            log.warning("encoding page views without CUDA graphs (%s)", str(exc).splitlines()[0][:200])
            self.graphs.clear()
            return False
        return True

    def _capture(self, side: int, size: int, pool, first: bool):
        """Record one shape's forward. The first shape of a side runs eagerly first on a side
        stream, so lazily built state (kernels chosen, SAM's cached position tables) exists before
        capture rather than in the graph's pool."""
        source = torch.zeros((size, 3, side, side), dtype=self.dtype, device=self.device)
        if first:
            warm(lambda: self.eager(source))
        graph, output = capture(lambda: self.eager(source), pool)
        self.graphs[(side, size)] = (graph, source, output)
        return graph.pool()


def page_features(encode, core, inputs: dict) -> torch.Tensor:
    """Every page's image features in prompt order, as transformers lays them out: per page its
    tiles, its global view, then the view separator. Tile counts are read on the host."""
    pages = encode(inputs["pixel_values"])
    counts = torch.as_tensor(inputs["num_local_patches"]).view(-1).tolist()
    local = inputs.get("pixel_values_local")
    tiles = encode(local).split(counts) if local is not None and sum(counts) else [None] * len(counts)
    separator = core.view_separator[None]
    parts = []
    for page, page_tiles in zip(pages, tiles, strict=True):
        if page_tiles is not None and len(page_tiles):
            parts.append(page_tiles.reshape(-1, page_tiles.shape[-1]))
        parts += [page.reshape(-1, page.shape[-1]), separator]
    return torch.cat(parts)
