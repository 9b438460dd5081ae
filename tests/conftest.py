"""Shared fixtures: the tiny random-weight model (built once per session) and a runner for the
real `dsocr` command in a subprocess, offline, as a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dsocr_cli.tinymodel import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_dsocr(
    *args: str,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 300,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m dsocr_cli ARGS` and capture stdout and stderr separately."""
    return subprocess.run(
        [sys.executable, "-m", "dsocr_cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or offline_env(),
    )


@pytest.fixture
def dsocr(tiny_model):
    """`dsocr(cmd, *args)`: the real command on the tiny model, short generations on the CPU."""

    def call(command: str, *args: str, model: bool = True, **kwargs) -> subprocess.CompletedProcess:
        extra = ["--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "12"] if model else []
        return run_dsocr(command, *extra, *args, **kwargs)  # later flags win: tests can override

    return call


class Background:
    """A command in the background, its stderr read as it comes: for tests that act mid-run."""

    def __init__(self, command: list[str]):
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


def small_corpus(folder: Path) -> Path:
    """Three images of different sizes and a two-page PDF: four documents, five pages."""
    from dsocr_cli.samples import make_image, make_pdf

    for i in range(3):
        make_image(folder / f"img{i}.png", size=(420 + 40 * i, 320), text=f"page {i}")
    make_pdf(folder / "doc.pdf", pages=2)
    return folder
