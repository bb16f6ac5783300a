"""The tracing seam: what a runtime tells a tracer about its sessions (docs/design.md §4, "Traces").

The runtime knows no tracing library. It calls these classes at the few moments a trace is
made of, and the base classes do nothing — tracing off, the default::

    Tracer.session(...)                  a session starts        → SessionTrace
      SessionTrace.node_init(...)        a node (or a restarted instance of it) starts → InitTrace
        InitTrace.ready(pid)             … is ready
        InitTrace.failed(error)          … failed or was stopped before it was ready
      SessionTrace.frames(node_id)       the node's NodeTrace: where its executor reports
                                         sampled frames (executors/_host.py)
      SessionTrace.event(event)          supervision did something (NodeFailed, NodeRestarted,
                                         FramesDropped)
      SessionTrace.end(outcome, error)   the session has ended: completed, failed or cancelled

None of these is called per frame: the only per-frame cost of tracing is the executors'
sampling test on ``NodeTrace.threshold`` (0 with tracing off). Every call happens on the trio
thread. The OpenTelemetry implementation is ``nursery_pipes.tracing`` (the ``otel`` extra),
which the runtime never imports: a program hands one to ``Runtime(tracer=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..executors import NO_NODE_TRACE, NodeTrace
from ._events import FramesDropped, NodeFailed, NodeRestarted

__all__ = ["NO_TRACER", "InitTrace", "SessionTrace", "Tracer"]


class InitTrace:
    """One node instance's initialisation. At most one of the two calls counts."""

    def ready(self, pid: int | None) -> None:
        """The node is ready (``pid``: its worker process, if it has one)."""

    def failed(self, error: BaseException) -> None:
        """It failed (an ``Exception``: a :class:`~nursery_pipes.NodeError` naming it), or was
        cancelled (any other ``BaseException``), before it was ready."""


class SessionTrace:
    """One session's trace (tracing off: nothing)."""

    def node_init(self, node_id: str, node_type: str, executor: str, restarts: int) -> InitTrace:
        """A node instance starts (``restarts``: how many instances it had before this one)."""
        return _NO_INIT

    def frames(self, node_id: str) -> NodeTrace:
        """Where the node's executor reports its sampled frames."""
        return NO_NODE_TRACE

    def event(self, event: NodeFailed | NodeRestarted | FramesDropped) -> None:
        """What supervision did, as it happened."""

    def end(self, outcome: str, error: BaseException | None) -> None:
        """The session is over: ``outcome`` completed, failed (``error`` says why) or cancelled."""


class Tracer:
    """Makes a trace per session. This base makes none (tracing off)."""

    def session(
        self, session_id: str, pipeline: str, node_count: int, context: Mapping[str, str]
    ) -> SessionTrace:
        """A session starts. ``context``: the caller's trace context as carrier headers
        (W3C ``traceparent`` / ``tracestate`` from gRPC metadata; empty: a new trace)."""
        return _NO_SESSION


_NO_INIT = InitTrace()
_NO_SESSION = SessionTrace()
NO_TRACER = Tracer()
