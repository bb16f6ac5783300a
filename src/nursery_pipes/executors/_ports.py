"""Edges as an executor sees them: messages, output ports, and a node's ports.

An edge carries :class:`Envelope` (a frame plus the sequence number of the
client input that caused it) and finally one :class:`EndOfStream`. Where the
ends of an edge live is the executor's :class:`~._abc.Placement`:

- a node placed in the **supervisor** gets :class:`SupervisorPorts`: one inbox
  that all its incoming edges feed (per-edge order is kept because each edge
  has one sender) and one :class:`OutPort` per outgoing edge;
- a node placed in **shared memory** gets the specs of its rings
  (:class:`~._transport.ShmPorts`) and reads and writes them itself.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..frames import Frame
from ..nodes._signals import Signal

__all__ = [
    "EndOfStream",
    "Envelope",
    "Flow",
    "Mailbox",
    "MemoryPort",
    "Message",
    "OutPort",
    "SupervisorPorts",
]


@dataclass(frozen=True, slots=True)
class Envelope:
    seq: int
    frame: Frame
    source: str


@dataclass(frozen=True, slots=True)
class EndOfStream:
    source: str


class Wake:
    """Not a message: a nudge that wakes a node's pump waiting on an empty inbox because a
    control signal came (see :class:`Mailbox`). Readers of an inbox skip it."""

    __slots__ = ()


WAKE = Wake()

Message = Envelope | EndOfStream | Wake


class OutPort(Protocol):
    """The sending end of one edge. A send to an edge whose receiver is gone raises
    ``trio.BrokenResourceError``, whatever the transport."""

    async def send(self, seq: int, frame: Frame) -> None: ...

    async def end(self) -> None:
        """End of stream: nothing more will be sent on this edge."""

    def full(self) -> bool:
        """The edge holds as much as it may: a send would wait for the consumer."""


class MemoryPort:
    """An edge between two supervisor-side endpoints: a trio memory channel."""

    __slots__ = ("_channel", "_ended", "_source")

    def __init__(self, channel: trio.MemorySendChannel[Message], source: str) -> None:
        self._channel = channel
        self._source = source
        self._ended = False

    async def send(self, seq: int, frame: Frame) -> None:
        await self._channel.send(Envelope(seq, frame, self._source))

    async def end(self) -> None:
        # Idempotent: a node restarted inside the session may end an edge its predecessor
        # already ended (cancelled just after the end of stream went out).
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        await self._channel.send(EndOfStream(self._source))
        self._ended = True
        await self._channel.aclose()

    def full(self) -> bool:
        stats = self._channel.statistics()
        return bool(stats.current_buffer_used >= stats.max_buffer_size)


class Mailbox:
    """Control signals for one supervisor-placed node, beside (not in) its inbox of frames.

    The node's pump looks here before it takes each frame and between the outputs of the
    frame in flight (a cheap truth test), so a signal overtakes every frame queued in the
    inbox. A pump waiting on an empty inbox says so (:attr:`idle`); a signal put then also
    drops :data:`WAKE` into the inbox — at its head, since it is empty — through the
    mailbox's own sender, which wakes the pump at no cost to the frame path (a cancel scope
    around every wait cost ~5 µs a frame). Used on the trio thread only.
    """

    __slots__ = ("_queue", "_waker", "busy_with", "idle")

    def __init__(self) -> None:
        self._queue: deque[Signal] = deque()
        self._waker: trio.MemorySendChannel[Message] | None = None
        self.idle = False
        """The pump is waiting on an empty inbox (it sets and clears this around the wait)."""
        self.busy_with: Callable[[Signal], None] | None = None
        """Set while the node's code runs in another thread: told of each signal at once (the
        thread executor's way to :meth:`~nursery_pipes.Node.cancel_work`)."""

    def attach(self, waker: trio.MemorySendChannel[Message]) -> None:
        """The sender (a clone of the inbox's) that :meth:`put` wakes an idle pump with."""
        self._waker = waker

    @property
    def has_waker(self) -> bool:
        return self._waker is not None

    def put(self, signal: Signal) -> None:
        self._queue.append(signal)
        if self.busy_with is not None:
            self.busy_with(signal)
        if self.idle and self._waker is not None:
            self.idle = False  # one nudge is enough
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._waker.send_nowait(WAKE)

    def take(self) -> list[Signal]:
        taken = list(self._queue)
        self._queue.clear()
        return taken

    def __bool__(self) -> bool:
        return bool(self._queue)


@dataclass(frozen=True, slots=True)
class Flow:
    """What the supervisor sees of one node's edges (for deciding who holds a session up)."""

    queued_in: int
    """Messages (frames, end-of-stream markers) waiting in its inputs."""
    inputs_ended: bool
    """Every input has delivered (or queued) its end of stream."""
    output_full: bool
    """Some output edge is full: the node waits for a consumer."""

    @property
    def waiting(self) -> bool:
        return self.output_full or (self.queued_in == 0 and not self.inputs_ended)


@dataclass
class SupervisorPorts:
    """The ports of a node whose executor lives in the supervisor."""

    expected_eos: int
    """How many end-of-stream markers the node waits for (one per input edge)."""
    inbox: trio.MemoryReceiveChannel[Message]
    """Every input edge feeds this one channel."""
    outputs: list[OutPort] = field(default_factory=list)
    """One port per output edge."""
    open_inputs: int = field(init=False)
    """Input edges that have not delivered their end of stream yet. Kept here, not by the
    node: a node restarted inside the session carries on where its predecessor stopped."""
    outputs_ended: bool = False
    """Every output has had its end of stream (a restarted node then has nothing to send)."""
    signals: Mailbox = field(default_factory=Mailbox)
    """Control signals for the node, ahead of the frames in ``inbox``."""

    def __post_init__(self) -> None:
        self.open_inputs = self.expected_eos

    async def receive(self) -> Message | None:
        """The next message of the inbox, or None once every sender has closed it. Waiting on
        an empty inbox marks the mailbox idle, so that a signal put meanwhile wakes this wait
        (the message is then :data:`WAKE`). A queued message is taken without a wait."""
        try:
            return self.inbox.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return None
        self.signals.idle = True
        try:
            return await self.inbox.receive()
        except trio.EndOfChannel:
            return None
        finally:
            self.signals.idle = False

    def flow(self) -> Flow:
        stats = self.inbox.statistics()
        waker = 1 if self.signals.has_waker else 0  # the mailbox's own sender is no input
        return Flow(
            queued_in=stats.current_buffer_used,
            inputs_ended=stats.open_send_channels <= waker,  # each input edge closes its clone at its end
            output_full=any(port.full() for port in self.outputs),
        )
