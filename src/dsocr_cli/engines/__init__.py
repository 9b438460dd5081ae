"""The engine contract and the registry of engine factories.

An engine is one method, `predict`, plus attributes saying what it supports. Factories are cheap
to register: heavy imports and weight loading happen only when `load_engine` calls one, once per
process, and the loaded engine is passed to the pipeline explicitly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol

from dsocr_cli.errors import UsageError
from dsocr_cli.options import EngineOptions
from dsocr_cli.types import PageImage, Prediction


class Engine(Protocol):
    """`predict` is the contract. An engine that batches continuously also sets `continuous` and
    offers `stream(pages, prompt)`, yielding (page, Prediction or exception) as pages finish."""

    name: str
    device: str
    batch_size: int  # how many pages one predict call takes at most

    def predict(self, pages: Sequence[PageImage], prompt: str, strict: bool = False) -> list[Prediction]:
        """One Prediction per page, in the order given. `strict`: a retry of pages that looped or
        hit the token limit, with stronger repetition control where the engine has any."""
        ...


# name -> "module:function"; the function takes EngineOptions and returns a loaded Engine.
FACTORIES: dict[str, str] = {
    "hf": "dsocr_cli.engines.hf:load",
    "replay": "dsocr_cli.engines.replay:load",
    "infer": "dsocr_cli.engines.infer:load",
    "auto": "dsocr_cli.engines.infer:load_auto",
}


def register(name: str, factory: str | Callable[[EngineOptions], Engine]) -> None:
    """Add an engine (tests register fakes exactly as real engines are registered)."""
    FACTORIES[name] = factory  # type: ignore[assignment]


def load_engine(options: EngineOptions) -> Engine:
    """Import and call the engine's factory in this process (weights load here); the CLI goes
    through `start_engine`, which may start workers instead."""
    factory = _factory(options)
    if isinstance(factory, str):
        module, _, func = factory.partition(":")
        factory = getattr(importlib.import_module(module), func)
    return factory(options)


def start_engine(options: EngineOptions, events=None) -> Engine:
    """The configured engine: in this process, or one per worker (`--workers`, `--ray`) behind
    the same contract. Workers build the factory registered here, so registered fakes work too."""
    if options.ray is not None:
        from dsocr_cli.engines.ray import start_ray_pool

        return start_ray_pool(_factory(options), options, events)
    from dsocr_cli.engines.pool import start_pool, worker_count

    count = worker_count(options)
    if count <= 1:
        return load_engine(options)
    return start_pool(_factory(options), options, count, events)


def _factory(options: EngineOptions) -> str | Callable[[EngineOptions], Engine]:
    factory = FACTORIES.get(options.engine)
    if factory is None:
        raise UsageError(f"unknown engine {options.engine!r}", f"choose one of: {', '.join(sorted(FACTORIES))}")
    return factory
