"""The HTML report of an output tree: OUT/report.html lists every input (sortable, filterable) and
OUT/<key>/report.html shows a document's pages beside their text, with the layout boxes as an
overlay. Static files that open from disk, with no server and no network.

Everything that comes from the run (file names, text, model output) is escaped as data; the only
script and style are the report's own (files in report_assets/), allowed by their hashes in a
Content-Security-Policy that forbids any other. The same functions serve the end of a run and
`dsocr report OUT`, which reads nothing but the tree's document.json files and summary.json.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from html import escape
from importlib import resources
from pathlib import Path
from string import Template

from dsocr_cli.errors import ExitCode, NoInputError, show_path
from dsocr_cli.writers.files import write_text
from dsocr_cli.writers.lock import OutputLock
from dsocr_cli.writers.safe_html import block_body, url

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FINISHES = ("eos", "length", "repetition")
FLAG_WORDS = {"repetition": "loop", "length": "cut", "retried": "retried"}
REVIEW_LINKS = 12  # page links per document in the index; the document view lists them all
_FLAG_COLUMNS = (("repetition", "repetition"), ("length", "length"), ("retried", "retries"))


@functools.cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("report_assets", name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _html_page(template: str, script: str, **fields: str) -> str:
    """A template filled in, with the stylesheet and script inlined and allowed by hash alone."""
    style, code = _asset("report.css"), _asset(script)
    csp = (
        f"default-src 'none'; script-src {_hash(code)}; style-src {_hash(style)}; img-src 'self' file:; "
        "base-uri 'none'; form-action 'none'"
    )
    return Template(_asset(template)).substitute(csp=csp, style=style, script=code, **fields)


# One document's pages


def page_flags(page: dict) -> list[str]:
    """Why a page deserves a look: it looped, was cut at the token limit, or needed a retry."""
    flags = [page["finish"]] if page.get("finish") in ("length", "repetition") else []
    return flags + (["retried"] if page.get("attempts", 1) > 1 else [])


def document_view(record: dict, raw: dict[int, str], key: str) -> str:
    """OUT/<key>/report.html: every page of one document, shown one at a time."""
    pages = record.get("pages", [])
    strip = "".join(
        f'<a href="#p{int(p["number"])}"{" class=flagged" if page_flags(p) else ""}>{int(p["number"])}</a>'
        for p in pages  # int(): numbers, never markup, even from a foreign tree
    )
    return _html_page(
        "document.html",
        "document.js",
        title=escape(record.get("source", {}).get("path", key)),
        index=escape("../" * (key.count("/") + 1) + REPORT_NAME),
        pages=str(len(pages)),
        strip=strip,
        sections="\n".join(_page_section(p, raw.get(p["number"])) for p in pages),
    )


def _page_section(page: dict, raw: str | None) -> str:
    number, width, height = (int(page[k]) for k in ("number", "width_px", "height_px"))
    files = page.get("files", {})
    image = files.get("plain") or files.get("annotated", "")
    rects = "".join(
        f'<rect data-block="{int(b["order"])}" data-label="{escape(b["label"])}" x="{x1:.1f}" y="{y1:.1f}" '
        f'width="{x2 - x1:.1f}" height="{y2 - y1:.1f}"><title>{escape(b["label"])}</title></rect>'
        for b in page.get("blocks", [])
        for x1, y1, x2, y2 in (map(float, box) for box in b.get("boxes_px", []))
    )
    blocks = "".join(
        f'<div class="block" data-block="{int(b["order"])}" data-label="{escape(b["label"])}">'
        f'<span class="label">{escape(b["label"])}</span>{block_body(b)}</div>'
        for b in page.get("blocks", [])
    )
    raw_text = escape(raw, quote=False) if raw is not None else "(the raw output file is missing)"
    return (
        f'<section class="page" id="p{number}" data-number="{number}" data-flags="{" ".join(page_flags(page))}">'
        f"<h2>Page {number}</h2>{_page_facts(page, bool(files.get('plain')))}"
        f'<div class="panes"><div class="sheet"><img class="page-image" loading="lazy" src="{escape(url(image))}" '
        f'width="{width}" height="{height}" alt="page {number}">'
        f'<svg class="overlay" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'xmlns="http://www.w3.org/2000/svg">{rects}</svg><span class="hover-label" hidden></span></div>'
        f'<div class="text">{blocks or "<p class=muted>(no text)</p>"}'
        f"<details class=raw><summary>Raw model output</summary><pre>{raw_text}</pre></details></div></div>"
        "</section>"
    )


def _page_facts(page: dict, plain: bool) -> str:
    finish, attempts = page.get("finish", "?"), int(page.get("attempts", 1))
    facts = [
        f'<span class="{"warn" if finish != "eos" else ""}">finish: {escape(str(finish))}</span>',
        f"{int(page.get('tokens', 0))} tokens",
        f'<span class="{"warn" if attempts > 1 else ""}">attempts: {attempts}</span>',
        f"{float(page.get('seconds', 0)):.2f} s",
    ]
    if page.get("defects"):
        facts.append(f'<span class="warn">repaired: {escape("; ".join(page["defects"]))}</span>')
    if not plain:
        facts.append("boxes are drawn into this image (written before plain page images were kept)")
    return f'<div class="facts">{" · ".join(facts)}</div>'


# The index of every input


COLUMNS = ("path", "href", "status", "reason", "message", "pages", "tokens", *FINISHES, "retries", "seconds")
COLUMNS += ("flags", "review", "more")


@dataclass(frozen=True)
class Row:
    """One input in the index: the run's verdict (summary.json) and what its document.json holds."""

    path: str
    key: str | None
    status: str
    reason: str
    message: str
    record: dict | None
    item: dict

    def values(self) -> list:
        """The row as the index's data, in COLUMNS order: counts, flags and pages to review."""
        href = f"{url(self.key)}/{REPORT_NAME}" if self.key and self.record is not None else None
        pages = self.record.get("pages", []) if self.record is not None else []
        flagged = [[p["number"], f] for p in pages for f in page_flags(p)]
        if self.record is None:
            item = self.item
            counts = [
                item.get("pages", 0),
                item.get("tokens", 0),
                *(item.get("finish", {}).get(f, 0) for f in FINISHES),
            ]
            counts += [0, item.get("seconds", 0)]
        else:
            counts = [len(pages), sum(p.get("tokens", 0) for p in pages)]
            counts += [sum(1 for p in pages if p.get("finish") == f) for f in FINISHES]
            counts += [sum(1 for p in pages if p.get("attempts", 1) > 1), self.record.get("seconds", 0)]
        found = {f for _, f in flagged}
        flags = (["failed"] if self.status == "failed" else []) + [f for f in FLAG_WORDS if f in found]
        review = flagged[:REVIEW_LINKS]
        return [
            self.path,
            href,
            self.status,
            self.reason,
            self.message,
            *counts,
            " ".join(flags),
            review,
            len(flagged) - len(review),
        ]


def rows(summary: dict | None, documents: dict[str, dict]) -> list[Row]:
    """The run's inputs in its order, then documents in the tree that the run did not list."""
    listed, out = set(), []
    for item in (summary or {}).get("items", []):
        key = item.get("key")
        listed.add(key)
        record = documents.get(key) if key else None
        status, reason, message = item.get("status", ""), item.get("reason") or "", item.get("message") or ""
        out.append(Row(item.get("path", ""), key, status, reason, message, record, item))
    for key in sorted(set(documents) - listed):
        record = documents[key]
        path = record.get("source", {}).get("path", key)
        out.append(Row(path, key, "done", "", "from an earlier run", record, {}))
    return out


def index_page(summary: dict | None, documents: dict[str, dict], title: str) -> str:
    """OUT/report.html: totals and settings on top, then every input. The rows travel as JSON
    (escaped so that no text can close the script element) and the page's script renders a few
    hundred at a time: 10,000 inputs load, sort and filter in well under a second."""
    table = [r.values() for r in rows(summary, documents)]
    data = json.dumps(
        {"columns": COLUMNS, "words": FLAG_WORDS, "rows": table}, ensure_ascii=False, separators=(",", ":")
    )
    for char in "<>&":
        data = data.replace(char, f"\\u{ord(char):04x}")
    return _html_page(
        "index.html",
        "index.js",
        title=escape(title),
        totals=_totals(summary, table),
        settings=_settings(summary, documents),
        data=data,
    )


def _totals(summary: dict | None, table: list[list]) -> str:
    def item(name: str, value) -> str:
        return f"<li>{escape(name)} <b>{escape(str(value))}</b></li>"

    column = {name: i for i, name in enumerate(COLUMNS)}
    with_output = [r for r in table if r[column["href"]]]
    in_tree = [
        item("documents with output", len(with_output)),
        *(item(k, sum(r[column[k]] for r in with_output)) for k in ("pages", "tokens")),
        *(item(f"pages {FLAG_WORDS[f]}", sum(r[column[k]] for r in with_output)) for f, k in _FLAG_COLUMNS),
    ]
    parts = [f'<ul class="totals"><li class="muted">In this folder:</li>{"".join(in_tree)}</ul>']
    if summary:
        docs = summary.get("documents", {})
        run = [item(k, docs.get(k, 0)) for k in ("done", "skipped", "failed")]
        run += [item(k.replace("_", " "), summary.get(k, 0)) for k in ("pages", "tokens", "seconds")]
        run += [item(k.replace("_", " "), summary.get(k, 0)) for k in ("pages_per_second", "tokens_per_second")]
        run.append(item("exit code", summary.get("exit_code", "?")))
        if summary.get("interrupted"):
            run.append('<li class="status-failed">interrupted</li>')
        parts.insert(0, f'<ul class="totals"><li class="muted">Last run:</li>{"".join(run)}</ul>')
    else:
        parts.append('<p class="muted">No summary.json: the inputs listed are the documents found in the folder.</p>')
    return "\n".join(parts)


def _settings(summary: dict | None, documents: dict[str, dict]) -> str:
    if summary:
        values = {**summary.get("settings", {}), **{f"engine.{k}": v for k, v in summary.get("engine", {}).items()}}
    else:
        distinct = {json.dumps(r.get("settings", {}), sort_keys=True) for r in documents.values()}
        values = json.loads(distinct.pop()) if len(distinct) == 1 else {"settings": f"{len(distinct)} different"}
    pairs = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(json.dumps(v, ensure_ascii=False))}</dd>" for k, v in values.items()
    )
    return f'<details class="settings"><summary>Settings</summary><dl>{pairs}</dl></details>'


# Reading and writing the tree


def read_documents(out: Path) -> tuple[dict[str, dict], list[str]]:
    """document.json records under OUT by their folder (relative, POSIX), and those unreadable."""
    documents: dict[str, dict] = {}
    unreadable: list[str] = []
    for folder, dirs, files in os.walk(out):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "document.json" not in files:
            continue
        dirs[:] = [d for d in dirs if d not in ("pages", "figures")]
        path = Path(folder) / "document.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not str(record.get("schema", "")).startswith("dsocr.document/") or not isinstance(record["pages"], list):
                raise ValueError("not a dsocr document record")
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            unreadable.append(f"{show_path(path)}: cannot be read ({exc})")
            continue
        documents[Path(folder).relative_to(out).as_posix()] = record
    return documents, unreadable


def raw_outputs(folder: Path, record: dict) -> dict[int, str]:
    """Each page's raw model output, read from the files the record names."""
    raw = {}
    for page in record.get("pages", []):
        with contextlib.suppress(OSError, KeyError):
            raw[page["number"]] = (folder / page["files"]["raw"]).read_text(encoding="utf-8", errors="replace")
    return raw


def write_document_view(folder: Path, record: dict, raw: dict[int, str], key: str) -> Path:
    """OUT/<key>/report.html from a record and its raw outputs: at commit, and from the tree alone by
    `write_report`."""
    path = folder / REPORT_NAME
    write_text(path, document_view(record, raw, key))
    return path


def write_report(out: Path, summary: dict | None, rewrite_views: bool = False) -> tuple[Path, list[str]]:
    """Write OUT/report.html, and the page view of every document that lacks one (all with
    `rewrite_views`). Returns the index and the document.json files that could not be read."""
    documents, unreadable = read_documents(out)
    if summary is None and not documents and not unreadable:
        raise NoInputError(f"{show_path(out)} holds no summary.json and no document.json", "give a folder of -o")
    for key, record in list(documents.items()):
        folder = out.joinpath(*key.split("/"))
        if rewrite_views or not (folder / REPORT_NAME).is_file():
            try:
                write_document_view(folder, record, raw_outputs(folder, record), key)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a record not shaped as dsocr writes
                unreadable.append(f"{show_path(folder / 'document.json')}: cannot be shown ({type(exc).__name__})")
                del documents[key]
    path = out / REPORT_NAME
    write_text(path, index_page(summary, documents, f"dsocr report: {show_path(out.resolve().name)}"))
    return path, unreadable


def read_summary(out: Path) -> dict | None:
    """OUT/summary.json if there is a readable one; a merged or copied tree may have none."""
    path = out / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot be read (%s); the report lists the documents found instead", show_path(path), exc)
        return None
    ours = isinstance(summary, dict) and str(summary.get("schema", "")).startswith("dsocr.summary/")
    return summary if ours else None


def rebuild_report(out: Path, wait: bool = False) -> ExitCode:
    """`dsocr report OUT`: every view and the index again, from the tree alone, under OUT's lock."""
    if not out.is_dir():
        raise NoInputError(f"{show_path(out)}: no such folder", "give a folder written by dsocr -o")
    lock = OutputLock(out, wait=wait).acquire()
    try:
        summary = read_summary(out)
        path, unreadable = write_report(out, summary, rewrite_views=True)
    finally:
        lock.release()
    for line in unreadable:
        log.warning("%s", line)
    log.info("report: %s", show_path(path))
    return ExitCode.FAILED_INPUTS if unreadable else ExitCode.OK
