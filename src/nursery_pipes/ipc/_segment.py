"""One mapped POSIX shared-memory segment, closed without ever crashing.

``mmap.close()`` raises ``BufferError`` while memoryviews or numpy arrays still
export the mapping. :meth:`Segment.close` therefore releases our own view, tries
to unmap, and if views are still exported simply drops its references: the
``mmap`` object is then unmapped by CPython when the last exporting view dies.
Unlinking is by name and independent of mappings.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Final

import posix_ipc

__all__ = ["PAGE_SIZE", "Segment", "unlink_segment"]

PAGE_SIZE: Final = mmap.PAGESIZE
# Linux >= 5.14; Python 3.11's mmap module does not export them.
_MADV_POPULATE_READ: Final = getattr(mmap, "MADV_POPULATE_READ", 22)
_MADV_POPULATE_WRITE: Final = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def unlink_segment(name: str) -> bool:
    """Unlink segment ``name`` (with leading ``/``); False if it did not exist."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    return True


class Segment:
    """A mapped segment: ``name``, ``size``, the ``mmap`` and a memoryview of it."""

    __slots__ = ("mm", "name", "size", "view")

    def __init__(self, name: str, size: int, mm: mmap.mmap) -> None:
        self.name = name
        self.size = size
        self.mm: mmap.mmap | None = mm
        self.view: memoryview = memoryview(mm)

    @classmethod
    def create(cls, name: str, size: int, *, populate: bool = True) -> Segment:
        """Create (O_CREX, mode 0600) and map ``size`` bytes; fails if ``name`` exists.

        ``populate`` pre-faults the pages (MADV_POPULATE_WRITE) so the first
        frame written does not pay the ~5x cost of faulting fresh tmpfs pages.
        """
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            unlink_segment(name)
            raise
        finally:
            shm.close_fd()
        seg = cls(name, size, mm)
        if populate:
            seg.populate(write=True)
        return seg

    @classmethod
    def open(cls, name: str, *, readonly: bool = False) -> Segment:
        """Map an existing segment (its whole current size)."""
        shm = posix_ipc.SharedMemory(name, read_only=readonly)
        try:
            size = shm.size
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            mm = mmap.mmap(shm.fd, size, access=access)
        finally:
            shm.close_fd()
        return cls(name, size, mm)

    def populate(self, *, write: bool) -> None:
        if self.mm is None:
            return
        with contextlib.suppress(OSError):  # older kernel: pages fault in lazily
            self.mm.madvise(_MADV_POPULATE_WRITE if write else _MADV_POPULATE_READ)

    def close(self) -> bool:
        """Unmap if possible; True when unmapped now, False when deferred to the GC.

        Never raises: exported views (numpy arrays, received payloads) keep the
        mapping alive and valid until they are gone.
        """
        mm, self.mm = self.mm, None
        if mm is None:
            return True
        with contextlib.suppress(BufferError):
            self.view.release()
        try:
            mm.close()
        except BufferError:
            return False
        return True
