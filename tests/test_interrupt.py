"""An interrupt whose KeyboardInterrupt is lost on the way (raised inside a finalizer, where Python
prints it as ignored and goes on) still ends the run with exit 130, leaving only whole documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import offline_env
from dsocr_cli.samples import make_pdf
from dsocr_cli.types import Prediction


class _SignalWhenCollected:
    """Sends SIGINT from its finalizer: the handler's KeyboardInterrupt is raised there, and lost."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)


class LostInterruptEngine:
    """Answers every page; on the page of b.pdf, a SIGINT comes while a finalizer runs."""

    name, device, batch_size = "lost-interrupt", "cpu", 1

    def predict(self, pages, prompt, strict=False):
        if any(p.source.key == "b.pdf" for p in pages):
            _SignalWhenCollected()  # collected at once
        return [Prediction(f"text of {p.source.key} page {p.number}", 4, "eos", 0.0) for p in pages]


def load_lost_interrupt(options) -> LostInterruptEngine:
    return LostInterruptEngine()


DSOCR_WITH_ENGINE = """
import sys
from dsocr_cli.cli import main
from dsocr_cli.engines import register
register("lost-interrupt", "test_interrupt:load_lost_interrupt")
sys.argv = ["dsocr", *sys.argv[1:]]
main()
"""


def test_an_interrupt_lost_in_a_finalizer_still_ends_the_run_with_130(tmp_path: Path):
    for name in ("a.pdf", "b.pdf", "c.pdf", "d.pdf"):
        make_pdf(tmp_path / "in" / name, pages=1)
    out = tmp_path / "out"
    env = offline_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    command = [sys.executable, "-c", DSOCR_WITH_ENGINE, "run", str(tmp_path / "in"), "-o", str(out)]
    command += ["--engine", "lost-interrupt"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    assert "Exception ignored in" in done.stderr  # Python did drop the KeyboardInterrupt
    assert done.returncode == 130, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["exit_code"] == 130
    in_place = sorted(p.parent.name for p in out.glob("*/document.json"))
    assert summary["documents"]["done"] == len(in_place)  # each document in place is recorded done
    assert "b.pdf" not in in_place and len(in_place) < 4  # b.pdf was interrupted, and the run stopped there
    assert not (out / ".dsocr-staging").exists() or not list((out / ".dsocr-staging").iterdir())
