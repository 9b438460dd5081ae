"""What every process dsocr spawns does first: watch its parent, so none outlives the run.

The engine's workers (engines/worker.py) and the image writers' pool (writers/images.py) are
separate processes; a driver killed with -9 cannot stop them, so each one stops itself.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int) -> None:
    """Exit this process within a second of `parent` going, even one killed with -9: a background
    thread polls the parent's pid (a dead parent's children are re-parented)."""
    threading.Thread(target=_watch, args=(parent,), name="dsocr-parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
