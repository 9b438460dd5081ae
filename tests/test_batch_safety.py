"""Runs that never lose work: resume, kill -9, concurrent runs, SIGTERM, engine faults, renderer faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import offline_env
from dsocr_cli.discover import discover
from dsocr_cli.engines import load_engine, register
from dsocr_cli.options import EngineOptions, Options, OutputOptions, RenderOptions
from dsocr_cli.pipeline import Pipeline
from dsocr_cli.samples import make_image, make_pdf
from dsocr_cli.schedule import Failed, Rendered, page_stream
from dsocr_cli.types import Prediction
from dsocr_cli.writers.tree import TreeOutput


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def corpus(folder: Path, images: int = 6) -> Path:
    for i in range(images):
        make_image(folder / f"img{i}.png", size=(500 + 40 * i, 400), text=f"page {i}")
    make_pdf(folder / "doc.pdf", pages=2)
    return folder


def start(tiny_model, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dsocr_cli", *args, "--model", str(tiny_model), "--device", "cpu"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())


def slow_run(tiny_model, inputs: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A run slow enough to interrupt: one page per batch, 40 tokens a page."""
    return start(tiny_model, "run", str(inputs), "-o", str(out), "--batch-size", "1", "--max-new-tokens", "40", *extra)


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def document_folders(out: Path) -> list[Path]:
    return [p.parent for p in out.rglob("document.json") if ".dsocr-staging" not in p.parts]


def test_rerun_skips_done_documents_and_redoes_changed_ones(dsocr, tmp_path):
    inputs = corpus(tmp_path / "in", images=2)
    out = tmp_path / "out"
    assert dsocr("run", str(inputs), "-o", str(out)).returncode == 0
    stamp = (out / "img0.png" / "document.json").stat().st_mtime_ns
    again = dsocr("run", str(inputs), "-o", str(out))
    assert again.returncode == 0
    assert summary(out)["documents"] == {"done": 0, "skipped": 3, "failed": 0}
    assert (out / "img0.png" / "document.json").stat().st_mtime_ns == stamp
    make_image(inputs / "img1.png", size=(333, 222), text="changed")  # new content
    assert dsocr("run", str(inputs), "-o", str(out)).returncode == 0
    assert summary(out)["documents"] == {"done": 1, "skipped": 2, "failed": 0}
    assert json.loads((out / "img1.png" / "document.json").read_text())["pages"][0]["width_px"] == 333
    assert dsocr("run", str(inputs), "-o", str(out), "--max-new-tokens", "5").returncode == 0  # new settings
    assert summary(out)["documents"]["done"] == 3
    assert dsocr("run", str(inputs), "-o", str(out), "--max-new-tokens", "5", "--force").returncode == 0
    assert summary(out)["documents"]["done"] == 3
    asked = dsocr("run", str(inputs), "-o", str(out), "--max-new-tokens", "5", "--layout-pdf")  # new outputs
    assert asked.returncode == 0 and summary(out)["documents"]["done"] == 3
    assert (out / "doc.pdf" / "layout.pdf").is_file()


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tiny_model, tmp_path):
    inputs = corpus(tmp_path / "in", images=8)
    out = tmp_path / "out"
    run = slow_run(tiny_model, inputs, out)
    wait_for(lambda: len(document_folders(out)) >= 2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    survivors = document_folders(out)
    assert 2 <= len(survivors) < 9
    for folder in out.iterdir():  # every visible document folder is complete
        if folder.name not in (".dsocr-staging", ".dsocr.lock"):
            assert (folder / "document.json").is_file() and (folder / "document.md").is_file(), folder
    rerun = slow_run(tiny_model, inputs, out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    counts = summary(out)["documents"]
    assert counts == {"done": 9 - len(survivors), "skipped": len(survivors), "failed": 0}
    assert len(document_folders(out)) == 9
    assert not (out / ".dsocr-staging").exists() and not list(out.rglob(".tmp-*"))


def test_second_run_on_the_same_output_exits_6_or_waits(tiny_model, dsocr, tmp_path):
    inputs = corpus(tmp_path / "in", images=4)
    out = tmp_path / "out"
    first = slow_run(tiny_model, inputs, out)
    wait_for(lambda: (out / ".dsocr.lock").exists() and (out / ".dsocr.lock").read_text().startswith("dsocr pid"))
    blocked = dsocr("run", str(inputs), "-o", str(out))
    assert blocked.returncode == 6, blocked.stderr
    assert "in use by dsocr pid" in blocked.stderr and "--wait" in blocked.stderr
    queued = start(tiny_model, "run", str(inputs), "-o", str(out), "--wait", "--max-new-tokens", "40")
    assert first.wait(timeout=300) == 0
    assert queued.wait(timeout=300) == 0
    assert summary(out)["documents"] == {"done": 0, "skipped": 5, "failed": 0}  # the first did it all


def test_sigterm_mid_run_exits_130_and_leaves_nothing_half_written(tiny_model, tmp_path):
    inputs = corpus(tmp_path / "in", images=8)
    out = tmp_path / "out"
    run = slow_run(tiny_model, inputs, out)
    wait_for(lambda: len(document_folders(out)) >= 1)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 130
    report = summary(out)
    assert report["interrupted"] is True and report["exit_code"] == 130
    assert report["documents"]["done"] == len(document_folders(out)) >= 1
    assert not (out / ".dsocr-staging").exists() and not list(out.rglob(".tmp-*"))
    assert "Traceback" not in run.stderr.read()


# --- in-process: fake engines registered exactly as real engines are -----------------------------


class FlakyEngine:
    """Runs out of memory on any batch over 2 pages, and always on pages of 'cursed' documents;
    says 'repetition' on the first try of 'loopy' documents and finishes on the strict retry."""

    name, device, batch_size = "flaky", "cpu", 8

    def __init__(self):
        self.succeeded: list[int] = []

    def predict(self, pages, prompt, strict=False):
        import torch

        if len(pages) > 2 or any("cursed" in p.source.key for p in pages):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.succeeded.append(len(pages))
        return [
            Prediction(
                "looping" if "loopy" in p.source.key and not strict else f"text of {p.source.key}",
                3,
                "repetition" if "loopy" in p.source.key and not strict else "eos",
                0.01,
            )
            for p in pages
        ]


def run_in_process(engine_name: str, names: list[str], tmp_path: Path):
    """The pipeline on small images with a registered engine, into a real output tree."""
    files = [str(make_image(tmp_path / "in" / n, size=(300, 200))) for n in names]
    sources, _ = discover(files)
    out = tmp_path / "out"
    options = Options(engine=EngineOptions(engine=engine_name), output=OutputOptions(out=out))
    tree = TreeOutput(out, options.output)
    try:
        return Pipeline(options, load_engine(options.engine), tree).run(sources), out
    finally:
        tree.close()


def test_out_of_memory_splits_batches_and_fails_only_pages_failing_alone(tmp_path):
    engine = FlakyEngine()
    register("flaky", lambda options: engine)
    names = ["a.png", "b.png", "cursed.png", "c.png", "loopy.png", "d.png"]
    result, out = run_in_process("flaky", names, tmp_path)
    status = {d.source.key: d.status for d in result.documents}
    assert status == {n: ("failed" if n == "cursed.png" else "done") for n in names}
    failed = next(d for d in result.documents if d.status == "failed")
    assert failed.reason == "engine" and "out of memory" in failed.message
    assert max(engine.succeeded) <= 2  # the batch of 6 was split down to sizes that fit
    assert sum(engine.succeeded) == 5 + 1  # every page but the cursed one, plus loopy's retry
    loopy = json.loads((out / "loopy.png" / "document.json").read_text())["pages"][0]
    assert (loopy["attempts"], loopy["finish"]) == (2, "eos")
    assert "text of loopy.png" in (out / "loopy.png" / "document.md").read_text()


def hang_on_slow(source, options):
    """A renderer that never returns for documents named slow*, and crashes on crash*."""
    from dsocr_cli.render import render

    if source.key.startswith("slow"):
        time.sleep(3600)
    if source.key.startswith("crash"):
        os._exit(139)
    yield from render(source, options)


def test_hanging_or_crashing_renderer_costs_only_its_document(tmp_path):
    files = [make_image(tmp_path / n, size=(300, 200)) for n in ("ok1.png", "slow.png", "crash.png", "ok2.png")]
    sources, _ = discover([str(f) for f in files])
    started = time.monotonic()
    outcomes = [
        i for i in page_stream(sources, RenderOptions(timeout=3), hang_on_slow) if isinstance(i, (Rendered, Failed))
    ]
    assert time.monotonic() - started < 60
    summary_ = {o.source.key: (type(o).__name__, getattr(o, "error", None) and o.error.reason) for o in outcomes}
    assert summary_ == {
        "ok1.png": ("Rendered", None),
        "slow.png": ("Failed", "render-timeout"),
        "crash.png": ("Failed", "render-crash"),
        "ok2.png": ("Rendered", None),
    }


class BrokenStreamEngine(FlakyEngine):
    """Continuous batching that breaks after two pages: the rest must still be done by predict."""

    name, continuous = "broken-stream", True

    def stream(self, pages, prompt):
        taken = [next(pages), next(pages), next(pages)]  # the third page is inside the decoder
        for page in taken[:2]:
            yield page, self.predict([page], prompt)[0]
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")


def test_a_broken_decoder_costs_only_the_pages_inside_it(tmp_path):
    register("broken-stream", lambda options: BrokenStreamEngine())
    result, _ = run_in_process("broken-stream", ["a.png", "b.png", "c.png", "d.png", "e.png"], tmp_path)
    status = {d.source.key: d.status for d in result.documents}
    assert status == {"a.png": "done", "b.png": "done", "c.png": "failed", "d.png": "done", "e.png": "done"}
    assert "decoding failed" in next(d.message for d in result.documents if d.status == "failed")
