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


def test_the_load_leaves_sdpa_without_its_cudnn_backend(engine):
    """cuDNN's attention builds a plan per new shape, seconds in a first prefill (docs/BENCHMARKS.md);
    the load turns it off for the process, so SDPA's other kernels serve every prefill."""
    import torch

    assert not torch.backends.cuda.cudnn_sdp_enabled()


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


def paged_decoder(engine, prompt: str, **overrides):
    """A decoder over the tiny model with a chosen cache and loop settings."""
    from dsocr_cli.engines.decode import DecoderConfig, PagedDecoder

    room = engine._prompt_room(prompt)
    settings = dict(
        lanes=4,
        max_new_tokens=engine.options.max_new_tokens,
        max_prompt=room,
        eos_id=engine.eos_id,
        blocks=4 * (room + engine.options.max_new_tokens) // 16 + 8,
        block_size=16,
        ngram=(engine.options.no_repeat_ngram, engine.options.no_repeat_window),
        exempt_ids=engine.exempt_ids,
        retry=False,
    )
    settings.update(overrides)
    return PagedDecoder(engine.model, DecoderConfig(**settings))


def run_steps(decoder, engine, pages, prompt, **feed):
    """The decoder's Finished as they come, over the engine's own prefill (`feed`: more of Feed's fields)."""
    from dsocr_cli.engines.decode import Feed

    yield from decoder.run(iter(pages), Feed(lambda group: engine._prefill(group, prompt), engine._measure, **feed))


def run_decoder(decoder, engine, pages, prompt):
    return {done.item.source.key: done for done in run_steps(decoder, engine, pages, prompt)}


def test_preempted_sequences_resume_token_identical(tiny_model):
    """A cache too small for the lanes' growth: sequences are preempted as they grow and resumed
    by recomputation, and every page still equals one-at-a-time generate."""
    engine = load_engine(
        EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=48, no_repeat_ngram=0)
    )
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)  # what render workers run: exact prompt lengths before prefill
    sizes = [(300, 200), (700, 500), (500, 500), (600, 300), (640, 480), (300, 300)]  # no tiles: ~160 tokens
    pages = [prepare(noise_page(i, w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    # Room for three prompts and a little growth: lanes outgrow it and the latest is preempted.
    decoder = paged_decoder(engine, prompt, max_prompt=200, blocks=37, ngram=(0, 0))
    streamed = run_decoder(decoder, engine, pages, prompt)
    reference = {p.source.key: engine.predict([p], prompt)[0] for p in pages}
    assert decoder.preemptions > 0, "the cache must have run short"
    for key, done in streamed.items():
        assert engine._prediction(done.ids, 0.0).text == reference[key].text, key
    assert decoder.kv.used == 0, "every block is back in the pool"


def test_looping_is_detected_for_periods_beyond_the_ban():
    import torch

    from dsocr_cli.engines.ngram import looping

    cycle = list(range(100, 170))  # period 70, longer than an n-gram ban of 30 within 60 could break
    loop = [5, 6, 7] + cycle * 5
    fresh = list(range(1000, 1000 + len(loop)))
    short = [5, 6, 7] + cycle + cycle[:20]  # repeats, but over fewer tokens than the span
    history = torch.full((3, 400), -1)
    for row, ids in enumerate((loop, fresh, short)):
        history[row, : len(ids)] = torch.tensor(ids)
    lengths = torch.tensor([len(loop), len(fresh), len(short)])
    assert looping(history, lengths, span=64, max_period=128).tolist() == [True, False, False]


class CyclingDecoder:
    """Forces page p1 into a 70-token cycle on its first attempt: a loop no n-gram ban can break."""

    @staticmethod
    def make(engine, prompt, **overrides):
        import torch

        from dsocr_cli.engines.decode import PagedDecoder

        class Cycling(PagedDecoder):
            def on_admit(self, lane, seq):
                self.cycling[lane] = seq.item.source.key == "p1" and not seq.strict

            def on_move(self, source, target):
                self.cycling[target], self.cycling[source] = self.cycling[source], False

            def adjust(self, logits, b):
                logits = super().adjust(logits, b)
                generated = self.generated[:b]
                earlier = self.history[:b].gather(1, (generated - 70).clamp(min=0)[:, None]).squeeze(1)
                token = torch.where(generated >= 70, earlier, 10 + generated % 70)
                forced = torch.full_like(logits, float("-inf")).scatter(1, token[:, None], 0.0)
                return torch.where(self.cycling[:b, None], forced, logits)

        decoder = paged_decoder(engine, prompt, **overrides)
        decoder.__class__ = Cycling
        decoder.cycling = torch.zeros(decoder.config.lanes, dtype=torch.bool)
        return decoder


def test_a_looping_page_is_retried_inside_the_decoder(tiny_model):
    """The loop ends the first attempt early (long before the token limit) and the strict retry
    runs as a new sequence beside the other pages, which go on decoding meanwhile."""
    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=240))
    prompt = TASK_PROMPTS["free"]
    pages = [noise_page(i, 300, 200, seed=i) for i in range(3)]
    decoder = CyclingDecoder.make(engine, prompt, retry=True, loop_span=64, loop_period=128, loop_every=8)
    decoder.timeline = []
    streamed = run_decoder(decoder, engine, pages, prompt)
    loops = [event for event in decoder.timeline if event[1] == "retry-repetition"]
    assert len(loops) == 1 and loops[0][2] < 200, "detected within the span, one check and the period"
    steps_after = [e for e in decoder.timeline if e[1] == "step" and e[0] > loops[0][0]]
    assert len(steps_after) >= 200, "the other lanes kept decoding while the retry was admitted"
    assert streamed["p1"].attempts == 2 and streamed["p1"].finish != "repetition"
    assert {k: streamed[k].finish for k in ("p0", "p2")} == {"p0": "length", "p2": "length"}


def test_a_retried_page_gets_its_inputs_remade_off_the_decoding_thread(tiny_model):
    """Inputs are dropped once a page is prefilled; the looping page's retry has them remade by a
    background thread while the other lanes decode, never by the thread that drives the model."""
    import threading

    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=240))
    prompt = TASK_PROMPTS["free"]
    engine.decoder = CyclingDecoder.make(engine, prompt, retry=True, loop_span=64, loop_period=128, loop_every=8)
    made, main = [], threading.current_thread().name
    preparer, inputs_here = engine.preparer, engine._inputs_cpu

    def recording_preparer(prompt):
        prepare = preparer(prompt)

        def recorded(page):
            made.append((page.source.key, threading.current_thread().name))
            return prepare(page)

        return recorded

    def counted_inputs_here(pages, prompt):
        made.append(("main thread", main))
        return inputs_here(pages, prompt)

    engine.preparer, engine._inputs_cpu = recording_preparer, counted_inputs_here
    pages = [noise_page(i, 300, 200, seed=i) for i in range(3)]
    results = {page.source.key: prediction for page, prediction in engine.stream(iter(pages), prompt)}
    assert results["p1"].attempts == 2 and results["p1"].finish != "repetition"
    p1 = [thread for key, thread in made if key == "p1"]
    assert len(p1) == 2 and p1[1].startswith("dsocr-remake"), made
    assert all(thread != main for _, thread in made), "no inputs were made on the decoding thread"


def test_a_page_failing_its_prefill_does_not_stop_the_others(tiny_model):
    """One lane: the failing page frees it again and every other page still comes back."""
    from dsocr_cli.engines.decode import Feed

    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", max_new_tokens=6))
    prompt = TASK_PROMPTS["free"]
    decoder = paged_decoder(engine, prompt, lanes=1)

    def prefill(group):
        if any(page.source.key in ("p1", "p2") for page, _ in group):
            raise ValueError("cannot preprocess this page")
        return engine._prefill(group, prompt)

    pages = [noise_page(i, 300, 200, seed=i) for i in range(5)]
    results = {done.item.source.key: done.finish for done in decoder.run(iter(pages), Feed(prefill))}
    assert results == {"p0": "length", "p1": "error", "p2": "error", "p3": "length", "p4": "length"}


def test_input_threads_keep_page_order_and_report_failures():
    """Inputs are made by threads ahead of the decoder; pages come out in order, and a page whose
    inputs cannot be made is reported with its error instead of stopping the others."""
    import dataclasses
    import time

    from dsocr_cli.engines.inputs import prepared

    def prepare(page):
        time.sleep(0.01 * (5 - page.index % 5))  # later pages finish first
        if page.index == 3:
            raise ValueError("tiles do not fit")
        return dataclasses.replace(page, inputs={"index": page.index})

    pages = [noise_page(i, 40, 40, seed=i) for i in range(8)]
    pulled = []
    ready, failed = prepared(prepare, (pulled.append(p.index) or p for p in pages), threads=4, ahead=4)
    first = next(ready)
    assert first.inputs == {"index": 0} and len(pulled) <= 2, "the first page does not wait for a full window"
    rest = list(ready)
    assert [p.inputs["index"] for p in [first, *rest]] == [0, 1, 2, 4, 5, 6, 7]
    assert [(p.index, str(e)) for p, e in failed()] == [(3, "tiles do not fit")]


def test_prepared_pages_say_whether_the_next_one_is_made():
    """`arrived` is false while the next page's inputs are still being made and true once they
    are (or no page is left), so the decoder can step instead of waiting for a page."""
    import dataclasses
    import threading
    import time

    from dsocr_cli.engines.inputs import prepared

    gate = threading.Event()

    def prepare(page):
        if page.index == 1:
            gate.wait(30)
        return dataclasses.replace(page, inputs={"index": page.index})

    ready, _ = prepared(prepare, iter([noise_page(i, 40, 40, seed=i) for i in range(3)]), threads=2, ahead=4)
    assert next(ready).inputs == {"index": 0}
    time.sleep(0.05)
    assert not ready.arrived(), "page 1 is still being made"
    gate.set()
    deadline = time.monotonic() + 30
    while not ready.arrived() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.inputs["index"] for p in ready] == [1, 2]
    assert ready.arrived(), "nothing left: taking the end costs no wait"


def test_a_page_that_failed_is_set_aside_before_the_decoder_would_wait_past_it():
    """A page whose inputs failed is not "arrived": it goes to `failed`, and `arrived` then
    speaks of the page after it, so `next` never waits behind a failure."""
    import dataclasses
    import threading
    import time

    from dsocr_cli.engines.inputs import prepared

    gate = threading.Event()

    def prepare(page):
        if page.index == 1:
            raise ValueError("tiles do not fit")
        if page.index == 2:
            gate.wait(30)
        return dataclasses.replace(page, inputs={"index": page.index})

    ready, failed = prepared(prepare, iter([noise_page(i, 40, 40, seed=i) for i in range(3)]), threads=2, ahead=4)
    assert next(ready).inputs == {"index": 0}
    errors, deadline = [], time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        assert not ready.arrived(), "page 1 failed and page 2 is still being made"
        errors += [(p.index, str(e)) for p, e in failed()]
        time.sleep(0.01)
    assert errors == [(1, "tiles do not fit")]
    gate.set()
    assert [p.inputs["index"] for p in ready] == [2]


def test_running_lanes_never_wait_for_a_page_still_being_made(tiny_model):
    """While lanes decode, the decoder takes a new page only once `Feed.arrived` says it is made;
    meanwhile it keeps stepping, and every page still comes out with generate's tokens."""
    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=24))
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)
    pages = [prepare(noise_page(i, 300 + 100 * i, 200, seed=i)) for i in range(3)]
    # One page per prefill, and prefills as often as the decoder likes: only `arrived` holds pages back.
    decoder = paged_decoder(engine, prompt, ngram=(0, 0), prefill_tokens=1, first_prefill_share=1.0, prefill_grace=1e9)
    checks = {"refused_while_running": 0}
    taken_while_running_before_arrival = []

    def arrived():  # the second and third pages arrive only after a few steps of the first
        if decoder.lanes and decoder.steps < 5:
            checks["refused_while_running"] += 1
        return decoder.steps >= 5

    def items():
        for page in pages:
            if decoder.lanes and decoder.steps < 5:
                taken_while_running_before_arrival.append(page.index)
            yield page

    from dsocr_cli.engines.decode import Feed

    feed = Feed(lambda group: engine._prefill(group, prompt), engine._measure, arrived=arrived)
    streamed = {done.item.source.key: done for done in decoder.run(items(), feed)}
    assert checks["refused_while_running"] > 0 and taken_while_running_before_arrival == []
    reference = {p.source.key: engine.predict([p], prompt)[0] for p in pages}
    assert {k: engine._prediction(d.ids, 0.0).text for k, d in streamed.items()} == {
        k: r.text for k, r in reference.items()
    }


def test_a_resumed_page_that_wrote_an_image_token_prefills(engine):
    """A preempted page resumes with its prompt and the tokens it had generated; an image token
    among those is text the model wrote, not a placeholder: the image features fill its prompt's
    placeholders only, and the prefill goes through."""
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)
    image = engine.model.config.image_token_id
    group = [
        (prepare(noise_page(0, 300, 200, seed=0)), []),
        (prepare(noise_page(1, 800, 2000, seed=1)), [image, 5, image]),
    ]
    inputs, lengths = engine._collate(group, prompt)
    places = inputs["image_positions"]
    placeholders = sum(int((page.inputs["input_ids"] == image).sum()) for page, _ in group)
    assert len(places) == placeholders < int((inputs["input_ids"] == image).sum())
    assert bool((inputs["input_ids"].view(-1)[places] == image).all())
    logits, layers, lengths = engine._prefill(group, prompt)
    assert logits.shape[0] == 2 and lengths[1] == len(group[1][0].inputs["input_ids"][0]) + 3


def test_a_sequence_preempted_just_after_its_eos_is_finished_not_resumed(tiny_model):
    """The host reads a step's ends one step late; a sequence preempted in between has its EOS in
    the tokens it keeps. It ends there, as it would have, instead of resuming past its EOS."""
    import torch

    from dsocr_cli.engines.decode import DecoderConfig, PagedDecoder

    engine = load_engine(
        EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=20, no_repeat_ngram=0)
    )
    prompt = TASK_PROMPTS["markdown"]
    eos = engine.eos_id

    class EosThenPreempt(PagedDecoder):
        def adjust(self, logits, b):  # lane 0's fourth token is EOS
            forced = torch.full_like(logits, float("-inf"))
            forced[:, eos] = 0.0
            first_lane = torch.arange(b) == 0
            return torch.where(((self.generated[:b] == 3) & first_lane)[:, None], forced, logits)

        def _reserve(self):  # preempt right after the step that chose EOS, before its end is read
            if self.steps == 3 and 0 in self.lanes:
                self._preempt(0)
            super()._reserve()

    config = DecoderConfig(
        lanes=2, max_new_tokens=20, max_prompt=200, eos_id=eos, blocks=64, block_size=16, retry=False
    )
    decoder = EosThenPreempt(engine.model, config)
    prepare = engine.preparer(prompt)  # exact prompt lengths, so both pages enter in one group
    pages = [prepare(noise_page(i, 300, 200, seed=i)) for i in range(2)]  # page 0 in lane 0
    done = run_decoder(decoder, engine, pages, prompt)["p0"]
    assert done.finish == "eos" and len(done.ids) == 4 and done.ids[-1] == eos
    assert decoder.preemptions == 0 and decoder.admitted == 2, "finished, not resumed"


def pages_one_per_prefill(tiny_model, count: int, max_new_tokens: int):
    """An engine, the prompt, `count` small pages with their inputs made, and the prefill size in
    tokens that holds exactly one of them: for tests of when prefills are let in."""
    engine = load_engine(
        EngineOptions(
            model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=max_new_tokens, no_repeat_ngram=0
        )
    )
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)
    pages = [prepare(noise_page(i, 300, 200, seed=i)) for i in range(count)]
    return engine, prompt, pages, engine._measure(pages[0]) + 1


def test_until_a_first_page_ends_prefills_keep_to_the_first_share(tiny_model):
    """The first pages decode without the batch filling beside them: with no first share (and no
    grace) one page runs alone until it ends; after that the run's own share lets the rest in.
    With a long grace the same pages all start at once."""
    engine, prompt, pages, one_page = pages_one_per_prefill(tiny_model, count=4, max_new_tokens=12)

    def lanes_per_step(**schedule):
        decoder = paged_decoder(engine, prompt, max_prompt=200, prefill_tokens=one_page, **schedule)
        decoder.timeline = []
        steps_before_first_end = None
        for _ in run_steps(decoder, engine, pages, prompt):
            if steps_before_first_end is None:
                steps_before_first_end = decoder.steps
        return [n for _, kind, n in decoder.timeline if kind == "step"], steps_before_first_end

    lanes, first_end = lanes_per_step(first_prefill_share=0.0, prefill_grace=0.0, prefill_share=1.0)
    assert set(lanes[: first_end - 2]) == {1}, "one page alone until the first end was read"
    assert max(lanes) > 1, "then the others are let in"
    lanes, _ = lanes_per_step(first_prefill_share=0.0, prefill_grace=1e6, prefill_share=1.0)
    assert lanes[:4] == [1, 2, 3, 4], "a grace lets the first groups in back to back"


def test_time_without_pages_is_not_saved_up_for_a_burst_of_prefills(tiny_model):
    """While lanes decode and no new page is made yet, the time prefills could have had is not
    banked: when pages come, each prefill still waits until the steps after it have had their
    share, instead of prefills following each other one step apart while the lanes crawl."""
    import time

    from dsocr_cli.engines.decode import Feed

    engine, prompt, pages, one_page = pages_one_per_prefill(tiny_model, count=6, max_new_tokens=200)
    schedule = dict(prefill_share=0.5, first_prefill_share=0.5, prefill_grace=0.0)
    decoder = paged_decoder(
        engine, prompt, lanes=6, max_prompt=200, prefill_tokens=one_page, loop_every=10**6, **schedule
    )
    decoder.timeline = []
    advance = decoder._advance

    def step_lasting_a_while():  # a step takes a few milliseconds, a prefill ten times that, as on a GPU
        time.sleep(0.002)
        advance()

    def prefill_lasting_a_while(group):
        time.sleep(0.02)
        return engine._prefill(group, prompt)

    decoder._advance = step_lasting_a_while
    gate = 100  # steps with no new page made, in which prefills could have run
    feed = Feed(prefill_lasting_a_while, engine._measure, arrived=lambda: decoder.steps >= gate)
    list(decoder.run(iter(pages), feed))
    kinds = "".join("p" if kind == "prefill" else "s" for _, kind, _ in decoder.timeline if kind in ("step", "prefill"))
    at = [i for i, kind in enumerate(kinds) if kind == "s"][gate - 1]
    assert "p" in kinds[:at] and "p" not in kinds[at - 50 : at], "lanes decoded a while with no page to take"
    steps_between = [len(run) for run in kinds[at:].strip("s").split("p")[1:-1]]
    assert len(steps_between) >= 2, kinds[at:]
    assert min(steps_between) >= 3, f"prefills a step or two apart: {steps_between}"


def test_the_first_pages_are_made_while_the_decoder_starts():
    """The decoder's start (graph capture) runs beside the first pages' inputs, not before them:
    pages are pulled and made until it is done, and none is lost or reordered."""
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from dsocr_cli.engines.inputs import made_meanwhile, prepared

    made = []
    three_made = threading.Event()

    def prepare(page):
        made.append(page.index)
        if len(made) >= 3:
            three_made.set()
        return dataclasses.replace(page, inputs={"index": page.index})

    pages = [noise_page(i, 40, 40, seed=i) for i in range(40)]
    ready, _ = prepared(prepare, iter(pages), threads=2, ahead=4)
    with ThreadPoolExecutor(1) as pool:
        start_up = pool.submit(three_made.wait, 30)  # ends only once pages were made beside it
        pages_out = made_meanwhile(ready, start_up, limit=8)
        assert start_up.result() and len(made) >= 3
    assert [p.inputs["index"] for p in pages_out] == list(range(40))
    with ThreadPoolExecutor(1) as pool:
        slow_start = pool.submit(threading.Event().wait, 0.5)  # never set: ends after 0.5 s
        ready, _ = prepared(prepare, iter(pages), threads=2, ahead=4)
        made.clear()
        early = made_meanwhile(ready, slow_start, limit=5)
        assert len(made) <= 5 + 4 + 2, "no more than the limit (and the window ahead) while waiting"
        assert [p.index for p in early] == list(range(40))
        ready, _ = prepared(prepare, iter(pages), threads=2, ahead=4)
        pulled = []
        already_done = pool.submit(lambda: None)
        already_done.result()
        rest = made_meanwhile((pulled.append(p) or p for p in ready), already_done)
        assert pulled == [], "a start already over takes no page ahead"
        assert len(list(rest)) == 40


def test_start_up_the_first_pages_need_not_wait_for_comes_once_a_page_ended(tiny_model):
    """The rest of the start-up (other buckets, the vision graphs) runs once, after a first page
    is out, and only where more pages are left than the lanes it started with."""
    engine = load_engine(
        EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=6, no_repeat_ngram=0)
    )
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)
    pages = [prepare(noise_page(i, 300, 200, seed=i)) for i in range(12)]

    def calls_after(count):
        decoder = paged_decoder(engine, prompt, max_prompt=200, lanes=4)
        received, received_at_call = [], []

        def rest():
            received_at_call.append(len(received))

        for done in run_steps(decoder, engine, pages[:count], prompt, start_rest=rest):
            received.append(done)
        assert len(received) == count
        return received_at_call

    assert calls_after(3) == [], "three pages fit the four lanes: nothing more to capture"
    calls = calls_after(12)
    assert len(calls) == 1 and calls[0] >= 1, "once, after the caller has its first page"


def test_until_the_other_graphs_are_captured_the_lanes_stay_within_the_first(tiny_model):
    """Graphs stand in for CUDA's here (each replays the eager step of its bucket): before the
    first page is out, steps run the one captured bucket and no more lanes than it holds; then
    every bucket is captured and the lanes fill."""
    from dsocr_cli.engines.decode import DecoderConfig, PagedDecoder

    engine = load_engine(
        EngineOptions(model=str(tiny_model), device="cpu", dtype="fp32", max_new_tokens=8, no_repeat_ngram=0)
    )
    prompt = TASK_PROMPTS["markdown"]
    replays = []

    class Replay:
        def __init__(self, decoder, size):
            self.decoder, self.size = decoder, size

        def replay(self):
            replays.append((self.size, len(self.decoder.lanes)))
            self.decoder._step(self.size)

        def pool(self):
            return None

    class StandInGraphs(PagedDecoder):
        def _capture(self, b, pool):
            return Replay(self, b)

    config = DecoderConfig(
        lanes=8, max_new_tokens=8, max_prompt=200, eos_id=engine.eos_id, blocks=128, block_size=16,
        retry=False, start_lanes=2, prefill_grace=1e6,
    )  # fmt: skip
    decoder = StandInGraphs(engine.model, config)
    decoder.use_graph = True  # as on CUDA
    decoder.warm_up([decoder.start_bucket])
    assert sorted(decoder.graphs) == [2]
    prepare = engine.preparer(prompt)
    pages = [prepare(noise_page(i, 300, 200, seed=i)) for i in range(12)]
    decoder.timeline = []
    done = run_decoder(decoder, engine, pages, prompt)
    assert len(done) == 12 and sorted(decoder.graphs) == decoder.buckets == [1, 2, 4, 8]
    rest_at = next(i for i, (_, kind, _) in enumerate(decoder.timeline) if kind == "start-rest")
    steps_before = sum(kind == "step" for _, kind, _ in decoder.timeline[:rest_at])
    before, after = replays[:steps_before], replays[steps_before:]
    assert before and all(size == 2 and lanes <= 2 for size, lanes in before), "one bucket, its lanes"
    assert max(lanes for _, lanes in after) > 2, "then the lanes fill"
    assert {size for size, _ in after} > {2}, "and the smaller and larger buckets run"
