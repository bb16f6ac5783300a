"""What a session does when its supervisor acts on a node failure.

The supervisor decides (``_policy.decide``) and restarts or forgets children;
this module carries out what a *pipeline* needs around that (docs/design.md
§4, "Restarting nodes"):

- tell the client: :class:`NodeFailed` when the policy has decided,
  :class:`FramesDropped` for the frame each stopped node was processing,
  :class:`NodeRestarted` for each fresh instance;
- between stopping and starting the nodes of a restart, repair what outlives
  them: a supervisor-placed node's ports simply carry on (its inbox keeps
  what was queued; the open-input count is in the ports); a shared-memory
  node's rings are repaired in place by its executor's recovery (the frames
  it had taken are the dropped ones);
- a node stopped for good (a temporary node that failed, or a temporary
  sibling a strategy stopped) is *taken over*: its outputs end (downstream
  sees end of stream) and what upstream still sends it is drained and counted
  as dropped, so nothing upstream ever waits on a dead node.

Every method runs in the session's trio thread; takeovers run as tasks in the
session's nursery and are awaited before the session ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from .._errors import NodeError
from ..executors import EndOfStream, Envelope, NodeHost, NodeMetrics, NodePorts, ShmPorts, ShmTransport
from ._events import EventQueue, FramesDropped, NodeFailed, NodeRestarted, SupervisionAction
from ._supervisor import FailureRecord

__all__ = ["NodeRecovery"]

_ACTIONS: dict[str, SupervisionAction] = {"restart": "restart", "forget": "stop", "escalate": "escalate"}


class NodeRecovery:
    """A session's side of supervision: events, dropped frames, repairs and takeovers."""

    def __init__(
        self,
        events: EventQueue,
        metrics: Mapping[str, NodeMetrics],
        restart_counts: Callable[[], Mapping[str, int]],
        start_task: Callable[[Callable[[], Awaitable[None]], str], None],
        *,
        observe: Callable[[NodeFailed | NodeRestarted | FramesDropped], None] = lambda event: None,
    ) -> None:
        self._events = events
        self._metrics = metrics
        self._restart_counts = restart_counts
        self._start_task = start_task
        self._observe = observe
        """Sees every event as it is emitted (the session's trace)."""
        self.ports: Mapping[str, NodePorts] = {}
        self.transport: ShmTransport | None = None
        self.hosts: dict[str, NodeHost] = {}
        """The current instance of each node (replaced at each restart)."""
        self.ended: dict[str, trio.Event] = {}
        """Set when the current instance's task has returned."""
        self.log: list[NodeFailed | NodeRestarted | FramesDropped] = []
        self._takeovers = 0
        self._takeovers_done = trio.Event()
        self._takeovers_done.set()

    # -- the supervisor's hooks --------------------------------------------------------------

    def on_failure(self, record: FailureRecord) -> None:
        """The policy has decided; nothing is stopped yet."""
        error = _node_error(record)
        counts = self._restart_counts()
        self._emit(
            NodeFailed(
                record.child,
                error,
                _ACTIONS[record.action],
                restarting=record.restarted,
                restarts=counts.get(record.child, 0),
            )
        )
        if record.action == "forget":
            self._take_over(record.child, f"{record.child} failed and is temporary: stopped for good")
        for node_id in (*record.restarted, *record.stopped):
            ports = self.ports[node_id]
            if node_id != record.child and isinstance(ports, ShmPorts):
                ports.stop_mode = "kill"  # replaced (or stopped) for another node's failure: at once

    async def on_restart(self, record: FailureRecord) -> None:
        """The nodes to restart (and temporary siblings to stop) have stopped; none started."""
        for node_id in record.restarted:
            why = "it failed" if node_id == record.child else f"restarted with {record.child}, which failed"
            self._drop_in_flight(node_id, f"the frame {node_id} was processing is lost: {why}")
            ports = self.ports[node_id]
            if isinstance(ports, ShmPorts):
                self._repair(node_id, ports, f"the frame {node_id} was processing is lost: {why}")
                ports.stop_mode = "keep"  # the fresh worker may fail and be restarted too
        for node_id in record.stopped:
            self._take_over(node_id, f"stopped for good (temporary) when {record.child} failed")
        counts = self._restart_counts()
        for node_id in record.restarted:
            self._metrics[node_id].restarts += 1
            self._emit(NodeRestarted(node_id, counts.get(node_id, 0), record.child))
        for member in self._fused_members(record.restarted):
            # The head's fresh worker (or remote call) builds fresh instances of them too.
            metrics = self._metrics[member]
            metrics.restarts += 1
            self._emit(NodeRestarted(member, metrics.restarts, record.child))

    # -- nodes stopped for good ------------------------------------------------------------------

    def _take_over(self, node_id: str, reason: str) -> None:
        self._takeovers += 1
        if self._takeovers_done.is_set():
            self._takeovers_done = trio.Event()

        async def take_over() -> None:
            try:
                await self.ended[node_id].wait()  # its task has returned: nothing else reads its inputs
                self._drop_in_flight(node_id, f"the frame {node_id} was processing is lost: {reason}")
                await self._end_and_drain(node_id, reason)
            finally:
                self._takeovers -= 1
                if self._takeovers == 0:
                    self._takeovers_done.set()

        self._start_task(take_over, f"take over {node_id}")

    async def _end_and_drain(self, node_id: str, reason: str) -> None:
        ports = self.ports[node_id]
        if isinstance(ports, ShmPorts):
            await self._take_over_rings(node_id, ports, reason)
            return
        for port in ports.outputs:
            await port.end()  # downstream sees end of stream: it flushes when its other inputs end
        while ports.open_inputs:
            message = await ports.inbox.receive()
            dropped = []
            while True:  # everything already queued, as one event
                if isinstance(message, EndOfStream):
                    ports.open_inputs -= 1
                elif isinstance(message, Envelope):  # (not a WAKE for the stopped node's pump)
                    dropped.append(message.seq)
                try:
                    message = ports.inbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if dropped:
                self._emit(FramesDropped(node_id, tuple(dropped), f"sent to {node_id}, {reason}"))

    async def wait_takeovers(self) -> None:
        """Until every takeover has drained its node's inputs (they end once upstream ends)."""
        await self._takeovers_done.wait()

    async def _take_over_rings(self, node_id: str, ports: ShmPorts, reason: str) -> None:
        assert self.transport is not None
        self._repair(node_id, ports, f"the frame {node_id} was processing is lost: {reason}")

        def dropped(seq: int) -> None:
            self._emit(FramesDropped(node_id, (seq,), f"sent to {node_id}, {reason}"))

        await self.transport.take_over(ports)(dropped)

    # -- helpers -----------------------------------------------------------------------------------

    def _repair(self, node_id: str, ports: ShmPorts, reason: str) -> None:
        """Repair the rings a dead worker held, so a new worker (or the supervisor) can carry on;
        the frames it had taken and not finished are the dropped ones."""
        assert self.transport is not None, "shared-memory nodes have a transport"
        recovery = self.transport.recover(ports)
        if recovery.dropped:
            self._emit(FramesDropped(node_id, tuple(recovery.dropped), reason))

    def _fused_members(self, restarted: tuple[str, ...]) -> list[str]:
        """The other nodes of the fused runs whose heads restart, not restarted themselves."""
        members = []
        for node_id in restarted:
            host = self.hosts.get(node_id)
            if host is not None and host.chain and host.chain[0] == node_id:
                members += [m for m in host.chain[1:] if m not in restarted and m not in members]
        return members

    def _drop_in_flight(self, node_id: str, reason: str) -> None:
        host = self.hosts.get(node_id)
        seqs = () if host is None else host.take_frames_in_hand()
        if seqs:
            self._emit(FramesDropped(node_id, seqs, reason))

    def _emit(self, event: NodeFailed | NodeRestarted | FramesDropped) -> None:
        self.log.append(event)
        self._events.put_control(event)
        self._observe(event)


def _node_error(record: FailureRecord) -> NodeError:
    error = record.error
    if isinstance(error, NodeError):
        return error
    what = "exited" if error is None else f"failed: {type(error).__name__}: {error}"
    return NodeError(record.child, "process", what)
