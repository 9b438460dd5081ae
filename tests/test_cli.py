"""The real `dsocr` command on real files, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from dsocr_cli.samples import make_image, make_pdf


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_pdf_to_output_tree(dsocr, tmp_path):
    pdf = make_pdf(tmp_path / "report.pdf", pages=3)
    out = tmp_path / "out"
    result = dsocr("pdf", str(pdf), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    folder = out / "report.pdf"
    markdown = (folder / "document.md").read_text(encoding="utf-8")
    assert [f"<!-- dsocr:page {n} -->" in markdown for n in (1, 2, 3)] == [True] * 3
    record = load_json(folder / "document.json")
    assert record["schema"] == "dsocr.document/1"
    assert record["page_count"] == 3
    for number, page in enumerate(record["pages"], start=1):
        assert page["number"] == number
        assert page["dpi"] == pytest.approx(144.0)
        assert (page["width_px"], page["height_px"]) == (1190, 1684)  # A4 at 144 DPI
        assert page["finish"] in ("eos", "length", "repetition")
        assert 0 < page["tokens"] <= 12
        for kind in ("markdown", "raw", "annotated"):
            assert (folder / page["files"][kind]).is_file()
    with Image.open(folder / "pages" / "0002.jpg") as annotated:
        assert annotated.size == (1190, 1684)
    summary = load_json(out / "summary.json")
    assert summary["documents"] == {"done": 1, "skipped": 0, "failed": 0}
    assert summary["pages"] == 3 and summary["exit_code"] == 0
    assert not list(out.rglob(".tmp-*")) and not (out / ".dsocr-staging").exists()


def test_page_selection_and_dpi(dsocr, tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=5)
    out = tmp_path / "out"
    result = dsocr("pdf", str(pdf), "-o", str(out), "--pages", "2,4-", "--dpi", "72")
    assert result.returncode == 0, result.stderr
    pages = load_json(out / "doc.pdf" / "document.json")["pages"]
    assert [p["number"] for p in pages] == [2, 4, 5]
    assert (pages[0]["width_px"], pages[0]["height_px"]) == (595, 842)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "1"])
def test_image_colour_modes(dsocr, tmp_path, mode):
    suffix = ".jpg" if mode in ("CMYK", "L") else ".png"
    image = make_image(tmp_path / f"page-{mode}{suffix}", size=(640, 480), mode=mode)
    out = tmp_path / "out"
    result = dsocr("image", str(image), "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = load_json(out / image.name / "document.json")["pages"][0]
    assert (page["width_px"], page["height_px"]) == (640, 480)


def test_multiframe_tiff_pages(dsocr, tmp_path):
    frames = [Image.new("RGB", (400 + 50 * i, 300), (40 * i, 90, 200)) for i in range(3)]
    tiff = tmp_path / "scan.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    result = dsocr("image", str(tiff), "-o", str(out))
    assert result.returncode == 0, result.stderr
    pages = load_json(out / "scan.tiff" / "document.json")["pages"]
    assert [p["width_px"] for p in pages] == [400, 450, 500]


def test_exif_orientation_applied(dsocr, tmp_path):
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (600, 300), "white").save(photo, exif=exif)
    out = tmp_path / "out"
    assert dsocr("image", str(photo), "-o", str(out)).returncode == 0
    page = load_json(out / "photo.jpg" / "document.json")["pages"][0]
    assert (page["width_px"], page["height_px"]) == (300, 600)


def test_directory_tree_keys_never_collide(dsocr, tmp_path):
    root = tmp_path / "scans"
    make_pdf(root / "a" / "x.pdf", pages=1)
    make_pdf(root / "b" / "x.pdf", pages=1)
    make_pdf(root / "x.pdf", pages=1)
    make_image(root / "x.png")
    (root / "notes.txt").write_text("not a document")
    lone = make_pdf(tmp_path / "elsewhere" / "x.pdf", pages=1)
    out = tmp_path / "out"
    result = dsocr("run", str(root), str(lone), "-o", str(out))
    assert result.returncode == 0, result.stderr
    keys = sorted(item["key"] for item in load_json(out / "summary.json")["items"])
    assert keys == ["a/x.pdf", "b/x.pdf", "x.pdf", "x.pdf~2", "x.png"]
    for key in keys:
        assert (out / key / "document.md").is_file()


def test_content_decides_kind_not_extension(dsocr, tmp_path):
    liar = tmp_path / "really-a-png.pdf"
    make_image(tmp_path / "tmp.png").rename(liar)
    out = tmp_path / "out"
    result = dsocr("run", str(liar), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert load_json(out / liar.name / "document.json")["source"]["kind"] == "image"


def test_stdin_path_list(dsocr, tmp_path):
    files = [make_pdf(tmp_path / "in" / "one.pdf", pages=1), make_image(tmp_path / "in" / "two.png")]
    out = tmp_path / "out"
    result = dsocr("run", "-", "-o", str(out), stdin="".join(f"{f}\n" for f in files))
    assert result.returncode == 0, result.stderr
    assert {i["key"] for i in load_json(out / "summary.json")["items"]} == {"one.pdf", "two.png"}


def test_stdout_mode_carries_only_markdown(dsocr, tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    result = dsocr("pdf", str(pdf))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!-- dsocr:page 1 -->\n")
    assert "<!-- dsocr:page 2 -->" in result.stdout
    assert "loaded" in result.stderr and "loaded" not in result.stdout
    assert "<|ref|>" not in result.stdout and "<|det|>" not in result.stdout
    assert not list(tmp_path.glob("summary.json"))


def test_json_summary_on_stdout(dsocr, tmp_path):
    image = make_image(tmp_path / "a.png")
    result = dsocr("image", str(image), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["schema"] == "dsocr.summary/1"
    assert summary["items"][0]["status"] == "done"
    assert summary == load_json(tmp_path / "out" / "summary.json")


def test_json_without_output_is_a_usage_error(dsocr, tmp_path):
    result = dsocr("image", str(make_image(tmp_path / "a.png")), "--json")
    assert result.returncode == 2
    assert "--json" in result.stderr and result.stdout == ""


def test_one_bad_input_does_not_stop_the_rest(dsocr, tmp_path):
    good = make_pdf(tmp_path / "good.pdf", pages=1)
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 20)
    out = tmp_path / "out"
    result = dsocr("run", str(bad), str(good), str(tmp_path / "missing.pdf"), "-o", str(out))
    assert result.returncode == 1
    items = {Path(i["path"]).name: i for i in load_json(out / "summary.json")["items"]}
    assert items["good.pdf"]["status"] == "done"
    assert items["bad.pdf"]["status"] == "failed" and "bad.pdf" in items["bad.pdf"]["message"]
    assert items["missing.pdf"]["status"] == "failed"
    assert not (out / "bad.pdf").exists()
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "bad.pdf" in line]
    assert len(errors) == 1


def test_nothing_to_do_exits_3(dsocr, tmp_path):
    result = dsocr("run", str(tmp_path / "nope.pdf"), model=False)
    assert result.returncode == 3
    assert "nope.pdf" in result.stderr


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--model", "/nonexistent/checkpoint"], "does not exist"),
        (["--model", "nobody/no-such-model"], "cannot load model"),
        (["--device", "cuda"], "--device cpu"),
        (["--mode", "large"], "native DeepSeek-OCR-2 engine supports"),
        (["--engine", "nope"], "unknown engine"),
    ],
)
def test_setup_errors_are_one_line(dsocr, tmp_path, flags, needle):
    image = make_image(tmp_path / "a.png")
    result = dsocr("image", str(image), "-o", str(tmp_path / "out"), *flags)
    assert result.returncode in (2, 4), result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line.lower()]) <= 1


def test_output_folder_that_is_a_file_fails_before_loading(dsocr, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    result = dsocr("image", str(make_image(tmp_path / "a.png")), "-o", str(blocker))
    assert result.returncode == 4
    assert "is a file" in result.stderr and "loaded" not in result.stderr


def test_selftest_and_saved_model(tmp_path):
    from conftest import run_dsocr

    saved = tmp_path / "tiny"
    result = run_dsocr("selftest", "--save-model", str(saved))
    assert result.returncode == 0, result.stderr
    assert "selftest   passed" in result.stdout
    assert "FAIL" not in result.stdout
    pdf = make_pdf(tmp_path / "a.pdf", pages=1)
    again = run_dsocr("pdf", str(pdf), "--model", str(saved), "--max-new-tokens", "4", "-o", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr


def test_rendered_pdf_page_matches_pymupdf(tmp_path):
    """The renderer's pixels are PyMuPDF's at the asked DPI, RGB without alpha."""
    from dsocr_cli.discover import discover
    from dsocr_cli.options import RenderOptions
    from dsocr_cli.render import render

    pdf = make_pdf(tmp_path / "a.pdf", pages=1)
    (source,), _ = discover([str(pdf)])
    (page,) = list(render(source, RenderOptions(dpi=100)))
    with pymupdf.open(pdf) as doc:
        pix = doc[0].get_pixmap(dpi=100, alpha=False)
    assert page.image.mode == "RGB"
    assert page.size == (pix.width, pix.height)


def test_output_inside_the_input_folder_is_never_read_back(dsocr, tmp_path):
    inputs = tmp_path / "share"
    make_image(inputs / "a.png")
    (inputs / ".gitkeep").write_bytes(b"")  # an empty non-document: ignored, not a failure
    out = inputs / "ocr"
    assert dsocr("run", str(inputs), "-o", str(out)).returncode == 0
    again = dsocr("run", str(inputs), "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert [i["key"] for i in load_json(out / "summary.json")["items"]] == ["a.png"]
    assert load_json(out / "summary.json")["documents"] == {"done": 0, "skipped": 1, "failed": 0}


def test_keys_never_clash_with_summary_or_other_documents(dsocr, tmp_path):
    named_summary = make_image(tmp_path / "x" / "s.png").rename(tmp_path / "x" / "summary.json")  # like dsocr's
    folder = tmp_path / "tree"
    make_image(folder / "a" / "b.png")
    lone = make_image(tmp_path / "y" / "a.png").rename(tmp_path / "y" / "a")  # keyed "a", beside "a/b.png"
    out = tmp_path / "out"
    result = dsocr("run", str(named_summary), str(folder), str(lone), "-o", str(out))
    assert result.returncode == 0, result.stderr
    keys = sorted(i["key"] for i in load_json(out / "summary.json")["items"])
    assert keys == ["a/b.png", "a~2", "summary.json~2"]
    assert all((out / key / "document.json").is_file() for key in keys)


def test_prompt_with_two_images_is_a_usage_error(dsocr, tmp_path):
    result = dsocr("image", str(make_image(tmp_path / "a.png")), "--prompt", "<image> and <image>: compare")
    assert result.returncode == 2 and "<image>" in result.stderr
