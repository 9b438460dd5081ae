"""Crash-safe file primitives: a file appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, flush to disk, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc), so output files
    get the mode any other program's files would: 0644 under umask 022, 0664 under 002."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """UTF-8 text, whole or not at all (see `write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value) -> None:
    """Indented, with non-ASCII text kept readable; whole or not at all."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written folder into place. An older one is first moved beside `staged` (the
    staging area, which the next run clears), so a crash between the renames leaves no debris
    in the tree: at worst the document is missing and the next run redoes it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = staged.with_name(staged.name + ".old")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
