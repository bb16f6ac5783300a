"""A single-producer / single-consumer frame ring in POSIX shared memory.

One ring per graph edge. This module (and everything it imports) never
imports trio: worker processes import it and must stay light.

Structure
    ``slot_count`` slots of ``slot_size`` bytes, preallocated (and pre-faulted)
    in one segment after a control area and the slot records (see ``_spec``),
    plus two POSIX semaphores: *free* (initially ``slot_count``) and *used*
    (initially 0). The semaphores are the authority on counts; producer and
    consumer keep their own positions and each touches only its own slots.

Frame path (zero copy)
    ``producer.try_loan/loan`` takes a free token and lends slot ``pos % n``
    as writable ``meta``/``payload`` memoryviews; ``Loan.commit(header)``
    writes the header and a stamp, posts *used*, then rings the "used"
    doorbell (if the post took it up from empty: see Wake-ups).
    ``consumer.try_receive/receive`` takes a used token and returns read-only
    views; ``Received.release()`` posts *free*, then rings the "free" doorbell
    (likewise). Posts are full memory barriers, so data written before a
    post is visible after the matching wait.

Oversize frames: external segments
    A frame whose ``round_up(meta_len, 16) + nbytes`` exceeds ``slot_size``
    does not fail: it goes into the external segment the slot OWNS
    (``_ownership``). A slot that owns none, or one too small, gets a new one,
    created by its producer as ``…r<i>x<slot>g<gen>`` (page-rounded,
    pre-faulted; geometric growth ``max(need, 2 × old)``; the old one is
    unlinked) and REUSES it for every later frame that fits. Never shrinks.
    Reuse matters: the first write to a fresh segment runs ~5x slower than to
    a reused one. The slot record holds the id of the segment the frame lives
    in (the header carries FLAG_EXTERNAL, ``ext_gen`` and ``ext_size``); the
    consumer maps it read-only, through a per-process cache by name
    (``SegmentCache``). Replacing is race-free: the producer only touches slot
    ``s`` while holding its free token, i.e. after the consumer released the
    previous frame of that slot, and nobody else reads what ``s`` owns. Each
    slot's generation counter is in shared memory, so a restarted producer
    never reuses a name (caches are keyed by it). A worker passing a big input
    frame on unchanged FORWARDS it (``Producer.forward``): its output slot
    takes over the input's segment and the input slot takes the output slot's
    — a journalled swap, the whole argument in ``_ownership``. Segments thus
    move between the rings of a session, keeping their names: a ring's
    creator unlinks the names it created on close, so close every ring of a
    session together (the supervisor unlinks the whole namespace).

Wake-ups (no lost wake-up)
    A sync end without a doorbell simply blocks in ``sem_wait`` (``acquire()``,
    GIL released). An end that waits on a file descriptor (trio, ``wait_any``,
    or a sync consumer's ``Consumer.wait``, which others may ring too) gets a
    doorbell FIFO, and the other end writes one byte after each post that takes
    the semaphore up from empty: it reads the value after its post(s) and rings
    if that is at most what it posted (no shared "waiting" flag). The waiter's
    loop is::

        open doorbell fd (before the first attempt)
        loop: try_* → got it? done.  wait readable(fd) → drain(fd) → loop

    Why nothing is lost: a post P happens-before P's byte is written. If the
    waiter's drain consumed P's byte, P's post precedes the drain, which
    precedes the next ``try_*``, which therefore sees P. If it did not, the
    byte is still in the pipe and the next wait returns at once. If the ringer
    found no reader (ENXIO), the waiter had not opened its fd, so its first
    ``try_*`` comes after P.

    Why ringing only from empty is enough: a waiter waits only after a
    ``try_*`` found the semaphore empty (one that drops excess tokens after a
    repair goes on until it is empty). Besides the waiter returning its own
    token (after which it tries again, and succeeds), only the other end posts
    (abort and the repair post too, and always ring). So the first post after
    that failed try takes the value up from 0; reading it after its posts, its
    poster finds at most what it posted (the waiter only takes tokens away
    meanwhile) and rings: the argument above applies to that byte. The read is
    racy in one direction only — it may ring when nobody waits (harmless). A
    busy waiter therefore costs its other end no ``write``: the consumer that
    returns one slot of a ring with free slots left, the producer that posts
    to a consumer still behind.

End of stream and abort
    ``end_of_stream()`` is a frame (FLAG_EOS) in ring order, so the consumer
    gets ``EndOfStream`` only after receiving everything before it; EOS is
    sticky. ``abort()`` (either end, or a third process such as the
    supervisor, which can ``Ring.attach`` the spec) sets the shared aborted
    flag, then posts both semaphores and rings both doorbells: a party blocked
    in ``sem_wait`` or waiting on its fd wakes and raises
    ``RingAbortedError``; so does every later call, even with frames pending.
    Abort is final: the counts are meaningless afterwards.

Repair (restarting a node inside a live session)
    When the process at one end dies, the supervisor repairs that end in
    place (``repair_consumer`` / ``repair_producer``, in ``_repair.py``, whose
    docstring holds the argument) while the other end goes on; a new process
    then attaches and carries on: a new consumer at the first frame not taken,
    a new producer at the next position. An end refuses to attach while the
    previous one is still marked open (it died, or is alive elsewhere).
    Every token is checked by its acquirer (the slot it stands for is really
    ready), which lets the repair post the upper bound of what a dead end may
    have left half done.

Checksums: with ``spec.checksum`` the producer stores crc32(meta+payload) and
the consumer verifies it, raising ``ChecksumError`` naming ring and seq (the
bad frame's slot is returned, the ring stays usable).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import posix_ipc

from . import _repair
from . import _spec as L
from ._consumer import Consumer
from ._doorbell import ring_once
from ._errors import RingAbortedError, RingBusyError, RingClosedError, RingCorruptError, RingError
from ._names import SHM_DIR
from ._producer import Producer
from ._repair import ConsumerRepair, ProducerRepair
from ._segment import Segment, unlink_segment
from ._spec import RingSpec

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Ring", "RingStatistics", "wait_any"]


@dataclass(frozen=True)
class RingStatistics:
    """A snapshot of one ring's counters (racy across processes, for humans/tests)."""

    name: str
    slot_count: int
    slot_size: int
    produced: int  # frames (and EOS) published so far
    consumed: int  # slots returned to the producer so far
    taken: int  # frames (and EOS) the consumer took so far
    free: int  # free semaphore value
    used: int  # used semaphore value (after a repair, both may hold a token too many)
    eos_sent: bool
    eos_taken: bool
    aborted: bool
    repairs: int  # repairs of dead ends that may have posted a token too many
    finished: int = 0  # frames whose processing is done (a sharer keeps some: ``_ownership``)

    @property
    def unfinished(self) -> int:
        """Frames waiting or in process: published, not yet finished nor returned."""
        return self.produced - max(self.consumed, self.finished)


def _sem(name: str, initial: int | None) -> posix_ipc.Semaphore:
    if initial is None:
        return posix_ipc.Semaphore(name)
    return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=initial)


class Ring:
    """One mapped ring. :meth:`create` (the owner unlinks on close) or :meth:`attach`."""

    def __init__(
        self,
        spec: RingSpec,
        seg: Segment,
        free: posix_ipc.Semaphore,
        used: posix_ipc.Semaphore,
        *,
        owner: bool,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.owner = owner
        self.buf = seg.view
        # The control area and slot records as aligned u64s: counters and stamps are loaded
        # and stored whole (one instruction each), see _spec.
        self.words = seg.view[: spec.data_offset].cast("Q")
        self.free_sem = free
        self.used_sem = used
        self._seg = seg
        self._closed = False
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None

    @classmethod
    def create(cls, spec: RingSpec) -> Ring:
        """Create the segment, semaphores and doorbells (fails if any of them exists)."""
        undo: list[Callable[[], object]] = []  # on failure, remove only what WE made
        try:
            # Not pre-faulted: slots are touched as frames use them (small frames never touch most
            # of a slot), so a session costs the memory it uses, not its geometry.
            seg = Segment.create(spec.name, spec.total_size, populate=False)
            undo += [seg.close, lambda: unlink_segment(spec.name)]
            free = _sem(spec.free_sem_name, spec.slot_count)
            undo += [free.close, free.unlink]
            used = _sem(spec.used_sem_name, 0)
            undo += [used.close, used.unlink]
            for path in (spec.used_doorbell, spec.free_doorbell):
                if path is not None:
                    _mkfifo(spec, path)
                    undo.append(functools.partial(os.unlink, path))
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        flags = L.FLAG_SPEC_CHECKSUM if spec.checksum else 0
        L.CTRL_STATIC.pack_into(
            seg.view, 0, b"\0" * 8, L.VERSION, spec.slot_count, L.RECORD_SIZE, flags,
            spec.slot_size, spec.data_offset,
        )  # fmt: skip
        seg.view[0:8] = L.MAGIC  # last: an attacher never sees a half-initialised ring
        return cls(spec, seg, free, used, owner=True)

    @classmethod
    def attach(cls, spec: RingSpec) -> Ring:
        """Map an existing ring created (by another process) from the same spec."""
        try:
            seg = Segment.open(spec.name)
        except posix_ipc.ExistentialError as exc:
            raise RingError(spec.name, "does not exist (never created, or closed)") from exc
        try:
            _verify(spec, seg)
            free, used = _sem(spec.free_sem_name, None), _sem(spec.used_sem_name, None)
        except posix_ipc.ExistentialError as exc:
            seg.close()
            raise RingError(spec.name, "semaphores missing (ring closed?)") from exc
        except BaseException:
            seg.close()
            raise
        return cls(spec, seg, free, used, owner=False)

    # -- endpoints ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RingClosedError(self.name, "ring is closed")

    def producer(self) -> Producer:
        """This process's producing end (at most one per Ring object)."""
        self._check_open()
        if self._producer is not None:
            raise RingBusyError(self.name, "producer() already called on this ring")
        self._producer = Producer(self)
        return self._producer

    def consumer(self) -> Consumer:
        """This process's consuming end (at most one per Ring object)."""
        self._check_open()
        if self._consumer is not None:
            raise RingBusyError(self.name, "consumer() already called on this ring")
        self._consumer = Consumer(self)
        return self._consumer

    # -- repair (see _repair.py) -----------------------------------------------------

    def repair_consumer(self) -> ConsumerRepair:
        """Repair the consuming end after its process died: drop (and report) the frames it
        had taken and not released, return their slots, and let a new consumer attach at the
        first frame not taken. Only while that end is gone; a no-op on a settled ring."""
        self._check_repairable("consumer", self._consumer)
        return _repair.repair_consumer(self)

    def repair_producer(self) -> ProducerRepair:
        """Repair the producing end after its process died: publish a frame it had completed
        but not posted, return a slot it may have held, and let a new producer attach at the
        next position. Only while that end is gone; a no-op on a settled ring."""
        self._check_repairable("producer", self._producer)
        return _repair.repair_producer(self)

    @staticmethod
    def repair_swaps(inputs: Sequence[Ring], outputs: Sequence[Ring]) -> int:
        """Before repairing a dead worker's ends: roll forward a forward-by-reference it left
        half done (``_ownership``). ``inputs`` / ``outputs``: the rings it consumed / produced."""
        for ring in (*inputs, *outputs):
            ring._check_open()
        return _repair.repair_swaps(inputs, outputs)

    @staticmethod
    def repair_shares(inputs: Sequence[Ring], outputs: Sequence[Ring]) -> int:
        """Before repairing a dead worker's consuming ends (after :meth:`repair_swaps`): take
        away from its held input slots the segments that frames it shared, still unread in its
        output rings, live in (``_ownership``, fan-out). Returns how many were taken away."""
        for ring in (*inputs, *outputs):
            ring._check_open()
        return _repair.repair_shares(inputs, outputs)

    def _check_repairable(self, side: str, here: object) -> None:
        self._check_open()
        if self.buf[L.OFF_ABORTED]:
            raise RingAbortedError(self.name, f"cannot repair the {side} of an aborted ring (abort is final)")
        if here is not None:
            raise RingBusyError(self.name, f"this process still holds the ring's {side} end")

    # -- state ------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        return not self._closed and bool(self.buf[L.OFF_ABORTED])

    def abort(self) -> None:
        """Abort the ring and wake both ends wherever they wait (any process may call)."""
        self._check_open()
        self.buf[L.OFF_ABORTED] = 1  # before the posts: a woken party must see it
        self.used_sem.release()
        self.free_sem.release()
        for path in (self.spec.used_doorbell, self.spec.free_doorbell):
            if path is not None:
                ring_once(path)

    def statistics(self) -> RingStatistics:
        self._check_open()
        b, w = self.buf, self.words
        return RingStatistics(
            name=self.name,
            slot_count=self.spec.slot_count,
            slot_size=self.spec.slot_size,
            produced=w[L.W_PRODUCED],
            consumed=w[L.W_CONSUMED],
            taken=w[L.W_TAKEN],
            free=self.free_sem.value,
            used=self.used_sem.value,
            eos_sent=bool(b[L.OFF_EOS]),
            eos_taken=bool(b[L.OFF_EOS_TAKEN]),
            aborted=bool(b[L.OFF_ABORTED]),
            repairs=w[L.W_REPAIRS],
            finished=w[L.W_FINISHED],
        )

    def close(self) -> None:
        """Close endpoints, unmap, close semaphores; the owner also unlinks every name.

        Idempotent and never raises BufferError: views still exported (held
        frames, numpy arrays) keep their memory mapped until they die. Do not
        close while a thread of this process is blocked in this ring.
        """
        if self._closed:
            return
        self._closed = True
        for end in (self._producer, self._consumer):
            if end is not None:
                end.close()
        self.words.release()  # a view of the mapping: released first, or it could not unmap
        self._seg.close()
        self.free_sem.close()
        self.used_sem.close()
        if self.owner:
            _unlink_all(self.spec)

    def __enter__(self) -> Ring:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.close()
        return False


def _mkfifo(spec: RingSpec, path: str) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileNotFoundError as exc:
        raise RingError(
            spec.name, f"namespace directory {spec.namespace.fifo_dir} is missing "
            "(make namespaces with Namespace.create())",
        ) from exc  # fmt: skip


def _verify(spec: RingSpec, seg: Segment) -> None:
    if seg.size < L.CTRL_SIZE:
        raise RingCorruptError(spec.name, f"segment of {seg.size} bytes is too small")
    magic, version, count, rec, _flags, size, data = L.CTRL_STATIC.unpack_from(seg.view, 0)
    if magic != L.MAGIC or version != L.VERSION or rec != L.RECORD_SIZE:
        raise RingCorruptError(spec.name, f"bad magic/version {magic!r}/{version}")
    if (count, size, data) != (spec.slot_count, spec.slot_size, spec.data_offset):
        raise RingCorruptError(
            spec.name, f"geometry {count}x{size} does not match the spec's "
            f"{spec.slot_count}x{spec.slot_size}",
        )  # fmt: skip
    if seg.size < spec.total_size:
        raise RingCorruptError(spec.name, f"segment is {seg.size} bytes, need {spec.total_size}")


def _unlink_all(spec: RingSpec) -> None:
    """Unlink every name of the ring (idempotent, ignores what is already gone)."""
    unlink_segment(spec.name)
    for sem in (spec.free_sem_name, spec.used_sem_name):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(spec.ext_prefix):
                unlink_segment("/" + entry)
    for path in (spec.used_doorbell, spec.free_doorbell):
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def wait_any(
    consumers: Sequence[Consumer], timeout: float | None = None, *, also: Sequence[Producer] = ()
) -> list[Consumer]:
    """Block until at least one consumer is ready; return the ready ones ([] on timeout).

    For a sync worker with several input rings (fan-in); each consumer's ring
    must have ``async_consumer=True`` (a doorbell). A consumer that reached
    end-of-stream or was aborted stays ready (its receive raises): drop it
    from the set once handled. ``also``: producers whose "free" doorbell ends the
    wait too (a sharer waiting for its shares to be read: ``Producer.returned``);
    then the ready consumers are returned at once, maybe none.
    """
    by_fd: dict[int, Consumer | Producer] = {c.fileno(): c for c in consumers}
    by_fd.update((p.fileno(), p) for p in also)
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready = [c for c in consumers if c.ready()]
        if ready:
            return ready
        wait_ms = None
        if deadline is not None:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
        events = poller.poll(wait_ms)
        if not events and deadline is not None and time.monotonic() >= deadline:
            return []
        rung = False
        for fd, _ in events:
            end = by_fd[fd]
            end.clear_doorbell()
            rung = rung or isinstance(end, Producer)
        if rung:
            return [c for c in consumers if c.ready()]
