"""The native engine: transformers' DeepSeek-OCR-2 (AutoModelForImageTextToText + AutoProcessor).

By default pages stream through the slot decoder (engines/decode.py: continuous batching, one
page prefilled at a time, a CUDA-graph decode step). `predict` is the reference path and serves
strict retries and `--decoder generate`: one padded generate call per batch with LEFT padding
(the processor leaves it on the right, and right-padded rows diverge from single-page output).
Both decode greedily with grouped_mm MoE experts on CUDA and the windowed n-gram ban.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from dsocr_cli.engines.device import device_stats, resolve_device, resolve_dtype
from dsocr_cli.engines.ngram import WindowedNoRepeatNGram, looks_looped
from dsocr_cli.errors import SetupError, UsageError
from dsocr_cli.options import TASK_PROMPTS, EngineOptions
from dsocr_cli.types import PageImage, Prediction

log = logging.getLogger(__name__)

# Table cell tags repeat legitimately; never ban them (DEEPSEEK_OCR.md).
EXEMPT_TOKENS = ("<td>", "</td>")
NATIVE_MODES = ("tiled", "base")


class HFEngine:
    name = "hf"
    decoder_class = None  # SlotDecoder unless a subclass (the benchmark) brings its own

    def __init__(self, model, processor, options: EngineOptions, device: str, dtype):
        self.model = model
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
        self.continuous = options.decoder == "slots"

    def stream(self, pages: Iterable[PageImage], prompt: str) -> Iterator[tuple[PageImage, Prediction | Exception]]:
        """Continuous batching: pages are prefilled one at a time into free decode slots and come
        back as soon as each one ends, in the order they finish."""
        from dsocr_cli.engines.decode import SlotDecoder

        if self.decoder is None:
            n, window = self.options.no_repeat_ngram, self.options.no_repeat_window
            slots = self.options.batch_size or self._slots_for_memory()
            self.decoder = (self.decoder_class or SlotDecoder)(
                self.model,
                slots,
                self.options.max_new_tokens,
                self._prompt_room(prompt),
                self.eos_id,
                (n, window),
                self.exempt_ids,
            )
            log.info("continuous batching: %d decode slots", slots)
        for page, ids, finish, seconds in self.decoder.run(pages, lambda page: self._prefill(page, prompt)):
            yield page, (ids if finish == "error" else self._prediction(ids, seconds))

    def _prefill(self, page: PageImage, prompt: str):
        """One page through the whole model: its first-token logits and its keys and values."""
        import torch

        inputs = self._inputs([page], prompt)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        return out.logits[:, -1, :], layers, int(inputs["input_ids"].shape[1])

    def _prompt_room(self, prompt: str) -> int:
        """The longest prompt a page can give: global view + the most tiles + separator + text."""
        image = self.processor.image_processor
        per_view = math.ceil(image.tile_size / self.processor.patch_size / self.processor.downsample_ratio) ** 2
        global_view = math.ceil(image.size["height"] / self.processor.patch_size / self.processor.downsample_ratio) ** 2
        text = len(self.processor.tokenizer(prompt)["input_ids"])
        return global_view + image.max_patches * per_view + 1 + text + 8

    def _slots_for_memory(self) -> int:
        """As many slots as a share of free GPU memory holds (4 on other devices)."""
        import torch

        if self.device != "cuda":
            return 4
        config = self.model.config.text_config
        head_dim = config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * self.dtype.itemsize
        per_slot = per_token * (self._prompt_room(TASK_PROMPTS["markdown"]) + self.options.max_new_tokens)
        free, _ = torch.cuda.mem_get_info()
        budget = min(free * 0.45, 24 * 2**30)
        return int(max(1, min(128, budget // per_slot)))

    def _inputs(self, pages: Sequence[PageImage], prompt: str) -> dict:
        inputs = self.processor(
            images=[p.image for p in pages],
            text=[prompt] * len(pages),
            return_tensors="pt",
            padding=True,
            **self.image_kwargs,
        )
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_local"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        return inputs

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
        return device_stats(self.name, self.device, self.dtype)

    def _prediction(self, row: list[int], seconds: float) -> Prediction:
        if self.eos_id in row:
            ids, finish = row[: row.index(self.eos_id)], "eos"
        else:
            ids, finish = row, ("repetition" if looks_looped(row) else "length")
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=False)
        for token in self.strip_tokens:
            text = text.replace(token, "")
        return Prediction(text=text, tokens=len(ids), finish=finish, seconds=seconds)


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
    model_kwargs = dict(kwargs, dtype=dtype)
    if device == "cuda":
        model_kwargs["experts_implementation"] = "grouped_mm"
    model = _fetch(lambda: AutoModelForImageTextToText.from_pretrained(source, **model_kwargs), options)
    model = model.to(device).eval()
    log.info("loaded %s on %s (%s)", options.model, device, str(dtype).replace("torch.", ""))
    torch.set_grad_enabled(False)
    return HFEngine(model, processor, options, device, dtype)


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
