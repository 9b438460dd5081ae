#!/usr/bin/env python3
"""Time the HTML report: writing it for a generated output tree of many documents, loading its
index in headless Chromium, and what it adds per page of a run. One JSON line per measurement.

    python scripts/report_bench.py --documents 10000 --tree /tmp/report-bench
    python scripts/report_bench.py --page-cost
    python scripts/report_bench.py --run-cost --pages 40

The tree holds document.json, raw outputs and summary.json as a run writes them (no page
images: the index never loads them and the views load them lazily).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from dsocr_cli.writers import report
from dsocr_cli.writers.files import write_json

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WORDS = [
    "the",
    "of",
    "model",
    "page",
    "layout",
    "block",
    "quokka",
    "table",
    "figure",
    "decoder",
    "token",
    "batch",
    "text",
    "image",
    "run",
]


def fake_page(rng: random.Random, number: int) -> tuple[dict, str]:
    """A page record and raw output shaped like a real one: ~12 blocks of a few dozen words."""
    blocks, raw = [], []
    for order in range(12):
        label = rng.choice(["title", "text", "text", "text", "table", "image_caption", "equation"])
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        y = 60 + order * 70
        blocks.append({"order": order, "label": label, "text": text, "boxes_px": [[80.0, y, 1100.0, y + 60.0]]})
        raw.append(f"<|ref|>{label}<|/ref|><|det|>[[67, {y}, 924, {y + 50}]]<|/det|>\n{text}\n")
    finish = rng.choices(["eos", "length", "repetition"], weights=[96, 2, 2])[0]
    files = {"markdown": f"pages/{number:04d}.md", "raw": f"pages/{number:04d}.raw.md"}
    files |= {"annotated": f"pages/{number:04d}.jpg", "plain": f"pages/{number:04d}.plain.jpg"}
    page = {
        "number": number,
        "width_px": 1190,
        "height_px": 1684,
        "dpi": 144.0,
        "scale": 2.0,
        "finish": finish,
        "tokens": rng.randint(200, 2000),
        "attempts": 1 if finish == "eos" else 2,
        "seconds": 0.35,
        "files": files,
        "defects": [],
        "blocks": blocks,
    }
    return page, "\n".join(raw)


def build_tree(out: Path, documents: int, max_pages: int) -> dict:
    """document.json and raw outputs for `documents` inputs, and their summary.json."""
    rng = random.Random(0)
    shutil.rmtree(out, ignore_errors=True)
    items = []
    for n in range(documents):
        key = f"batch-{n // 1000:02d}/report-{n:05d}.pdf"
        status = "failed" if rng.random() < 0.01 else "done"
        if status == "failed":
            items.append({"path": f"in/{key}", "key": key, "status": status, "reason": "corrupt", "message": "bad"})
            continue
        pages = []
        for number in range(1, rng.randint(1, max_pages) + 1):
            page, raw = fake_page(rng, number)
            (out / key / "pages").mkdir(parents=True, exist_ok=True)
            (out / key / page["files"]["raw"]).write_text(raw, encoding="utf-8")
            pages.append(page)
        record = {"schema": "dsocr.document/1", "source": {"path": f"in/{key}", "kind": "pdf", "key": key}}
        record |= {"settings": {}, "page_count": len(pages), "seconds": 1.0, "pages": pages}
        (out / key / "document.json").write_text(json.dumps(record), encoding="utf-8")
        finish = {f: sum(p["finish"] == f for p in pages) for f in ("eos", "length", "repetition")}
        items.append(
            {"path": f"in/{key}", "key": key, "status": status, "reason": "", "message": "", "pages": len(pages)}
            | {"tokens": sum(p["tokens"] for p in pages), "finish": finish, "seconds": 1.0, "outputs": []}
        )
    summary = {"schema": "dsocr.summary/1", "settings": {}, "documents": {}, "items": items}
    write_json(out / "summary.json", summary)
    return summary


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def chromium_load(index: Path, chromium: str) -> dict:
    """Navigation timings of the index in headless Chromium, and one click-to-sort."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        loads = []
        for _ in range(3):
            page.goto(index.as_uri(), wait_until="load")
            timing = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
            loads.append(json.loads(timing))
        sort_ms = page.evaluate(
            "() => { const t = performance.now(); document.querySelectorAll('th')[5].click(); "
            "document.body.offsetHeight; return performance.now() - t; }"
        )
        browser.close()
    return {
        "dom_content_loaded_ms": round(statistics.median(t["domContentLoadedEventEnd"] for t in loads)),
        "load_ms": round(statistics.median(t["loadEventEnd"] for t in loads)),
        "sort_click_ms": round(sort_ms),
    }


def tree_bench(args) -> None:
    out = Path(args.tree)
    if args.reuse and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
    else:
        summary = build_tree(out, args.documents, args.max_pages)
    pages = sum(i.get("pages", 0) for i in summary["items"])
    views = 0.0 if args.reuse else timed(lambda: report.write_report(out, summary, rewrite_views=True))
    index = timed(lambda: report.write_report(out, summary))
    line = {"bench": "tree", "documents": args.documents, "pages": pages, "write_views_and_index_s": round(views, 2)}
    line |= {"index_only_s": round(index, 2), "index_bytes": (out / report.REPORT_NAME).stat().st_size}
    if args.chromium and Path(args.chromium).is_file():
        line |= chromium_load(out / report.REPORT_NAME, args.chromium)
    print(json.dumps(line), flush=True)


def page_cost(args) -> None:
    """What the report adds to each page of a run: the plain JPEG and the page's part of the view."""
    import io

    import pymupdf
    from PIL import Image

    from dsocr_cli.samples import make_pdf

    pdf = make_pdf(Path(args.tree) / "sample.pdf", pages=1)
    with pymupdf.open(pdf) as doc:
        pix = doc[0].get_pixmap(dpi=144)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)

    def encode():
        image.save(io.BytesIO(), format="JPEG", quality=85)

    rng = random.Random(1)
    pages = [fake_page(rng, n) for n in range(1, 11)]
    record = {"source": {"path": "x.pdf", "key": "x.pdf"}, "pages": [p for p, _ in pages]}
    raw = {p["number"]: r for p, r in pages}
    jpeg = statistics.median(timed(encode) for _ in range(20))
    view = statistics.median(timed(lambda: report.document_view(record, raw, "x.pdf")) for _ in range(20)) / 10
    line = {"bench": "page_cost", "image": f"{image.width}x{image.height}", "plain_jpeg_ms": round(jpeg * 1000, 1)}
    line |= {"view_per_page_ms": round(view * 1000, 2)}
    print(json.dumps(line), flush=True)


def run_cost(args) -> None:
    """Whole runs with and without the report, alternating. The replay engine answers at once, so
    rendering and writing are all there is: the report's share is an upper bound of a real run's."""
    import subprocess
    import sys

    from dsocr_cli.samples import make_pdf

    folder = Path(args.tree)
    shutil.rmtree(folder, ignore_errors=True)
    pdf = make_pdf(folder / "in" / "doc.pdf", pages=args.pages)
    rng = random.Random(2)
    for number in range(1, args.pages + 1):
        (folder / "recorded" / "doc.pdf" / "pages").mkdir(parents=True, exist_ok=True)
        (folder / "recorded" / "doc.pdf" / "pages" / f"{number:04d}.raw.md").write_text(fake_page(rng, number)[1])
    import resource

    seconds: dict[str, list[float]] = {"--report": [], "--no-report": []}
    cpu: dict[str, list[float]] = {"--report": [], "--no-report": []}
    for _ in range(args.repeats):
        for flag in seconds:
            shutil.rmtree(folder / "out", ignore_errors=True)
            command = [sys.executable, "-m", "dsocr_cli", "pdf", str(pdf), "-o", str(folder / "out"), "--json", flag]
            command += ["--engine", "replay", "--model", str(folder / "recorded"), "--quiet"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds[flag].append(json.loads(result.stdout)["seconds"])
            cpu[flag].append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3))
    with_report, without = statistics.median(seconds["--report"]), statistics.median(seconds["--no-report"])
    line = {"bench": "run_cost", "pages": args.pages, "engine": "replay", "with_report_s": with_report}
    line |= {"without_report_s": without, "report_ms_per_page": round((with_report - without) / args.pages * 1000, 1)}
    added_cpu = statistics.median(cpu["--report"]) - statistics.median(cpu["--no-report"])
    line |= {"report_cpu_ms_per_page": round(added_cpu / args.pages * 1000, 1)}
    print(json.dumps(line | {"runs": seconds, "cpu_s": cpu}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10000)
    parser.add_argument("--max-pages", type=int, default=5, help="pages per document: 1..N")
    parser.add_argument("--tree", default="/tmp/report-bench")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--reuse", action="store_true", help="keep the tree and views an earlier call generated")
    parser.add_argument("--page-cost", action="store_true", help="time the per-page work instead")
    parser.add_argument("--run-cost", action="store_true", help="time whole runs with and without the report")
    parser.add_argument("--pages", type=int, default=40, help="--run-cost: pages of the PDF")
    parser.add_argument("--repeats", type=int, default=3, help="--run-cost: runs of each kind")
    args = parser.parse_args()
    if args.run_cost:
        run_cost(args)
    elif args.page_cost:
        page_cost(args)
    else:
        tree_bench(args)


if __name__ == "__main__":
    main()
