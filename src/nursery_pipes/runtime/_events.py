"""What a session tells its user, and the queue that carries it.

Events, in the order they happened:

- :class:`NodeProgress` — a node's initialisation progress (starting, loading,
  ready, failed; 0..1; a message);
- :class:`Output` — a frame produced by a sink node, with the sequence number
  of the input that caused it;
- :class:`StateChanged` — the session moved to a new lifecycle state;
- :class:`NodeFailed` — a node failed and what the session's supervision
  policy does about it (restart it, stop it for good, or fail the session);
- :class:`NodeRestarted` — a node (a fresh instance of it) is starting again;
  its progress events follow;
- :class:`FramesDropped` — frames that will never produce outputs: the one a
  node was processing when it failed or was restarted, what was still sent
  to a node stopped for good, or what a control signal dropped;
- :class:`SignalSent` — a control signal was routed to its targets (sent by
  the user or by a node: the moment a client can act on a node's barge-in);
- :class:`SignalHandled` — a node took a control signal (ahead of its queued
  frames) and what it dropped.

The queue keeps one order for all of them. Outputs count against a bound (a
client that stops reading slows the pipeline down — backpressure, never a
drop); control events never block their producer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import trio

from .._errors import NodeError
from .._states import SessionState
from ..executors import NodeProgress
from ..frames import Frame

__all__ = [
    "Event",
    "EventQueue",
    "FramesDropped",
    "NodeFailed",
    "NodeProgress",
    "NodeRestarted",
    "Output",
    "SignalHandled",
    "SignalSent",
    "StateChanged",
]


@dataclass(frozen=True, slots=True)
class Output:
    """A frame a sink node emitted. A big frame (bigger than a ring slot) from a worker process
    is a read-only view of the shared memory it arrived in, not a copy: nothing writes that
    memory while any view of it lives, and it returns to the session when the last one dies."""

    node_id: str
    frame: Frame
    seq: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: SessionState
    reason: str = ""


SupervisionAction = Literal["restart", "stop", "escalate"]


@dataclass(frozen=True, slots=True)
class NodeFailed:
    """Node ``node_id`` failed with ``error``. ``action``: ``restart`` (it, and ``restarting`` —
    the nodes the strategy restarts with it — start again), ``stop`` (a temporary node: its
    outputs end, the session goes on), or ``escalate`` (the session fails with this error)."""

    node_id: str
    error: NodeError
    action: SupervisionAction
    restarting: tuple[str, ...] = ()
    restarts: int = 0
    """How many times this node had been restarted before this failure."""


@dataclass(frozen=True, slots=True)
class NodeRestarted:
    """A fresh instance of ``node_id`` is starting (restart number ``restarts`` of this node),
    because ``cause`` failed (the node itself, or another one its strategy ties it to)."""

    node_id: str
    restarts: int
    cause: str


@dataclass(frozen=True, slots=True)
class FramesDropped:
    """Frames that entered the pipeline as client inputs ``sequences`` and will produce no
    (further) output at ``node_id``: why, in ``reason``."""

    node_id: str
    sequences: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class SignalHandled:
    """Node ``node_id`` took signal number ``signal_id`` (``name``, from ``origin``), ahead
    of its queued frames. ``dropped``: the sequence numbers of the queued frames it dropped;
    ``aborted``: the frame it was processing and gave up, if any."""

    node_id: str
    name: str
    signal_id: int
    origin: str
    dropped: tuple[int, ...] = ()
    aborted: int | None = None


@dataclass(frozen=True, slots=True)
class SignalSent:
    """Signal number ``signal_id`` (``name``, from ``origin``) is on its way to ``targets``,
    ahead of their queued frames; each answers with :class:`SignalHandled` once it took it."""

    name: str
    signal_id: int
    origin: str
    targets: tuple[str, ...]


Event = (
    NodeProgress
    | Output
    | StateChanged
    | NodeFailed
    | NodeRestarted
    | FramesDropped
    | SignalSent
    | SignalHandled
)
ControlEvent = (
    NodeProgress | StateChanged | NodeFailed | NodeRestarted | FramesDropped | SignalSent | SignalHandled
)


class EventQueue:
    """Single-consumer queue: outputs bounded by ``capacity``, control events unbounded."""

    def __init__(self, capacity: float) -> None:
        self._items: deque[Event] = deque()
        self._outputs = 0
        self._capacity = capacity
        self._closed = False
        self._discarding = False
        self._error: BaseException | None = None
        self._readable = trio.Event()
        self._writable = trio.Event()
        self.discarded = 0

    def put_control(self, event: ControlEvent) -> None:
        if self._closed:
            return
        self._items.append(event)
        self._readable.set()

    async def put_output(self, event: Output) -> None:
        # trio's send semantics: cancelled means not delivered. A cancellation may stop us
        # before the output is queued, never after (a node restarted right after emitting
        # its output must not report that frame as lost).
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._discarding and self._outputs >= self._capacity and not self._closed:
            self._writable = trio.Event() if self._writable.is_set() else self._writable
            await self._writable.wait()
        if self._discarding or self._closed:
            self.discarded += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._items.append(event)
        self._outputs += 1
        self._readable.set()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def get(self) -> Event | None:
        """The next event; None once the queue is closed and drained.

        Raises the session's error (after everything queued before it) if it failed.
        """
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._readable = trio.Event()
            await self._readable.wait()
        event = self._items.popleft()
        if isinstance(event, Output):
            self._outputs -= 1
            self._writable.set()
        return event

    def close(self, error: BaseException | None = None) -> None:
        """No more events. ``error``, if given, is raised by ``get`` after the backlog."""
        self._closed = True
        self._error = error
        self._readable.set()
        self._writable.set()

    def discard_outputs(self) -> None:
        """Drop unread outputs and stop queueing new ones (nobody will read them)."""
        self._discarding = True
        kept = [e for e in self._items if not isinstance(e, Output)]
        self.discarded += len(self._items) - len(kept)
        self._items = deque(kept)
        self._outputs = 0
        self._writable.set()

    @property
    def outputs_full(self) -> bool:
        """Outputs wait unread up to the bound: the reader, not the pipeline, holds things up."""
        return not (self._discarding or self._closed) and self._outputs >= self._capacity

    async def wait_output_room(self) -> None:
        """Wait until :attr:`outputs_full` is false (the reader took an output, or nobody will)."""
        while self.outputs_full:
            self._writable = trio.Event() if self._writable.is_set() else self._writable
            await self._writable.wait()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, float]:
        return {
            "queued": len(self._items),
            "outputs": self._outputs,
            "capacity": self._capacity,
            "discarded": self.discarded,
        }
