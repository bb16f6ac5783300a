"""What a runtime has done, counted for monitoring (sans-I/O: plain counters, no clock, no I/O).

Sessions end and their :class:`~nursery_pipes.executors.NodeMetrics` with them; a monitor
wants counters that only grow. So a runtime adds each ended session's final node counters to
:class:`RuntimeStats`, and :meth:`RuntimeStats.snapshot` adds the live sessions' current ones
on top: a session moves from "live" to "ended" with the same numbers, and the sum never drops.
Labels are node types and executors — never session ids (bounded cardinality).

A live view (``nursery-pipes top``, the Monitor service) wants the opposite: each live session
and each of its nodes as they are now. :func:`session_view` reads one session through its public
API into plain frozen values — taken on request, on the session's trio thread; nothing here is
counted per frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .._errors import NodeError
from ._events import NodeFailed

__all__ = [
    "INIT_BUCKETS",
    "NodeTotals",
    "NodeView",
    "RuntimeStats",
    "SessionView",
    "StatsSnapshot",
    "session_view",
]

INIT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the node initialisation histogram (+Inf implied)."""

Outcome = Literal["completed", "failed", "cancelled"]


@dataclass
class NodeTotals:
    """Counters of every node of one (node type, executor), over sessions."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    processing_s: float = 0.0
    failures: int = 0
    restarts: int = 0
    init_count: int = 0
    init_sum: float = 0.0
    init_buckets: list[int] = field(default_factory=lambda: [0] * (len(INIT_BUCKETS) + 1))
    """Non-cumulative counts per bucket of INIT_BUCKETS, then +Inf."""

    def add_node(self, metrics: Any, failures: int) -> None:
        self.frames_in += metrics.frames_in
        self.frames_out += metrics.frames_out
        self.bytes_in += metrics.bytes_in
        self.bytes_out += metrics.bytes_out
        self.processing_s += metrics.processing_s
        self.restarts += metrics.restarts
        self.failures += failures
        if metrics.init_s > 0:
            self.init_count += 1
            self.init_sum += metrics.init_s
            self.init_buckets[bisect.bisect_left(INIT_BUCKETS, metrics.init_s)] += 1

    def plus(self, other: NodeTotals) -> NodeTotals:
        return NodeTotals(
            self.frames_in + other.frames_in,
            self.frames_out + other.frames_out,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            self.processing_s + other.processing_s,
            self.failures + other.failures,
            self.restarts + other.restarts,
            self.init_count + other.init_count,
            self.init_sum + other.init_sum,
            [a + b for a, b in zip(self.init_buckets, other.init_buckets, strict=True)],
        )


@dataclass(frozen=True)
class StatsSnapshot:
    sessions_active: int
    sessions_started: int
    sessions_ended: dict[str, int]
    nodes: dict[tuple[str, str], NodeTotals]
    """(node type, executor) → counters, ended and live sessions together."""
    queued_inputs: dict[tuple[str, str], int]
    """(node type, executor) → frames waiting on the inputs of live nodes."""
    workers: dict[str, list[int]]
    """node type → pids of the live worker processes running it."""


class RuntimeStats:
    def __init__(self) -> None:
        self.sessions_started = 0
        self.sessions_ended: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        self._nodes: dict[tuple[str, str], NodeTotals] = {}

    def session_started(self) -> None:
        self.sessions_started += 1

    def session_ended(self, session: Any) -> None:
        self.sessions_ended[session_outcome(session)] += 1
        for key, (metrics, failures) in _node_rows(session).items():
            self._nodes.setdefault(key[1:], NodeTotals()).add_node(metrics, failures)

    def snapshot(self, live: Iterable[Any]) -> StatsSnapshot:
        nodes = {
            key: replace(totals, init_buckets=list(totals.init_buckets))
            for key, totals in self._nodes.items()
        }
        queued: dict[tuple[str, str], int] = {}
        workers: dict[str, list[int]] = {}
        active = 0
        for session in live:
            active += 1
            waiting = session.queued_inputs()
            for (node_id, node_type, executor), (metrics, failures) in _node_rows(session).items():
                row = NodeTotals()
                row.add_node(metrics, failures)
                nodes[(node_type, executor)] = nodes.get((node_type, executor), NodeTotals()).plus(row)
                queued[(node_type, executor)] = queued.get((node_type, executor), 0) + waiting.get(node_id, 0)
                if metrics.pid is not None and executor == "multiprocess":
                    workers.setdefault(node_type, []).append(metrics.pid)
        return StatsSnapshot(active, self.sessions_started, dict(self.sessions_ended), nodes, queued, workers)


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node of a live session, now."""

    node_id: str
    node_type: str
    executor: str
    state: str
    pid: int | None
    """Its worker process; None when it runs in the supervisor's process."""
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    queued_in: int
    """Frames waiting on its inputs."""
    restarts: int
    failures: int
    processing_s: float
    init_s: float
    host: str
    """The server it runs on (a remote node: ``HOST:PORT``), or empty: this one."""


@dataclass(frozen=True, slots=True)
class SessionView:
    """One live session, now: what a live view shows of it."""

    session_id: str
    pipeline: str
    state: str
    age_s: float
    frames_in: int
    """Frames the client sent."""
    frames_out: int
    """Frames its sinks produced."""
    bytes_in: int
    bytes_out: int
    queued_outputs: int
    """Outputs waiting for the client to read them."""
    error: str
    """The session's error once it has failed, else empty."""
    nodes: tuple[NodeView, ...]
    """In manifest order."""


def session_view(session: Any) -> SessionView:
    """A :class:`SessionView` of a live session (call on its trio thread)."""
    metrics = session.metrics()
    waiting = session.queued_inputs()
    nodes = tuple(
        NodeView(
            node_id=node_id,
            node_type=node_type,
            executor=executor,
            state=m.state.value,
            pid=m.pid,
            frames_in=m.frames_in,
            frames_out=m.frames_out,
            bytes_in=m.bytes_in,
            bytes_out=m.bytes_out,
            queued_in=waiting.get(node_id, 0),
            restarts=m.restarts,
            failures=failures,
            processing_s=m.processing_s,
            init_s=m.init_s,
            host=_host(session, node_id),
        )
        for (node_id, node_type, executor), (m, failures) in _node_rows(session).items()
    )
    error = session.error
    return SessionView(
        session_id=session.id,
        pipeline=session.plan.manifest.name,
        state=session.state.value,
        age_s=metrics.wall_time_s,
        frames_in=metrics.frames_in,
        frames_out=metrics.frames_out,
        bytes_in=metrics.bytes_in,
        bytes_out=metrics.bytes_out,
        queued_outputs=session.statistics().queued_outputs,
        error=str(error) if error is not None else "",
        nodes=nodes,
    )


def _host(session: Any, node_id: str) -> str:
    spec = session.plan.nodes[node_id].spec
    return (spec.host or "") if spec is not None else ""


def session_outcome(session: Any) -> Outcome:
    if session.error is not None:
        return "failed"
    return "cancelled" if session.cancelled else "completed"


def _node_rows(session: Any) -> dict[tuple[str, str, str], tuple[Any, int]]:
    """(node id, node type, executor) → (its NodeMetrics, failures seen) for one session."""
    failures: dict[str, int] = {}
    for event in session.supervision_log:
        if isinstance(event, NodeFailed):
            failures[event.node_id] = failures.get(event.node_id, 0) + 1
    error = session.error
    cause = error.__cause__ if error is not None and not isinstance(error, NodeError) else error
    if isinstance(cause, NodeError) and cause.node_id and not failures.get(cause.node_id):
        failures[cause.node_id] = 1
    rows = {}
    for node_id, metrics in session.metrics().nodes.items():
        node_type = session.plan.nodes[node_id].node_type
        rows[(node_id, node_type, metrics.executor)] = (metrics, failures.get(node_id, 0))
    return rows
