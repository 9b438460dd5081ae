#!/usr/bin/env python3
"""Where a prefill's GPU time goes: SAM, the Qwen2 vision encoder, the projector and the text model.

Prefill (a group of pages through the whole model, vision encoder included) decides how fast
pages enter the decoder, so it bounds the steady-state page rate. This prints one JSON line per
variant with the GPU milliseconds per page of each part, timed by CUDA events around the modules,
and the top kernels of the engine as loaded.

    python scripts/bench_prefill.py --model /tmp/full              # after scripts/bench.py --build /tmp/full
    python scripts/bench_prefill.py --model /tmp/full --variants folded,graphs,transformers,compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench import pages_of  # noqa: E402  (scripts/ is this script's own folder)

GROUPS = {  # page sizes of a prefill group: four A4 scans (6 tiles each), and the benchmark's mix
    "a4x4": [(1240, 1754)] * 4,
    "mix7": [(700, 500), (1000, 800), (1500, 900), (1190, 1684), (1684, 1190), (800, 2000), (1240, 1754)],
}


class PartTimer:
    """CUDA events around named modules, summed over every call (the vision tower runs twice)."""

    def __init__(self, parts: dict):
        import torch

        self.torch = torch
        self.parts = parts
        self.events: dict[str, list] = {}
        self.handles: dict[str, list] = {}
        self.attach(*parts)

    def attach(self, *names: str) -> None:
        """Time these modules from now on."""
        for name in names:
            module = self.parts[name]
            self.events[name] = []
            self.handles[name] = [
                module.register_forward_pre_hook(self._start(name)),
                module.register_forward_hook(self._stop(name)),
            ]

    def detach(self, *names: str) -> None:
        """Stop timing these modules (before a CUDA graph captures them: events are no graph's)."""
        for name in names:
            for handle in self.handles.pop(name, []):
                handle.remove()
            self.events.pop(name, None)

    def _start(self, name):
        def hook(module, args):
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.events[name].append([event, None])

        return hook

    def _stop(self, name):
        def hook(module, args, output):
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.events[name][-1][1] = event

        return hook

    def take(self) -> dict:
        self.torch.cuda.synchronize()
        result = {name: sum(a.elapsed_time(b) for a, b in pairs) for name, pairs in self.events.items()}
        for pairs in self.events.values():
            pairs.clear()
        return result


def measure(engine, group, prompt, timer, repeats: int) -> dict:
    """GPU time per page (events around the prefill: kernels and any wait for their launches) and
    the host's time to launch it; modules replayed from a CUDA graph are detached from the timer."""
    import torch

    engine._prefill(group, prompt)
    timer.take()
    totals: dict[str, float] = {}
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    whole = launch = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        start.record()
        engine._prefill(group, prompt)
        end.record()
        launch += time.perf_counter() - began
        torch.cuda.synchronize()
        whole += start.elapsed_time(end)
        for name, ms in timer.take().items():
            totals[name] = totals.get(name, 0.0) + ms
    per_page = len(group) * repeats
    return {
        "prefill_ms_per_page": round(whole / per_page, 2),
        "launch_ms_per_page": round(1000 * launch / per_page, 2),
    } | {f"{name}_ms_per_page": round(ms / per_page, 2) for name, ms in totals.items()}


def graphs_agree(engine, sides) -> dict:
    """Replayed graphs against one eager batch, per side, for counts of one chunk (1, 8) and of
    several (3 = 2 + 1, 13 = 8 + 4 + 1): the largest difference relative to the features' range."""
    import torch

    result = {}
    with torch.inference_mode():
        for side in sides:
            for count in (1, 3, 8, 13):
                pixels = torch.randn(count, 3, side, side, device="cuda", dtype=engine.dtype)
                eager, graphed = engine.views.eager(pixels), engine.views(pixels)
                spread = float((eager - graphed).abs().max() / eager.abs().max())
                result[f"{side}x{count}"] = round(spread, 4)
    return result


def top_kernels(engine, group, prompt, count: int = 20) -> list:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine._prefill(group, prompt)
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
        if us and not event.key.startswith(("aten::", "cudaLaunch", "ProfilerStep")):
            rows.append((us, event.count, event.key[:90]))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    return [
        {"ms": round(us / 1000, 2), "share": round(us / total, 3), "calls": n, "kernel": k} for us, n, k in rows[:count]
    ]


def compile_layers(model) -> None:
    """torch.compile each SAM block and each encoder layer (shapes vary with the tiles: dynamic)."""
    tower = model.model.vision_tower
    for layer in (*tower.sam_encoder.layers, *tower.vision_encoder.layers):
        layer.compile(dynamic=True)


def first_tokens(engine, groups, prompt) -> dict:
    """Each page's greedy first token and its logits, per group."""
    out = {}
    for name, group in groups.items():
        logits, _, _ = engine._prefill(group, prompt)
        out[name] = logits.float()
    return out


def agreement(a: dict, b: dict) -> dict:
    """How many pages choose the same first token, and the largest logit difference relative to the logits' range."""
    result = {}
    for name in a:
        same = int((a[name].argmax(-1) == b[name].argmax(-1)).sum())
        spread = float((a[name] - b[name]).abs().max() / a[name].abs().max())
        result[name] = {"pages": len(a[name]), "same": same, "max_relative_logit_difference": round(spread, 4)}
    return result


def unfold_sam_attention(model) -> None:
    """Back to transformers' SAM attention, which builds the (batch, heads, N, N) bias."""
    from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as modeling

    from dsocr_cli.engines.vision import FoldedSamAttention

    for module in model.modules():
        if isinstance(module, FoldedSamAttention):
            module.__class__ = modeling.DeepseekOcr2SamVisionSdpaAttention


@contextlib.contextmanager
def backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "math": SDPBackend.MATH}[name]  # fmt: skip
    with sdpa_kernel([chosen]):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", default="folded,graphs,transformers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    from dsocr_cli.engines.hf import load
    from dsocr_cli.options import TASK_PROMPTS, EngineOptions

    engine = load(EngineOptions(model=args.model, device="cuda"))
    prompt = TASK_PROMPTS["markdown"]
    prepare = engine.preparer(prompt)
    groups = {name: [(prepare(p), []) for p in pages_of(sizes)] for name, sizes in GROUPS.items()}
    model = engine.model
    tower = model.model.vision_tower
    timer = PartTimer({
        "sam": tower.sam_encoder,
        "qwen2_encoder": tower.vision_encoder,
        "text_model": model.model.language_model,
    })  # fmt: skip
    lengths = {name: [int(p.inputs["input_ids"].shape[1]) for p, _ in group] for name, group in groups.items()}
    versions = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(versions | {"prompt_tokens": lengths}), flush=True)
    kernels = top_kernels(engine, groups["a4x4"], prompt)
    print(json.dumps({"variant": "folded", "top_kernels_a4x4": kernels}), flush=True)
    for variant in args.variants.split(","):
        result = {"variant": variant}
        try:
            if variant == "graphs":  # the vision tower replayed from CUDA graphs, as the decoder runs it
                eager = first_tokens(engine, groups, prompt)
                timer.detach("sam", "qwen2_encoder")
                began = time.perf_counter()
                result["captured"] = engine.views.warm_up(engine._view_sides())
                result["capture_s"] = round(time.perf_counter() - began, 2)
                result["same_first_tokens_as_eager"] = agreement(eager, first_tokens(engine, groups, prompt))
                result["features_vs_eager"] = graphs_agree(engine, engine._view_sides())
            if variant == "transformers":  # SAM's attention as transformers ships it: a dense bias
                folded = first_tokens(engine, groups, prompt)
                unfold_sam_attention(model)
                result["same_first_tokens"] = agreement(folded, first_tokens(engine, groups, prompt))
            if variant == "compile":
                began = time.perf_counter()
                compile_layers(model)
                for group in groups.values():
                    engine._prefill(group, prompt)
                torch.cuda.synchronize()
                result["compile_s"] = round(time.perf_counter() - began, 1)
            context = backend(variant) if variant in ("efficient", "cudnn", "math") else contextlib.nullcontext()
            with context:
                for name, group in groups.items():
                    result[name] = measure(engine, group, prompt, timer, args.repeats)
        except Exception as exc:  # a backend that cannot run these shapes
            result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if engine.views.graphs:  # the next variants measure the vision tower's own modules again
            engine.views.graphs.clear()
            timer.attach("sam", "qwen2_encoder")
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
