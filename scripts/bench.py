#!/usr/bin/env python3
"""Throughput benchmark of the native engine at full size with random weights (no download).

Builds DeepSeek-OCR-2's real configuration with random weights on the GPU (or reuses a folder
written by --build), feeds page images of 0-6 tiles, forces each page's output length with a
logits processor (EOS banned before the target, forced at it), and prints one JSON line per
configuration: pages/s, generated tok/s, time to the first finished batch, peak GPU memory.

    python scripts/bench.py --build /tmp/full            # write the random full-size checkpoint
    python scripts/bench.py --model /tmp/full --configs seed,b16-fixed,b16-mix
"""

from __future__ import annotations

import argparse
import json
import random
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


def make_engine_class():
    import torch

    from dsocr_cli.engines.decode import SlotDecoder
    from dsocr_cli.engines.hf import HFEngine

    class BenchDecoder(SlotDecoder):
        """Forced lengths in the continuous-batching decoder: EOS banned before, forced at, the target."""

        lengths: dict[str, int] = {}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.targets = torch.zeros(self.slots, dtype=torch.long, device=self.device)

        def _admit(self, lane, prefill, item):
            slot = super()._admit(lane, prefill, item)
            self.targets[lane] = self.lengths[item.source.key]
            return slot

        def adjust(self, logits):
            logits = super().adjust(logits)
            eos_column = torch.where(self.targets > self.generated, float("-inf"), logits[:, self.eos])
            logits = logits.clone()
            logits[:, self.eos] = eos_column
            forced = torch.full_like(logits, float("-inf"))
            forced[:, self.eos] = 0.0
            return torch.where((self.targets <= self.generated)[:, None], forced, logits)

    class BenchEngine(HFEngine):
        lengths: dict[str, int] = {}
        decoder_class = BenchDecoder

        def logits_processors(self, pages, prompt_length, strict=False):
            forced = ForcedLength([self.lengths[p.source.key] for p in pages], prompt_length, self.eos_id)
            return super().logits_processors(pages, prompt_length, strict) + [forced]

    return BenchEngine


def pages_for(count: int, lengths: list[int], seed: int):
    from PIL import Image, ImageDraw

    from dsocr_cli.types import PageImage, Source

    rng = random.Random(seed)
    pages = []
    for i in range(count):
        w, h = PAGE_SIZES[rng.randrange(len(PAGE_SIZES))]
        image = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(image)
        for line in range(0, h - 40, 28):
            draw.text((30, 20 + line), f"line {line} of page {i} " * 4, fill="black")
        pages.append(PageImage(Source(Path(f"p{i}"), "image", f"p{i}"), 0, image))
    return pages, {f"p{i}": lengths[i] for i in range(count)}


def mix_lengths(count: int, seed: int) -> list[int]:
    """Between 256 and 2,000 new tokens, mean about 1,000."""
    rng = random.Random(seed)
    return [min(2000, max(256, int(rng.gauss(1000, 450)))) for _ in range(count)]


def smoke_lengths(lengths: list[int], cap: int | None) -> list[int]:
    return [min(v, cap) for v in lengths] if cap else lengths


def timed(engine, pages, name: str, predictions, first_key: str) -> dict:
    """Run `predictions` (an iterator of Predictions) against the clock; the fields every config reports."""
    import torch

    cuda = engine.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first, tokens, finishes = None, 0, {}
    for prediction in predictions:
        first = first or time.perf_counter() - start
        tokens += prediction.tokens
        finishes[prediction.finish] = finishes.get(prediction.finish, 0) + 1
    seconds = time.perf_counter() - start
    return {
        "config": name,
        "pages": len(pages),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "pages_per_s": round(len(pages) / seconds, 3),
        "tok_per_s": round(tokens / seconds, 1),
        first_key: round(first, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "finish": finishes,
    }


def measure_stream(engine, pages, name: str) -> dict:
    """Continuous batching: all pages offered at once, slots refilled as pages finish."""
    from dsocr_cli.options import TASK_PROMPTS

    stream = (prediction for _, prediction in engine.stream(iter(pages), TASK_PROMPTS["markdown"]))
    result = timed(engine, pages, name, stream, "first_page_s")
    return result | {"slots": engine.decoder.slots, "graph": engine.decoder.graph is not None}


def measure(engine, pages, batch: int, name: str) -> dict:
    """Batches through generate."""
    from dsocr_cli.options import TASK_PROMPTS

    batches: list[float] = []

    def predictions():
        for i in range(0, len(pages), batch):
            batch_start = time.perf_counter()
            predicted = engine.predict(pages[i : i + batch], TASK_PROMPTS["markdown"])
            batches.append(round(time.perf_counter() - batch_start, 2))
            yield from predicted

    result = timed(engine, pages, name, predictions(), "first_batch_s")
    return result | {"batch": batch, "batch_seconds": batches}


CONFIGS = {
    # name: (pages, batch or slots, experts, ngram ban, HF no_repeat_ngram_size, lengths, decoder)
    "seed": (1, 1, "eager", 0, 20, "fixed", "generate"),
    "b1-grouped": (2, 1, "grouped_mm", 30, 0, "fixed", "generate"),
    "b16-fixed": (32, 16, "grouped_mm", 30, 0, "fixed", "generate"),
    "b16-mix": (64, 16, "grouped_mm", 30, 0, "mix", "generate"),
    "b32-mix": (64, 32, "grouped_mm", 30, 0, "mix", "generate"),
    "slots32-mix": (128, 32, "grouped_mm", 30, 0, "mix", "slots"),
    "slots64-mix": (128, 64, "grouped_mm", 30, 0, "mix", "slots"),
    "slots96-mix": (192, 96, "grouped_mm", 30, 0, "mix", "slots"),
    "slots-auto-mix": (128, None, "grouped_mm", 30, 0, "mix", "slots"),
}


def identity(engine_class, base, device: str, count: int, tokens: int) -> dict:
    """How many pages decode to the same tokens continuously batched as one at a time (generate)."""
    from dsocr_cli.engines.hf import HFEngine  # noqa: F401  (the class is the base of engine_class)
    from dsocr_cli.options import TASK_PROMPTS, EngineOptions

    pages, targets = pages_for(count, [tokens] * count, seed=3)
    options = EngineOptions(model="bench", device=device, max_new_tokens=tokens + 1, decoder="slots")
    engine = engine_class(base.model, base.processor, options, device, base.dtype)
    engine.lengths = engine.decoder_class.lengths = targets
    prompt = TASK_PROMPTS["markdown"]
    single = {p.source.key: engine.predict([p], prompt)[0].text for p in pages}
    streamed = {p.source.key: pred.text for p, pred in engine.stream(iter(pages), prompt)}
    same = sum(single[k] == streamed[k] for k in single)
    return {
        "config": "identity",
        "pages": count,
        "tokens_per_page": tokens,
        "identical": same,
        "share": round(same / count, 3),
        "slots": engine.decoder.slots,
    }


def run(model: str, names: list[str], fixed: int, device: str, count_override: int | None = None) -> None:
    import torch
    import transformers

    from dsocr_cli.engines.hf import load
    from dsocr_cli.options import EngineOptions

    base = load(EngineOptions(model=model, device=device, max_new_tokens=2048))
    engine_class = make_engine_class()
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(json.dumps({"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__}), flush=True)
    for name in names:
        if name == "identity":
            print(json.dumps(identity(engine_class, base, device, count_override or 64, 48)), flush=True)
            continue
        count, batch, experts, ngram, hf_ngram, kind, decoder = CONFIGS[name]
        count = count_override or count
        lengths = (
            [fixed] * count if kind == "fixed" else smoke_lengths(mix_lengths(count, seed=1), count_override and fixed)
        )
        pages, targets = pages_for(count, lengths, seed=2)
        options = EngineOptions(
            model=model, device=device, max_new_tokens=2048, batch_size=batch, no_repeat_ngram=ngram
        )
        engine = engine_class(base.model, base.processor, options, device, base.dtype)
        engine.lengths = targets
        engine.decoder_class.lengths = targets
        engine.model.set_experts_implementation(experts if device == "cuda" else "eager")
        engine.model.generation_config.no_repeat_ngram_size = hf_ngram or None
        engine.predict(pages[:1], "<image>\nFree OCR. ")  # warm-up
        if decoder == "slots":
            list(engine.stream(iter(pages[:2]), "<image>\nFree OCR. "))  # warm-up: capture the graph
            result = measure_stream(engine, pages, name)
        else:
            result = measure(engine, pages, batch, name)
        print(json.dumps(result), flush=True)
        del engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="write a random full-size checkpoint here and exit")
    parser.add_argument("--model", help="checkpoint folder written by --build")
    parser.add_argument("--configs", default="seed,b1-grouped,b16-fixed,b16-mix")
    parser.add_argument("--fixed-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test on the tiny model")
    parser.add_argument("--pages", type=int, help="override each configuration's page count (smoke tests)")
    args = parser.parse_args()
    if args.build:
        build(args.build)
    if args.model:
        run(args.model, args.configs.split(","), args.fixed_tokens, args.device, args.pages)


if __name__ == "__main__":
    main()
