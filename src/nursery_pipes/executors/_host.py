"""What an executor knows about the node it runs, and how it reports back.

A :class:`NodeHost` is built by the session for every node: its identity and
class, the session's effective settings, the node's counters, its state
machine, and three ways to report — progress while it initialises, a failure
the moment it is known, and log lines. Everything here is plain data or a
callback into the session: an executor never reaches into the session.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import NodeError
from .._states import NODE_TRANSITIONS, NodeEvent, NodeState, StateMachine
from ..frames import Frame
from ..manifest import NodeSpec
from ..nodes._base import Node, NodeContext, Params
from ..nodes._signals import Signal

__all__ = [
    "NO_NODE_TRACE",
    "NodeHost",
    "NodeMetrics",
    "NodeProgress",
    "NodeTrace",
    "ProgressState",
    "SessionSettings",
]

ProgressState = Literal["starting", "loading", "ready", "failed"]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """A session's effective settings (manifest > runtime.toml > defaults; limits win)."""

    channel_capacity: int
    init_timeout_secs: float
    max_processes: int
    enable_backpressure: bool
    grace_period_secs: float
    python_executable: str
    close_timeout_secs: float = 30.0
    fuse_chains: bool = False
    """Run consecutive multiprocess nodes in one worker (``Executor.fuses_on_request``)."""


@dataclass(frozen=True, slots=True)
class NodeProgress:
    """A node's initialisation progress: starting, loading (0..1, with a message), ready, failed."""

    node_id: str
    state: ProgressState
    progress: float
    message: str = ""


@dataclass
class NodeMetrics:
    """Counters of one node, updated as it runs (a snapshot is what the session reports)."""

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
    state: NodeState = NodeState.IDLE
    """Where the node is in its lifecycle (kept current by its state machine)."""
    restarts: int = 0
    """How many times a fresh instance replaced it in this session (its supervision policy)."""
    frames_in_place: int = 0
    """Outputs sent from the memory the node built them in (``NodeContext.output_array`` in a
    worker process): no copy."""
    frames_forwarded: int = 0
    """Outputs whose payload was (part of) the node's big input frame — passed on unchanged,
    re-wrapped or sliced by a ``zero_copy`` node in a worker process — sent by reference to the
    shared memory the input arrived in: no copy."""
    frames_shared: int = 0
    """Outputs sent by reference to several output rings at once (fan-out to
    ordinary nodes, which copy what they read anyway): no copy for any of them."""

    def count_in(self, frame: Frame) -> None:
        self.frames_in += 1
        self.bytes_in += frame.nbytes

    def count_out(self, frame: Frame) -> None:
        self.frames_out += 1
        self.bytes_out += frame.nbytes
        label = frame.kind.label
        self.kinds_out[label] = self.kinds_out.get(label, 0) + 1


class NodeTrace:
    """Where an executor reports the sampled frames of one node, for tracing (the session's
    tracer gives each node one; docs/design.md §4, "Traces"). This base is tracing off: it
    samples nothing (``threshold`` 0), so an executor that tests ``threshold`` first pays
    nothing else per frame.

    An executor times a frame whose input sequence passes ``worker.sampled(seq, threshold)``
    from taking it to its last output handed on, and calls :meth:`frame`, on the trio thread.
    """

    threshold: int = 0
    """Sample threshold (``worker.threshold_for(ratio)``); 0: no frame is sampled."""

    def frame(
        self, seq: int, start_ns: int, end_ns: int, bytes_in: int, bytes_out: int, error: str = ""
    ) -> None:
        """One sampled frame: wall-clock ns (``time.time_ns``), its bytes, and if it failed the
        node's error as the session reports it (naming the node)."""


NO_NODE_TRACE = NodeTrace()


def _ignore_failure(error: NodeError) -> None:
    pass


def _ignore_handled(signal: Signal, dropped: tuple[int, ...], aborted: int | None) -> None:
    pass


SignalSender = Callable[[str, str, "tuple[str, ...] | None", dict[str, Any]], None]
"""``(origin node id, name, targets or None for all, payload)``: a node sends a signal."""


@dataclass
class NodeHost:
    """Everything about one node that its executor needs, apart from the frames."""

    node_id: str
    node_type: str
    node_class: type[Node[Any]]
    params: Params
    executor: str
    session_id: str
    settings: SessionSettings
    metrics: NodeMetrics
    emit_progress: Callable[[NodeProgress], None]
    on_failure: Callable[[NodeError], None] = _ignore_failure
    """Where :meth:`report_failure` goes (the session's supervisor)."""
    spec: NodeSpec | None = None
    """The node's manifest entry as written (``host``, raw ``params``…), when it came from one."""
    chain: tuple[str, ...] = ()
    """The run of nodes its executor runs as one unit (see ``Executor.fuses_chains``); empty
    when it runs alone."""
    on_signal_handled: Callable[[Signal, tuple[int, ...], int | None], None] = _ignore_handled
    """Report that the node took a signal: the sequence numbers of the queued frames it
    dropped, and of the frame in flight it aborted (None if none). Call on the trio thread."""
    send_signal: SignalSender | None = None
    """Where a signal the node sends goes (the session's router; any thread may call it)."""
    trace: NodeTrace = NO_NODE_TRACE
    """Where sampled frames are reported (tracing; the default samples none)."""
    state: StateMachine[NodeState, NodeEvent] = field(init=False)
    logger: logging.Logger = field(init=False)
    in_flight: int | None = field(init=False, default=None)
    """The sequence number of the input frame the node is processing right now, if any: what
    is lost if it fails or is stopped now (executors that take frames themselves set it)."""
    unanswered: Callable[[], tuple[int, ...]] | None = field(init=False, default=None)
    """For an executor that hands frames on before the earlier ones are finished (the remote
    executor pipelines them to its server): the sequence numbers of every frame handed on and
    not finished yet — lost too, like ``in_flight``, if the node fails now."""

    def __post_init__(self) -> None:
        metrics = self.metrics

        def track(old: NodeState, new: NodeState, event: NodeEvent) -> None:
            metrics.state = new

        self.state = StateMachine(f"node {self.node_id}", NodeState.IDLE, NODE_TRANSITIONS, on_change=track)
        self.logger = logging.getLogger(f"nursery_pipes.node.{self.node_id}")

    def progress(self, state: ProgressState, fraction: float, message: str = "") -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self.emit_progress(NodeProgress(self.node_id, state, fraction, message))

    def take_frames_in_hand(self) -> tuple[int, ...]:
        """The sequence numbers of the frames lost if the node stops now (``in_flight`` and
        ``unanswered``), forgotten as they are taken: each loss is reported once."""
        seqs = [] if self.in_flight is None else [self.in_flight]
        if self.unanswered is not None:
            seqs += [seq for seq in self.unanswered() if seq not in seqs]
            self.unanswered = None
        self.in_flight = None
        return tuple(seqs)

    def report_failure(self, error: NodeError) -> None:
        """The node has failed: say so now, then stop it (which may take the grace period)."""
        self.on_failure(error)

    def new_node(self) -> Node[Any]:
        """An instance of the node class, for executors that run it in this process."""
        return self.node_class(self.params, self.context())

    def context(self) -> NodeContext:
        return NodeContext(
            node_id=self.node_id,
            node_type=self.node_type,
            session_id=self.session_id,
            executor=self.executor,
            logger=self.logger,
            send_signal=None
            if self.send_signal is None
            else functools.partial(self.send_signal, self.node_id),
        )
