"""Shared-memory edges of one session, seen from the supervisor.

The supervisor creates every ring of a session — including worker→worker ones
— in one namespace, so it alone owns the names and can always unlink them,
whatever the workers did. Per edge:

==========================  ======================================  ===========================
edge                        producer end                            consumer end
==========================  ======================================  ===========================
client → worker             :class:`ShmPort` (trio, doorbell)       worker (doorbell)
in-process node → worker    :class:`ShmPort` as the node's OutPort  worker
worker → in-process node    worker                                  pump task → node's inbox
worker → client (sink)      worker                                  pump task → event queue
worker → worker             worker                                  worker (direct, no hop)
==========================  ======================================  ===========================

Every consuming end has a doorbell. A worker tries its input and, if nothing
is there, sleeps on the doorbell (several inputs: ``wait_any`` on theirs);
the supervisor rings them after it puts a signal on the worker's control
ring, so an idle worker never wakes on its own (it used to poll every 20 ms).
The producer's byte replaces the futex wake a semaphore wait would cost: on
this VM both measured ~13 µs per transfer in a 6-process token ring.
Every worker also has an events ring (worker → supervisor).

Small frames leaving shared memory for the supervisor are copied out of the
slot (they may live on in user code); big ones are lent as read-only views of
their segment, taken out of the ring (``ipc/_pool.py``). Frames entering it are
written in place.

When a worker dies, its rings outlive it: :meth:`ShmTransport.recover`
repairs every end it held (``ipc/_repair.py``) and reports what it was
processing; a new worker job with the same :class:`ShmPorts` then carries on,
while the other end of each ring never noticed more than a pause. A node that
is not restarted (temporary) is taken over for good instead
(:meth:`ShmTransport.take_over`): its outputs end, its inputs are drained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import trio

from .._errors import InputError, SessionError
from ..frames import Frame
from ..ipc import (
    ConsumerRepair,
    EncodedFrame,
    EndOfStream,
    Namespace,
    Producer,
    ProducerRepair,
    Ring,
    RingAbortedError,
    RingClosedError,
    RingError,
    RingSpec,
    SegmentPool,
    SlotHeader,
    decode_frame,
    encode_frame,
    sweep_stale,
    unlink_namespace,
)
from ..ipc._doorbell import ring_once
from ..ipc._segment import round_up
from ..ipc._spec import META_ALIGN, SLOT_ALIGN
from ..nodes._signals import Signal
from ._ports import Flow, OutPort
from ._rings import TrioConsumer, TrioProducer, discard_all, end_stream

__all__ = ["CONTROL_SLOTS", "Recovery", "RingGeometry", "ShmPort", "ShmPorts", "ShmTransport"]

CONTROL_SLOTS = 16
"""Signals a worker may have pending (sent, not yet taken); one more is refused."""


@dataclass(frozen=True)
class RingGeometry:
    slot_count: int
    slot_size: int
    checksum: bool = False

    @classmethod
    def for_session(
        cls, channel_capacity: int, slot_count: int, slot_size: int, checksum: bool
    ) -> RingGeometry:
        # A ring never holds more frames than an in-process edge would (channel_capacity),
        # and never more slots than configured: every slot gets touched, so it is real memory.
        # No floor above that: both are >= 1 by validation, and a one-slot ring works (the
        # consumer keeps its slot while it processes, so channel_capacity = 1 means lockstep).
        slots = min(channel_capacity, slot_count)
        return cls(slots, round_up(slot_size, SLOT_ALIGN), checksum)


StopMode = Literal["ask", "keep", "kill"]
"""How to stop a worker whose rings may outlive it:

- ``ask`` — the shutdown contract: abort its rings (a worker blocked in one wakes and
  returns), wait the grace period, kill. Abort is final for the rings' other ends too: only
  when nothing will use the rings again (the session is ending, or fails on any failure).
- ``keep`` — the session may go on after this node fails (a supervision policy): never
  abort; a failed worker returns by itself within the grace period (cleanup included), a
  hung one is killed after it; the rings are then repaired (:meth:`ShmTransport.recover`).
- ``kill`` — it is being replaced (or stopped for good) by a strategy: kill it at once; its
  process exit is its cleanup. The rings are repaired afterwards.
"""


@dataclass
class ShmPorts:
    """The ports of a node placed in shared memory: the specs of its rings (inputs, outputs,
    its events ring to the supervisor) and a way to ask it to stop."""

    inputs: list[RingSpec] = field(default_factory=list)
    outputs: list[RingSpec] = field(default_factory=list)
    share_outputs: bool = False
    """The worker shares big frames with all of its output rings by reference
    (``ipc/_ownership.py``, fan-out) instead of forwarding to one and copying to the others:
    where two or more of their readers copy their input anyway, which saves copies and adds
    none (``[multiprocess] share_fan_out``; the wiring decides). Its output rings then have
    "free" doorbells: the worker sleeps until its shares are read."""
    events: RingSpec | None = None
    events_consumer: TrioConsumer | None = None
    control: RingSpec | None = None
    """Control signals to the worker (supervisor → worker), read ahead of its inputs."""
    control_producer: Producer | None = None
    rings: list[Ring] = field(default_factory=list)
    stop_mode: StopMode = "ask"
    """How the executor stops this node's worker (see :data:`StopMode`); the session sets it."""
    run: ShmPorts | None = None
    """For a member of a fused run other than its head (``NodeHost.chain``): the head's ports —
    its worker runs this node; these ports have no rings of their own."""
    stage: int = 0
    """Its place in its fused run (0: the head, or a node that runs alone)."""

    def flow(self) -> Flow:
        """What the supervisor sees of this worker's edges (racy: the worker runs meanwhile).
        A fused run's member sees its head's, with nothing queued (frames wait for the run
        at its head): the run is at work or waits as one."""
        if self.run is not None:
            return dataclasses.replace(self.run.flow(), queued_in=0)
        inputs = {spec.name for spec in self.inputs}
        outputs = {spec.name for spec in self.outputs}
        queued, ended, full = 0, True, False
        for ring in self.rings:
            try:
                stats = ring.statistics()
            except RingClosedError:
                continue
            if ring.spec.name in inputs:
                queued += stats.unfinished  # not the finished ones a sharer keeps
                ended = ended and stats.eos_sent
            if ring.spec.name in outputs:
                full = full or stats.produced - stats.consumed >= stats.slot_count
        return Flow(queued_in=queued, inputs_ended=ended, output_full=full)

    def request_stop(self) -> None:
        """Ask the worker to stop: abort its rings, waking it wherever it blocks in them.

        Abort is final, for the rings' other ends too: never for a node that will be restarted
        or taken over (kill its worker, then :meth:`ShmTransport.recover`)."""
        for ring in self.rings:
            with contextlib.suppress(RingClosedError):
                ring.abort()


class ShmPort:
    """A supervisor-side producer on a ring, as an :class:`OutPort`.

    Like a memory channel whose receiver is gone, a ring aborted or closed by the other side
    raises ``trio.BrokenResourceError``: callers of an OutPort need not know the transport.
    """

    def __init__(self, producer: TrioProducer, ring: Ring, share: SegmentPool | None = None) -> None:
        self._producer = producer
        self._ring = ring
        self._share = share
        """Big frames go by reference to one copy in this pool, which the other rings a node
        sends the same frame to refer to as well (fan-out from the supervisor, ``ipc/_pool.py``)."""
        self._inline = ring.spec.slot_size
        # Only one task may wait on the ring's doorbell: senders that find the ring full queue
        # here, first come first served, and nobody takes a free slot past a queued sender.
        self._waiting = trio.StrictFIFOLock()
        self._ended = False

    async def send(self, seq: int, frame: Frame) -> None:
        try:
            await self._send(seq, frame)
        except (RingAbortedError, RingClosedError) as exc:
            raise trio.BrokenResourceError(f"the node stopped taking frames: {exc}") from exc

    async def _send(self, seq: int, frame: Frame) -> None:
        encoded = encode_frame(frame)
        # Fast path: a free slot is there (the usual case) — copy the frame in and publish it at
        # once, then take the schedule point; only a full ring waits on the doorbell. Either way
        # this is a full checkpoint, and a cancellation never leaves a half-written slot behind.
        await trio.lowlevel.checkpoint_if_cancelled()
        producer = self._producer.producer
        if (
            self._share is not None
            and round_up(len(encoded.meta), META_ALIGN) + encoded.payload.nbytes > self._inline
            and len(encoded.meta) <= self._inline
            and await self._send_shared(seq, frame, encoded)
        ):
            return
        if not self._waiting.locked() and producer.try_send_frame(encoded, seq):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        async with self._waiting:
            await self._producer.send_frame(encoded, seq)

    async def _send_shared(self, seq: int, frame: Frame, encoded: EncodedFrame) -> bool:
        """Publish a reference to the pool's one copy of ``frame`` (made now, or by another ring
        of this fan-out); False, nothing sent: the pool's budget is spent (copy it instead)."""
        assert self._share is not None
        producer = self._producer.producer
        ref = self._share.share(frame, encoded, self._ring.spec.checksum)
        if ref is None:
            return False
        sid, size, crc = ref
        pos = None
        try:
            if not self._waiting.locked():
                pos = producer.try_send_ref(encoded, seq, sid, size, crc)
            if pos is None:
                async with self._waiting:
                    pos = await self._producer.send_ref(encoded, seq, sid, size, crc)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            if pos is None:
                self._share.abandoned(sid)
            else:
                self._share.published(sid, producer.words, pos)
        return True

    async def end(self) -> None:
        if self._ended:  # idempotent, like MemoryPort.end (a restarted node may end it again)
            await trio.lowlevel.checkpoint()
            return
        try:
            async with self._waiting:  # after every sender already waiting for a slot
                await self._producer.end_of_stream()
                self._ended = True
        except (RingAbortedError, RingClosedError) as exc:
            raise trio.BrokenResourceError(f"the node stopped taking frames: {exc}") from exc

    def full(self) -> bool:
        try:
            stats = self._ring.statistics()
        except RingClosedError:
            return False
        return stats.produced - stats.consumed >= stats.slot_count


@dataclass(frozen=True)
class Recovery:
    """What :meth:`ShmTransport.recover` found and repaired after a worker died."""

    inputs: tuple[ConsumerRepair, ...]
    """One per input ring, in ``ShmPorts.inputs`` order."""
    outputs: tuple[ProducerRepair, ...]
    """One per output ring, in ``ShmPorts.outputs`` order."""
    events: ProducerRepair | None

    @property
    def dropped(self) -> tuple[int, ...]:
        """Sequence numbers of the frames the worker was processing when it died (each input
        frame it had taken and not finished), input by input, in ring order."""
        return tuple(d.seq for rep in self.inputs for d in rep.dropped)

    @property
    def inputs_ended(self) -> int:
        """Inputs whose end of stream the dead worker had already received."""
        return sum(rep.eos_taken for rep in self.inputs)

    @property
    def loans_returned(self) -> int:
        """Output slots the dead worker may have held (a loan) and that were given back."""
        return sum(rep.returned for rep in (*self.outputs, *filter(None, [self.events])))


_swept = False


def _sweep_once() -> None:
    """Remove what dead supervisors left in /dev/shm — once per process (a runtime that is
    entered with ``async with`` sweeps again at every start)."""
    global _swept
    if not _swept:
        sweep_stale()
        _swept = True


class ShmTransport:
    """Creates, wires and finally unlinks every ring of one session."""

    def __init__(self, geometry: RingGeometry, events_slots: int = 64, *, share_fan_out: bool = True) -> None:
        _sweep_once()
        self.namespace = Namespace.create()
        self.geometry = geometry
        self.share_fan_out = share_fan_out
        """Workers may share big frames with several output rings by reference
        (``ShmPorts.share_outputs``)."""
        self._events_slots = events_slots
        self._rings: list[Ring] = []
        self._by_name: dict[str, Ring] = {}
        self._closers: list[Callable[[], None]] = []
        self.pool = SegmentPool(self.namespace.seg_name)
        """Segments no slot owns: output frames lent as views, warm ones for the inputs (ipc/_pool.py)."""
        self.pumps = PumpWatch()
        """Every pump of this transport: lets the session wait until what workers wrote has
        been moved (before it announces a failure, so earlier outputs come first)."""
        self._next = 0
        self._closed = False

    def _ring(
        self,
        *,
        async_producer: bool,
        async_consumer: bool,
        slot_count: int | None = None,
        slot_size: int | None = None,
    ) -> Ring:
        spec = RingSpec(
            namespace=self.namespace,
            index=self._next,
            slot_count=slot_count or self.geometry.slot_count,
            slot_size=self.geometry.slot_size if slot_size is None else slot_size,
            checksum=self.geometry.checksum,
            async_producer=async_producer,
            async_consumer=async_consumer,
        )
        self._next += 1
        ring = Ring.create(spec)
        self._rings.append(ring)
        self._by_name[spec.name] = ring
        return ring

    def edge(
        self, *, producer_in_supervisor: bool, takeover_producer: bool = False, sharing_producer: bool = False
    ) -> Ring:
        """A ring for one edge; doorbells where an end waits on a file descriptor.

        The consuming end always has one, wherever it lives: a worker waits on its inputs'
        doorbells too (never on a semaphore with a timeout), so that :meth:`signal` wakes it at
        once and an idle worker never wakes up on its own. Its producer writes the byte where a
        semaphore would have cost a futex wake (``ipc/_ring.py``, wake-ups).

        The producing end has one where it waits on a file descriptor: in the supervisor, or
        ``takeover_producer`` — the supervisor may have to take that worker end over for good
        (:meth:`take_over`: a temporary node). Only where needed: the consumer then writes to
        a FIFO on every release. ``sharing_producer``: a worker that shares frames with its
        output rings (``ShmPorts.share_outputs``) waits there for its shares to be read."""
        return self._ring(
            async_producer=producer_in_supervisor or takeover_producer or sharing_producer,
            async_consumer=True,
        )

    def node_ports(self) -> ShmPorts:
        """Ports for one node placed in shared memory: its events ring, read by the supervisor;
        the wiring adds its edges' rings."""
        ring = self._ring(
            async_producer=False, async_consumer=True, slot_count=self._events_slots, slot_size=4096
        )
        consumer = TrioConsumer(ring.consumer())
        self._closers.append(consumer.close)
        # Signals are sent without waiting (try_send) and the worker polls for them: no doorbells.
        control = self._ring(
            async_producer=False, async_consumer=False, slot_count=CONTROL_SLOTS, slot_size=4096
        )
        producer = control.producer()
        self._closers.append(producer.close)
        return ShmPorts(
            events=ring.spec,
            events_consumer=consumer,
            control=control.spec,
            control_producer=producer,
            rings=[ring, control],
        )

    def signal(self, ports: ShmPorts, signal: Signal) -> None:
        """Put ``signal`` on the worker's control ring (never blocks). The worker reads it
        before its next frame, between two outputs, or — idle — at once: its inputs' doorbells
        are rung after the signal is put (a worker waits on those, never on a timeout)."""
        stage, who = ports.stage, "the node"
        if ports.run is not None:  # a fused run's member: through its head's worker, naming it
            ports, who = ports.run, "the worker of its fused run"
        assert ports.control_producer is not None, "node_ports() made the control ring"
        sent = {
            "name": signal.name,
            "payload": dict(signal.payload),
            "origin": signal.origin,
            "id": signal.id,
        }
        if stage:
            sent["stage"] = stage
        meta = msgspec.json.encode(sent)
        if len(meta) > 4000:
            raise InputError(
                f"signal {signal.name!r}: its payload is too big ({len(meta)} bytes of JSON, at most 4000)"
            )
        if not ports.control_producer.try_send(SlotHeader(kind=0, meta_len=len(meta)), meta):
            raise InputError(
                f"signal {signal.name!r}: {who} already has {CONTROL_SLOTS} signals it has not taken yet"
            )
        for spec in ports.inputs:  # after the post: an idle worker wakes and finds the signal
            if spec.used_doorbell is not None:
                ring_once(spec.used_doorbell)

    def port(self, ring: Ring, *, share: bool = False) -> ShmPort:
        """The supervisor's producing end of ``ring``. ``share``: a supervisor-side node sends
        its big frames to several rings whose readers copy what they read; they all refer to one
        copy in the pool (``ipc/_pool.py``, fan-out) instead of one copy per ring."""
        producer = TrioProducer(ring.producer())
        producer.producer.use_pool(self.pool)
        self._closers.append(producer.close)
        return ShmPort(producer, ring, self.pool if share else None)

    def pump(
        self, ring: Ring, target: OutPort
    ) -> Callable[[Callable[[BaseException], None]], Awaitable[None]]:
        """A task body that moves the ring's frames into ``target``: ``await pump(on_error)``."""
        consumer = TrioConsumer(ring.consumer())
        consumer.consumer.use_pool(self.pool)
        self._closers.append(consumer.close)
        index = self.pumps.add(consumer.consumer.ready)
        return functools.partial(pump, consumer, target, watch=self.pumps, index=index, pool=self.pool)

    def recover(self, ports: ShmPorts) -> Recovery:
        """Repair, in place, every ring end a dead worker held — its inputs, outputs and events
        ring — so that a new worker job with the same ``ports`` carries on where it stopped.

        Call once the worker is gone for good (its job ended: it returned, raised, or its
        process was killed and reaped) and before starting the next one; never after
        :meth:`ShmPorts.request_stop` (abort is final). The rings' other ends may go on
        meanwhile. Repairing ends that were left clean is a no-op, so calling it for every
        node a strategy restarts is safe."""
        # First a forward-by-reference left half done, and the segments of frames it shared, before
        # the slots go back (ipc/_ownership.py).
        held = [self._ring_of(spec) for spec in ports.inputs]
        made = [self._ring_of(spec) for spec in ports.outputs]
        Ring.repair_swaps(held, made)
        Ring.repair_shares(held, made)
        inputs = tuple(self._ring_of(spec).repair_consumer() for spec in ports.inputs)
        outputs = tuple(self._ring_of(spec).repair_producer() for spec in ports.outputs)
        events = self._ring_of(ports.events).repair_producer() if ports.events is not None else None
        if ports.control is not None:  # signals the dead worker had not taken go to the next one
            self._ring_of(ports.control).repair_consumer()
        return Recovery(inputs, outputs, events)

    def take_over(self, ports: ShmPorts) -> Callable[[Callable[[int], None]], Awaitable[int]]:
        """The supervisor takes a dead worker's ring ends over for good (a temporary node that
        is not restarted); call after :meth:`recover`. Returns a task body,
        ``await body(on_dropped)``: it ends every output ring (what is downstream sees the end
        of stream) and drains every input ring until its producer ends it, calling
        ``on_dropped(seq)`` for each frame discarded (never backpressure on a dead node); it
        returns how many it discarded. The output rings must come from :meth:`edge` with
        ``takeover_producer`` (every input ring has its consumer's doorbell)."""
        for spec in ports.inputs:
            if spec.used_doorbell is None:
                raise RingError(spec.name, "cannot take the consumer over: the ring has no consumer doorbell")
        for spec in ports.outputs:
            if spec.free_doorbell is None:
                raise RingError(
                    spec.name, "cannot take the producer over: the edge was made without takeover_producer"
                )
        inputs = [TrioConsumer(self._ring_of(spec).consumer()) for spec in ports.inputs]
        outputs = [TrioProducer(self._ring_of(spec).producer()) for spec in ports.outputs]
        self._closers += [c.close for c in inputs] + [p.close for p in outputs]
        return functools.partial(_retire, inputs, outputs)

    def _ring_of(self, spec: RingSpec) -> Ring:
        try:
            return self._by_name[spec.name]
        except KeyError:
            raise RingError(spec.name, "is not a ring of this transport") from None

    def abort_all(self) -> None:
        for ring in self._rings:
            with contextlib.suppress(RingClosedError):
                ring.abort()

    def close(self) -> list[str]:
        """Close every ring and unlink the whole namespace (also what workers created in it)."""
        if self._closed:
            return []
        self._closed = True
        for close in self._closers:
            close()
        self.pool.close()
        for ring in self._rings:
            ring.close()
        return unlink_namespace(self.namespace)


async def _retire(
    inputs: list[TrioConsumer], outputs: list[TrioProducer], on_dropped: Callable[[int], None]
) -> int:
    """End ``outputs`` and drain ``inputs`` concurrently (one may wait on a full ring while
    another is being drained); stop quietly when the session aborts the rings."""
    discarded = 0

    def dropped(seq: int) -> None:
        nonlocal discarded
        discarded += 1
        on_dropped(seq)

    try:
        async with trio.open_nursery() as nursery:
            for producer in outputs:
                nursery.start_soon(end_stream, producer)
            for consumer in inputs:
                nursery.start_soon(discard_all, consumer, dropped)
    except* (RingAbortedError, trio.ClosedResourceError):
        pass  # the session is stopping
    return discarded


class PumpWatch:
    """How far a transport's pumps have got: each counts the times it found its ring empty.

    ``await wait_emptied_since(snapshot())``: every pump has found its ring empty (or ended)
    after the snapshot — so everything a worker had written before then has been moved on.
    Event-driven: pumps wake the waiter when they go idle; nothing polls.
    """

    def __init__(self) -> None:
        self._empty: list[int] = []
        self._waiting: list[bool] = []
        self._ended: list[bool] = []
        self._pending: list[Callable[[], bool]] = []
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, pending: Callable[[], bool]) -> int:
        """A pump; ``pending()`` says whether its ring holds something it has not taken."""
        self._empty.append(0)
        self._waiting.append(False)
        self._ended.append(False)
        self._pending.append(pending)
        return len(self._empty) - 1

    def mark_empty(self, index: int) -> None:
        """The pump found its ring empty and is about to wait."""
        self._empty[index] += 1
        self._waiting[index] = True
        self._lot.unpark_all()

    def mark_busy(self, index: int) -> None:
        self._waiting[index] = False

    def mark_ended(self, index: int) -> None:
        self._ended[index] = True
        self._lot.unpark_all()

    def snapshot(self) -> list[int]:
        return list(self._empty)

    def _caught_up(self, index: int, then: int) -> bool:
        if self._ended[index] or self._empty[index] > then:
            return True
        try:  # waiting since before the snapshot, and nothing arrived since: nothing to move
            return self._waiting[index] and not self._pending[index]()
        except RingClosedError:
            return True

    async def wait_emptied_since(self, snapshot: list[int]) -> None:
        while not all(self._caught_up(i, then) for i, then in enumerate(snapshot)):
            await self._lot.park()


async def pump(
    consumer: TrioConsumer,
    port: OutPort,
    on_error: Callable[[BaseException], None],
    *,
    watch: PumpWatch | None = None,
    index: int = 0,
    pool: SegmentPool | None = None,
) -> None:
    """Move frames from a worker's ring into a supervisor-side port. A big frame whose segment
    ``pool`` can take out of the ring goes on as a read-only view of it (no copy: the segment
    returns to the pool when the frame's array dies); any other is copied out."""
    try:
        while True:
            try:
                received = consumer.consumer.try_receive()
                if received is None:  # nothing to move now: say so, then wait
                    if watch is not None:
                        watch.mark_empty(index)
                    received = await consumer.receive()
                    if watch is not None:
                        watch.mark_busy(index)
            except EndOfStream:
                await port.end()
                return
            with received:
                frame = None if pool is None else pool.lend(received)
                if frame is None:
                    frame = decode_frame(received.header, received.meta, received.payload, copy=True)
                seq = received.header.seq
            await port.send(seq, frame)
    except (RingAbortedError, trio.ClosedResourceError, trio.BrokenResourceError):
        return  # the session is stopping
    except Exception as exc:
        on_error(SessionError(f"frame transport failed: {exc}"))
    finally:
        if watch is not None:
            watch.mark_ended(index)
