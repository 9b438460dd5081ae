"""Output files and folders get the mode the umask gives, as any other program's would: a web
server, a second user or a group-shared archive must be able to read what a cron run wrote."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import offline_env
from dsocr_cli.samples import make_pdf
from test_layout_outputs import RAW, record


def run_under_umask(umask: int, *args: str) -> subprocess.CompletedProcess:
    """The real command, started by a shell that set the umask first (as cron or a login would)."""
    command = [sys.executable, "-m", "dsocr_cli", *args]
    return subprocess.run(
        ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=300,
        env=offline_env(),
    )


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask-022", "umask-002"])
def test_outputs_follow_the_umask(tmp_path, umask):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    recorded = record(tmp_path / "recorded", pdf.name, {1: RAW, 2: RAW})
    out = tmp_path / "out"
    flags = ["--engine", "replay", "--model", str(recorded), "--searchable-pdf", "--layout-pdf"]
    result = run_under_umask(umask, "pdf", str(pdf), "-o", str(out), *flags)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["documents"]["done"] == 1
    folder = out / pdf.name
    for name in ("document.md", "document.json", "pages/0001.md", "figures/0001-01.png", "searchable.pdf"):
        assert (folder / name).is_file(), name  # the kinds of file the check below must cover
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    wrong = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p, want in [(f, 0o666 & ~umask) for f in files] + [(d, 0o777 & ~umask) for d in folders]
        if stat.S_IMODE(p.stat().st_mode) != want
    }
    assert not wrong, f"under umask {umask:03o}: {wrong}"


def test_modes_of_a_rerun_replacing_a_document(tmp_path):
    """--force replaces a finished document folder: the new one follows the umask too."""
    pdf = make_pdf(tmp_path / "doc.pdf", pages=1)
    recorded = record(tmp_path / "recorded", pdf.name, {1: RAW})
    out = tmp_path / "out"
    flags = ["--engine", "replay", "--model", str(recorded)]
    assert run_under_umask(0o077, "pdf", str(pdf), "-o", str(out), *flags).returncode == 0
    result = run_under_umask(0o002, "pdf", str(pdf), "-o", str(out), *flags, "--force")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((out / pdf.name).stat().st_mode) == 0o775
    assert stat.S_IMODE((out / pdf.name / "document.json").stat().st_mode) == 0o664
    assert stat.S_IMODE((out / "summary.json").stat().st_mode) == 0o664
    assert os.access(out / pdf.name / "document.md", os.R_OK)


def test_umask_is_read_without_changing_it():
    from dsocr_cli.writers.files import current_umask

    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(before)
