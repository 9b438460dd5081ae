"""One run per output folder. An advisory lock (flock) on OUT/.dsocr.lock: the kernel drops it
when its holder dies, even by kill -9, so a stale lock never blocks the next run."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from dsocr_cli.errors import LockedError, show_path

LOCK_NAME = ".dsocr.lock"


class OutputLock:
    """Held for a whole run (and by `dsocr report`), so two processes never write one OUT tree."""

    def __init__(self, out: Path, wait: bool = False):
        self.path = out / LOCK_NAME
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock, or queue for it with `wait`, else raise LockedError naming the holder: each
        holder writes its pid and start time into the file for that message."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every output file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"output folder {show_path(self.path.parent)} is in use by {holder}",
                "wait for it to finish, or pass --wait to queue behind it",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"dsocr pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock and empty the holder line; a second call does nothing. The file stays: deleting it
        would let a run waiting on the old file and a new one both hold a lock."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
