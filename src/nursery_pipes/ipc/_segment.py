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
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import posix_ipc

__all__ = ["PAGE_SIZE", "Segment", "SegmentCache", "unlink_segment"]

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


class SegmentCache:
    """This process's mappings of external segments, by segment id, least recently used first.

    Mapping a segment and pre-faulting it costs about as much as copying it (10 MiB: ~0.5 ms
    read-only, ~1.6 ms writable here), so mappings are kept: external segments circulate
    between the rings of a session (``_ownership``) and come back. An id (its name) is never
    reused for another segment, so a cached mapping is always the right one. At most
    ``capacity`` mappings; the least recently used is dropped beyond that (a mapping of a
    segment unlinked meanwhile keeps its memory until dropped, so ``capacity`` also bounds that).
    """

    __slots__ = ("_capacity", "_name_of", "_readonly", "_segs")

    def __init__(self, name_of: Callable[[int], str], *, readonly: bool, capacity: int = 256) -> None:
        self._name_of = name_of
        self._readonly = readonly
        self._capacity = capacity
        self._segs: OrderedDict[int, Segment] = OrderedDict()

    def __len__(self) -> int:
        return len(self._segs)

    def name(self, key: int) -> str:
        return self._name_of(key)

    def get(self, key: int) -> Segment:
        """The mapping of segment ``key`` (mapped and pre-faulted on first use).

        Raises ``posix_ipc.ExistentialError`` if it is not mapped here and does not exist."""
        seg = self._segs.get(key)
        if seg is not None:
            self._segs.move_to_end(key)
            return seg
        seg = Segment.open(self._name_of(key), readonly=self._readonly)
        seg.populate(write=not self._readonly)
        self.put(key, seg)
        return seg

    def size(self, key: int) -> int:
        """The size of segment ``key``: its mapping's if this process has one, else asked of the
        kernel without mapping it; 0 if it does not exist."""
        seg = self._segs.get(key)
        if seg is not None:
            return seg.size
        try:
            shm = posix_ipc.SharedMemory(self._name_of(key))
        except posix_ipc.ExistentialError:
            return 0
        try:
            return int(shm.size)
        finally:
            shm.close_fd()

    def put(self, key: int, seg: Segment) -> None:
        """Keep ``seg`` (one this process created) as the most recently used mapping."""
        self._segs[key] = seg
        self._segs.move_to_end(key)
        while len(self._segs) > self._capacity:
            _, old = self._segs.popitem(last=False)
            old.close()

    def drop(self, key: int) -> None:
        seg = self._segs.pop(key, None)
        if seg is not None:
            seg.close()

    def close(self) -> None:
        for seg in self._segs.values():
            seg.close()
        self._segs.clear()
