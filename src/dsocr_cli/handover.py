"""Rendered page images handed from the render workers to the main process through shared memory.

A rendered A4 page is 6 MB of RGB. Read from a worker's pipe it comes 64 KB at a time, and the
main process, which also launches the GPU's work, gives up the GIL around every read and waits to
get it back from the threads making page inputs beside it. From a shared memory segment it is one
copy (docs/BENCHMARKS.md, run 44: the decoding thread's waits for pages fell from 10.9 to 7.6 s
in 1,024 pages).

A worker makes one segment per page, named after a token the main process gave it (process ids
repeat across containers that share /dev/shm), and never unlinks it; the main
process unlinks each segment once it has copied the page out, and `sweep`s those of a worker that
died or was stopped before its pages were read. Workers share the main process's resource
tracker, which unlinks whatever is left if the main process itself is killed. A segment is made
only while /dev/shm has room for it twice over, and its memory is reserved before it is written:
a write that tmpfs cannot back would kill the worker with SIGBUS. Without room the page travels
through the pipe. The engine's worker pool (engines/pixels.py) reads and frees its segments with
the same helpers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from multiprocessing.shared_memory import SharedMemory

from PIL import Image

SHM = "/dev/shm"

Pixels = tuple[str, str, tuple[int, int], int]  # segment name, image mode, size, bytes


def prefix(token: str) -> str:
    """The start of every segment name the worker given this token makes."""
    return f"dsocr-page-{token}-"


def share(image: Image.Image, token: str) -> Pixels | None:
    """In a worker: the image copied into a new segment, for `take`; None when /dev/shm has no room
    (or none exists: macOS), or for an image that its mode, size and bytes alone do not rebuild."""
    if not os.path.isdir(SHM) or image.mode not in ("RGB", "L"):
        return None
    data = image.tobytes()
    if not data or free_bytes() < 2 * len(data):
        return None
    try:
        segment = SharedMemory(name=prefix(token) + secrets.token_hex(6), create=True, size=len(data))
    except OSError:
        return None
    try:
        os.posix_fallocate(segment._fd, 0, len(data))  # ENOSPC here, not SIGBUS while writing
        segment.buf[: len(data)] = data
    except OSError:
        unlink(segment)
        return None
    segment.close()
    return segment.name, image.mode, image.size, len(data)


def take(pixels: Pixels) -> Image.Image:
    """In the main process: the image copied out of its segment, which is then unlinked."""
    segment = SharedMemory(pixels[0])
    try:
        return _copy_out(segment, pixels)
    finally:
        unlink(segment)


def read(pixels: Pixels) -> Image.Image:
    """The image copied out of its segment, which stays for its owner to unlink or reuse."""
    segment = SharedMemory(pixels[0])
    try:
        return _copy_out(segment, pixels)
    finally:
        segment.close()


def discard(pixels: Pixels) -> None:
    """In a worker: unlink a segment that will not be sent after all."""
    with contextlib.suppress(OSError):
        unlink(SharedMemory(pixels[0]))


def sweep(token: str) -> None:
    """Unlink the segments left by the worker given this token (it is gone: nobody reads them)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM):
            if name.startswith(prefix(token)):
                try:
                    unlink(SharedMemory(name))
                except (OSError, ValueError):  # empty: the worker died between creating and sizing it
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(SHM, name))


def unlink(segment: SharedMemory) -> None:
    """Close this process's mapping and remove the segment (someone else may have already)."""
    segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


def free_bytes() -> int:
    """Room left in /dev/shm; where there is none to measure (macOS) shared memory lives
    elsewhere, and callers may try."""
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return sys.maxsize
    return stat.f_bavail * stat.f_frsize


def _copy_out(segment: SharedMemory, pixels: Pixels) -> Image.Image:
    _, mode, size, length = pixels
    view = segment.buf[:length]
    try:
        return Image.frombytes(mode, size, view)
    finally:
        view.release()
