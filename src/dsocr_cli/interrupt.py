"""SIGINT and SIGTERM end a run with exit 130, and neither may be lost on the way.

Python raises the KeyboardInterrupt wherever the main thread happens to be when the signal comes.
When that is inside code whose caller discards exceptions (a finalizer, a weakref or garbage
collector callback, a C library calling back into Python), the interrupt vanishes and the run goes
on to its end as if no one had asked it to stop. So the signal is also remembered: the pipeline
asks at each step (`check`) and raises it again there.
"""

from __future__ import annotations

import signal

_received = False


def install() -> None:
    """From the command line, before a run: both signals interrupt the main thread, and are remembered."""
    global _received
    _received = False
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def received() -> bool:
    """Whether a signal came since `install` (its KeyboardInterrupt may have been lost)."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a signal came: at a step of the run, where it is always handled."""
    if _received:
        raise KeyboardInterrupt


def _interrupt(signum, frame) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt
