"""The consuming end of a ring: zero-copy views into slots, returned in order.

Several frames may be held at once; slots go back to the producer strictly in
ring order (a frame released early waits for the older ones), because the
producer reuses slots round-robin.

The consumer line records what this end did, for the repair of a dead
consumer (``_repair.py``): ``taken`` after each frame taken, ``consumed``
before and ``released`` after the posts that return slots, ``eos_taken``.
A frame taken and not yet released is *in process*: that is what a repair
reports as dropped, so hold a frame until you are done with it — unless it was
marked finished (``Received.finish``, the ``finished`` counter): its outputs
are out, and the slot is only kept because someone still reads its memory.
"""

from __future__ import annotations

import math
import os
import select
import time
import zlib
from typing import TYPE_CHECKING, Literal

import posix_ipc

from . import _spec as L
from ._doorbell import Bell, clear, open_sleeper, open_waiter, sleep_until_rung
from ._errors import (
    ChecksumError,
    EndOfStream,
    HeaderError,
    RingAbortedError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
)
from ._header import FLAG_CHECKSUM, FLAG_EOS, FLAG_EXTERNAL, FLAG_SHARED, SlotHeader, decode_from
from ._ownership import seg_gen
from ._segment import SegmentCache, round_up
from ._sem import acquire

if TYPE_CHECKING:
    from types import TracebackType

    from ._pool import SegmentPool
    from ._ring import Ring

__all__ = ["Consumer", "Received"]


class Received:
    """One received frame: ``header``, read-only ``meta`` and ``payload`` views (zero copy).

    The views point into the slot: :meth:`release` (or leaving the ``with``
    block) hands the slot back, after which the producer may overwrite it.
    Copy what you need to keep (``bytes(r.payload)``, ``np.array(...)``).
    """

    __slots__ = ("_consumer", "_pos", "_released", "_segment", "header", "meta", "payload")

    def __init__(
        self,
        consumer: Consumer,
        pos: int,
        header: SlotHeader,
        meta: memoryview,
        payload: memoryview,
        segment: memoryview | None = None,
    ) -> None:
        self._consumer = consumer
        self._pos = pos
        self._released = False
        self._segment = segment
        """The whole external segment the payload is in (None: in the slot); for a forward."""
        self.header = header
        self.meta = meta
        self.payload = payload

    @property
    def position(self) -> int:
        """The frame's position in the ring (0, 1, 2, ... per ring, no gaps)."""
        return self._pos

    def finish(self) -> None:
        """Record that this frame's processing is done (every output published), before the
        slot is returned or kept: a repair of this end after a death then does not report it
        as dropped (``_repair.py``). Frames finish in ring order."""
        words = self._consumer._words
        if words[L.W_FINISHED] <= self._pos:
            words[L.W_FINISHED] = self._pos + 1

    def release(self) -> None:
        """Return the slot to the producer (idempotent)."""
        if self._released:
            return
        self._released = True
        self._segment = None
        # Derived numpy arrays keep the memory mapped; we only drop our views.
        self.meta.release()
        self.payload.release()
        self._consumer._release(self._pos, self.header.flags & FLAG_SHARED)

    def __enter__(self) -> Received:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.release()
        return False


class Consumer:
    """The consuming end of a ring (one per ring). Obtain with ``Ring.consumer()``.

    Not thread-safe: use it from one thread at a time (``abort`` excepted).
    """

    def __init__(self, ring: Ring) -> None:
        spec = ring.spec
        self._ring = ring
        self._spec = spec
        self._name = spec.name
        self._buf = ring.buf
        self._ro = ring.buf.toreadonly()  # received views are slices of this
        self._free = ring.free_sem
        self._used = ring.used_sem
        self._slots = spec.slot_count
        self._slot_size = spec.slot_size
        self._data = spec.data_offset
        self._words = w = ring.words
        if self._buf[L.OFF_CONSUMER_OPEN] or not w[L.W_CONSUMED] == w[L.W_RELEASED] == w[L.W_TAKEN]:
            raise RingBusyError(
                self._name, "the consumer end is open elsewhere, or its process died without "
                "closing it: Ring.repair_consumer() first",
            )  # fmt: skip
        self._pos = w[L.W_TAKEN]  # the first frame not taken (after a repair too)
        self._release_next = self._pos
        self._released: set[int] = set()
        self._ring_free = False
        """A shared frame was released: ring the free doorbell at the next post."""
        self._segs = SegmentCache(spec.namespace.seg_name, readonly=True)
        self._shared_segs = False
        self._eos = bool(self._buf[L.OFF_EOS_TAKEN])  # sticky, also across a restart
        self._closed = False
        self._bell = Bell(spec.free_doorbell) if spec.free_doorbell else None
        # Opened before any attempt to receive: see the wake-up protocol in _ring.py.
        self._wait_fd = open_waiter(spec.used_doorbell) if spec.used_doorbell else -1
        self._poller: select.poll | None = None
        self._sleep_fd = -1
        self._buf[L.OFF_CONSUMER_OPEN] = 1

    @property
    def name(self) -> str:
        return self._name

    def use_pool(self, pool: SegmentPool) -> None:
        """Map segments through ``pool.cache`` (the supervisor's one writable mapping of each,
        shared with its producers and the pool; not closed with this end). Received views stay
        read-only. Without it, a segment the pump lends (``_pool``) would be mapped twice."""
        self._segs.close()
        self._segs = pool.cache
        self._shared_segs = True

    # -- waiting on a file descriptor (async consumers, wait_any) -------------------------

    @property
    def has_doorbell(self) -> bool:
        """The ring has a "used" doorbell for this end (``spec.async_consumer``)."""
        return self._wait_fd >= 0

    def fileno(self) -> int:
        """The "used" doorbell: readable after the producer posted a slot (or abort)."""
        if self._wait_fd < 0:
            raise RingError(self._name, "consumer has no doorbell (spec.async_consumer=False)")
        return self._wait_fd

    def clear_doorbell(self) -> None:
        """Drain the doorbell; call after ``fileno()`` became readable, then retry."""
        if self._wait_fd >= 0:
            clear(self._wait_fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Block (GIL released) until the doorbell rings, then drain it; False on timeout.

        For a sync consumer that must also be woken by something else than a frame (a worker
        whose supervisor rings its input's doorbell after sending a signal): it blocks here
        instead of in the semaphore. Loop: ``try_receive`` → None → ``wait`` → try again; the
        wake-up protocol of ``_ring.py`` makes a lost wake-up impossible.
        """
        fd = self.fileno()
        if timeout is None:  # one syscall to sleep and drain (measured: -7% worker CPU per frame)
            if self._sleep_fd < 0:
                assert self._spec.used_doorbell is not None  # fileno() checked
                self._sleep_fd = open_sleeper(self._spec.used_doorbell)
            sleep_until_rung(self._sleep_fd)
            return True
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
        if not self._poller.poll(
            max(0, math.ceil(timeout * 1000))
        ):  # retried on EINTR with what is left (PEP 475)
            return False
        clear(fd)
        return True

    @property
    def holds_every_slot(self) -> bool:
        """Every slot of the ring is taken and not yet returned (slots go back in order): its
        producer cannot publish until this end returns one."""
        return self._pos - self._release_next >= self._slots

    def ready(self) -> bool:
        """True if a receive would not block (a frame, EOS, or abort is pending)."""
        self._check_open()
        return self._eos or bool(self._buf[L.OFF_ABORTED]) or self._used.value > 0

    # -- receiving -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RingClosedError(self._name, "consumer is closed")

    def _check_live(self) -> None:
        self._check_open()
        if self._buf[L.OFF_ABORTED]:
            raise RingAbortedError(self._name, "ring was aborted")
        if self._eos:
            raise EndOfStream(self._name, "the producer ended the stream")

    def try_receive(self) -> Received | None:
        """The next frame, or None if none is pending.

        Raises :class:`EndOfStream` once every frame before the producer's
        end-of-stream was received, :class:`RingAbortedError` after an abort.
        """
        self._check_live()
        used = self._used
        while True:  # until the semaphore is empty: a dropped excess token hides no frame
            if not used.value:  # empty (the usual miss): no BusyError raised and caught
                return None
            try:
                used.acquire(0)
            except posix_ipc.BusyError:
                return None
            received = self._take()
            if received is not None:
                return received

    def receive(self, timeout: float | None = None) -> Received:
        """Like :meth:`try_receive` but blocks (GIL released) until a frame arrives."""
        self._check_live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not acquire(self._used, timeout):
                raise TimeoutError(f"ring {self._name}: no frame within {timeout}s")
            received = self._take()
            if received is not None:
                return received
            if deadline is not None:  # an excess token was dropped: wait for the rest
                timeout = max(0.0, deadline - time.monotonic())

    def _take(self) -> Received | None:
        # We hold one "used" token; None if it stands for no frame (see _repair.py).
        if self._buf[L.OFF_ABORTED]:
            raise RingAbortedError(self._name, "ring was aborted")  # the token was abort's
        pos = self._pos
        slot = pos % self._slots
        rec = L.CTRL_SIZE + slot * L.RECORD_SIZE
        w = self._words
        stamp = w[rec >> 3]
        if stamp != pos + 1:
            if stamp < pos + 1 and w[L.W_REPAIRS]:
                return None  # an excess token a repair posted: the frame is not there yet
            raise RingCorruptError(
                self._name, f"slot {slot} holds frame #{stamp - 1}, expected #{pos} (lost/dup)"
            )
        try:
            header = decode_from(self._buf, rec + L.REC_HEADER)
        except HeaderError as exc:
            raise RingCorruptError(self._name, f"slot {slot}, frame #{pos}: {exc}") from exc
        self._pos = pos + 1
        w[L.W_TAKEN] = pos + 1  # in process from here until released
        if header.flags & FLAG_EOS:
            self._eos = True
            self._buf[L.OFF_EOS_TAKEN] = 1
            self._release(pos)
            raise EndOfStream(self._name, "the producer ended the stream")
        try:
            if header.flags & FLAG_EXTERNAL:  # a read-only mapping
                segment = self._external(slot, pos, header)
                meta, payload = self._external_views(slot, pos, header, segment)
                return Received(self, pos, header, meta, payload, segment)
            meta, payload = self._views(slot, pos, header)
        except BaseException:
            self._release(pos)
            raise
        return Received(self, pos, header, meta, payload)

    def _views(self, slot: int, pos: int, h: SlotHeader) -> tuple[memoryview, memoryview]:
        """Views of a frame in its slot (the small frames' path: kept short)."""
        base = self._data + slot * self._slot_size
        off = round_up(h.meta_len, L.META_ALIGN)
        if off + h.payload_len > self._slot_size:
            raise RingCorruptError(
                self._name,
                f"frame #{pos} (seq={h.seq}): meta+payload exceed slot capacity {self._slot_size}",
            )
        meta = self._ro[base : base + h.meta_len]
        payload = self._ro[base + off : base + off + h.payload_len]
        if h.flags & FLAG_CHECKSUM:
            return self._verified(h, meta, payload)
        return meta, payload

    def _external_views(
        self, slot: int, pos: int, h: SlotHeader, segment: memoryview
    ) -> tuple[memoryview, memoryview]:
        cap = h.ext_size
        payload_at = self._words[self._spec.record_word(slot, L.REC_PAYLOAD_AT)]
        if payload_at:  # forwarded: meta in the slot, payload where it was upstream
            start = payload_at - 1
            if h.meta_len > self._slot_size or start + h.payload_len > cap:
                raise RingCorruptError(
                    self._name, f"frame #{pos} (seq={h.seq}): meta or payload out of bounds"
                )
            inline = self._data + slot * self._slot_size
            meta = self._ro[inline : inline + h.meta_len]
            return self._verified(h, meta, segment[start : start + h.payload_len])
        off = round_up(h.meta_len, L.META_ALIGN)
        if off + h.payload_len > cap:
            raise RingCorruptError(
                self._name, f"frame #{pos} (seq={h.seq}): meta+payload exceed slot capacity {cap}"
            )
        return self._verified(h, segment[: h.meta_len], segment[off : off + h.payload_len])

    def _verified(
        self, h: SlotHeader, meta: memoryview, payload: memoryview
    ) -> tuple[memoryview, memoryview]:
        if h.flags & FLAG_CHECKSUM:
            actual = zlib.crc32(payload, zlib.crc32(meta))
            if actual != h.checksum:
                raise ChecksumError(self._name, h.seq, h.checksum, actual)
        return meta, payload

    def _external(self, slot: int, pos: int, h: SlotHeader) -> memoryview:
        """The frame's external segment (recorded in the slot), mapped once and cached; the view
        is read-only (the supervisor's consumers map through its pool's writable cache)."""
        sid = self._words[self._spec.record_word(slot, L.REC_FRAME_SEG)]
        if not sid or seg_gen(sid) != h.ext_gen:
            raise RingCorruptError(
                self._name, f"frame #{pos}: segment id {sid:#x} does not match generation {h.ext_gen}"
            )
        try:
            seg = self._segs.get(sid)
        except posix_ipc.ExistentialError as exc:
            raise RingCorruptError(self._name, f"external segment {self._segs.name(sid)} vanished") from exc
        if seg.size < h.ext_size:
            self._segs.drop(sid)
            raise RingCorruptError(
                self._name, f"external segment {self._segs.name(sid)} smaller than {h.ext_size}"
            )
        return seg.view.toreadonly() if self._shared_segs else seg.view

    def _release(self, pos: int, shared: int = 0) -> None:
        if self._closed:
            return
        if shared:  # its sharer waits for it (``_ownership``): ring the free doorbell
            self._ring_free = True
        if pos != self._release_next:
            self._released.add(pos)  # an older frame is still held: slots go back in order
            return
        nxt = pos + 1
        while nxt in self._released:
            self._released.discard(nxt)
            nxt += 1
        count = nxt - self._release_next
        self._release_next = nxt
        w = self._words
        w[L.W_CONSUMED] = nxt  # before the posts: the producer's token check reads it
        for _ in range(count):
            self._free.release()
        w[L.W_RELEASED] = nxt  # after them: a repair knows whether some may be missing
        if self._bell is not None and (self._ring_free or self._free.value <= count):
            self._ring_free = False  # from 0 the producer may wait; a sharer waits for a share
            self._bell.ring()  # after the posts: see the wake-up protocol

    # -- ending ----------------------------------------------------------------------

    def abort(self) -> None:
        """Abort the ring: both ends' next (or current, blocked) operation raises."""
        self._ring.abort()

    def close(self) -> None:
        """Release this endpoint's resources (idempotent). Does not signal the producer.

        Frames still held stay readable (their mappings live until dropped) but
        are no longer returned to the producer.
        """
        if self._closed:
            return
        self._closed = True
        self._buf[L.OFF_CONSUMER_OPEN] = 0  # closed cleanly: a repair can count exactly
        self._ro.release()
        if not self._shared_segs:  # a pool's cache is the pool's to close
            self._segs.close()
        if self._bell is not None:
            self._bell.close()
        self._poller = None
        if self._sleep_fd >= 0:
            os.close(self._sleep_fd)
            self._sleep_fd = -1
        fd, self._wait_fd = self._wait_fd, -1
        if fd >= 0:
            os.close(fd)
