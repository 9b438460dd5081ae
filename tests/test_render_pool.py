"""The render pool: several documents at once, pages prepared in the workers with their tensors
intact, and a failing page, prepare or worker costing only its own document."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import offline_env
from dsocr_cli.discover import discover
from dsocr_cli.engines import load_engine, register
from dsocr_cli.options import EngineOptions, Options, OutputOptions, RenderOptions
from dsocr_cli.pipeline import Pipeline
from dsocr_cli.samples import make_image, make_pdf
from dsocr_cli.schedule import Failed, Rendered, Started, page_stream
from dsocr_cli.types import PageImage, Prediction
from dsocr_cli.writers.tree import TreeOutput

# --- functions the spawned workers import by name --------------------------------------------------


def attach_pixels(page: PageImage) -> PageImage:
    """Stands in for the engine's preprocessing: the page's pixels as tensors, made in the worker."""
    import torch

    pixels = torch.frombuffer(bytearray(page.image.tobytes()), dtype=torch.uint8)
    pixels = pixels.reshape(page.image.height, page.image.width, 3)
    return dataclasses.replace(page, inputs={"pixels": pixels, "scaled": pixels.float() / 255})


def fail_on_second_page_of_bad(page: PageImage) -> PageImage:
    if page.source.key.startswith("bad") and page.index == 1:
        raise ValueError("tiles do not fit\nsecond line")
    return attach_pixels(page)


def crash_late(source, options):
    """Renders normally, except that crash* documents kill their worker after their first page."""
    from dsocr_cli.render import render

    for page in render(source, options):
        yield page
        if source.key.startswith("crash"):
            time.sleep(0.5)  # the other workers are mid-document by now
            os._exit(139)


def unpicklable_second_page_of_bad(source, options):
    """Renders normally, except that page 2 of bad* documents carries something pickle refuses."""
    from dsocr_cli.render import render

    for page in render(source, options):
        if source.key.startswith("bad") and page.index == 1:
            page = dataclasses.replace(page, inputs={"hook": threading.Lock()})
        yield page


# --- helpers ---------------------------------------------------------------------------------------


def documents(folder: Path) -> list:
    """Three multi-page PDFs, three images and a broken file: documents of different lengths."""
    for i, pages in enumerate((5, 3, 4)):
        make_pdf(folder / f"doc{i}.pdf", pages=pages)
    for i in range(3):
        make_image(folder / f"img{i}.png", size=(300 + 50 * i, 200), text=f"image {i}")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    sources, _ = discover([str(folder)])
    return sources


def by_document(items: list) -> dict:
    """Each document's items in order, as (kind, detail); checks that every document is framed."""
    seen: dict[str, list] = {}
    for item in items:
        key = item.source.key
        if isinstance(item, Started):
            assert key not in seen, f"{key} started twice"
            seen[key] = [("started", None)]
            continue
        assert seen[key][-1][0] in ("started", "page"), f"{key}: an item after its end"
        if isinstance(item, PageImage):
            seen[key].append(("page", (item.index, item.size, hashlib.sha256(item.image.tobytes()).hexdigest())))
        elif isinstance(item, Rendered):
            seen[key].append(("rendered", item.pages))
        else:
            seen[key].append(("failed", item.error.reason))
    return seen


class PixelEngine:
    """Text made from each page's pixels, so any mix-up of pages shows in the output tree."""

    name, device, batch_size = "pixels", "cpu", 3

    def predict(self, pages, prompt, strict=False):
        return [
            Prediction(
                f"{p.source.key} page {p.number}: {hashlib.sha256(p.image.tobytes()).hexdigest()[:16]}", 4, "eos", 0
            )
            for p in pages
        ]


def output_tree(out: Path) -> dict:
    """Every file under OUT by relative path: markdown as text, JSON without its timings."""
    tree = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.relative_to(out).as_posix()
        if path.suffix == ".json":
            tree[name] = _without_timings(json.loads(path.read_text()))
        else:
            tree[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k and k not in ("mtime", "at")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


# --- tests -----------------------------------------------------------------------------------------


def test_documents_rendered_in_parallel_give_the_same_output_tree_as_one_worker(tmp_path):
    register("pixels", lambda options: PixelEngine())
    sources = documents(tmp_path / "in")
    trees = []
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        options = Options(
            render=RenderOptions(workers=workers), engine=EngineOptions(engine="pixels"), output=OutputOptions(out=out)
        )
        tree = TreeOutput(out, options.output)
        try:
            summary = Pipeline(options, load_engine(options.engine), tree).run(sources)
        finally:
            tree.close()
        assert {d.source.key: d.status for d in summary.documents} == {
            s.key: "failed" if s.key == "broken.pdf" else "done" for s in sources
        }
        trees.append(output_tree(out))
    assert trees[0] == trees[1]
    assert "doc0.pdf/document.md" in trees[0]


def test_several_workers_frame_each_document_and_keep_its_pages_in_order(tmp_path):
    sources = documents(tmp_path / "in")
    one = by_document(list(page_stream(sources, RenderOptions(), workers=1)))
    items = list(page_stream(sources, RenderOptions(), workers=3))
    assert [i.source.key for i in items if isinstance(i, Started)] == [s.key for s in sources]
    assert by_document(items) == one
    assert one["doc0.pdf"][-1] == ("rendered", 5) and one["broken.pdf"][-1] == ("failed", "corrupt")
    first_end = next(n for n, i in enumerate(items) if isinstance(i, (Rendered, Failed)))
    assert sum(isinstance(i, Started) for i in items[:first_end]) > 1  # several documents were open at once


def test_prepared_tensors_arrive_intact(tmp_path):
    import torch

    sources = documents(tmp_path / "in")
    pages = [
        i for i in page_stream(sources, RenderOptions(), prepare=attach_pixels, workers=2) if isinstance(i, PageImage)
    ]
    assert len(pages) == 5 + 3 + 4 + 3
    for page in pages:
        expected = torch.frombuffer(bytearray(page.image.tobytes()), dtype=torch.uint8)
        assert torch.equal(page.inputs["pixels"].flatten(), expected)
        assert torch.allclose(page.inputs["scaled"], page.inputs["pixels"].float() / 255)


ALREADY_SHARED: set[str] = set()  # page images of other runs on this machine, set per test


def shared_pages() -> list[str]:
    """Page images this test's workers left in /dev/shm for the parent to copy out."""
    if not Path("/dev/shm").is_dir():
        return []
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("dsocr-page-") and n not in ALREADY_SHARED)


@pytest.fixture(autouse=True)
def other_runs_page_images():
    ALREADY_SHARED.clear()
    ALREADY_SHARED.update(shared_pages())


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_page_images_come_through_shared_memory_intact_and_none_is_left(tmp_path):
    from dsocr_cli.render import render

    sources = documents(tmp_path / "in")
    stream = page_stream(sources, RenderOptions(), workers=2, prefetch=8)
    pages = []
    for item in stream:
        if isinstance(item, PageImage):
            pages.append(item)
            if len(pages) == 1:  # the workers render ahead: their next pages wait in segments
                assert wait_for(shared_pages), "no page image was handed over through shared memory"
    assert len(pages) == 5 + 3 + 4 + 3
    direct = {
        (p.source.key, p.index): p.image for s in sources if s.key != "broken.pdf" for p in render(s, RenderOptions())
    }
    for page in pages:
        assert page.image.tobytes() == direct[page.source.key, page.index].tobytes(), page
    assert shared_pages() == []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_a_stream_given_up_early_leaves_no_page_image_in_shared_memory(tmp_path):
    make_pdf(tmp_path / "long.pdf", pages=12)
    sources, _ = discover([str(tmp_path / "long.pdf")])
    stream = page_stream(sources, RenderOptions(), workers=1, prefetch=8)
    first = next(i for i in stream if isinstance(i, PageImage))
    assert first.index == 0
    assert wait_for(shared_pages), "the worker rendered nothing ahead"
    stream.close()  # the consumer gives up: pages rendered ahead were never read
    assert shared_pages() == []


SMALL_SHM = """
import sys, torch
from dsocr_cli.discover import discover
from dsocr_cli.options import RenderOptions
from dsocr_cli.schedule import page_stream
from test_render_pool import attach_pixels
sources, _ = discover(sys.argv[1:])
pages = [p for p in page_stream(sources, RenderOptions(), prepare=attach_pixels, workers=2) if hasattr(p, "inputs")]
expected = [torch.frombuffer(bytearray(p.image.tobytes()), dtype=torch.uint8) for p in pages]
print(len(pages), all(torch.equal(p.inputs["pixels"].flatten(), e) for p, e in zip(pages, expected)))
"""


def test_tensors_are_copied_when_dev_shm_is_too_small(tmp_path):
    """With a 1 MB /dev/shm (Docker's default is 64 MB) shared memory fails, and pages still arrive."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a small /dev/shm")
    make_pdf(tmp_path / "doc.pdf", pages=3)
    shell = 'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$0" -c "$1" "$2"'
    env = offline_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    command = ["unshare", "-Urm", "sh", "-c", shell, sys.executable, SMALL_SHM, str(tmp_path / "doc.pdf")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "True"]


def test_a_failing_prepare_fails_only_its_document(tmp_path):
    make_pdf(tmp_path / "bad.pdf", pages=3)
    make_pdf(tmp_path / "good.pdf", pages=3)
    sources, _ = discover([str(tmp_path / "bad.pdf"), str(tmp_path / "good.pdf")])
    items = list(page_stream(sources, RenderOptions(), prepare=fail_on_second_page_of_bad, workers=2))
    outcomes = {i.source.key: i for i in items if isinstance(i, (Rendered, Failed))}
    assert outcomes["good.pdf"] == Rendered(outcomes["good.pdf"].source, 3)
    failed = outcomes["bad.pdf"]
    assert isinstance(failed, Failed) and failed.error.reason == "prepare"
    assert (
        failed.error.one_line() == f"{tmp_path / 'bad.pdf'}: page 2 cannot be prepared for the model (tiles do not fit)"
    )
    assert [i.index for i in items if isinstance(i, PageImage) and i.source.key == "bad.pdf"] == [0]


def test_a_page_that_cannot_be_handed_over_fails_only_its_document(tmp_path):
    make_pdf(tmp_path / "bad.pdf", pages=3)
    make_pdf(tmp_path / "good.pdf", pages=3)
    sources, _ = discover([str(tmp_path / "bad.pdf"), str(tmp_path / "good.pdf")])
    items = list(page_stream(sources, RenderOptions(), unpicklable_second_page_of_bad, workers=1))
    outcomes = {i.source.key: i for i in items if isinstance(i, (Rendered, Failed))}
    assert outcomes["good.pdf"] == Rendered(outcomes["good.pdf"].source, 3), "the same worker went on"
    failed = outcomes["bad.pdf"]
    assert isinstance(failed, Failed) and failed.error.reason == "corrupt"
    assert failed.error.one_line().startswith(f"{tmp_path / 'bad.pdf'}: page 2 cannot be handed over (")
    assert [i.index for i in items if isinstance(i, PageImage) and i.source.key == "bad.pdf"] == [0]


def test_a_worker_crashing_while_others_render_costs_only_its_document(tmp_path):
    for name in ("a.pdf", "crash.pdf", "b.pdf", "c.pdf", "d.pdf"):
        make_pdf(tmp_path / name, pages=4)
    sources, _ = discover([str(tmp_path / n) for n in ("a.pdf", "crash.pdf", "b.pdf", "c.pdf", "d.pdf")])
    items = []
    for item in page_stream(sources, RenderOptions(), crash_late, workers=3):
        items.append(item)
        time.sleep(0.2)  # a consumer as slow as an engine: the crashed worker's page is read after its death
    outcomes = {
        i.source.key: (type(i).__name__, getattr(i, "pages", None) or i.error.reason)
        for i in items
        if isinstance(i, (Rendered, Failed))
    }
    assert outcomes == {
        "a.pdf": ("Rendered", 4),
        "crash.pdf": ("Failed", "render-crash"),
        "b.pdf": ("Rendered", 4),
        "c.pdf": ("Rendered", 4),
        "d.pdf": ("Rendered", 4),
    }


# --- no worker outlives its run --------------------------------------------------------------------


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries `mark`: a run and everything it started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def wait_until_gone(mark: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


PARENT_DIES = """
import os, sys, time
from dsocr_cli.discover import discover
from dsocr_cli.options import RenderOptions
from dsocr_cli.schedule import page_stream
sources, _ = discover(sys.argv[1:])
for n, item in enumerate(page_stream(sources, RenderOptions(), workers=1, prefetch=2)):
    if n == 2:
        print("worker up", flush=True)
        time.sleep(2)  # the worker sends all it may and waits for this process to read
        os._exit(0)  # killed: nothing closes the stream or stops its worker
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_worker_waiting_for_its_parent_to_read_ends_when_the_parent_dies(tmp_path):
    """The worker has rendered as far ahead as it may and waits for the parent to read; the parent
    dies without closing anything. The worker ends by itself, and the resource tracker it shares
    with the parent then unlinks the page images nobody read."""
    file = str(make_pdf(tmp_path / "long.pdf", pages=12))
    mark = uuid.uuid4().hex
    with open(tmp_path / "said", "w") as said:  # a file, not a pipe: an orphaned worker would hold that open
        done = subprocess.run(
            [sys.executable, "-c", PARENT_DIES, file],
            stdout=said,
            stderr=subprocess.DEVNULL,
            env=offline_env(DSOCR_TEST_MARK=mark),
            timeout=120,
        )
    assert done.returncode == 0 and (tmp_path / "said").read_text() == "worker up\n"
    assert wait_until_gone(mark) == []
    if Path("/dev/shm").is_dir():
        assert wait_for(lambda: not shared_pages()), shared_pages()


CONSUMER_RAISES = """
import sys
from dsocr_cli.discover import discover
from dsocr_cli.options import RenderOptions
from dsocr_cli.schedule import page_stream
sources, _ = discover(sys.argv[1:])
for n, item in enumerate(page_stream(sources, RenderOptions(), workers=2)):
    if n == 4:
        print("workers up", flush=True)
        raise RuntimeError("the consumer broke")
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_no_worker_outlives_a_consumer_that_raises(tmp_path):
    files = [str(make_pdf(tmp_path / f"d{i}.pdf", pages=6)) for i in range(3)]
    mark = f"DSOCR_TEST_MARK={uuid.uuid4().hex}"
    env = offline_env(DSOCR_TEST_MARK=mark.split("=")[1])
    done = subprocess.run([sys.executable, "-c", CONSUMER_RAISES, *files], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "the consumer broke" in done.stderr and done.stdout == "workers up\n"
    assert wait_until_gone(mark) == []


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_no_worker_outlives_an_interrupted_run(tiny_model, tmp_path, signum):
    """The signal goes to the whole process group, as Ctrl-C does: workers ignore it, dsocr ends them.
    Enough work that the run is still going when the first document is written (commits run in the
    background, so on a loaded machine the first document.json can come late)."""
    for i in range(12):
        make_pdf(tmp_path / "in" / f"d{i}.pdf", pages=3)
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    command = [
        sys.executable,
        "-m",
        "dsocr_cli",
        "run",
        str(tmp_path / "in"),
        "-o",
        str(out),
        "--model",
        str(tiny_model),
    ]
    command += ["--device", "cpu", "--batch-size", "1", "--max-new-tokens", "80"]
    env = offline_env(DSOCR_TEST_MARK=mark)
    run = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("*/document.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    os.killpg(run.pid, signum)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert wait_until_gone(mark) == []
