"""The producing end of a ring: loans of slots, filled in place, then committed.

One loan at a time: frames become visible strictly in ring order because each
commit posts exactly one "used" token for the oldest unposted slot.

Publishing a frame stores, in this order: its data and header, its stamp
(the frame is complete), ``produced``, then posts "used". A free token is
used only for a slot the consumer has returned (``pos < consumed +
slot_count``); after a repair an excess token fails that check and is dropped
(``_repair.py``).
"""

from __future__ import annotations

import os
import time
import zlib
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import posix_ipc

from . import _spec as L
from ._doorbell import Bell, clear, open_waiter
from ._errors import (
    HeaderError,
    RingAbortedError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
)
from ._header import (
    FLAG_CHECKSUM,
    FLAG_EOS,
    FLAG_EXTERNAL,
    FLAG_SHARED,
    SlotHeader,
    encode_frame_into,
    pack_frame_into,
)
from ._ownership import MAX_GEN, forward_refusal, seg_gen, seg_id
from ._segment import PAGE_SIZE, Segment, SegmentCache, round_up, unlink_segment
from ._sem import acquire

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Buffer

    from ._codec import EncodedFrame
    from ._consumer import Received
    from ._pool import SegmentPool
    from ._ring import Ring

__all__ = ["Loan", "Producer", "as_bytes"]

_TRANSPORT_FLAGS: Final = FLAG_CHECKSUM | FLAG_EXTERNAL | FLAG_SHARED
_EOS_HEADER: Final = SlotHeader(flags=FLAG_EOS)
_U32_MAX: Final = 0xFFFF_FFFF


def _store(words: memoryview, index: int, value: int) -> None:
    """One aligned u64 store (a seam for the tests that kill a forwarder between two stores)."""
    words[index] = value


def _offset_in(part: memoryview, whole: memoryview) -> int | None:
    """Where ``part`` starts inside the memory of ``whole`` (None: not entirely inside it)."""
    start = _address(part) - _address(whole)
    return start if start >= 0 and start + part.nbytes <= whole.nbytes else None


def _payload_offset(h: SlotHeader, payload_at: int) -> int:
    """Where an external frame's payload starts in its segment (``payload_at``: its record's)."""
    return payload_at - 1 if payload_at else round_up(h.meta_len, L.META_ALIGN)


def _address(view: memoryview) -> int:
    address: int = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    return address


def as_bytes(obj: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``obj`` (bytes, bytearray, numpy array, ...)."""
    mv = memoryview(obj)
    if mv.ndim == 1 and mv.format == "B":
        return mv
    if not mv.c_contiguous:
        raise ValueError("frame buffers must be C-contiguous")
    return mv.cast("B")


class Loan:
    """A slot lent to the producer: fill ``meta`` and ``payload`` in place, then commit.

    Also a context manager: leaving the block without :meth:`commit` discards
    the loan and returns the slot.
    """

    __slots__ = ("_done", "_ext", "_pos", "_producer", "_slot", "meta", "nbytes", "payload")

    def __init__(
        self,
        producer: Producer,
        pos: int,
        slot: int,
        ext: tuple[int, Segment] | None,
        meta: memoryview,
        payload: memoryview,
    ) -> None:
        self._producer = producer
        self._pos = pos
        self._slot = slot
        self._ext = ext
        self._done = False
        self.meta = meta
        self.payload = payload
        self.nbytes = len(payload)

    @property
    def external(self) -> bool:
        """True if this frame lives in a per-slot external segment (oversize frame)."""
        return self._ext is not None

    @property
    def ext_gen(self) -> int:
        return seg_gen(self._ext[0]) if self._ext is not None else 0

    def commit(self, header: SlotHeader, *, payload_len: int | None = None) -> None:
        """Publish the frame. ``payload_len`` (default: all loaned bytes) may be shorter.

        The transport owns ``meta_len``, ``payload_len``, ``checksum`` and the
        external fields of ``header``; their values in ``header`` are ignored.
        """
        self._producer._commit(self, header, payload_len)

    def discard(self) -> None:
        """Give the slot back unpublished (idempotent)."""
        if not self._done:
            self._producer._discard(self)

    def _finish(self) -> None:
        self._done = True
        # Views may still be exported (numpy arrays); they stay valid, we just let go.
        self.meta.release()
        self.payload.release()

    def __enter__(self) -> Loan:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.discard()
        return False


class Producer:
    """The producing end of a ring (one per ring). Obtain with ``Ring.producer()``.

    Not thread-safe: use it from one thread at a time (``abort`` excepted).
    """

    def __init__(self, ring: Ring) -> None:
        spec = ring.spec
        self._ring = ring
        self._spec = spec
        self._name = spec.name
        self._buf = ring.buf
        self._free = ring.free_sem
        self._used = ring.used_sem
        self._slots = spec.slot_count
        self._slot_size = spec.slot_size
        self._data = spec.data_offset
        self._checksum = spec.checksum
        self._words = ring.words
        if self._buf[L.OFF_PRODUCER_OPEN]:
            raise RingBusyError(
                self._name, "the producer end is open elsewhere, or its process died without "
                "closing it: Ring.repair_producer() first",
            )  # fmt: skip
        self._pos = self._words[L.W_PRODUCED]
        self._eos_sent = bool(self._buf[L.OFF_EOS])
        self._loan: Loan | None = None
        self._segs = SegmentCache(spec.namespace.seg_name, readonly=False)
        self._pool: SegmentPool | None = None
        self._closed = False
        self._bell = Bell(spec.used_doorbell) if spec.used_doorbell else None
        # Opened before any attempt to loan: see the wake-up protocol in _ring.py.
        self._wait_fd = open_waiter(spec.free_doorbell) if spec.free_doorbell else -1
        self._buf[L.OFF_PRODUCER_OPEN] = 1

    def use_pool(self, pool: SegmentPool) -> None:
        """Map segments through ``pool.cache`` (shared, not closed with this end) and write big
        frames into the pool's warm segments when it has one (the supervisor's producers: see
        ``_pool``)."""
        self._segs.close()
        self._segs = pool.cache
        self._pool = pool

    @property
    def eos_sent(self) -> bool:
        """True once the stream was ended (by this end, or by the one it took over from)."""
        return self._eos_sent

    # -- waiting on a file descriptor (async producers) --------------------------------

    def fileno(self) -> int:
        """The "free" doorbell: readable after the consumer returned a slot (or abort)."""
        if self._wait_fd < 0:
            raise RingError(self._name, "producer has no doorbell (spec.async_producer=False)")
        return self._wait_fd

    def clear_doorbell(self) -> None:
        """Drain the doorbell; call after ``fileno()`` became readable, then retry."""
        if self._wait_fd >= 0:
            clear(self._wait_fd)

    # -- loans ---------------------------------------------------------------------------

    def _check_can_loan(self, nbytes: int, meta_len: int) -> None:
        if self._closed:
            raise RingClosedError(self._name, "producer is closed")
        if self._eos_sent:
            raise RingClosedError(self._name, "end_of_stream() was already sent")
        if self._loan is not None:
            raise RingBusyError(self._name, "a loan is outstanding; commit or discard it first")
        if self._buf[L.OFF_ABORTED]:
            raise RingAbortedError(self._name, "ring was aborted")
        if nbytes < 0 or not 0 <= meta_len <= _U32_MAX:
            raise ValueError(f"ring {self._name}: bad sizes nbytes={nbytes} meta_len={meta_len}")

    def try_loan(self, nbytes: int, meta_len: int = 0) -> Loan | None:
        """Lend the next slot for ``meta_len`` + ``nbytes`` bytes, or None if the ring is full."""
        self._check_can_loan(nbytes, meta_len)
        if not self._try_acquire():
            return None
        return self._grant(nbytes, meta_len)

    def loan(self, nbytes: int, meta_len: int = 0, timeout: float | None = None) -> Loan:
        """Like :meth:`try_loan` but blocks (GIL released) until a slot is free."""
        self._check_can_loan(nbytes, meta_len)
        self._acquire(timeout)
        return self._grant(nbytes, meta_len)

    def _try_acquire(self) -> bool:
        """Take a free token for slot ``pos % slots`` if there is one (never blocks)."""
        while True:  # until the semaphore is empty: a dropped excess token hides no slot
            try:
                self._free.acquire(0)
            except posix_ipc.BusyError:
                return False
            self._check_aborted()
            if self._pos < self._words[L.W_CONSUMED] + self._slots:  # the consumer returned it
                return True
            self._drop_excess()

    def _acquire(self, timeout: float | None) -> None:
        """Take a free token for slot ``pos % slots``, blocking (GIL released)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not acquire(self._free, timeout):
                raise TimeoutError(f"ring {self._name}: no free slot within {timeout}s")
            self._check_aborted()
            if self._pos < self._words[L.W_CONSUMED] + self._slots:  # the consumer returned it
                return
            self._drop_excess()
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())

    def _check_aborted(self) -> None:
        # We hold one "free" token; abort's raises (given back: never leak one).
        if self._buf[L.OFF_ABORTED]:
            self._free.release()
            raise RingAbortedError(self._name, "ring was aborted")

    def _drop_excess(self) -> None:
        """Our free token stands for no slot: a repair posted it in excess (``_repair.py``), or
        the ring is corrupt if none ever did. Dropped either way; then we wait again."""
        if not self._words[L.W_REPAIRS]:
            self._free.release()
            raise RingCorruptError(
                self._name, f"a free token for frame #{self._pos}, but the consumer returned "
                f"only {self._words[L.W_CONSUMED]} slots of {self._slots}",
            )  # fmt: skip

    def _grant(self, nbytes: int, meta_len: int) -> Loan:
        # We hold one "free" token: slot (pos % slots) is ours until we post it.
        try:
            pos = self._pos
            slot = pos % self._slots
            off = round_up(meta_len, L.META_ALIGN)
            ext: tuple[int, Segment] | None = None
            if off + nbytes <= self._slot_size:
                view, base = self._buf, self._data + slot * self._slot_size
            else:
                ext = self._external(slot, off + nbytes)
                view, base = ext[1].view, 0
        except BaseException:
            self._free.release()  # never leak the slot
            raise
        loan = Loan(
            self, pos, slot, ext, view[base : base + meta_len],
            view[base + off : base + off + nbytes],
        )  # fmt: skip
        self._loan = loan
        return loan

    def _external(self, slot: int, need: int) -> tuple[int, Segment]:
        """The segment slot ``slot`` owns (``_ownership``), reused while big enough, else grown 2x.

        Safe to write or replace: holding the slot's free token means the consumer has
        released the previous frame in this slot, hence nobody reads the segment it owns.
        """
        w = self._words
        owned_word = self._spec.record_word(slot, L.REC_OWNED_SEG)
        owned = w[owned_word]
        if self._pool is not None:  # a warm segment from the pool instead (``_pool``)
            owned_size = self._segs.size(owned) if owned else 0  # not mapped just to be parked
            other = self._pool.swap_in(owned if owned_size else 0, owned_size, need)
            if other is not None:
                w[owned_word] = other[0]
                return other
        cur: Segment | None = None
        if owned:
            try:
                cur = self._segs.get(owned)
            except posix_ipc.ExistentialError:
                cur = None  # unlinked under us (the session is closing): make a new one
        if cur is not None and cur.size >= need:
            return owned, cur
        rec = self._spec.record_offset(slot)
        gen = L.U32.unpack_from(self._buf, rec + L.REC_GEN)[0]
        grown = 2 * cur.size if cur is not None else 0
        size = round_up(max(need, grown, self._pool.largest if self._pool is not None else 0), PAGE_SIZE)
        while True:  # names are unique for the ring's lifetime
            gen += 1
            if gen > MAX_GEN:
                raise RingError(self._name, f"slot {slot}: external generations exhausted")
            try:
                seg = Segment.create(self._spec.ext_name(slot, gen), size)
                break
            except posix_ipc.ExistentialError:
                continue  # left over by a producer that died before recording it
        L.U32.pack_into(self._buf, rec + L.REC_GEN, gen)
        sid = seg_id(self._spec.index, slot, gen)
        w[owned_word] = sid  # before the unlink: a death in between leaks a name, never a slot
        if owned:
            self._segs.drop(owned)
            unlink_segment(self._segs.name(owned))
        self._segs.put(sid, seg)
        if self._pool is not None:
            self._pool.largest = max(self._pool.largest, size)
        return sid, seg

    def _commit(self, loan: Loan, header: SlotHeader, payload_len: int | None) -> None:
        if self._closed:
            raise RingClosedError(self._name, "producer was closed; the loan was discarded")
        if loan._done:
            raise RingError(self._name, "this loan was already committed or discarded")
        if header.flags & FLAG_EOS:  # checked before we let go of the loan
            raise HeaderError("flags", "end-of-stream is sent with end_of_stream()")
        pl = loan.nbytes if payload_len is None else payload_len
        if not 0 <= pl <= loan.nbytes:
            raise ValueError(f"ring {self._name}: payload_len {pl} exceeds loan {loan.nbytes}")
        if self._buf[L.OFF_ABORTED]:
            self._discard(loan)
            raise RingAbortedError(self._name, "ring was aborted before commit")
        crc = zlib.crc32(loan.payload[:pl], zlib.crc32(loan.meta)) if self._checksum else 0
        meta_len = len(loan.meta)
        loan._finish()
        self._loan = None
        self._publish(loan._slot, header, meta_len, pl, crc, loan._ext)

    def _publish(
        self,
        slot: int,
        header: SlotHeader,
        meta_len: int,
        payload_len: int,
        crc: int,
        ext: tuple[int, Segment] | tuple[int, int] | None,
        split: int | None = None,
        shared: bool = False,
    ) -> None:
        """Write the slot's header and stamp, then post it (we hold its free token).

        ``ext``: the external segment the frame lives in, as (id, mapping) or (id, size);
        ``split``: the payload's offset in it when the metadata is in the slot (a forward);
        ``shared``: the segment is not the slot's (:meth:`share`)."""
        flags = header.flags & ~_TRANSPORT_FLAGS
        if flags & FLAG_EOS:
            raise HeaderError("flags", "end-of-stream is sent with end_of_stream()")
        if self._checksum:
            flags |= FLAG_CHECKSUM
        gen = size = 0
        rec = L.CTRL_SIZE + slot * L.RECORD_SIZE
        if ext is not None:
            flags |= FLAG_EXTERNAL | (FLAG_SHARED if shared else 0)
            gen = seg_gen(ext[0])
            size = ext[1] if isinstance(ext[1], int) else ext[1].size
            self._name_segment(rec, ext[0], split)
        encode_frame_into(
            self._buf, rec + L.REC_HEADER, header, flags=flags, meta_len=meta_len,
            payload_len=payload_len, checksum=crc, ext_gen=gen, ext_size=size,
        )  # fmt: skip
        self._post(rec)

    def _name_segment(self, rec: int, sid: int, split: int | None) -> None:
        """Record, in the slot record at ``rec``, the external segment ``sid`` the frame being
        published lives in and where its payload starts (``split``: after the metadata kept in
        the slot, a forward; None: laid out as in a slot). Every external publish does this:
        readers and forwards find the segment here (``_ownership``)."""
        self._words[(rec + L.REC_FRAME_SEG) >> 3] = sid
        self._words[(rec + L.REC_PAYLOAD_AT) >> 3] = 0 if split is None else split + 1

    # -- forwarding by reference (see _ownership) --------------------------------------

    def forward(
        self,
        received: Received,
        header: SlotHeader,
        meta: Buffer = b"",
        payload: Buffer = b"",
        timeout: float | None = None,
    ) -> bool:
        """Publish ``meta`` + ``payload`` without copying the payload, if it lies in the external
        segment of ``received`` (a frame this process holds from another ring of the session):
        all of that frame's payload, or a contiguous part of it. The next slot then refers to
        that segment and takes it over (``_ownership``); the metadata is copied into the slot
        unless it is the input's own, in place. Blocks for a free slot like :meth:`send`.

        Returns False, having published nothing, when the frame cannot go by reference (see
        ``_ownership.forward_refusal``): send it the ordinary way.
        """
        ref = self._reference(received, header, meta, payload)
        if ref is None:
            return False
        x, m, p, split, crc = ref
        self._acquire(timeout)
        # We hold slot t's free token: nobody reads the segment t owns (Y). Journalled swap:
        # t takes X, the input slot takes Y (the step table in _ownership).
        consumer = received._consumer
        owned_word = consumer._spec.record_word(received._pos % consumer._slots, L.REC_OWNED_SEG)
        slot = self._pos % self._slots
        w = self._words
        t_owned = self._spec.record_word(slot, L.REC_OWNED_SEG)
        swap_in = self._spec.record_word(slot, L.REC_SWAP_IN)
        y = w[t_owned]
        w[self._spec.record_word(slot, L.REC_SWAP_OUT)] = y
        w[swap_in] = x  # 1: a swap is in progress
        _store(w, t_owned, x)  # 2
        _store(consumer._words, owned_word, y)  # 3
        w[swap_in] = 0  # 4
        self._publish_reference(slot, header, m, p, crc, x, received.header.ext_size, split, False)  # 5
        return True

    def share(
        self,
        received: Received,
        header: SlotHeader,
        meta: Buffer = b"",
        payload: Buffer = b"",
        timeout: float | None = None,
    ) -> int | None:
        """Like :meth:`forward`, but the segment stays the input slot's: the next slot refers to
        it without owning it, so that several output rings can refer to one payload (fan-out).
        Returns the ring position published, or None (nothing published) when the frame
        cannot go by reference. The caller must keep ``received`` — not release it — until this
        ring's consumer has returned that position (:meth:`returned`): the input slot's
        producer writes the segment again once the slot is back (``_ownership``, fan-out)."""
        ref = self._reference(received, header, meta, payload)
        if ref is None:
            return None
        x, m, p, split, crc = ref
        self._acquire(timeout)
        slot = self._pos % self._slots
        pos = self._pos
        self._publish_reference(slot, header, m, p, crc, x, received.header.ext_size, split, True)
        return pos

    def try_send_ref(self, frame: EncodedFrame, seq: int, sid: int, size: int, crc: int) -> int | None:
        """Publish ``frame`` as a shared reference to segment ``sid`` (``size`` bytes), which
        holds its payload at offset 0 (written by the supervisor's pool for several rings:
        ``_pool.SegmentPool.share``); its metadata is copied into the slot, which keeps owning
        its own segment. ``crc``: the checksum of metadata and payload (0 without checksums).
        Returns the ring position published, or None if the ring is full. The metadata must
        fit in a slot."""
        m, p = as_bytes(frame.meta), frame.payload
        self._check_can_loan(len(p), len(m))
        if len(m) > self._slot_size:
            raise ValueError(f"ring {self._name}: metadata of {len(m)} bytes does not fit a slot")
        if not self._try_acquire():
            return None
        pos = self._pos
        self._publish_reference(pos % self._slots, frame.header(seq), m, p, crc, sid, size, 0, True)
        return pos

    @property
    def words(self) -> memoryview:
        """The ring's counters (``Ring.words``): what :meth:`returned` reads, for whoever watches."""
        return self._words

    def returned(self, pos: int) -> bool:
        """Has the consumer returned the slot of the frame at ring position ``pos``? The
        consumer rings this end's doorbell (:meth:`fileno`, if any) when it returns a shared
        frame's slot, so a sharer can sleep until then."""
        return bool(self._words[L.W_CONSUMED] > pos)

    @property
    def has_doorbell(self) -> bool:
        """This end has a "free" doorbell (``spec.async_producer``)."""
        return self._wait_fd >= 0

    def _reference(
        self, received: Received, header: SlotHeader, meta: Buffer, payload: Buffer
    ) -> tuple[int, memoryview, memoryview, int | None, int] | None:
        """Whether ``meta`` + ``payload`` can be published by reference to the external segment
        of ``received``: ``(segment id, meta, payload, split, checksum)``, else None."""
        h = received.header
        if not h.flags & FLAG_EXTERNAL:
            return None  # the usual case of small frames: decided before anything else
        m, p = as_bytes(meta), as_bytes(payload)
        self._check_can_loan(len(p), len(m))
        consumer = received._consumer
        in_words, in_slot = consumer._words, received._pos % consumer._slots
        x = in_words[consumer._spec.record_word(in_slot, L.REC_FRAME_SEG)]
        payload_at = in_words[consumer._spec.record_word(in_slot, L.REC_PAYLOAD_AT)]
        segment = received._segment
        offset = None if segment is None or received._released else _offset_in(p, segment)
        same_meta = same_payload = in_place = False
        if offset is not None:
            same_meta = m == received.meta
            same_payload = len(p) == h.payload_len and offset == _payload_offset(h, payload_at)
            in_place = same_meta and same_payload and not payload_at  # X holds it all
        refusal = forward_refusal(
            external=True,
            same_namespace=consumer._spec.namespace == self._spec.namespace,
            released=received._released,
            input_owns_segment=bool(x)
            and in_words[consumer._spec.record_word(in_slot, L.REC_OWNED_SEG)] == x,
            inside=offset is not None,
            meta_fits=in_place or len(m) <= self._slot_size,
        )
        if refusal is not None or offset is None:
            return None
        crc = 0
        if self._checksum:  # the same bytes: the input's checksum, if it was verified
            same = same_meta and same_payload and h.flags & FLAG_CHECKSUM
            crc = h.checksum if same else zlib.crc32(p, zlib.crc32(m))
        return x, m, p, None if in_place else offset, crc

    def _publish_reference(
        self,
        slot: int,
        header: SlotHeader,
        m: memoryview,
        p: memoryview,
        crc: int,
        x: int,
        ext_size: int,
        split: int | None,
        shared: bool,
    ) -> None:
        """Publish, in ``slot`` (we hold its free token), a frame whose payload is in segment
        ``x``: its metadata copied into the slot unless it is the segment's own (``split``
        None: in place)."""
        try:
            if split is not None:
                base = self._data + slot * self._slot_size
                self._buf[base : base + len(m)] = m
            self._publish(slot, header, len(m), len(p), crc, (x, ext_size), split, shared)
        except BaseException:
            self._free.release()  # nothing was posted: give the slot back
            raise

    def _post(self, rec: int, *, eos: bool = False) -> None:
        # Stamp (the frame is complete: the consumer's token check), count, then post: the
        # semaphore post is the release barrier that publishes the slot; the doorbell byte
        # follows the post (never before it). A repair reads the same stores (_repair.py).
        pos = self._pos
        w = self._words
        w[rec >> 3] = pos + 1
        self._pos = pos + 1
        w[L.W_PRODUCED] = pos + 1
        if eos:
            self._buf[L.OFF_EOS] = 1
        self._used.release()
        if self._bell is not None and self._used.value <= 1:  # from empty: the consumer may wait
            self._bell.ring()

    def _discard(self, loan: Loan) -> None:
        loan._finish()
        self._loan = None
        self._free.release()  # the slot was never published: give the token back

    # -- convenience ------------------------------------------------------------------

    def send(
        self,
        header: SlotHeader,
        meta: Buffer = b"",
        payload: Buffer = b"",
        timeout: float | None = None,
    ) -> None:
        """Copy ``meta`` and ``payload`` into the next slot and publish (blocking)."""
        m, p = as_bytes(meta), as_bytes(payload)
        self._check_can_loan(len(p), len(m))
        self._acquire(timeout)
        self._copy_and_publish(header, m, p)

    def try_send(self, header: SlotHeader, meta: Buffer = b"", payload: Buffer = b"") -> bool:
        """Non-blocking :meth:`send`; False (nothing sent) if the ring is full."""
        m, p = as_bytes(meta), as_bytes(payload)
        self._check_can_loan(len(p), len(m))
        if not self._try_acquire():
            return False
        self._copy_and_publish(header, m, p)
        return True

    def send_frame(self, frame: EncodedFrame, seq: int, timeout: float | None = None) -> None:
        """:meth:`send` of an encoded frame (``ipc.encode_frame``) as sequence ``seq``: the
        header is packed straight from its fields, never built as a :class:`SlotHeader`."""
        m, p = as_bytes(frame.meta), frame.payload
        self._check_can_loan(len(p), len(m))
        self._acquire(timeout)
        self._copy_and_publish(None, m, p, frame, seq)

    def try_send_frame(self, frame: EncodedFrame, seq: int) -> bool:
        """Non-blocking :meth:`send_frame`; False (nothing sent) if the ring is full."""
        m, p = as_bytes(frame.meta), frame.payload
        self._check_can_loan(len(p), len(m))
        if not self._try_acquire():
            return False
        self._copy_and_publish(None, m, p, frame, seq)
        return True

    def _copy_and_publish(
        self,
        header: SlotHeader | None,
        m: memoryview,
        p: memoryview,
        frame: EncodedFrame | None = None,
        seq: int = 0,
    ) -> None:
        # The one-copy fast path of send(): no Loan object, no intermediate views. The header
        # is ``header``, or else ``frame``'s fields with ``seq``.
        try:
            slot = self._pos % self._slots
            meta_len, n = len(m), len(p)
            off = round_up(meta_len, L.META_ALIGN)
            ext: tuple[int, Segment] | None = None
            if off + n <= self._slot_size:
                view, base = self._buf, self._data + slot * self._slot_size
            else:
                ext = self._external(slot, off + n)
                view, base = ext[1].view, 0
            if meta_len:
                view[base : base + meta_len] = m
            view[base + off : base + off + n] = p
            crc = zlib.crc32(p, zlib.crc32(m)) if self._checksum else 0
            if header is not None:
                self._publish(slot, header, meta_len, n, crc, ext)
                return
            assert frame is not None
            flags = FLAG_CHECKSUM if self._checksum else 0
            gen = size = 0
            rec = L.CTRL_SIZE + slot * L.RECORD_SIZE
            if ext is not None:
                flags |= FLAG_EXTERNAL
                gen, size = seg_gen(ext[0]), ext[1].size
                self._name_segment(rec, ext[0], None)
            pack_frame_into(
                self._buf, rec + L.REC_HEADER, frame.kind, frame.fmt, frame.shape, seq,
                frame.timestamp_us, frame.aux, flags=flags, meta_len=meta_len, payload_len=n,
                checksum=crc, ext_gen=gen, ext_size=size,
            )  # fmt: skip
            self._post(rec)
        except BaseException:
            self._free.release()  # nothing was posted: give the slot back
            raise

    def try_end_of_stream(self) -> bool:
        """Publish end-of-stream if a slot is free; False if the ring is full."""
        loan = self.try_loan(0)
        if loan is None:
            return False
        self._commit_eos(loan)
        return True

    def end_of_stream(self, timeout: float | None = None) -> None:
        """Publish end-of-stream after everything sent so far (needs one free slot)."""
        self._commit_eos(self.loan(0, 0, timeout))

    def _commit_eos(self, loan: Loan) -> None:
        rec = self._spec.record_offset(loan._slot)
        encode_frame_into(
            self._buf, rec + L.REC_HEADER, _EOS_HEADER, flags=FLAG_EOS, meta_len=0,
            payload_len=0, checksum=0, ext_gen=0, ext_size=0,
        )  # fmt: skip
        loan._finish()
        self._loan = None
        self._eos_sent = True
        self._post(rec, eos=True)

    def abort(self) -> None:
        """Abort the ring: both ends' next (or current, blocked) operation raises."""
        self._ring.abort()

    def close(self) -> None:
        """Release this endpoint's resources (idempotent). Does not signal the consumer."""
        if self._closed:
            return
        if self._loan is not None:
            self._discard(self._loan)
        self._closed = True
        self._buf[L.OFF_PRODUCER_OPEN] = 0  # closed cleanly: a repair can count exactly
        if self._pool is None:  # a pool's cache is the pool's to close
            self._segs.close()  # not unlinked: the consumer may not have mapped them yet
        if self._bell is not None:
            self._bell.close()
        fd, self._wait_fd = self._wait_fd, -1
        if fd >= 0:
            os.close(fd)
