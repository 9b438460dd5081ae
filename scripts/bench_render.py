"""Pages per second of the render pool alone (no engine), one JSON line per configuration.

    python scripts/bench_render.py [--pages 200] [--workers 1 2] [--split 1 8]

`--split 8` cuts the same pages into 8 PDFs, so several documents can render at once.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from dsocr_cli.discover import discover
from dsocr_cli.options import RenderOptions
from dsocr_cli.samples import make_pdf
from dsocr_cli.schedule import page_stream
from dsocr_cli.types import PageImage


def pages_per_second(files: list[str], workers: int) -> dict:
    """Every page of `files` through page_stream, timed from the first request to the last page."""
    sources, _ = discover(files)
    started = time.perf_counter()
    pages = sum(isinstance(item, PageImage) for item in page_stream(sources, RenderOptions(), workers=workers))
    seconds = time.perf_counter() - started
    return {"pages": pages, "seconds": round(seconds, 2), "pages_per_s": round(pages / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--split", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for split in args.split:
            files = [str(make_pdf(Path(folder, f"{split}-{i}.pdf"), pages=args.pages // split)) for i in range(split)]
            for workers in args.workers:
                record = {"documents": split, "workers": workers, "cores": os.cpu_count(), "dpi": RenderOptions().dpi}
                print(json.dumps(record | pages_per_second(files, workers)), flush=True)


if __name__ == "__main__":
    main()
