"""What a person at a terminal sees on stderr: a progress bar counting pages, log lines printed
above it (never into it), and each library log line once. The real command runs with its stderr
on a pseudo-terminal of 120 x 20, as under tmux."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import offline_env
from dsocr_cli.samples import make_image, make_pdf

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = "━"  # rich's bar glyph


def run_on_terminal(args: list[str], columns: int = 120, rows: int = 20) -> tuple[int, str, str]:
    """The real command with stderr on a pty (stdout a pipe); returns exit code, stdout and the
    terminal's byte stream decoded."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = offline_env(TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsocr_cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=60)
    return proc.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


def terminal_lines(stream: str) -> list[str]:
    """The stream cut where the terminal's cursor goes back to a line start (newline or carriage
    return), escape sequences removed: text written into the bar's line shares its piece."""
    return [ANSI.sub("", piece) for piece in re.split(r"[\r\n]", stream)]


def test_progress_counts_pages_and_log_lines_go_above_it(tiny_model, tmp_path):
    pdf = make_pdf(tmp_path / "in" / "three.pdf", pages=3)
    make_image(tmp_path / "in" / "one.png", size=(320, 240))
    out = tmp_path / "out"
    flags = ["--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "12", "--mode", "base"]
    flags += ["--decoder", "generate"]  # whose unfinished pages are retried, and logged, by the pipeline
    code, stdout, stream = run_on_terminal(["run", str(pdf.parent), "-o", str(out), *flags])
    assert code == 0, stream[-3000:]
    assert stdout == ""
    lines = terminal_lines(stream)
    bars = [line for line in lines if BAR in line]
    assert bars, stream[-3000:]
    # Pages are the bar's unit, their total known before the first page is done; documents alongside.
    assert any(re.search(r"\b0/4 pages\b", line) for line in bars), bars[:3]
    assert re.search(r"\b4/4 pages · 2/2 docs\b", bars[-1]), bars[-1]
    assert any("pages/s" in line for line in bars)
    # --max-new-tokens 12 cuts every page short, so the retry is logged while the bar is live.
    assert any(re.search(r"retrying \d+ page", line) for line in lines), stream[-3000:]
    into_bar = [line for line in lines if BAR in line and re.search(r"INFO|WARNING|ERROR|retrying|done ", line)]
    assert not into_bar, into_bar
    assert json.loads((out / "summary.json").read_text())["pages"] == 4


def test_page_totals_honour_pages_and_skip_finished_documents(tiny_model, tmp_path):
    """--pages narrows the total; a rerun's skipped documents take their pages off it."""
    pdf = make_pdf(tmp_path / "in" / "five.pdf", pages=5)
    out = tmp_path / "out"
    flags = ["--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "4", "--mode", "base", "--no-retry"]
    code, _, stream = run_on_terminal(["pdf", str(pdf), "-o", str(out), "--pages", "2-3", *flags])
    assert code == 0, stream[-3000:]
    bars = [line for line in terminal_lines(stream) if BAR in line]
    assert any(re.search(r"\b0/2 pages\b", line) for line in bars), bars[:3]
    assert re.search(r"\b2/2 pages · 1/1 docs\b", bars[-1]), bars[-1]
    code, _, stream = run_on_terminal(["pdf", str(pdf), "-o", str(out), "--pages", "2-3", *flags])
    assert code == 0, stream[-3000:]
    bars = [line for line in terminal_lines(stream) if BAR in line]
    assert re.search(r"\b0/0 pages · 1/1 docs\b", bars[-1]), bars[-1]


def test_library_log_lines_are_printed_once(tmp_path):
    """Without a network huggingface_hub logs each retry; one handler prints each line once."""
    pdf = make_pdf(tmp_path / "a.pdf", pages=1)
    env = offline_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsocr_cli", "pdf", str(pdf), "--model", "someorg/somemodel"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # the first retries are enough; the rest back off for half a minute
        lines.append(line.rstrip("\n"))
        if "Retry 2/" in line or time.monotonic() > deadline:
            break
    proc.terminate()
    proc.communicate(timeout=60)
    retries = [line for line in lines if "Retrying in 1s" in line]
    assert len(retries) == 1, lines
    assert retries[0].startswith("huggingface_hub: "), lines  # named as the library's, not dsocr's
    assert len([line for line in lines if "thrown while requesting" in line]) == 2, lines


def test_model_error_has_one_full_stop(tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf", pages=1)
    env = offline_env(HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "dsocr_cli", "pdf", str(pdf), "--model", "someorg/somemodel"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 4, result.stderr
    error = [line for line in result.stderr.splitlines() if "cannot load model someorg/somemodel" in line]
    assert len(error) == 1, result.stderr
    assert ".." not in error[0] and "cached files. " in error[0], error[0]


def test_tiff_frames_count_as_pages(tmp_path):
    """The bar's total reads a multi-frame TIFF's frames without decoding them."""
    from PIL import Image

    from dsocr_cli.options import RenderOptions, parse_pages
    from dsocr_cli.render import page_count
    from dsocr_cli.types import Source

    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    path = tmp_path / "scan.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    source = Source(Path(path), "image", "scan.tiff")
    assert page_count(source, RenderOptions()) == 3
    assert page_count(source, RenderOptions(pages=parse_pages("2-"))) == 2
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7 nothing else")
    assert page_count(Source(broken, "pdf", "broken.pdf"), RenderOptions()) == 0


def test_each_worker_has_a_line_under_the_bar(tiny_model, tmp_path):
    for i in range(4):
        make_image(tmp_path / "in" / f"p{i}.png", size=(320, 240))
    out = tmp_path / "out"
    flags = ["--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "6", "--mode", "base"]
    code, _, stream = run_on_terminal(["run", str(tmp_path / "in"), "-o", str(out), "--workers", "2", *flags])
    assert code == 0, stream[-3000:]
    lines = terminal_lines(stream)
    for slot in (0, 1):
        shown = [line for line in lines if re.search(rf"worker {slot} · cpu\b.* pages · [\d,]+ tok/s", line)]
        assert shown, stream[-3000:]
    workers = json.loads((out / "summary.json").read_text())["engine"]["workers"]
    assert sum(w["pages"] for w in workers) == 4
