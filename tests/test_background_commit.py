"""Documents are committed in the background, their PDFs made by the writers' processes: a document
whose PDFs cannot be made fails alone and leaves nothing, and the others are whole."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pymupdf

from dsocr_cli.discover import discover
from dsocr_cli.engines import load_engine, register
from dsocr_cli.options import EngineOptions, Options, OutputOptions
from dsocr_cli.pipeline import Pipeline
from dsocr_cli.samples import make_pdf
from dsocr_cli.types import Prediction
from dsocr_cli.writers.tree import TreeOutput
from test_batch_safety import corpus, document_folders, slow_run, summary, wait_for

RAW = "<|ref|>text<|/ref|><|det|>[[100, 100, 900, 300]]<|/det|>\nQuokka {key} page {number}\n"


class VanishingSourceEngine:
    """Answers every page; on the last page of a document named vanish*, its input file is moved
    away (as a user might mid-run), so searchable.pdf, built from the input, cannot be made."""

    name, device, batch_size = "vanishing-source", "cpu", 1

    def predict(self, pages, prompt, strict=False):
        for page in pages:
            if page.source.key.startswith("vanish") and page.number == 2:
                page.source.path.rename(page.source.path.with_suffix(".moved"))
        return [Prediction(RAW.format(key=p.source.key, number=p.number), 9, "eos", 0.0) for p in pages]


def test_a_document_whose_pdfs_fail_leaves_nothing_and_the_others_are_whole(tmp_path: Path):
    register("vanishing-source", lambda options: VanishingSourceEngine())
    files = [str(make_pdf(tmp_path / "in" / name, pages=2)) for name in ("keep.pdf", "vanish.pdf", "also.pdf")]
    sources, _ = discover(files)
    out = tmp_path / "out"
    output = OutputOptions(out=out, searchable_pdf=True, layout_pdf=True)
    options = Options(engine=EngineOptions(engine="vanishing-source"), output=output)
    tree = TreeOutput(out, options.output)
    try:
        summary = Pipeline(options, load_engine(options.engine), tree).run(sources)
    finally:
        tree.close()

    status = {d.source.key: (d.status, d.reason) for d in summary.documents}
    assert status == {"keep.pdf": ("done", None), "vanish.pdf": ("failed", "output"), "also.pdf": ("done", None)}
    assert not (out / "vanish.pdf").exists()
    assert not list((out / ".dsocr-staging").glob("*"))  # the aborted document's staging is gone
    for key in ("keep.pdf", "also.pdf"):
        folder = out / key
        record = json.loads((folder / "document.json").read_text())
        assert record["page_count"] == 2
        with pymupdf.open(folder / "searchable.pdf") as searchable, pymupdf.open(folder / "layout.pdf") as layout:
            assert searchable.page_count == layout.page_count == 2
            assert f"Quokka {key} page 2".split() == searchable[1].get_text().split()[-4:]  # the layer, last
        assert (folder / "pages" / "0002.jpg").is_file() and (folder / "pages" / "0002.plain.jpg").is_file()
        done = next(d for d in summary.documents if d.source.key == key)
        assert {Path(p).name for p in done.outputs} >= {"layout.pdf", "searchable.pdf", "document.json"}


def test_sigterm_while_documents_commit_leaves_only_whole_documents(tiny_model, tmp_path: Path):
    inputs = corpus(tmp_path / "in", images=8)
    out = tmp_path / "out"
    run = slow_run(tiny_model, inputs, out, "--layout-pdf", "--searchable-pdf")
    wait_for(lambda: len(document_folders(out)) >= 1)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 130
    report = summary(out)
    assert report["interrupted"] is True
    folders = document_folders(out)
    assert report["documents"]["done"] == len(folders) >= 1
    for folder in folders:  # each one whole: its PDFs open and have its pages
        pages = json.loads((folder / "document.json").read_text())["page_count"]
        with pymupdf.open(folder / "layout.pdf") as layout, pymupdf.open(folder / "searchable.pdf") as searchable:
            assert layout.page_count == searchable.page_count == pages
    assert not (out / ".dsocr-staging").exists() and not list(out.rglob(".tmp-*"))
    assert "Traceback" not in run.stderr.read()
