"""The native engine: transformers' DeepSeek-OCR-2 (AutoModelForImageTextToText + AutoProcessor).

By default pages stream through the paged decoder (engines/decode.py: continuous batching over a
paged KV cache, pages prefilled in groups, CUDA-graph decode steps, loops retried inside it).
`predict` is the reference path and serves `--decoder generate`: one padded generate call per batch with LEFT padding
(the processor leaves it on the right, and right-padded rows diverge from single-page output).
Both decode greedily with grouped_mm MoE experts on CUDA and the windowed n-gram ban.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dsocr_cli.engines.device import device_stats, resolve_device, resolve_dtype
from dsocr_cli.engines.inputs import Prepared, Preprocess, Remake, made_meanwhile, prepared
from dsocr_cli.engines.ngram import WindowedNoRepeatNGram, looks_looped
from dsocr_cli.errors import SetupError, UsageError
from dsocr_cli.options import TASK_PROMPTS, EngineOptions
from dsocr_cli.types import PageImage, Prediction

log = logging.getLogger(__name__)

# Table cell tags repeat legitimately; never ban them (DEEPSEEK_OCR.md).
EXEMPT_TOKENS = ("<td>", "</td>")
NATIVE_MODES = ("tiled", "base")

BLOCK_SIZE = 64  # tokens per cache block
PREFILL_TOKENS = 4608  # prompt tokens per prefill forward on CUDA: about four tiled pages' vision at once
KV_SHARE, KV_MAX_BYTES = 0.4, 20 * 2**30  # the cache's share of free GPU memory, and its cap
TYPICAL_TOKENS = 1600  # a tiled page's prompt plus a typical page of output, for sizing the lanes
MAX_LANES = 256
PREPARE_THREADS = 6  # threads making page inputs ahead of the decoder on CUDA
# After each wait on the GPU the decoding thread needs the GIL back to launch the next step, while
# the input and writer threads run Python; Python's default 5 ms hand-over could cost a whole step.
SWITCH_INTERVAL = 0.001
# A prefill is thousands of eager kernel launches, tens of milliseconds of Python: while they are
# made, the decoding thread keeps the GIL in longer turns, or the GPU runs ahead of them and waits.
PREFILL_SWITCH_INTERVAL = 0.02
FIRST_PAGES = 16  # pages made while the decoder starts: the first prefills', no more (their threads slow it)
TEXT_ROOM = 256  # prompt text tokens the decoder is built for; a longer custom prompt rebuilds it


class HFEngine:
    """`stream` (continuous batching) by default; `predict` serves --decoder generate, and the rest of
    a run whose decoder broke. The decoder is built on first use; its CUDA graphs, and the vision
    tower's, are captured as a run needs them."""

    name = "hf"
    decoder_class = None  # SlotDecoder unless a subclass (the benchmark) brings its own

    def __init__(self, model, processor, options: EngineOptions, device: str, dtype, source: str | None = None):
        from dsocr_cli.engines.views import ViewEncoder

        self.model = model
        self.source = source or options.model  # where render workers load the processor from
        self.processor = processor
        self.options = options
        self.device = device
        self.dtype = dtype
        self.batch_size = options.batch_size or (16 if device == "cuda" else 4)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.exempt_ids = tuple(
            i for i in tokenizer.convert_tokens_to_ids(list(EXEMPT_TOKENS)) if i != tokenizer.unk_token_id
        )
        self.strip_tokens = [t for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) if t]
        self.image_kwargs = mode_kwargs(options.mode, processor)
        self.decoder = None  # the continuous-batching decoder, built on first use
        self.views = ViewEncoder(model)  # the prefill's vision tower; graphs once a run's first page is out
        # waiting for the load's kernels ("kernels"), the decoder's first graph ("decoder"), the vision graphs
        self.warm_up_seconds: dict[str, float] = {}
        self.kernels: threading.Thread | None = None  # compiling the Triton kernels while the weights load
        self.remake = None  # inputs remade in the background for pages the decoder takes back
        self.continuous = options.decoder == "slots"
        self.retries_inside = self.continuous  # the decoder retries loops itself, without blocking
        self.prepare_in_renderer = False  # page inputs are made by threads here (see `prepared`)

    def stream(self, pages: Iterable[PageImage], prompt: str) -> Iterator[tuple[PageImage, Prediction | Exception]]:
        """Continuous batching: pages are prefilled in small groups into free lanes and come back
        as soon as each one ends, in the order they finish; retries happen inside the decoder."""
        from dsocr_cli.engines.decode import Feed

        prepare = self.preparer(prompt)
        self.remake = Remake(prepare)
        ready, failed = prepared(prepare, pages, PREPARE_THREADS if self.device == "cuda" else 1)
        interval = sys.getswitchinterval()
        try:  # from here on, a failed or abandoned start stops the input threads too
            decoder, ready = self._decoder_meanwhile(prompt, ready)
            feed = Feed(
                prefill=lambda group: self._prefill(group, prompt),
                measure=self._measure,
                forget=self.remake.forget,
                renew=self.remake.renew,
                ready=self.remake.ready,
                arrived=ready.arrived,
                start_rest=self.capture_views,
            )
            sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
            for done in decoder.run(ready, feed):
                yield from failed()
                if done.finish == "error":
                    yield done.item, done.ids
                else:
                    yield done.item, self._prediction(done.ids, done.seconds, done.finish, done.attempts)
            yield from failed()
        finally:
            sys.setswitchinterval(interval)
            ready.close()
            self.remake.close()

    def _decoder_meanwhile(self, prompt: str, ready: Prepared):
        """The decoder, built here (a failure then takes no page with it) and started on another
        thread (its first CUDA graph is captured there) while this one starts rendering and making
        the first pages' inputs: the start-up overlaps them instead of preceding them. Returns the
        decoder and the pages, those made meanwhile first."""
        import torch

        decoder = self.decoder_for(prompt, start=False)

        def start():
            with torch.no_grad():  # grad mode is per thread; the model's load turned it off on this one
                self._start(decoder)

        with ThreadPoolExecutor(1, thread_name_prefix="dsocr-start") as pool:
            starting = pool.submit(start)
            ready = made_meanwhile(ready, starting, limit=FIRST_PAGES)
            starting.result()
        return decoder, ready

    def decoder_for(self, prompt: str, start: bool = True):
        """The paged decoder, built once and rebuilt only for a prompt longer than the room it was
        built with; `start`: with the CUDA graph of the lanes it starts with captured."""
        from dsocr_cli.engines.decode import DecoderConfig, PagedDecoder

        room = self._prompt_room(prompt)
        if self.decoder is None or self.decoder.config.max_prompt < room:
            self.decoder = None
            n, window = self.options.no_repeat_ngram, self.options.no_repeat_window
            blocks, lanes = self._cache_plan(room)
            config = DecoderConfig(
                lanes=lanes,
                max_new_tokens=self.options.max_new_tokens,
                max_prompt=room,
                eos_id=self.eos_id,
                blocks=blocks,
                block_size=BLOCK_SIZE,
                ngram=(n, window),
                exempt_ids=self.exempt_ids,
                retry=self.options.retry_unfinished,
                prefill_tokens=PREFILL_TOKENS if self.device == "cuda" else 2 * room,
            )
            self.decoder = (self.decoder_class or PagedDecoder)(self.model, config)
            log.info(
                "continuous batching: %d lanes, %d cache blocks of %d tokens (%.1f GiB)",
                lanes,
                blocks,
                BLOCK_SIZE,
                blocks * BLOCK_SIZE * self._kv_bytes_per_token() / 2**30,
            )
        if start:
            self._start(self.decoder)
        return self.decoder

    def _start(self, decoder) -> None:
        """Capture the graph of the bucket a run starts with, once, after the Triton kernels that
        `load` compiles meanwhile: its warm-up would otherwise compile them again on this thread."""
        if not decoder.use_graph or decoder.start_bucket in decoder.graphs:
            return
        began = time.perf_counter()
        if self.kernels is not None:
            self.kernels.join()
        self.warm_up_seconds["kernels"] = time.perf_counter() - began  # what the load's compiling still took
        log.info("capturing a CUDA graph (seconds; the others follow once the first page is out)")
        began = time.perf_counter()
        decoder.warm_up([decoder.start_bucket])
        self.warm_up_seconds["decoder"] = time.perf_counter() - began
        log.info("decoder ready in %.1f s", self.warm_up_seconds["decoder"])

    def capture_views(self) -> None:
        """The vision tower's graphs, once: a run's first pages are prefilled without them (alone on
        the GPU they gain nothing), the rest of the run with them (`Feed.start_rest`)."""
        if self.views.graphs or self.device != "cuda":
            return
        began = time.perf_counter()
        self.views.warm_up(self._view_sides())
        self.warm_up_seconds["views"] = time.perf_counter() - began

    def _view_sides(self) -> tuple[int, ...]:
        """The pixel sides of the views a page can give: the global view and the tiles (as the
        processor is asked to make them, `mode_kwargs`)."""
        image = self.processor.image_processor
        tile = self.image_kwargs.get("tile_size", image.tile_size)
        return tuple(dict.fromkeys((image.size["height"], tile)))

    def preparer(self, prompt: str) -> Preprocess:
        """What a render worker runs on each page: the processor's work, off the main process."""
        return Preprocess(
            self.source,
            self.options.revision,
            prompt,
            self.image_kwargs,
            str(self.dtype),
            pin=self.device == "cuda" and not self.prepare_in_renderer,
        )

    def _measure(self, page: PageImage) -> int:
        """A page's prompt tokens when its inputs are made, else the most it can have."""
        inputs = self.remake.inputs(page) if self.remake and self.remake.ready(page) else page.inputs
        if inputs is not None:
            return int(inputs["input_ids"].shape[1])
        return self._prompt_room(TASK_PROMPTS["markdown"])

    def _prefill(self, group: list[tuple[PageImage, list[int]]], prompt: str):
        """Several pages through the whole model in one left-padded forward: first-token logits,
        every layer's keys and values, and each row's length (prompt plus any resumed tokens)."""
        import torch

        interval = sys.getswitchinterval()
        sys.setswitchinterval(max(interval, PREFILL_SWITCH_INTERVAL))
        try:
            inputs, lengths = self._collate(group, prompt)
            with torch.inference_mode():
                logits, layers = prefill_forward(self.model, inputs, self.views)
        finally:
            sys.setswitchinterval(interval)
        return logits, layers, lengths

    def _collate(self, group: list[tuple[PageImage, list[int]]], prompt: str) -> tuple[dict, list[int]]:
        """Per-page inputs (made by a render worker, or here) joined into one batch: ids left-padded,
        resumed tokens appended, positions counted from each row's first real token."""
        import torch

        from dsocr_cli.engines.kv import upload

        made = [self.remake.inputs(page) if self.remake else page.inputs for page, _ in group]
        parts = [
            inputs if inputs is not None else self._inputs_cpu([page], prompt)
            for inputs, (page, _) in zip(made, group, strict=True)
        ]
        rows = [
            torch.cat([p["input_ids"][0], torch.tensor(extra, dtype=torch.long)])
            for p, (_, extra) in zip(parts, group, strict=True)
        ]
        lengths = [len(row) for row in rows]
        width = max(lengths)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        device = torch.device(self.device)
        inputs = {"input_ids": upload(ids, torch.long, device)}
        inputs["position_ids"] = upload((mask.cumsum(-1) - 1).clamp(min=0), torch.long, device)
        inputs["image_positions"] = upload(self._image_positions(parts, lengths, width), torch.long, device)
        if min(lengths) < width:  # rows of one length need no mask: SDPA's causal kernel serves them
            inputs["attention_mask"] = padded_causal_mask(upload(mask, torch.bool, device))
        # Tile counts stay on the host: the model reads them back as a list, which from the GPU
        # would wait for the decode step in flight before the vision encoder could be launched.
        inputs["num_local_patches"] = torch.cat([torch.as_tensor(p["num_local_patches"]).view(-1) for p in parts])
        # Pixels go up page by page and are joined on the device: joining them on the host would
        # copy pinned pages into pageable memory, whose upload is synchronous and several times slower.
        for key in ("pixel_values", "pixel_values_local"):
            pixels = [p[key].to(self.device, self.dtype, non_blocking=True) for p in parts if p.get(key) is not None]
            if pixels:
                inputs[key] = torch.cat(pixels)
        return inputs, lengths

    def _image_positions(self, parts: list[dict], lengths: list[int], width: int):
        """Where each row's image features go in the flattened batch: the placeholders of its prompt
        only. A resumed page's generated tokens follow its prompt and keep their own embeddings,
        as when they were decoded, even an image token the model wrote."""
        import torch

        places = []
        for row, (part, length) in enumerate(zip(parts, lengths, strict=True)):
            (found,) = (part["input_ids"][0] == self.model.config.image_token_id).nonzero(as_tuple=True)
            places.append(found + row * width + width - length)  # a row: padding, prompt, resumed tokens
        return torch.cat(places)

    def _kv_bytes_per_token(self) -> int:
        from dsocr_cli.engines.kv import bytes_per_token

        config = self.model.config.text_config
        head_dim = config.hidden_size // config.num_attention_heads
        return bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, head_dim, self.dtype)

    def _prompt_room(self, prompt: str) -> int:
        return prompt_room(self.processor, prompt)

    def _cache_plan(self, room: int) -> tuple[int, int]:
        """(cache blocks, lanes). On CUDA the blocks take a share of free memory and the lanes are
        what those blocks hold at a typical page's length; elsewhere room for a few pages."""
        import torch

        per_block = BLOCK_SIZE * self._kv_bytes_per_token()
        longest = -(-(room + self.options.max_new_tokens) // BLOCK_SIZE) + 1
        if self.device != "cuda":
            lanes = self.options.batch_size or 4
            return max(longest, lanes * longest), lanes
        free, _ = torch.cuda.mem_get_info()
        blocks = max(longest, int(min(free * KV_SHARE, KV_MAX_BYTES) // per_block))
        typical = -(-TYPICAL_TOKENS // BLOCK_SIZE)
        lanes = self.options.batch_size or int(max(1, min(MAX_LANES, blocks // typical)))
        return blocks, lanes

    def _inputs_cpu(self, pages: Sequence[PageImage], prompt: str) -> dict:
        return self.processor(
            images=[p.image for p in pages],
            text=[prompt] * len(pages),
            return_tensors="pt",
            padding=True,
            **self.image_kwargs,
        )

    def _to_device(self, inputs: dict) -> dict:
        inputs = {k: (v.to(self.device, non_blocking=True) if hasattr(v, "to") else v) for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        return inputs

    def _inputs(self, pages: Sequence[PageImage], prompt: str) -> dict:
        return self._to_device(self._inputs_cpu(pages, prompt))

    def predict(self, pages: Sequence[PageImage], prompt: str, strict: bool = False) -> list[Prediction]:
        """Pages through transformers' generate: the reference path, and strict retries."""
        import torch

        inputs = self._inputs(pages, prompt)
        prompt_length = inputs["input_ids"].shape[1]
        processors = self.logits_processors(pages, prompt_length, strict)
        started = time.perf_counter()
        try:
            output = self._generate(inputs, processors)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # the caller splits the batch and tries again
            raise
        seconds = (time.perf_counter() - started) / len(pages)
        rows = output[:, prompt_length:].tolist()
        return [self._prediction(row, seconds) for row in rows]

    def _generate(self, inputs: dict, processors: list):
        import torch

        with torch.inference_mode():
            return self.model.generate(
                **inputs,
                max_new_tokens=self.options.max_new_tokens,
                do_sample=False,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                logits_processor=processors,
            )

    def logits_processors(self, pages: Sequence[PageImage], prompt_length: int, strict: bool = False) -> list:
        """Per-batch logits processors; the benchmark adds its forced lengths here. A strict retry
        bans shorter n-grams over a longer window: loops that slipped through are broken."""
        n, window = self.options.no_repeat_ngram, self.options.no_repeat_window
        if strict:
            n = 20 if n < 2 else min(n, 20)
            window = max(window, 256)
        if n < 2:
            return []
        return [WindowedNoRepeatNGram(n, window, prompt_length, self.exempt_ids)]

    def stats(self) -> dict:
        """Device, dtype and memory, for summary.json."""
        return device_stats(self.name, self.device, self.dtype)

    def _prediction(self, row: list[int], seconds: float, finish: str | None = None, attempts: int = 1) -> Prediction:
        """Generated ids -> text; EOS and padding stripped. `finish` is the decoder's verdict where
        it has one (it detects loops), else read off the ids."""
        if self.eos_id in row:
            ids, finish = row[: row.index(self.eos_id)], "eos"
        else:
            ids = row
            finish = finish or ("repetition" if looks_looped(row) else "length")
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=False)
        for token in self.strip_tokens:
            text = text.replace(token, "")
        return Prediction(text=text, tokens=len(ids), finish=finish, seconds=seconds, attempts=attempts)


def prefill_forward(model, inputs: dict, encode):
    """DeepSeek-OCR-2's forward for a prefill: first-token logits and every layer's keys and values.

    The same modules as the model's own forward, without its checks that read values back from the
    GPU (the image placeholders' count, which the processor made to match; the scan of a 2D padding
    mask). Each made the host wait for the vision encoder before it could queue the text model, so
    a prefill cost its launch time plus its GPU time instead of overlapping them. `encode` runs the
    vision tower on a batch of views (engines/views.py); `inputs` are `HFEngine._collate`'s, with
    each row's image placeholders found on the host (`_image_positions`)."""
    from dsocr_cli.engines.views import page_features

    core = model.model
    ids = inputs["input_ids"]
    embeds = core.get_input_embeddings()(ids)
    if inputs.get("pixel_values") is not None:
        features = page_features(encode, core, inputs).to(embeds.dtype)
        flat = embeds.view(-1, embeds.shape[-1]).index_copy(0, inputs["image_positions"], features)
        embeds = flat.view(embeds.shape)
    out = core.language_model(
        inputs_embeds=embeds,
        attention_mask=inputs.get("attention_mask"),
        position_ids=inputs["position_ids"],
        use_cache=True,
    )
    cache = getattr(out, "cache", None) or out.past_key_values
    return model.lm_head(out.last_hidden_state[:, -1]), [(layer.keys, layer.values) for layer in cache.layers]


def prompt_room(processor, prompt: str) -> int:
    """The longest prompt a page can give: global view + the most tiles + separator + text."""
    image = processor.image_processor
    per_view = math.ceil(image.tile_size / processor.patch_size / processor.downsample_ratio) ** 2
    global_view = math.ceil(image.size["height"] / processor.patch_size / processor.downsample_ratio) ** 2
    text = len(processor.tokenizer(prompt)["input_ids"])
    return global_view + image.max_patches * per_view + 1 + max(text, TEXT_ROOM) + 8


def compile_decode_kernels(config, max_blocks: int, dtype) -> None:
    """The decode attention's Triton kernels for the decoder's buckets, compiled (or read from
    Triton's disk cache) while the weights load: on a fresh machine seconds that the first graph
    captures, and so the first pages, no longer wait for. The lanes are not known yet: these are
    the buckets of the most lanes; a decoder with fewer compiles its top bucket's variant when it
    captures that bucket, after the first page."""
    import torch

    from dsocr_cli.engines.decode import buckets_for
    from dsocr_cli.engines.kernels.paged_attention import compile_ahead

    text = config.text_config
    try:
        compile_ahead(
            text.num_attention_heads,
            text.num_key_value_heads,
            text.hidden_size // text.num_attention_heads,
            BLOCK_SIZE,
            max_blocks,
            dtype,
            torch.device("cuda"),
            buckets_for(MAX_LANES),
        )
    except Exception:  # only time is lost: the graph captures compile what they need
        log.debug("compiling the decode kernels ahead failed", exc_info=True)


def padded_causal_mask(mask):
    """The 4D mask of a left-padded batch from its 2D boolean one, made on its device: causal over real keys.
    A padding query attends to itself only (a row with no key would give NaN and is never read)."""
    import torch

    width = mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    itself = torch.eye(width, dtype=torch.bool, device=mask.device)
    return (causal & mask[:, None, None, :]) | itself


def mode_kwargs(mode: str, processor) -> dict:
    """Processor overrides for a resolution preset. `tiled` is the checkpoint's own setting, with
    its tile limits passed explicitly (the processor would otherwise apply its own defaults, and
    the decoder's room for the prompt is computed from the image processor's)."""
    if mode == "tiled":
        if processor is None:
            return {}
        image = processor.image_processor
        return {"min_patches": image.min_patches, "max_patches": image.max_patches}
    if mode == "base":  # the global view alone; the tile size must match it (DEEPSEEK_OCR.md)
        side = processor.image_processor.size["height"]
        return {"crop_to_patches": False, "tile_size": side}
    raise UsageError(
        f"--mode {mode} is a DeepSeek-OCR (v1) preset",
        f"the native DeepSeek-OCR-2 engine supports {', '.join(NATIVE_MODES)}",
    )


def load(options: EngineOptions) -> HFEngine:
    """Load processor and model once; every failure becomes a one-line SetupError."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from dsocr_cli.engines.vision import fold_sam_attention

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if options.mode not in NATIVE_MODES:
        mode_kwargs(options.mode, None)
    source = _check_model_path(options.model)
    kwargs = {"revision": options.revision}
    config = _fetch(lambda: AutoConfig.from_pretrained(source, **kwargs), options)
    if getattr(config, "model_type", None) != "deepseek_ocr2":
        raise SetupError(
            f"{options.model} is a {getattr(config, 'model_type', None)!r} checkpoint, not native DeepSeek-OCR-2",
            "use --model deepseek-community/DeepSeek-OCR-2, or a remote-code engine for this checkpoint",
        )
    processor = _fetch(lambda: AutoProcessor.from_pretrained(source, **kwargs), options)
    kernels = None
    if device == "cuda":
        longest = prompt_room(processor, TASK_PROMPTS["markdown"]) + options.max_new_tokens
        args = (config, -(-longest // BLOCK_SIZE), dtype)  # the tokenizer stays on this thread
        kernels = threading.Thread(target=compile_decode_kernels, args=args, name="dsocr-kernels", daemon=True)
        kernels.start()
    model_kwargs = dict(kwargs, dtype=dtype)
    if device == "cuda":
        model_kwargs["experts_implementation"] = "grouped_mm"
    model = _fetch(lambda: AutoModelForImageTextToText.from_pretrained(source, **model_kwargs), options)
    model = model.to(device).eval()
    fold_sam_attention(model)
    log.info("loaded %s on %s (%s)", options.model, device, str(dtype).replace("torch.", ""))
    torch.set_grad_enabled(False)
    # SDPA's cuDNN backend, torch's first choice on Hopper, builds a plan for every new shape: 3-4 s
    # in a process's first prefill and about 65 ms per new shape after it, with decoding waiting on
    # the same thread. SDPA's other kernels (flash, memory-efficient) need no plan (H200, 512 pages: 9%
    # more tokens a second without it, the first prefill launched in 0.7 s instead of 3.6 s).
    torch.backends.cuda.enable_cudnn_sdp(False)
    engine = HFEngine(model, processor, options, device, dtype, source)
    engine.kernels = kernels
    return engine


def _check_model_path(model: str) -> str:
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise SetupError(f"model folder {model} does not exist", "give a local checkpoint folder or a hub id")
        if not (path / "config.json").is_file():
            raise SetupError(f"model folder {model} has no config.json", "point --model at a checkpoint folder")
        return str(path)
    return model


def _fetch(load, options: EngineOptions):
    """Run one from_pretrained and turn hub, cache and format failures into SetupErrors."""
    try:
        return load()
    except OSError as exc:
        from huggingface_hub import constants

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(
            f"cannot load model {options.model}: {first[:300]}",
            f"it must be reachable on the Hugging Face hub or cached in {constants.HF_HUB_CACHE}; "
            "without network, pass --model with a local folder",
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SetupError(
                f"{options.model} needs its own remote code to load",
                "use the native checkpoint deepseek-community/DeepSeek-OCR-2, or a remote-code engine",
            ) from exc
        raise SetupError(f"cannot load model {options.model}: {str(exc).splitlines()[0][:300]}") from exc
