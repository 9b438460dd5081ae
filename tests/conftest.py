"""Shared fixtures: the tiny random-weight model (built once per session) and a runner for the
real `dsocr` command in a subprocess, offline, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
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
