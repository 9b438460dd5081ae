"""The HTML report through the real command: every input and page linked, counts equal to
summary.json, hostile names and model output shown as text, `dsocr report OUT` rebuilding the
same files from the tree alone. The replay engine feeds recorded raw output (hostile on purpose)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_dsocr
from dsocr_cli.samples import make_image, make_pdf
from report_html import Node, index_rows, link_target, parse, record_run

HOSTILE_NAME = '"><img src=x onerror=alert(1)>.png'
TITLE_TEXT = '<script>alert("title")</script>'
INLINE_TEXT = "Zanzibar <img src=x onerror=alert(1)> quokka"
HOSTILE_PAGE = f"""<|ref|>title<|/ref|><|det|>[[94, 60, 620, 95]]<|/det|>
# {TITLE_TEXT}

<|ref|>text<|/ref|><|det|>[[94, 114, 905, 261]]<|/det|>
{INLINE_TEXT} **bold**

<|ref|>table<|/ref|><|det|>[[94, 280, 500, 360]]<|/det|>
<table><tr><td colspan="2" onclick="alert(2)">r0c0</td></tr><tr><td>a<script>alert(3)</script></td>\
<td><a href="javascript:alert(4)">x</a></td></tr></table>

<|ref|>image<|/ref|><|det|>[[399, 427, 600, 570]]<|/det|>

<|ref|>equation<|/ref|><|det|>[[100, 600, 500, 650]]<|/det|>
\\[ E = mc^2 </script> \\]
"""
FINISHES = ("eos", "length", "repetition")
PLAIN_PAGE = "<|ref|>text<|/ref|><|det|>[[50, 50, 900, 200]]<|/det|>\nA page of plain text\n"


def replay_run(tmp_path: Path, *flags: str, warning: str = "") -> tuple[Path, dict]:
    """A 3-page PDF (page 2 loops, page 3 hits the limit), a hostile-named image and a corrupt PDF."""
    inputs = tmp_path / "in"
    pdf = make_pdf(inputs / "doc.pdf", pages=3)
    image = make_image(inputs / HOSTILE_NAME)
    corrupt = inputs / "broken.pdf"
    corrupt.write_bytes(b"%PDF-1.7\nnot really a pdf\n")
    recorded = tmp_path / "recorded"
    record_run(recorded, "doc.pdf", {1: HOSTILE_PAGE, 2: PLAIN_PAGE, 3: PLAIN_PAGE}, {2: "repetition", 3: "length"})
    record_run(recorded, HOSTILE_NAME, {1: HOSTILE_PAGE})
    out = tmp_path / "out"
    names = [str(p.relative_to(tmp_path)) for p in (pdf, image, corrupt)]  # as a user types them
    result = run_dsocr("run", *names, "-o", "out", "--engine", "replay", "--model", "recorded", *flags, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # the corrupt PDF fails, the rest are done
    assert warning in result.stderr
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """One run shared by the tests that only read it (or restore what they change)."""
    return replay_run(tmp_path_factory.mktemp("replayed"))


def csp_hashes(tree: Node) -> dict[str, str]:
    meta = tree.all("meta", **{"http-equiv": "Content-Security-Policy"})[0].attrs["content"]
    return dict(re.findall(r"(\S+-src) ('[^']+'|\S+)", meta)) | {"default-src": meta.split(";")[0].split()[-1]}


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def assert_only_own_code(tree: Node) -> None:
    """One script and one style, both allowed by hash; no event handler or script URL anywhere."""
    scripts = [s for s in tree.all("script") if s.attrs.get("type") != "application/json"]
    styles = tree.all("style")
    assert len(scripts) == 1 and len(styles) == 1
    hashes = csp_hashes(tree)
    assert hashes["default-src"] == "'none'"
    assert hashes["script-src"] == sha256(scripts[0].text())
    assert hashes["style-src"] == sha256(styles[0].text())
    for node in tree.all():
        assert not [a for a in node.attrs if a.lower().startswith("on")], node
        assert not any(str(v).strip().lower().startswith("javascript:") for v in node.attrs.values()), node


def test_index_links_every_document_and_page_with_summary_counts(replayed):
    out, summary = replayed
    index = out / "report.html"
    tree = parse(index)
    assert_only_own_code(tree)
    rows = index_rows(tree)
    assert len(rows) == len(summary["items"]) == 3
    for row, item in zip(rows, summary["items"], strict=True):
        assert (row["path"], row["status"], row["reason"]) == (item["path"], item["status"], item["reason"] or "")
        assert (row["pages"], row["tokens"]) == (item["pages"], item["tokens"])
        assert [row[f] for f in FINISHES] == [item["finish"][f] for f in FINISHES]
        if item["status"] != "done":
            assert row["href"] is None and row["flags"] == "failed"
            continue
        view, _ = link_target(index, row["href"])
        assert view == (out / item["key"] / "report.html").resolve() and view.is_file()
        sections = parse(view).all("section")
        assert [s.attrs["id"] for s in sections] == [f"p{n}" for n in range(1, item["pages"] + 1)]
        for img in parse(view).all("img"):
            assert link_target(view, img.attrs["src"])[0].is_file(), img.attrs["src"]
    totals = tree.all("header")[0].text()
    assert f"done {summary['documents']['done']}" in totals and f"failed {summary['documents']['failed']}" in totals


def test_loops_cuts_and_retries_are_flagged_and_linked(replayed):
    out, summary = replayed
    index = out / "report.html"
    row = next(r for r in index_rows(parse(index)) if r["path"].endswith("doc.pdf"))
    assert row["flags"].split() == ["repetition", "length", "retried"]
    assert row["retries"] == 2  # both unfinished pages were retried once
    assert row["review"] == [[2, "repetition"], [2, "retried"], [3, "length"], [3, "retried"]]
    view, fragment = link_target(index, f"{row['href']}#p2")
    section = parse(view).all("section", id=fragment)[0]
    assert section.attrs["data-flags"] == "repetition retried"
    assert "finish: repetition" in section.text() and "attempts: 2" in section.text()


def test_hostile_names_and_model_output_stay_text(replayed):
    out, _ = replayed
    index = out / "report.html"
    assert "<img" not in index.read_text()  # the name travels as escaped JSON
    assert any(r["path"].endswith(HOSTILE_NAME) for r in index_rows(parse(index)))
    view = out / HOSTILE_NAME / "report.html"
    tree = parse(view)
    assert_only_own_code(tree)
    assert HOSTILE_NAME in tree.all("title")[0].text()
    text = tree.all("div", **{"class": "text"})[0]
    blocks = {b.attrs["data-label"]: b for b in text.all("div", **{"class": "block"})}
    assert blocks["title"].all("h3")[0].text() == TITLE_TEXT
    assert INLINE_TEXT in blocks["text"].text() and blocks["text"].all("strong")[0].text() == "bold"
    assert [i.attrs["class"] for i in tree.all("img")] == ["page-image", "figure"]
    table = blocks["table"].all("table")[0]
    cells = table.all("td")
    assert cells[0].attrs == {"colspan": "2"} and cells[0].text() == "r0c0"
    assert cells[1].text() == "a<script>alert(3)</script>"
    assert cells[2].text() == '<a href="javascript:alert(4)">x</a>' and not table.all("a")
    assert blocks["equation"].all("pre")[0].text().strip() == "\\[ E = mc^2 </script> \\]"
    raw = tree.all("details", **{"class": "raw"})[0].all("pre")[0].text()
    assert raw == (out / HOSTILE_NAME / "pages" / "0001.raw.md").read_text()
    boxes = tree.all("svg")[0].all("rect")
    assert [r.attrs["data-label"] for r in boxes] == ["title", "text", "table", "image", "equation"]
    assert {r.attrs["data-block"] for r in boxes} == {b.attrs["data-block"] for b in blocks.values()}


def test_report_command_rebuilds_the_same_files(replayed):
    out, _ = replayed
    written = {p: p.read_bytes() for p in out.rglob("report.html")}
    assert len(written) == 3  # the index and the two documents with output
    for path in written:
        path.unlink()
    result = run_dsocr("report", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert {p: p.read_bytes() for p in out.rglob("report.html")} == written


def test_report_of_merged_folders_without_summary(replayed, tmp_path):
    out, _ = replayed
    merged = tmp_path / "merged"
    shutil.copytree(out / "doc.pdf", merged / "batch-a" / "doc.pdf")
    shutil.copytree(out / HOSTILE_NAME, merged / "batch-b" / HOSTILE_NAME)
    result = run_dsocr("report", str(merged))
    assert result.returncode == 0, result.stderr
    index = merged / "report.html"
    tree = parse(index)
    rows = index_rows(tree)
    assert len(rows) == 2 and "No summary.json" in tree.text()
    for row in rows:
        view, _ = link_target(index, row["href"])
        back, _ = link_target(view, parse(view).all("a", id="to-index")[0].attrs["href"])
        assert back == index.resolve()


def test_no_report_writes_no_report_files(tmp_path):
    out, summary = replay_run(tmp_path, "--no-report")
    assert summary["documents"]["done"] == 2
    assert not list(out.rglob("report.html")) and not list(out.rglob("*.plain.jpg"))
    document = json.loads((out / "doc.pdf" / "document.json").read_text())
    assert "plain" not in document["pages"][0]["files"]


def test_report_command_bad_folders(tmp_path, replayed):
    missing = run_dsocr("report", str(tmp_path / "nowhere"))
    assert missing.returncode == 3 and "nowhere: no such folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_dsocr("report", str(empty))
    assert nothing.returncode == 3 and "holds no summary.json and no document.json" in nothing.stderr
    out = shutil.copytree(replayed[0], tmp_path / "copy")
    (out / "doc.pdf" / "document.json").write_text("{ truncated", encoding="utf-8")
    broken = run_dsocr("report", str(out))
    assert broken.returncode == 1
    assert re.search(r"doc\.pdf/document\.json: cannot be read", broken.stderr), broken.stderr
    assert len(index_rows(parse(out / "report.html"))) == 3  # the run's inputs are still all listed


def test_report_command_shows_no_markup_from_a_foreign_record(tmp_path, replayed):
    out = shutil.copytree(replayed[0], tmp_path / "copy")
    path = out / "doc.pdf" / "document.json"
    record = json.loads(path.read_text())
    record["pages"][0]["number"] = '1"><script>alert(1)</script>'
    path.write_text(json.dumps(record), encoding="utf-8")
    result = run_dsocr("report", str(out))
    assert result.returncode == 1
    assert re.search(r"doc\.pdf/document\.json: cannot be shown \(ValueError\)", result.stderr), result.stderr
    assert "<script>alert" not in (out / "report.html").read_text()
    row = next(r for r in index_rows(parse(out / "report.html")) if r["path"].endswith("doc.pdf"))
    assert row["href"] is None  # listed, but not linked to a view it could not write


def test_tiny_model_run_writes_report(dsocr, tmp_path):
    pdf = make_pdf(tmp_path / "in" / "paper.pdf", pages=2)
    out = tmp_path / "out"
    result = dsocr("pdf", str(pdf), "-o", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = index_rows(parse(out / "report.html"))
    assert len(rows) == 1 and rows[0]["pages"] == summary["pages"] == 2
    document = json.loads((out / "paper.pdf" / "document.json").read_text())
    view = parse(out / "paper.pdf" / "report.html")
    for page, section in zip(document["pages"], view.all("section"), strict=True):
        image = section.all("img")[0].attrs
        assert image["src"] == page["files"]["plain"] and (out / "paper.pdf" / image["src"]).is_file()
        assert (image["width"], image["height"]) == (str(page["width_px"]), str(page["height_px"]))
    assert str(out / "paper.pdf" / "report.html") in summary["items"][0]["outputs"]


def test_a_report_that_cannot_be_written_does_not_fail_the_run(tmp_path):
    (tmp_path / "out" / "report.html").mkdir(parents=True)  # in the way of the index
    out, summary = replay_run(tmp_path, warning="report.html: not written")
    assert summary["documents"] == {"done": 2, "skipped": 0, "failed": 1}  # the run's own verdict
    assert (out / "doc.pdf" / "report.html").is_file()
