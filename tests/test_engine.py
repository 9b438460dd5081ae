"""The native engine on the tiny model: batched greedy output equals page-at-a-time output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dsocr_cli.engines import load_engine
from dsocr_cli.options import TASK_PROMPTS, EngineOptions
from dsocr_cli.types import PageImage, Source


@pytest.fixture(scope="module")
def engine(tiny_model):
    return load_engine(EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=20))


def noise_page(index: int, width: int, height: int, seed: int) -> PageImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PageImage(Source("mem", "image", f"p{index}"), index, Image.fromarray(pixels))


def test_batched_equals_single_page_by_page(engine):
    # 0, 6 and 3 tiles: prompts of different lengths share one left-padded batch.
    pages = [noise_page(i, w, h, seed=i) for i, (w, h) in enumerate([(300, 200), (1400, 1000), (800, 2000)])]
    prompt = TASK_PROMPTS["markdown"]
    batched = engine.predict(pages, prompt)
    single = [engine.predict([page], prompt)[0] for page in pages]
    assert [p.text for p in batched] == [p.text for p in single]
    assert [(p.tokens, p.finish) for p in batched] == [(p.tokens, p.finish) for p in single]
    assert len({p.text for p in single}) == 3, "different pages must give different text"


def test_prediction_fields(engine):
    (prediction,) = engine.predict([noise_page(0, 640, 480, seed=7)], TASK_PROMPTS["free"])
    assert 0 < prediction.tokens <= 20
    assert prediction.finish in ("eos", "length", "repetition")
    assert prediction.seconds > 0
    assert "<｜end▁of▁sentence｜>" not in prediction.text and "<｜▁pad▁｜>" not in prediction.text


def test_base_mode_uses_the_global_view_only(tiny_model):
    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", mode="base", max_new_tokens=4))
    inputs = engine.processor(
        images=[noise_page(0, 1600, 1200, 1).image],
        text=[TASK_PROMPTS["free"]],
        return_tensors="pt",
        **engine.image_kwargs,
    )
    assert int(inputs["num_local_patches"][0]) == 0
    (prediction,) = engine.predict([noise_page(0, 1600, 1200, 1)], TASK_PROMPTS["free"])
    assert prediction.tokens == 4


def test_continuous_batching_equals_page_at_a_time(tiny_model):
    """Two slots, six pages that end at different steps: each page's tokens equal generate's."""
    import torch

    engine = load_engine(
        EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=40, batch_size=2)
    )
    with torch.no_grad():
        engine.model.lm_head.weight[engine.eos_id] *= 4.0  # make EOS likely, so pages end early and apart
    sizes = [(300, 200), (1400, 1000), (800, 2000), (500, 500), (900, 700), (640, 480)]
    pages = [noise_page(i, w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    prompt = TASK_PROMPTS["markdown"]
    reference = {p.source.key: engine.predict([p], prompt)[0] for p in pages}
    streamed = {page.source.key: prediction for page, prediction in engine.stream(iter(pages), prompt)}
    assert {k: (p.text, p.tokens, p.finish) for k, p in streamed.items()} == {
        k: (p.text, p.tokens, p.finish) for k, p in reference.items()
    }
    assert len({p.tokens for p in reference.values()}) >= 3, "pages must end at different steps"
    assert {p.finish for p in reference.values()} == {"eos", "length"}


def test_a_page_failing_its_prefill_does_not_stop_the_others(tiny_model):
    """One slot: the failing page frees it again and every other page still comes back."""
    from dsocr_cli.engines.decode import SlotDecoder

    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", max_new_tokens=6, batch_size=1))
    prompt = TASK_PROMPTS["free"]
    decoder = SlotDecoder(engine.model, 1, 6, engine._prompt_room(prompt), engine.eos_id)

    def prefill(page):
        if page.source.key in ("p1", "p2"):
            raise ValueError("cannot preprocess this page")
        return engine._prefill(page, prompt)

    pages = [noise_page(i, 300, 200, seed=i) for i in range(5)]
    results = {page.source.key: finish for page, _, finish, _ in decoder.run(iter(pages), prefill)}
    assert results == {"p0": "length", "p1": "error", "p2": "error", "p3": "length", "p4": "length"}
