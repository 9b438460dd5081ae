"""Page pixels handed to the engine's workers on this host through shared memory, not their pipe.

A rendered A4 page is 6 MB of RGB. Pickled into a worker's pipe it cost the driver's main thread
~18 ms a page (packed, copied into the pickle, written through the pipe 64 KB at a time); copied
into a `multiprocessing.shared_memory` segment that the worker copies it out of, ~3 ms. Segments
are reused: the worker tells the driver which pages it has taken, and their segments carry later
pages, so the kernel does not allocate and zero 6 MB for each page.

The driver owns every segment and unlinks them all when the run ends; a worker only reads them,
so a worker killed mid-read leaks nothing. Spawned workers share the driver's resource tracker,
which unlinks whatever is left if the driver itself is killed. A new segment is made only while
/dev/shm has room for it twice over (Docker gives it 64 MB): writing into a segment that tmpfs
cannot back would kill the driver with SIGBUS. Without room, the page travels whole, as before.
Pages from the render workers come the other way (handover.py, whose helpers read and free these
segments too), their tensors through torch's shared memory; a page image is not a tensor, and the
driver need not import torch.
"""

from __future__ import annotations

from multiprocessing.shared_memory import SharedMemory

from PIL import Image

from dsocr_cli.handover import Pixels, free_bytes, unlink

KEEP_FREE = 16  # idle segments kept for later pages; more are unlinked as they come back


class SharedPixels:
    """The driver's segments, each lent to one page until the worker has copied the page out."""

    def __init__(self, keep_free: int = KEEP_FREE):
        self.keep_free = keep_free
        self.free: list[SharedMemory] = []
        self.lent: dict[str, SharedMemory] = {}
        self.shared = 0  # page images handed over through shared memory
        self.whole = 0  # page images that travelled with their page, for lack of room

    def lend(self, image: Image.Image) -> Pixels | None:
        """The image copied into a segment, for the worker's `handover.read`; None when /dev/shm has no
        room for it."""
        data = image.tobytes()
        segment = self._segment(len(data))
        if segment is None:
            self.whole += 1
            return None
        segment.buf[: len(data)] = data
        self.lent[segment.name] = segment
        self.shared += 1
        return segment.name, image.mode, image.size, len(data)

    def give_back(self, pixels: Pixels) -> None:
        """The worker has copied the page out (or died): the segment may carry another page."""
        segment = self.lent.pop(pixels[0], None)
        if segment is None:
            return
        if len(self.free) < self.keep_free:
            self.free.append(segment)
        else:
            unlink(segment)

    def close(self) -> None:
        """Unlink every segment: the run is over and every worker stopped."""
        for segment in [*self.free, *self.lent.values()]:
            unlink(segment)
        self.free.clear()
        self.lent.clear()

    def _segment(self, size: int) -> SharedMemory | None:
        """A free segment big enough, else a new one where /dev/shm has room for it twice over."""
        fits = next((segment for segment in self.free if segment.size >= size), None)
        if fits is not None:
            self.free.remove(fits)
            return fits
        if free_bytes() < 2 * size:
            return None
        try:
            return SharedMemory(create=True, size=size)
        except OSError:
            return None
