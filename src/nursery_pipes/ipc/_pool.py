"""The supervisor's external segments that no ring slot owns: lent to output frames, kept warm.

Big frames live in external segments owned by ring slots (``_ownership``). Two places of the
supervisor touch such a frame's payload, and both used to pay for a cold segment:

- **Out** (the last ring of a chain → the client): the pump copied the payload out, because
  the slot's segment is written again once the slot is returned. Instead the pump now takes the
  segment OUT of the ring (:meth:`SegmentPool.borrow`): the slot is given another segment to
  own (one from this pool, or none: its producer makes one when it needs it), and the frame
  handed on is a read-only view of the taken segment. The segment comes back to the pool when
  the last view of it dies (a ``weakref.finalize`` on the array every view derives from:
  ``_codec.slot_array``), never before: whoever holds an output frame, or any slice, copy of a
  reference or memoryview of its array, holds the memory, which nothing writes meanwhile.
- **In** (the client → the first ring): the supervisor's producer copied the frame into the
  segment its slot owned, one of the dozens circulating along the chain, long out of the CPU
  caches. Instead, when the pool holds a segment that came back from the client (recently
  read or written, warm), the producer swaps it in (:meth:`SegmentPool.swap_in`): the slot owns
  the warm one, the pool keeps the slot's old one. A client reading its outputs and sending
  the next frame of the same size keeps writing the same memory.

Ownership (``_ownership``'s table, one more owner): a segment is owned by one ring slot, or by
the pool (free), or by the views of one output frame (lent). The moves, all in the supervisor
(one process: no journal needed; if it dies, the session's whole namespace is swept):

    ==========================  ===============================  ============================
    move                        when                             who may touch the segment
    ==========================  ===============================  ============================
    slot → lent (``borrow``)    the pump holds the slot's frame  the output frame's views
                                (taken, not yet returned)        (read-only); nobody writes
    pool → slot (``borrow``'s   same: the slot is the consumer's the slot's producer, once the
    replacement)                                                 slot is returned
    lent → pool (finalizer)     the last view died               nobody
    pool ↔ slot (``swap_in``)   the supervisor's producer holds  the producer (warm one), the
                                the slot's free token            pool (the slot's old one)
    pool → shared (``share``)   a supervisor-side node sends a   the pool writes it once; then
                                big frame to several rings       only their readers read it
    shared → pool (reclaimed)   every ring's consumer returned    nobody
                                the slot of its reference, and
                                another frame was shared since
    ==========================  ===============================  ============================

Fan-out from the supervisor (:meth:`SegmentPool.share`): a node in the supervisor that sends a big
frame to several rings whose readers copy what they read (the wiring decides:
``ShmTransport.port(share=True)``) copies the payload once, into a segment the pool keeps (a
free one, or one it makes: ids with ring index ``POOL_RING``), and each ring publishes a
reference to it (``Producer.try_send_ref``, ``FLAG_SHARED``: the slot keeps owning its own). The
pool watches each reference's ring position and takes the segment back only when every ring's
consumer has returned it (read lazily, at the next ``share`` or ``swap_in``; a ring closed
meanwhile is read by nobody), and not while it holds the last frame shared (the fan-out's
other rings may still come for it). No slot waits for that: the rings' slots go back as usual.

Lent bytes are bounded per session (``budget``): past it, an output frame is a copy as before
(a client that keeps every output would otherwise fill /dev/shm, which is often much smaller
than RAM, rather than its heap). Free segments are kept for the next burst — one the pool
unlinks is one a producer creates again, ~1.6 ms per 10 MiB — but bounded: free bytes stay
within ``budget`` too, and beyond ``keep`` of each kind the free ones unused for ``linger``
seconds are unmapped and unlinked, the coldest first. A ring slot whose segment is lent gets
a free one in exchange; with none free, it is lent anyway only while fewer than ``spare``
are (the ring then lacks one until its producer makes it again): so a burst of outputs grows
the session's segments by at most ``spare`` at a time, and meanwhile outputs are copies. A
producer using the pool creates a segment at least as big as the biggest it has seen
(``largest``): frames of several sizes would otherwise churn segments, a small one created
for a small frame, then grown (created again, the small one unlinked) for a big one.

What the pool holds when the session ends is unlinked with the session's namespace; a view
still held keeps its mapping (POSIX: unlinking removes the name, not the memory) until it
dies. ``cache`` is the supervisor's one mapping of each segment: its producers and its pumps'
consumers map through it (``Producer.use_pool``, ``Consumer.use_pool``).

Thread-safety: finalizers run in whatever thread drops the last view, so the free lists and
counters are guarded by a lock; mapping, swapping and unlinking happen only in the thread
that owns the pool's producers and consumers (the supervisor's trio thread).
"""

from __future__ import annotations

import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import posix_ipc

from . import _spec as L
from ._codec import decode_frame, slot_array
from ._header import FLAG_EXTERNAL
from ._ownership import seg_id
from ._segment import PAGE_SIZE, Segment, SegmentCache, round_up, unlink_segment

if TYPE_CHECKING:
    from ..frames import Frame
    from ._codec import EncodedFrame
    from ._consumer import Received

__all__ = ["Borrowed", "SegmentPool"]

DEFAULT_BUDGET: Final = 128 << 20
"""Bytes of output frames a session may hold as views of shared memory at once (then copies);
also the most its pool keeps free."""
DEFAULT_KEEP: Final = 8
"""Free segments of each kind (warm, cold) a pool keeps however long they stay unused."""
DEFAULT_LINGER: Final = 2.0
"""Seconds a free segment beyond ``keep`` may stay unused before it is unlinked."""
POOL_RING: Final = 1_000_000
"""The ring index in the ids of segments the pool makes itself (no ring has it: ``RingSpec``)."""


class Borrowed:
    """A segment taken out of a ring for one output frame: ``payload`` is a read-only view of
    the frame's payload in it. Decode the frame from ``payload`` without copying, then
    :meth:`bind` it: the segment returns to the pool when the frame's array dies."""

    __slots__ = ("_pool", "_sid", "_size", "payload")

    def __init__(self, pool: SegmentPool, sid: int, size: int, payload: memoryview) -> None:
        self._pool = pool
        self._sid = sid
        self._size = size
        self.payload = payload

    def bind(self, root: np.ndarray[Any, Any] | None) -> bool:
        """Tie the segment's return to the death of ``root`` (the array every view of the frame
        derives from: ``slot_array``). None (the frame holds no view: its decoder copied):
        the segment returns now. True if bound."""
        self.payload.release()
        if root is None:
            self._pool._returned(self._sid, self._size)
            return False
        weakref.finalize(root, self._pool._returned, self._sid, self._size)
        return True


class SegmentPool:
    """External segments of one session owned by no ring slot (see the module docstring).

    ``cache`` is the supervisor's writable mapping of every segment of the session: the
    supervisor's producers use it (:meth:`Producer.use_pool <._producer.Producer.use_pool>`)."""

    def __init__(
        self,
        name_of: Callable[[int], str],
        *,
        budget: int = DEFAULT_BUDGET,
        keep: int = DEFAULT_KEEP,
        linger: float = DEFAULT_LINGER,
        spare: int = DEFAULT_KEEP,
    ) -> None:
        self.cache = SegmentCache(name_of, readonly=False)
        self.budget = budget
        self._keep = keep
        self._linger = linger
        self._spare = spare
        self._free_bytes = 0
        self._lock = threading.Lock()
        # (id, size, since): most recently returned (warm) / parked (cold) last
        self._warm: deque[tuple[int, int, float]] = deque()
        self._cold: deque[tuple[int, int, float]] = deque()
        self._lent = 0
        self._lent_bytes = 0
        self._closed = False
        self.lent_total = 0
        """Output frames handed on as views of a taken segment, since the pool was made."""
        self.largest = 0
        """The biggest segment the pool has seen: what a producer using it creates at least,
        so that segments of one session serve every frame size it carries (no size churn)."""
        # Shared out (fan-out from the supervisor): id -> [size, holds, [(ring words, position)]]
        self._out: dict[int, list[Any]] = {}
        self._out_bytes = 0
        self._last: tuple[Frame, int, int, int] | None = None  # (frame, id, size, checksum)
        self._made = 0
        self.shared_total = 0
        """Frames the supervisor wrote once into a segment that several rings refer to."""

    # -- out: the pump -------------------------------------------------------------------

    def lend(self, received: Received) -> Frame | None:
        """``received`` (held, not yet released) as a frame over its segment taken out of the
        ring — its arrays read-only views that give the segment back when the last one dies —
        or None when it cannot be (:meth:`borrow`): copy it out instead."""
        borrowed = self.borrow(received)
        if borrowed is None:
            return None
        try:
            frame = decode_frame(received.header, received.meta, borrowed.payload, copy=False)
        except BaseException:
            borrowed.bind(None)
            raise
        borrowed.bind(slot_array(frame))
        return frame

    def borrow(self, received: Received) -> Borrowed | None:
        """Take the external segment of ``received`` (a frame the caller holds, not yet
        released) out of its ring; None (nothing changed) when it cannot be: the frame is in
        its slot, its slot does not own its segment, or the budget is spent."""
        h = received.header
        if self._closed or not h.flags & FLAG_EXTERNAL or received._released:
            return None
        consumer = received._consumer
        spec, words = consumer._spec, consumer._words
        slot = received._pos % consumer._slots
        owned_word = spec.record_word(slot, L.REC_OWNED_SEG)
        x = words[spec.record_word(slot, L.REC_FRAME_SEG)]
        if not x or words[owned_word] != x:
            return None
        size = h.ext_size
        with self._lock:
            if self._lent_bytes + size > self.budget:
                return None
            replacement = self._replacement(size)
            if replacement is None and self._lent >= self._spare:
                return None  # the ring would lack one until it is made again: not past ``spare``
            self._lent += 1
            self._lent_bytes += size
        try:
            seg = self.cache.get(x)
        except BaseException:
            with self._lock:
                self._lent -= 1
                self._lent_bytes -= size
                if replacement:
                    self._add(self._cold, replacement[0], replacement[1])
            raise
        # The consumer holds the slot: it may change what the slot owns (``_ownership``).
        words[owned_word] = replacement[0] if replacement else 0
        payload_at = words[spec.record_word(slot, L.REC_PAYLOAD_AT)]
        start = payload_at - 1 if payload_at else round_up(h.meta_len, L.META_ALIGN)
        self.lent_total += 1
        self.largest = max(self.largest, seg.size)
        self._trim()
        return Borrowed(self, x, seg.size, seg.view.toreadonly()[start : start + h.payload_len])

    def _returned(self, sid: int, size: int) -> None:
        """The last view of a lent segment died (any thread): it is free, and warm."""
        with self._lock:
            self._lent -= 1
            self._lent_bytes -= size
            if not self._closed:
                self._add(self._warm, sid, size)

    # -- fan-out from the supervisor --------------------------------------------------------

    def share(self, frame: Frame, encoded: EncodedFrame, checksum: bool) -> tuple[int, int, int] | None:
        """The segment that holds ``frame``'s payload for references from several rings (a
        supervisor-side node sending one big frame to several workers that copy what they read,
        ``_ownership``, fan-out): ``(id, size, checksum)``, held for the caller until it calls
        :meth:`published` or :meth:`abandoned`. The segment written for this very frame by an
        earlier ring, if it is still out; else a free one, or a new one, with the payload copied
        in once (at offset 0; the metadata goes into each slot). None: past the budget."""
        self._reclaim()
        last = self._last
        if last is not None and last[0] is frame and last[1] in self._out:
            self._out[last[1]][1] += 1
            return last[1], last[2], last[3]
        payload = encoded.payload
        n = payload.nbytes
        with self._lock:
            if self._closed or self._lent_bytes + self._out_bytes + n > self.budget:
                return None
            found = self._pop(self._warm, n) or self._pop(self._cold, n)
        if found is not None:
            sid, size = found
            try:
                seg = self.cache.get(sid)
            except posix_ipc.ExistentialError:
                return None  # unlinked under us: the session is closing
        else:
            self._made += 1
            sid = seg_id(POOL_RING, 0, self._made)
            size = round_up(max(n, self.largest), PAGE_SIZE)
            seg = Segment.create(self.cache.name(sid), size)
            self.cache.put(sid, seg)
            self.largest = max(self.largest, size)
        seg.view[:n] = payload
        crc = zlib.crc32(payload, zlib.crc32(encoded.meta)) if checksum else 0
        self._out[sid] = [size, 1, []]
        self._out_bytes += size
        self._last = (frame, sid, size, crc)
        self.shared_total += 1
        return sid, size, crc

    def published(self, sid: int, words: memoryview, pos: int) -> None:
        """A ring published a reference to shared segment ``sid`` at position ``pos`` (its
        ``Ring.words``): the segment is out until that ring's consumer returns the slot."""
        entry = self._out[sid]
        entry[1] -= 1
        entry[2].append((words, pos))

    def abandoned(self, sid: int) -> None:
        """A ring that held a share of ``sid`` published nothing (cancelled, aborted)."""
        self._out[sid][1] -= 1

    def _reclaim(self) -> None:
        """Shared segments no ring refers to any more go back to the free list (warm)."""
        if not self._out:
            return
        last = None if self._last is None else self._last[1]
        for sid, (size, holds, watches) in list(self._out.items()):
            if sid == last or holds or not all(_returned(words, pos) for words, pos in watches):
                continue  # the last frame shared: more rings of its fan-out may refer to it yet
            del self._out[sid]
            self._out_bytes -= size
            with self._lock:
                if not self._closed:
                    self._add(self._warm, sid, size)

    @property
    def shared_out(self) -> int:
        """Shared segments some ring still refers to."""
        return len(self._out)

    # -- in: the supervisor's producers -----------------------------------------------------

    def swap_in(self, owned: int, owned_size: int, need: int) -> tuple[int, Segment] | None:
        """For a producer holding a slot's free token, the slot owning ``owned`` of
        ``owned_size`` bytes (0, 0: none) and about to write ``need`` bytes in it: the free
        segment to own instead, or None (keep yours). The most recently returned (warm) one big
        enough, if any; else, when the slot's own is too small, any big enough, so that nothing
        is created while the pool holds one. The slot's old segment is parked here, cold."""
        self._reclaim()
        with self._lock:
            if self._closed:
                return None
            found = self._pop(self._warm, need)
            if found is None and owned_size < need:
                found = self._pop(self._cold, need)
        if found is None:
            return None
        sid = found[0]
        try:
            seg = self.cache.get(sid)
        except posix_ipc.ExistentialError:
            return None  # unlinked under us: the session is closing
        if owned:
            with self._lock:
                self._add(self._cold, owned, owned_size)
        self._trim()
        return sid, seg

    def _add(self, free: deque[tuple[int, int, float]], sid: int, size: int) -> None:
        free.append((sid, size, time.monotonic()))  # lock held
        self._free_bytes += size

    def _trim(self) -> None:
        """Unmap and unlink free segments, coldest first: while free bytes exceed the budget,
        and those beyond ``keep`` of each kind unused for ``linger`` seconds (in the owning
        thread: a finalizer only appends)."""
        extra = []
        with self._lock:
            while (self._cold or self._warm) and self._free_bytes > self.budget:
                extra.append((self._cold if self._cold else self._warm).popleft())
                self._free_bytes -= extra[-1][1]
            old = time.monotonic() - self._linger
            for free in (self._cold, self._warm):
                while len(free) > self._keep and free[0][2] < old:
                    extra.append(free.popleft())
                    self._free_bytes -= extra[-1][1]
        for sid, _, _ in extra:
            self.cache.drop(sid)
            unlink_segment(self.cache.name(sid))

    def _pop(self, free: deque[tuple[int, int, float]], need: int) -> tuple[int, int] | None:
        """The most recent free segment of at least ``need`` bytes (lock held)."""
        for i in range(len(free) - 1, -1, -1):
            if free[i][1] >= need:
                sid, size, _ = free[i]
                del free[i]
                self._free_bytes -= size
                return sid, size
        return None

    def _replacement(self, size: int) -> tuple[int, int] | None:
        """What a slot whose ``size``-byte segment is taken gets instead (lock held): a free
        segment as big, cold first (the warm ones are for inputs); else the biggest there is
        (its producer grows it if it must); else None (the producer makes one)."""
        found = self._pop(self._cold, size) or self._pop(self._warm, size)
        if found is None and (self._cold or self._warm):
            free = self._cold if self._cold else self._warm
            biggest = max(free, key=lambda entry: entry[1])
            free.remove(biggest)
            self._free_bytes -= biggest[1]
            found = biggest[:2]
        return found

    # -- the session ends -------------------------------------------------------------------

    @property
    def lent(self) -> int:
        """Output frames whose views still hold a taken segment."""
        return self._lent

    @property
    def free(self) -> int:
        return len(self._warm) + len(self._cold)

    def close(self) -> None:
        """Forget the free segments (the session unlinks its namespace: their names go with it)
        and unmap what no view holds. Views still held stay valid until they die."""
        with self._lock:
            self._closed = True
            self._warm.clear()
            self._cold.clear()
            self._free_bytes = 0
        self._out.clear()
        self._last = None
        self.cache.close()


def _returned(words: memoryview, pos: int) -> bool:
    """Has the consumer of the ring whose ``Ring.words`` these are returned position ``pos``?
    (A ring closed meanwhile: nobody reads it any more.)"""
    try:
        return bool(words[L.W_CONSUMED] > pos)
    except ValueError:
        return True
