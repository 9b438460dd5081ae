#!/usr/bin/env python3
"""Scale-out benchmark through the real `dsocr` command: one JSON line per configuration.

Generates PDFs of realistic pages (a title, 12 text blocks, a table and a figure each) and runs
    gpu-1, gpu-2   the model (--model DIR) at --workers 1 and --workers 2: pages/s and the speed-up
    driver         the replay engine (no model) with every output on (crops, annotated pages, the
                   report, layout.pdf, searchable.pdf) and two replay workers (reading recorded
                   output costs them nothing): the driver's ceiling, the whole pipeline on all the
                   machine's cores; with gpu-1 in the same call (or --one-gpu PAGES_PER_S) its line
                   says how many GPUs' pages/s one driver sustains (`x_one_gpu`)

Needs only dsocr's own dependencies and, for gpu-*, a model folder (for example the random-weight
full-size checkpoint `scripts/bench.py --build DIR` writes, or `dsocr selftest --save-model DIR`).

    python scripts/bench_scale.py --model /tmp/full --configs gpu-1,gpu-2,driver --pages 400
    python scripts/bench_scale.py --configs driver --pages 2000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 595.0, 842.0  # A4 in points
WORDS = [
    *("the", "of", "archive", "records", "page", "model", "layout", "table", "figure", "document", "scan"),
    *("batch", "driver", "worker", "river", "mountain", "council", "budget", "annual", "report", "results"),
    *("method", "sample", "measured", "value", "section", "chapter", "appendix", "total", "north"),
]


def grid(x1: float, y1: float, x2: float, y2: float) -> str:
    """A box in points -> DeepSeek-OCR's 0-999 grid, as the model writes it."""
    box = [x1 / WIDTH * 999, y1 / HEIGHT * 999, x2 / WIDTH * 999, y2 / HEIGHT * 999]
    return "[[" + ", ".join(str(round(v)) for v in box) + "]]"


def block(label: str, rect: tuple, text: str) -> str:
    return f"<|ref|>{label}<|/ref|><|det|>{grid(*rect)}<|/det|>\n{text}\n\n"


def figure_png(rng: random.Random) -> bytes:
    """A plot-like raster figure, as scanned reports embed them."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (900, 500), "white")
    draw = ImageDraw.Draw(image)
    for series in range(3):
        colour = [(200, 40, 40), (40, 120, 200), (40, 160, 60)][series]
        points = [(40 + i * 17, 250 + rng.randint(-200, 200)) for i in range(50)]
        draw.line(points, fill=colour, width=3)
    draw.rectangle((30, 20, 880, 480), outline="black", width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FIGURES = 8  # distinct figures, drawn once: encoding a PNG for every page made the corpus slow to build


def realistic_page(doc, rng: random.Random, number: int, figures: list[bytes]) -> str:
    """Draw one page; return the raw grounding output the model would give for it."""
    import pymupdf

    page = doc.new_page(width=WIDTH, height=HEIGHT)
    raw = ""
    title = f"Annual report {number}: {' '.join(rng.choices(WORDS, k=4))}"
    page.insert_text((50, 72), title, fontsize=16)
    raw += block("title", (50, 55, 545, 80), f"# {title}")
    column = (WIDTH - 120) / 2
    for i in range(12):
        x = 50 + (i % 2) * (column + 20)
        y = 95 + (i // 2) * 62
        text = " ".join(rng.choices(WORDS, k=45)).capitalize() + "."
        page.insert_textbox(pymupdf.Rect(x, y, x + column, y + 58), text, fontsize=8)
        raw += block("text", (x, y, x + column, y + 58), text)
    rows = []
    for r in range(5):
        cells = []
        for c in range(4):
            cell = pymupdf.Rect(50 + c * 123, 475 + r * 24, 173 + c * 123, 499 + r * 24)
            value = f"{rng.randint(0, 99999):,}" if r else f"col {c + 1}"
            page.draw_rect(cell, color=(0, 0, 0), width=0.5)
            page.insert_text((cell.x0 + 5, cell.y1 - 8), value, fontsize=8)
            cells.append(f"<td>{value}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    raw += block("table", (50, 475, 542, 595), "<table>" + "".join(rows) + "</table>")
    page.insert_image(pymupdf.Rect(150, 610, 445, 774), stream=rng.choice(figures))
    raw += block("image", (150, 610, 445, 774), "")
    caption = f"Figure {number}: {' '.join(rng.choices(WORDS, k=6))}"
    page.insert_text((150, 790), caption, fontsize=8)
    raw += block("image_caption", (150, 780, 445, 795), caption)
    return raw


def make_corpus(folder: Path, pages: int, per_document: int) -> Path:
    """PDFs of `per_document` realistic pages in folder/in, their recorded raw outputs in folder/recorded."""
    import pymupdf

    marker = folder / "corpus.json"
    wanted = {"pages": pages, "per_document": per_document, "figures": FIGURES}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder  # the same corpus, made earlier (for example while the model was being built)
    rng = random.Random(12)
    figures = [figure_png(rng) for _ in range(FIGURES)]
    made = 0
    while made < pages:
        count = min(per_document, pages - made)
        name = f"report-{made // per_document:04d}.pdf"
        doc = pymupdf.open()
        for n in range(count):
            raw = realistic_page(doc, rng, n + 1, figures)
            recorded = folder / "recorded" / name / "pages" / f"{n + 1:04d}.raw.md"
            recorded.parent.mkdir(parents=True, exist_ok=True)
            recorded.write_text(raw, encoding="utf-8")
        (folder / "in").mkdir(parents=True, exist_ok=True)
        doc.save(folder / "in" / name, garbage=3, deflate=True)
        doc.close()
        made += count
    marker.write_text(json.dumps(wanted))
    return folder


def run_dsocr(args: list[str], env: dict) -> dict:
    """The real command, watched from outside: wall seconds, and the main process's peak RSS and
    CPU seconds (the driver's own cost, which a busy machine does not inflate as it does time):
    all its threads, and its main thread alone (the one that must keep up with every GPU)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "dsocr_cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak, cpu, main_cpu = 0.0, 0.0, 0.0
    proc = Path(f"/proc/{process.pid}")
    while process.poll() is None:
        try:
            rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS:"))
            peak = max(peak, int(rss.split()[1]) / 1024)
            cpu = cpu_seconds(proc / "stat")
            main_cpu = cpu_seconds(proc / "task" / str(process.pid) / "stat")
        except (OSError, StopIteration, IndexError):
            pass
        time.sleep(0.2)
    return {
        "exit_code": process.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "driver_peak_rss_mb": round(peak),
        "driver_cpu_seconds": round(cpu, 1),
        "driver_main_thread_cpu_seconds": round(main_cpu, 1),
        "stderr": process.stderr.read()[-2000:],
    }


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds of a process or thread, from its /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def configuration(name: str, corpus: Path, options) -> tuple[list[str], int]:
    out = corpus / f"out-{name}"
    base = ["run", str(corpus / "in"), "-o", str(out), "--force", "--json"]
    if name.startswith("gpu-"):
        workers = int(name.split("-")[1])
        extra = ["--model", options.model, "--max-new-tokens", str(options.max_new_tokens)]
        return base + extra + ["--workers", str(workers), *options.dsocr_args], workers
    workers = options.workers
    extra = ["--engine", "replay", "--model", str(corpus / "recorded"), "--layout-pdf", "--searchable-pdf"]
    return base + extra + ["--workers", str(workers)], workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="gpu-1,gpu-2,driver")
    parser.add_argument("--model", help="model folder for the gpu-* configurations")
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--per-document", type=int, default=20, help="pages per generated PDF")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="replay workers for the driver configuration")
    parser.add_argument("--one-gpu", type=float, help="one GPU's pages/s, for x_one_gpu when gpu-1 is not run")
    parser.add_argument("--folder", type=Path, help="keep the corpus and outputs here (default: a temporary one)")
    parser.add_argument("dsocr_args", nargs="*", help="more dsocr flags for the gpu-* runs (after --)")
    options = parser.parse_args()
    configs = [c.strip() for c in options.configs.split(",") if c.strip()]
    if any(c.startswith("gpu-") for c in configs) and not options.model:
        parser.error("the gpu-* configurations need --model")
    folder = options.folder or Path(tempfile.mkdtemp(prefix="dsocr-scale-"))
    started = time.perf_counter()
    corpus = make_corpus(folder, options.pages, options.per_document)
    made = round(time.perf_counter() - started, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(json.dumps({"corpus": str(folder), "pages": options.pages, "seconds": made, "cores": cores}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    one_gpu = options.one_gpu
    for name in configs:
        args, workers = configuration(name, corpus, options)
        line = {"config": name, "workers": workers, **run_dsocr(args, env)}
        summary = corpus / f"out-{name}" / "summary.json"
        if summary.is_file():
            record = json.loads(summary.read_text())
            line.update(
                pages=record["pages"],
                pages_per_second=record["pages_per_second"],
                tokens_per_second=record["tokens_per_second"],
                run_seconds=record["seconds"],
                driver_cpu_ms_per_page=round(1000 * line["driver_cpu_seconds"] / max(1, record["pages"]), 1),
                driver_main_thread_cpu_ms_per_page=round(
                    1000 * line["driver_main_thread_cpu_seconds"] / max(1, record["pages"]), 1
                ),
                workers_detail=record.get("engine", {}).get("workers"),
            )
            if name == "gpu-1":
                one_gpu = record["pages_per_second"]
            if name == "driver" and one_gpu:
                line["x_one_gpu"] = round(record["pages_per_second"] / one_gpu, 2)
        if line["exit_code"] == 0:
            del line["stderr"]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
