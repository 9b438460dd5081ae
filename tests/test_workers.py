"""A pool of engine workers (--workers): the same output as one process, and faults that cost only
the pages inside a dead worker."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from conftest import Background, offline_env, small_corpus
from dsocr_cli.discover import discover
from dsocr_cli.engines import register, start_engine
from dsocr_cli.options import EngineOptions, Options, OutputOptions, RenderOptions
from dsocr_cli.pipeline import Pipeline
from dsocr_cli.render import render
from dsocr_cli.samples import make_image
from dsocr_cli.writers.tree import TreeOutput

TIMINGS = {"seconds", "started", "finished", "mtime"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def tree(out: Path) -> dict[str, object]:
    """Every file under OUT but the run's records (summary.json, the reports, which show timings):
    bytes, or JSON without its timings."""
    files = {}
    for path in sorted(out.rglob("*")):
        name = path.relative_to(out).as_posix()
        if path.is_dir() or name == "summary.json" or name.endswith("report.html") or name.startswith(".dsocr"):
            continue
        files[name] = without_timings(json.loads(path.read_text())) if path.suffix == ".json" else path.read_bytes()
    return files


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_two_cpu_workers_write_the_same_tree_as_one(dsocr, tmp_path):
    inputs = small_corpus(tmp_path / "in")
    env = offline_env(OMP_NUM_THREADS="1")  # the same arithmetic in every process
    one = dsocr("run", str(inputs), "-o", str(tmp_path / "one"), "--workers", "1", env=env)
    two = dsocr("run", str(inputs), "-o", str(tmp_path / "two"), "--workers", "2", "--verbose", env=env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    asks = [int(n) for n in re.findall(r"worker \d asks for (\d+) page", two.stderr)]
    assert 2 < max(asks) <= 4 + 2, asks  # the decoder's 4 CPU lanes filled at once, plus 2 waiting
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert len([n for n in tree(tmp_path / "two") if n.endswith("document.json")]) == 4
    workers = summary(tmp_path / "two")["engine"]["workers"]
    assert [(w["worker"], w["device"], w["state"], w["restarts"]) for w in workers] == [
        (0, "cpu", "running", 0),
        (1, "cpu", "running", 0),
    ]
    assert sum(w["pages"] for w in workers) >= 5 and all(w["host"] and w["pid"] for w in workers)
    assert "workers" not in summary(tmp_path / "one").get("engine", {})


class Run(Background):
    """The real command in the background."""

    def __init__(self, tiny_model: Path, *args: str):
        super().__init__([sys.executable, "-m", "dsocr_cli", *args, "--model", str(tiny_model), "--device", "cpu"])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("zombie") >= 0


def test_a_worker_killed_mid_run_costs_nothing(tiny_model, tmp_path):
    inputs = small_corpus(tmp_path / "in")
    out = tmp_path / "out"
    # one lane per worker: pages run one after another, so the run is still going after the first document
    args = ["--workers", "2", "--max-new-tokens", "40", "--batch-size", "1"]
    run = Run(tiny_model, "run", str(inputs), "-o", str(out), *args)
    victim = run.worker_pids()[0]
    run.wait_for(r"done .*page\(s\)")  # mid-run: a document is done, others are in the workers
    os.kill(victim, signal.SIGKILL)
    assert run.process.wait(timeout=600) == 0, "".join(run.lines)
    report = summary(out)
    keys = [item["key"] for item in report["items"]]
    assert sorted(keys) == ["doc.pdf", "img0.png", "img1.png", "img2.png"]  # every document once
    assert {item["status"] for item in report["items"]} == {"done"}
    assert [w["restarts"] for w in report["engine"]["workers"]] == [1, 0]
    assert "died" in "".join(run.lines) and "Traceback" not in "".join(run.lines)
    assert not (out / ".dsocr-staging").exists()


def test_sigterm_stops_every_worker(tiny_model, tmp_path):
    inputs = small_corpus(tmp_path / "in")
    run = Run(tiny_model, "run", str(inputs), "-o", str(tmp_path / "out"), "--workers", "2", "--max-new-tokens", "400")
    pids = run.worker_pids()
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=120) == 130
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived the run"
        time.sleep(0.1)


def test_a_poison_page_fails_only_its_document(tmp_path):
    register("poison", "fake_engines:load_poison")
    names = ["a.png", "b.png", "poison.png", "c.png", "d.png", "e.png"]
    files = [str(make_image(tmp_path / "in" / n, size=(300, 200))) for n in names]
    sources, _ = discover(files)
    out = tmp_path / "out"
    options = Options(engine=EngineOptions(engine="poison", workers=2), output=OutputOptions(out=out))
    engine = start_engine(options.engine)
    tree_output = TreeOutput(out, options.output)
    try:
        result = Pipeline(options, engine, tree_output).run(sources)
        workers = engine.stats()["workers"]
    finally:
        tree_output.close()
        engine.close()
    status = {d.source.key: (d.status, d.reason) for d in result.documents}
    assert status == {n: ("failed", "worker") if n == "poison.png" else ("done", None) for n in names}
    assert "stopped the two workers" in next(d.message for d in result.documents if d.status == "failed")
    assert sum(w["restarts"] for w in workers) == 2  # it met both workers, and no other page killed one
    assert sorted(p.parent.name for p in out.rglob("document.json")) == sorted(set(names) - {"poison.png"})
    for name in set(names) - {"poison.png"}:
        assert f"text of {name} page 1" in (out / name / "document.md").read_text()


def test_the_last_pages_are_shared_between_workers(tmp_path):
    register("lanes", "fake_engines:load_lanes")  # 50 free lanes: each worker asks for 52 pages
    files = [str(make_image(tmp_path / f"p{i}.png", size=(300, 200))) for i in range(6)]
    sources, _ = discover(files)
    pages = [page for source in sources for page in render(source, RenderOptions())]
    engine = start_engine(EngineOptions(engine="lanes", workers=2))
    try:
        outcomes = list(engine.stream(pages, "markdown"))
        workers = engine.stats()["workers"]
    finally:
        engine.close()
    assert sorted(prediction.text for _, prediction in outcomes) == [f"text of p{i}.png page 1" for i in range(6)]
    assert sorted(w["pages"] for w in workers)[0] >= 2, workers  # the first to ask did not take all six


def test_workers_must_be_a_positive_count_or_auto(dsocr, tmp_path):
    image = make_image(tmp_path / "a.png")
    for bad in ("0", "two"):
        result = dsocr("run", str(image), "--workers", bad, model=False)
        assert result.returncode == 2 and f"invalid --workers '{bad}'" in result.stderr
