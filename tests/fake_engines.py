"""Engines for tests, registered by module path like the real ones, so that worker processes,
which load the engine themselves, can build them too."""

from __future__ import annotations

import os
from types import SimpleNamespace

from dsocr_cli.types import Prediction


class PoisonEngine:
    """Kills the process running it on any page of a document named poison*; answers the rest."""

    name, device, batch_size = "poison", "cpu", 2

    def predict(self, pages, prompt, strict=False):
        if any(p.source.key.startswith("poison") for p in pages):
            os._exit(70)
        return [Prediction(f"text of {p.source.key} page {p.number}", 4, "eos", 0.0) for p in pages]


def load_poison(options) -> PoisonEngine:
    return PoisonEngine()


class LanesEngine:
    """Streams like the paged decoder and shows 50 free lanes, so its worker asks for many pages
    at once; answers each page as it takes it."""

    name, device, batch_size, continuous = "lanes", "cpu", 4, True

    def __init__(self):
        self.decoder = SimpleNamespace(config=SimpleNamespace(lanes=50))

    def stream(self, pages, prompt):
        for page in pages:
            yield page, Prediction(f"text of {page.source.key} page {page.number}", 4, "eos", 0.0)

    def predict(self, pages, prompt, strict=False):
        return [Prediction(f"text of {p.source.key} page {p.number}", 4, "eos", 0.0) for p in pages]


def load_lanes(options) -> LanesEngine:
    return LanesEngine()
