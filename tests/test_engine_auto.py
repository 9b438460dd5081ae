"""`--engine auto` is recorded as the engine it resolved to, and resume compares like with like."""

from __future__ import annotations

import json

from dsocr_cli.samples import make_image


def test_auto_records_the_engine_that_ran_and_reruns_skip(dsocr, tmp_path):
    image = make_image(tmp_path / "scan.png", size=(320, 240))
    out = tmp_path / "out"
    first = dsocr("image", str(image), "-o", str(out), "--engine", "auto", "--mode", "base")
    assert first.returncode == 0, first.stderr
    document = json.loads((out / "scan.png" / "document.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert document["settings"]["engine"] == "hf"  # the tiny model is a native DeepSeek-OCR-2 checkpoint
    assert summary["settings"]["engine"] == "hf"
    assert summary["engine"]["engine"] == "hf"
    # A rerun that resolves the same way finds the document done; so does naming that engine.
    for engine in ("auto", "hf"):
        again = dsocr("image", str(image), "-o", str(out), "--engine", engine, "--mode", "base")
        assert again.returncode == 0, again.stderr
        counts = json.loads((out / "summary.json").read_text())["documents"]
        assert counts == {"done": 0, "skipped": 1, "failed": 0}, (engine, again.stderr)
