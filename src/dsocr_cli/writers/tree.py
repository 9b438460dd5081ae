"""The OUT tree. Each document is staged in a hidden folder and moved into place whole, so a
reader never sees a half-written document and a crash leaves nothing that looks done.

    OUT/summary.json                      the run summary
    OUT/<key>/document.md                 all pages, joined with <!-- dsocr:page N --> comments
    OUT/<key>/document.json               pages, blocks, boxes, finish reasons, timings
    OUT/<key>/pages/0001.md               one page's markdown
    OUT/<key>/pages/0001.raw.md           the model's raw output, grounding tags included
    OUT/<key>/pages/0001.jpg              the page with its layout boxes drawn
    OUT/<key>/pages/0001.plain.jpg        the page as the model saw it, under the report's box overlay
    OUT/<key>/figures/0001-01.png         figure crops, linked from the markdown
    OUT/<key>/layout.pdf                  with --layout-pdf: the annotated pages in one PDF
    OUT/<key>/searchable.pdf              with --searchable-pdf: the input with an invisible text layer
    OUT/<key>/report.html                 the report's view of the document: pages beside their text
    OUT/report.html                       the report's index of every input (not with --no-report)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import threading
import uuid
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from dsocr_cli.errors import SetupError, show_path
from dsocr_cli.grounding import to_markdown
from dsocr_cli.options import OutputOptions
from dsocr_cli.render import fingerprint
from dsocr_cli.types import Block, Box, PageResult, Source
from dsocr_cli.writers import document as docjson
from dsocr_cli.writers import pdf_files, report
from dsocr_cli.writers.files import replace_dir, write_json, write_text
from dsocr_cli.writers.images import Painter, paint_page
from dsocr_cli.writers.lock import OutputLock
from dsocr_cli.writers.pdf import PageText

log = logging.getLogger(__name__)

STAGING = ".dsocr-staging"
MAX_PENDING_WRITES = 8  # per document: bounds the page files held while they are written


def prepare_out(out: Path) -> Path:
    """Fail before the model loads if OUT is a file or cannot be written."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"output {show_path(out)} is a file, not a folder", "choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dsocr-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SetupError(
            f"output folder {show_path(out)} is not writable ({exc.strerror})", "choose another -o"
        ) from None
    return out


def clear_debris(out: Path) -> None:
    """What a killed run left: its staging area and half-written top-level files. Only safe under the lock."""
    shutil.rmtree(out / STAGING, ignore_errors=True)
    for leftover in out.glob(".tmp-*"):
        leftover.unlink(missing_ok=True)


def is_done(folder: Path, source: Source, settings: dict) -> bool:
    """A document is done when its folder holds a document.json for the same input and settings."""
    try:
        record = json.loads((folder / "document.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if record.get("schema") != docjson.DOCUMENT_SCHEMA or record.get("settings") != settings:
        return False
    recorded = record.get("source", {})
    try:
        st = source.path.stat()
    except OSError:
        return False
    if recorded.get("bytes") != st.st_size:
        return False
    return recorded.get("mtime") == st.st_mtime or recorded.get("sha256") == fingerprint(source.path)["sha256"]


def figure_crops(result: PageResult, stem: str) -> list[tuple[int, str, Box]]:
    """(block order, file name, box) of each figure crop the page gets: figures/<stem>-NN.png."""
    crops = []
    for block in result.parsed.blocks:
        if block.label == "image":
            for box in block.boxes:
                crops.append((block.order, f"figures/{stem}-{len(crops) + 1:02d}.png", box))
    return crops


class DocumentFolder:
    """Writes one document's files into staging as its pages arrive; `commit` moves them into place.

    `commit` may run on another thread than `add_page` (the pipeline commits in the background),
    and `abort` may come from the main thread while it runs: the final rename happens only if the
    document was not aborted, so an aborted document leaves nothing in the tree."""

    def __init__(
        self,
        out: Path,
        source: Source,
        options: OutputOptions | None = None,
        password: str | None = None,
        file_writer: Executor | None = None,
        painter: Painter | None = None,
    ):
        self.out = out
        self.source = source
        self.options = options or OutputOptions(out=out)
        self.password = password
        self.final = out.joinpath(*source.key.split("/"))
        self.staging = out / STAGING / uuid.uuid4().hex
        self.pages: dict[int, dict] = {}
        self.markdown: dict[int, str] = {}
        self.texts: dict[int, PageText] = {}  # per page, for the searchable PDF
        self.raw: dict[int, str] = {}  # raw model output by page number, for the report's view
        self.file_writer = file_writer  # writes the page files off the main thread
        self.pending: deque[Future] = deque()
        self.painter = painter or Painter(processes=0)
        self.jobs: list[Future] = []  # the pages' images and the document's PDFs being made
        self.lock = threading.Lock()  # the final rename against an abort from another thread
        self.aborted = False

    def add_page(self, result: PageResult) -> None:
        """Write the page's markdown and raw output; its images are made by the painter's
        processes and waited for at commit."""
        page = result.page
        stem = f"{page.number:04d}"
        crops = figure_crops(result, stem)
        links: dict[int, list[str]] = {}
        for order, name, _ in crops:
            links.setdefault(order, []).append(name)

        def link(block: Block, k: int) -> str | None:
            names = links.get(block.order, [])
            return names[k] if k < len(names) else None

        markdown = to_markdown(result.parsed.blocks, link)
        page_markdown = to_markdown(result.parsed.blocks, lambda b, k: f"../{link(b, k)}" if link(b, k) else None)
        files = {
            "markdown": f"pages/{stem}.md",
            "raw": f"pages/{stem}.raw.md",
            "annotated": f"pages/{stem}.jpg",
        }
        if self.options.report:
            files["plain"] = f"pages/{stem}.plain.jpg"
            self.raw[page.number] = result.prediction.text
        self._in_background(write_text, self.staging / files["markdown"], page_markdown)
        self._in_background(write_text, self.staging / files["raw"], result.prediction.text)
        painted = [(name, box) for _, name, box in crops]
        if getattr(page, "inputs", None) is not None:  # the painter needs the pixels, not the model's inputs
            result = dataclasses.replace(result, page=dataclasses.replace(page, inputs=None))
        args = (result, self.staging, files["annotated"], painted, self.options.figure_dpi, self.password)
        self.jobs.append(self.painter.submit(paint_page, *args, files.get("plain")))
        self.pages[page.index] = docjson.page_record(result, files, links)
        self.markdown[page.index] = markdown
        if self.options.searchable_pdf:
            self.texts[page.index] = PageText.from_result(result)

    def _in_background(self, write, *args) -> None:
        """The engine waits while the main thread writes, so a page's files (each written whole and
        flushed to disk) are written by worker threads; a few at most are in flight, and commit
        waits for them."""
        if self.file_writer is None:
            write(*args)
            return
        while len(self.pending) >= MAX_PENDING_WRITES:
            self.pending.popleft().result()
        self.pending.append(self.file_writer.submit(write, *args))

    def _wait_for_writes(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def commit(self, fingerprint: dict, settings: dict, seconds: float) -> list[str]:
        """Write document.md and document.json, wait for the page files, the painter's files and
        the PDFs, then move the folder into place. Returns its files."""
        self._wait_for_writes()
        order = sorted(self.pages)
        painting = list(self.jobs)
        if self.options.searchable_pdf:  # queued first: it needs nothing the painter is still writing
            texts = [self.texts[i] for i in order]
            args = (self.staging, self.source.path, self.source.kind, texts, self.password)
            self._queue(pdf_files.write_searchable_pdf, *args)
        joined = docjson.join_pages([(i + 1, self.markdown[i]) for i in order])
        write_text(self.staging / "document.md", joined)
        record = docjson.document_record(self.source, fingerprint, settings, [self.pages[i] for i in order], seconds)
        write_json(self.staging / "document.json", record)
        if self.options.report:
            report.write_document_view(self.staging, record, self.raw, self.source.key)
        if self.options.layout_pdf:  # made from the annotated pages, once they are written
            self.painter.wait(painting)
            annotated = [self.pages[i]["files"]["annotated"] for i in order]
            dpi = self.pages[order[0]]["dpi"] or 144.0
            self._queue(pdf_files.write_layout_pdf, self.staging, annotated, dpi)
        self.painter.wait(self.jobs)
        self._unless_aborted(self._move_into_place)
        return [str(self.final / name) for name in self._names()]

    def _queue(self, job, *args) -> None:
        """A document job for the painter, unless the document was aborted meanwhile."""
        self.jobs.append(self._unless_aborted(self.painter.submit, job, *args))

    def _move_into_place(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        replace_dir(self.staging, self.final)

    def _unless_aborted(self, act, *args):
        """`act` under the lock that `abort` takes, so an abort from another thread comes wholly
        before it (which then raises) or after it."""
        with self.lock:
            if self.aborted:
                raise OSError("aborted before it was committed")
            return act(*args)

    def _names(self) -> list[str]:
        """The document's files besides its pages' own, as run summaries list them."""
        names = ["document.md", "document.json"]
        names += [pdf_files.LAYOUT_NAME] if self.options.layout_pdf else []
        names += [pdf_files.SEARCHABLE_NAME] if self.options.searchable_pdf else []
        return names + ([report.REPORT_NAME] if self.options.report else [])

    def abort(self) -> None:
        """Drop the document: queued jobs are cancelled, staging is removed, and a commit running
        on another thread will not move it into place."""
        with self.lock:
            self.aborted = True
        with contextlib.suppress(Exception):
            self._wait_for_writes()
        self.painter.cancel(self.jobs)
        shutil.rmtree(self.staging, ignore_errors=True)


class TreeOutput:
    """Output for `-o OUT`: one folder per document, summary.json at the top."""

    def __init__(self, out: Path, options: OutputOptions | None = None, password: str | None = None):
        self.out = prepare_out(out)
        self.options = options or OutputOptions(out=out)
        self.password = password
        self.lock = OutputLock(self.out, wait=self.options.wait).acquire()
        clear_debris(self.out)
        self.file_writer = ThreadPoolExecutor(2, thread_name_prefix="dsocr-write")
        self.painter = Painter()

    def is_done(self, source: Source, settings: dict) -> bool:
        """Resume: the document's folder records the same input and settings (unless --force)."""
        return not self.options.force and is_done(self.out.joinpath(*source.key.split("/")), source, settings)

    def close(self) -> None:
        """After the run: let the writers finish, clear what an interrupted one left in staging, then
        release the output lock."""
        self.file_writer.shutdown(wait=True)
        self.painter.close()
        shutil.rmtree(self.out / STAGING, ignore_errors=True)
        self.lock.release()

    def open(self, source: Source) -> DocumentFolder:
        """A staging folder for one document, sharing the run's writer threads and processes."""
        self.painter.start()  # while the first document renders and runs through the engine
        return DocumentFolder(self.out, source, self.options, self.password, self.file_writer, self.painter)

    def finished(self, result, sink) -> None:
        """Nothing to do: a document's folder is complete at commit, and the summary comes at the end."""

    def write_summary(self, record: dict) -> Path:
        """summary.json and the report at the top of OUT (staging is cleared by `close`, once the
        writers' processes have stopped)."""
        path = self.out / "summary.json"
        write_json(path, record)
        if self.options.report:
            self._write_report(record)
        return path

    def _write_report(self, record: dict) -> None:
        """The report comes last and is optional: a failure to write it is a warning, not a failed run."""
        try:
            _, unreadable = report.write_report(self.out, record)
        except OSError as exc:
            log.warning("%s: not written (%s)", show_path(self.out / report.REPORT_NAME), exc.strerror or exc)
            return
        for line in unreadable:
            log.warning("%s", line)
