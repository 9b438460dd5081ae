"""The run summary (schema `dsocr.summary/1`): counts, throughput and one line per input."""

from __future__ import annotations

from dsocr_cli import __version__
from dsocr_cli.discover import Rejected
from dsocr_cli.errors import show_path
from dsocr_cli.types import RunSummary

SUMMARY_SCHEMA = "dsocr.summary/1"


def summary_record(summary: RunSummary, rejected: list[Rejected], settings: dict, exit_code: int) -> dict:
    """summary.json (and --json): counts, throughput and one item per input, the rejected arguments
    listed after the documents."""
    seconds = summary.seconds or 1e-9
    items = [
        {
            "path": show_path(d.source.path),
            "key": d.source.key,
            "status": d.status,
            "reason": d.reason,
            "message": d.message,
            "pages": len(d.pages),
            "tokens": sum(p.prediction.tokens for p in d.pages),
            "finish": {f: sum(1 for p in d.pages if p.prediction.finish == f) for f in ("eos", "length", "repetition")},
            "seconds": round(d.seconds, 3),
            "outputs": list(d.outputs),
        }
        for d in summary.documents
    ]
    items += [
        {
            "path": show_path(r.path),
            "key": None,
            "status": "skipped" if r.skipped else "failed",
            "reason": r.reason,
            "message": r.message,
        }
        for r in rejected
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "dsocr": __version__,
        "exit_code": exit_code,
        "interrupted": summary.interrupted,
        "settings": settings,
        "documents": {
            "done": summary.count("done"),
            "skipped": summary.count("skipped") + sum(1 for r in rejected if r.skipped),
            "failed": summary.count("failed") + sum(1 for r in rejected if not r.skipped),
        },
        "pages": summary.pages,
        "tokens": summary.tokens,
        "seconds": round(summary.seconds, 3),
        "pages_per_second": round(summary.pages / seconds, 4),
        "tokens_per_second": round(summary.tokens / seconds, 2),
        "items": items,
    }
