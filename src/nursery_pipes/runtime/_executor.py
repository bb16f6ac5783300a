"""The executor seam: how a session hands one node to whatever runs it.

The session builds, for every node, a :class:`NodeHost` (identity, settings,
metrics, progress and state reporting) and :class:`NodePorts` (where frames
come from and go to), then calls ``executor.run_node(host, ports,
task_status)``. The executor must:

1. initialise the node, reporting progress, within ``init_timeout_secs``
   (else raise :class:`~nursery_pipes.NodeInitTimeout`);
2. call ``task_status.started()`` once the node is ready;
3. process every message until each input has delivered its end of stream,
   flush the node, then end every output port;
4. raise a :class:`~nursery_pipes.NodeError` (naming the node and phase) on
   failure — never let a foreign exception out — and report it with
   ``host.report_failure(error)`` as soon as it is known, *before* stopping
   the node or running its cleanup: the session publishes the failure at
   once, while the stop (which may take the whole grace period) goes on;
5. on cancellation, stop the node: ask → grace period → kill, with cleanup
   under a shielded cancel scope, so nothing outlives the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .._errors import NodeError
from ..nodes._base import NodeContext
from ._events import NodeProgress, ProgressState
from ._holdup import Flow
from ._plan import NodePlan, SessionSettings
from ._ports import Message, NodeMetrics, OutPort
from ._states import NODE_TRANSITIONS, NodeEvent, NodeState, StateMachine
from ._supervisor import Started

__all__ = ["Executor", "NodeHost", "NodePorts"]


@dataclass
class NodePorts:
    expected_eos: int
    """How many end-of-stream markers the node waits for (one per input edge)."""
    inbox: trio.MemoryReceiveChannel[Message] | None = None
    """Supervisor-side nodes: every input edge feeds this one channel."""
    outputs: list[OutPort] = field(default_factory=list)
    """Supervisor-side nodes: one port per output edge."""
    worker: Any = None
    """Worker nodes: their rings (``executors.WorkerWiring``): input/output/event ring specs."""

    def flow(self) -> Flow:
        """A snapshot of this node's edges (see :mod:`._holdup`)."""
        if self.worker is not None:
            flow: Flow = self.worker.flow()
            return flow
        assert self.inbox is not None
        stats = self.inbox.statistics()
        return Flow(
            queued_in=stats.current_buffer_used,
            inputs_ended=stats.open_send_channels == 0,  # each input edge closes its clone at its end
            output_full=any(port.full() for port in self.outputs),
        )


@dataclass
class NodeHost:
    """Everything about one node that its executor needs, apart from the frames."""

    plan: NodePlan
    session_id: str
    settings: SessionSettings
    metrics: NodeMetrics
    emit_progress: Callable[[NodeProgress], None]
    on_failure: Callable[[NodeError], None] = lambda error: None
    """Where :meth:`report_failure` goes (the session's supervisor)."""
    state: StateMachine[NodeState, NodeEvent] = field(init=False)
    logger: logging.Logger = field(init=False)

    def __post_init__(self) -> None:
        self.state = StateMachine(f"node {self.plan.node_id}", NodeState.IDLE, NODE_TRANSITIONS)
        self.logger = logging.getLogger(f"nursery_pipes.node.{self.plan.node_id}")

    @property
    def node_id(self) -> str:
        return self.plan.node_id

    def progress(self, state: ProgressState, fraction: float, message: str = "") -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self.emit_progress(NodeProgress(self.plan.node_id, state, fraction, message))

    def report_failure(self, error: NodeError) -> None:
        """The node has failed: say so now, then stop it (which may take the grace period)."""
        self.on_failure(error)

    def context(self, executor: str) -> NodeContext:
        return NodeContext(
            node_id=self.plan.node_id,
            node_type=self.plan.node_type,
            session_id=self.session_id,
            executor=executor,  # type: ignore[arg-type]
            logger=self.logger,
        )


class Executor(Protocol):
    name: str

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: Started) -> None: ...
