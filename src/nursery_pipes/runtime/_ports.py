"""Edges as seen from the supervisor: messages, output ports, and node metrics.

An edge carries :class:`Envelope` (a frame plus the sequence number of the
client input that caused it) and finally one :class:`EndOfStream`. A node
has one inbox that all its incoming edges feed (per-edge order is kept
because each edge has one sender), and one :class:`OutPort` per outgoing
edge. The executor seam only ever sees these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..frames import Frame
from ._events import EventQueue, Output

__all__ = ["EndOfStream", "Envelope", "EventPort", "MemoryPort", "NodeMetrics", "OutPort"]


@dataclass(frozen=True, slots=True)
class Envelope:
    seq: int
    frame: Frame
    source: str


@dataclass(frozen=True, slots=True)
class EndOfStream:
    source: str


Message = Envelope | EndOfStream


class OutPort(Protocol):
    """The sending end of one edge."""

    async def send(self, seq: int, frame: Frame) -> None: ...

    async def end(self) -> None:
        """End of stream: nothing more will be sent on this edge."""

    def full(self) -> bool:
        """The edge holds as much as it may: a send would wait for the consumer."""


class MemoryPort:
    """An edge between two supervisor-side endpoints: a trio memory channel."""

    __slots__ = ("_channel", "_source")

    def __init__(self, channel: trio.MemorySendChannel[Message], source: str) -> None:
        self._channel = channel
        self._source = source

    async def send(self, seq: int, frame: Frame) -> None:
        await self._channel.send(Envelope(seq, frame, self._source))

    async def end(self) -> None:
        await self._channel.send(EndOfStream(self._source))
        await self._channel.aclose()

    def full(self) -> bool:
        stats = self._channel.statistics()
        return bool(stats.current_buffer_used >= stats.max_buffer_size)


class EventPort:
    """A sink's edge to the client: frames become :class:`Output` events."""

    __slots__ = ("_node_id", "_queue")

    def __init__(self, queue: EventQueue, node_id: str) -> None:
        self._queue = queue
        self._node_id = node_id

    async def send(self, seq: int, frame: Frame) -> None:
        await self._queue.put_output(Output(self._node_id, frame, seq))

    async def end(self) -> None:
        await trio.lowlevel.checkpoint()

    def full(self) -> bool:
        return self._queue.outputs_full


@dataclass
class NodeMetrics:
    """Counters of one node, updated as it runs."""

    node_id: str
    executor: str
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    processing_s: float = 0.0
    init_s: float = 0.0
    pid: int | None = None
    kinds_out: dict[str, int] = field(default_factory=dict)

    def count_in(self, frame: Frame) -> None:
        self.frames_in += 1
        self.bytes_in += frame.nbytes

    def count_out(self, frame: Frame) -> None:
        self.frames_out += 1
        self.bytes_out += frame.nbytes
        label = frame.kind.label
        self.kinds_out[label] = self.kinds_out.get(label, 0) + 1
