"""trio adapters for ring endpoints: wait on the doorbell fd, never on a thread.

Each operation follows the wake-up protocol of ``ipc/_ring.py``: attempt the
non-blocking call; if it would block, ``wait_readable`` on the doorbell, drain
it, attempt again. The attempt is synchronous and atomic with respect to trio
cancellation, so:

* a cancelled :meth:`TrioConsumer.receive` has taken nothing (no frame lost);
* a cancelled :meth:`TrioProducer.loan` holds no slot (no slot leaked);
* a loan obtained and then abandoned (exception/cancel inside ``with loan``)
  is discarded by the context manager, returning the slot — so write
  ``with await tx.loan(n) as loan:``; a loan held outside ``with`` and dropped
  keeps its slot (and the next loan raises RingBusyError).

Both adapters need the ring spec's ``async_consumer`` / ``async_producer`` flag
(the doorbell). Close them with ``close()`` (which notifies trio that the fd
goes away) rather than closing the ring under a waiting task.

Taking over the end of a dead worker for good (a temporary node that is not
restarted): :func:`discard_all` drains an input ring it no longer reads,
:func:`end_stream` ends an output ring it will never end. The ring's spec
needs the doorbell of the end taken over (``ShmTransport.edge(takeover_…)``).

They live with the executors, not in :mod:`nursery_pipes.ipc`, because ``ipc``
is also the worker side, which imports no trio (the import-linter contracts in
pyproject.toml hold it to that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from ..ipc import Consumer, EncodedFrame, EndOfStream, Loan, Producer, Received, SlotHeader
from ..ipc._producer import as_bytes

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["TrioConsumer", "TrioProducer", "discard_all", "end_stream"]

T = TypeVar("T")


async def _attempt_until(fd: int, clear: Callable[[], None], attempt: Callable[[], T | None]) -> T:
    # Same shape as trio's MemoryReceiveChannel.receive: a cancel point first;
    # then either succeed at once (and take a shielded schedule point) or park
    # on the fd, whose wait is itself the checkpoint. Between a successful
    # attempt and the return there is no await, so nothing taken can be lost.
    await trio.lowlevel.checkpoint_if_cancelled()
    result = attempt()
    if result is not None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result
    while True:
        await trio.lowlevel.wait_readable(fd)
        clear()
        result = attempt()
        if result is not None:
            return result


class TrioProducer:
    """Async producing end: ``await send(...)`` or ``with await loan(n) as l: ...``."""

    def __init__(self, producer: Producer) -> None:
        self._p = producer
        self._fd = producer.fileno()  # raises unless the spec has async_producer=True

    @property
    def producer(self) -> Producer:
        return self._p

    async def loan(self, nbytes: int, meta_len: int = 0) -> Loan:
        """Wait for a free slot and lend it (fill in place, then ``commit``)."""
        return await _attempt_until(
            self._fd, self._p.clear_doorbell, lambda: self._p.try_loan(nbytes, meta_len)
        )

    async def send(self, header: SlotHeader, meta: Buffer = b"", payload: Buffer = b"") -> None:
        """Copy ``meta``/``payload`` into the next free slot and publish."""
        m, p = as_bytes(meta), as_bytes(payload)
        await _attempt_until(self._fd, self._p.clear_doorbell, lambda: self._p.try_send(header, m, p) or None)

    async def send_frame(self, frame: EncodedFrame, seq: int) -> None:
        """Copy an encoded frame into the next free slot and publish it as sequence ``seq``."""
        await _attempt_until(
            self._fd, self._p.clear_doorbell, lambda: self._p.try_send_frame(frame, seq) or None
        )

    async def send_ref(self, frame: EncodedFrame, seq: int, sid: int, size: int, crc: int) -> int:
        """Publish ``frame`` as a shared reference to segment ``sid`` (``Producer.try_send_ref``)
        in the next free slot; its ring position."""
        return await _attempt_until(
            self._fd, self._p.clear_doorbell, lambda: self._p.try_send_ref(frame, seq, sid, size, crc)
        )

    async def end_of_stream(self) -> None:
        """Publish end-of-stream after everything sent so far."""
        await _attempt_until(self._fd, self._p.clear_doorbell, lambda: self._p.try_end_of_stream() or None)

    def abort(self) -> None:
        self._p.abort()

    def close(self) -> None:
        """Wake any task waiting on our fd (ClosedResourceError) and close the endpoint."""
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            self._fd = -1
        self._p.close()


class TrioConsumer:
    """Async consuming end: ``await receive()`` or ``async for frame in consumer``."""

    def __init__(self, consumer: Consumer) -> None:
        self._c = consumer
        self._fd = consumer.fileno()  # raises unless the spec has async_consumer=True

    @property
    def consumer(self) -> Consumer:
        return self._c

    async def receive(self) -> Received:
        """The next frame; raises EndOfStream / RingAbortedError like the sync end."""
        return await _attempt_until(self._fd, self._c.clear_doorbell, self._c.try_receive)

    def __aiter__(self) -> TrioConsumer:
        return self

    async def __anext__(self) -> Received:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    def abort(self) -> None:
        self._c.abort()

    def close(self) -> None:
        """Wake any task waiting on our fd (ClosedResourceError) and close the endpoint."""
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            self._fd = -1
        self._c.close()


async def discard_all(consumer: TrioConsumer, on_dropped: Callable[[int], None]) -> int:
    """Take and return every frame until the end of stream, calling ``on_dropped(seq)`` for
    each; how many. Raises RingAbortedError if the ring is aborted meanwhile."""
    count = 0
    while True:
        try:
            received = await consumer.receive()
        except EndOfStream:
            return count
        seq = received.header.seq
        received.release()
        count += 1
        on_dropped(seq)


async def end_stream(producer: TrioProducer) -> bool:
    """End the stream unless it already ended; True if this call ended it."""
    if producer.producer.eos_sent:
        await trio.lowlevel.checkpoint()
        return False
    await producer.end_of_stream()
    return True
