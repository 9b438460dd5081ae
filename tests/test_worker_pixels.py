"""Page images reach the engine's workers through shared memory, and no segment outlives the run:
not after a worker is killed mid-run, not after SIGTERM. With no room in /dev/shm the pages travel
whole. Each run gets a /dev/shm of its own (a user namespace), so what is left there is its own."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import offline_env
from dsocr_cli.samples import make_image, make_pdf

# Mounts a private /dev/shm of the given size, runs the command, then lists what it left there.
PRIVATE_SHM = (
    'mount -t tmpfs -o size="$0" tmpfs /dev/shm || exit 99; "$@"; code=$?; '
    'echo "left in /dev/shm: [$(ls /dev/shm | grep psm_ | tr "\\n" " ")]" >&2; exit $code'
)


@pytest.fixture(autouse=True)
def user_namespaces():
    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a /dev/shm of the run's own")


def corpus(folder: Path) -> Path:
    for i in range(3):
        make_image(folder / f"img{i}.png", size=(420 + 40 * i, 320), text=f"page {i}")
    make_pdf(folder / "doc.pdf", pages=2)
    return folder


class Run:
    """`dsocr run` with its own /dev/shm of `size`, in the background, its stderr read as it comes."""

    def __init__(self, tiny_model: Path, size: str, *args: str):
        dsocr = [sys.executable, "-m", "dsocr_cli", "run", *args, "--model", str(tiny_model), "--device", "cpu"]
        command = ["unshare", "-Urm", "sh", "-c", PRIVATE_SHM, size, *dsocr, "--workers", "2", "--verbose"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env()
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.process.poll() is None, self.log
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{self.log}")

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"pid (\d+)", self.wait_for(r"2 workers: .*").group(0))]

    def finish(self, timeout: float = 600) -> tuple[int, tuple[int, int] | None, str]:
        """Exit code, (pages through shared memory, pages whole), and the segments left behind."""
        code = self.process.wait(timeout=timeout)
        self.process.stderr.close()
        time.sleep(0.2)  # the reader thread takes the last lines
        handed = re.search(r"page images: (\d+) through shared memory, (\d+) whole", self.log)
        left = re.search(r"left in /dev/shm: \[(.*)\]", self.log)
        assert left, self.log
        return code, handed and (int(handed.group(1)), int(handed.group(2))), left.group(1).strip()


def driver_of(worker: int) -> int:
    return int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_killed_mid_run_leaves_no_segment(tiny_model, tmp_path):
    inputs = corpus(tmp_path / "in")
    out = tmp_path / "out"
    run = Run(tiny_model, "256m", str(inputs), "-o", str(out), "--max-new-tokens", "40", "--batch-size", "1")
    victim = run.worker_pids()[0]
    run.wait_for(r"done .*page\(s\)")  # mid-run: a document is done, others are in the workers
    os.kill(victim, signal.SIGKILL)
    code, handed, left = run.finish()
    assert code == 0, run.log
    assert "died" in run.log
    shared, whole = handed
    assert shared >= 5 and whole == 0  # every page went through shared memory, the dead worker's twice
    assert left == ""
    assert len(list(out.rglob("document.json"))) == 4


def test_sigterm_leaves_no_segment(tiny_model, tmp_path):
    inputs = corpus(tmp_path / "in")
    run = Run(tiny_model, "256m", str(inputs), "-o", str(tmp_path / "out"), "--max-new-tokens", "400")
    driver = driver_of(run.worker_pids()[0])
    run.wait_for(r"worker \d asks for")
    os.kill(driver, signal.SIGTERM)
    code, _, left = run.finish(timeout=120)
    assert code == 130, run.log
    assert left == ""


def test_pages_travel_whole_when_dev_shm_is_too_small(tiny_model, tmp_path):
    """A 1 MB /dev/shm has no room for a page image twice over: the pages go through the pipe."""
    inputs = tmp_path / "in"
    make_pdf(inputs / "doc.pdf", pages=3)
    out = tmp_path / "out"
    run = Run(tiny_model, "1m", str(inputs), "-o", str(out), "--max-new-tokens", "12")
    code, handed, left = run.finish()
    assert code == 0, run.log
    assert handed == (0, 3)
    assert left == ""
    assert len(list((out / "doc.pdf" / "pages").glob("????.md"))) == 3
