"""The remote executor: a node whose manifest entry names a ``host`` runs on that server.

The node (or a run of consecutive nodes on that host, :mod:`._chain`) becomes a session on
the other nursery_pipes (or any remotemedia.v1) server, over one StreamPipeline call
(:class:`~._link.Link`). Here it is a node like any
other placed in the supervisor: it takes frames from its inbox and sends its outputs on,
so routing, supervision and metrics treat it as they treat a local node.

- **Init**: the call is made and the remote node initialised within ``init_timeout_secs``;
  the remote server's init progress is this node's progress. A refusal (unknown node type,
  bad params, limits, authentication) fails the node in ``initialize``, naming the host.
- **Frames** are pipelined: each input goes out as soon as it arrives, outputs are sent on
  as they come back, with their sequence numbers mapped back (:mod:`._sequence`).
  Backpressure crosses the connection (see :mod:`._link`).
- **End**: when every input has ended, the remote session is closed; the server flushes the
  node and closes, and then this node ends its outputs.
- **Failure**: the remote node's failure, a refused frame or a lost connection fails this
  node (``NodeError`` naming it and the host), which the session's supervision policy
  restarts — a new call, a fresh remote node — or not, like any crash.
- **Signals** for the node are forwarded to it (a ``SignalRequest``) ahead of the frames
  still queued here, and its ``SignalHandled`` comes back with the sequence numbers mapped;
  frames already queued *here* are sent after the signal (the remote node decides).
- **Cancellation** cancels the call: the server sees the stream reset and cancels the
  remote session. Nothing here outlives :meth:`RemoteExecutor.run_node`.

Security: a manifest comes from a client and must not choose where this server connects.
Only the hosts listed in runtime.toml ``[remote] allowed_hosts`` are accepted, checked while
planning (:meth:`RemoteExecutor.refuses_host`), before anything connects; the list is empty
by default.
"""

from __future__ import annotations

import itertools
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from .._config import RemoteConfig, RuntimeConfig
from .._errors import NodeError
from ..executors import (
    EndOfStream,
    Envelope,
    Executor,
    NodeEvent,
    NodeHost,
    NodePorts,
    NodeRunner,
    Placement,
    SupervisorPorts,
    initializing,
)
from ..nodes._base import Node
from ..nodes._signals import Signal
from ._chain import Group, run_member
from ._sequence import SequenceMap

if TYPE_CHECKING:
    from ._link import Link

# The gRPC client (``._link``: grpclib, protobuf) and trio-asyncio are imported when a remote
# node first runs, not with this module: every runtime loads its executors' classes, and
# those imports take ~0.3 s.

__all__ = ["RemoteExecutor"]


class RemoteExecutor(Executor):
    """Runs a node on the nursery_pipes server its manifest entry names (``"host"``)."""

    name: ClassVar[str] = "remote"
    placement: ClassVar[Placement] = Placement.SUPERVISOR
    runs_async: ClassVar[bool] = True  # no hook of the node runs here at all
    needs_host: ClassVar[bool] = True
    fuses_chains: ClassVar[bool] = True

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.remote: RemoteConfig = config.remote
        self._tls: ssl.SSLContext | None = None
        if self.remote.tls or self.remote.ca_file:
            self._tls = ssl.create_default_context(cafile=self.remote.ca_file or None)
            self._tls.set_alpn_protocols(["h2"])

    def unsupported(self, node_class: type[Node[Any]]) -> str | None:
        return None  # the remote server decides what it can run (and says so at init)

    def refuses_host(self, host: str) -> str | None:
        allowed = self.remote.allowed_hosts
        if host in allowed:
            return None
        listed = f"it lists {', '.join(allowed)}" if allowed else "it lists no host"
        return (
            f"host {host} is not in this server's [remote] allowed_hosts ({listed}); "
            "a manifest may only name a host the server's operator allowed"
        )

    def session(self) -> AbstractAsyncContextManager[NodeRunner]:
        return _session(self)

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        assert isinstance(ports, SupervisorPorts), "the planner gives supervisor-placed nodes SupervisorPorts"
        await self.run_call([(host, ports)], None, task_status)

    async def run_call(
        self,
        members: list[tuple[NodeHost, SupervisorPorts]],
        group: Group | None,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """The head's part: one StreamPipeline call for ``members`` (one node, or a fused run)."""
        host = members[0][0]
        spec = host.spec
        assert spec is not None, "nodes planned from a manifest carry their entry"
        assert spec.host is not None, "the planner refuses a remote node without a host"
        address = spec.host
        host.progress("starting", 0.0, f"connecting to {address}")
        host.state.fire(NodeEvent.START)
        import trio_asyncio

        from ._link import Link

        link = Link(
            host.node_id,
            address,
            _manifest_for([h for h, _ in members], host.session_id),
            token=self.remote.token_value(),
            tls=self._tls,
            depth=host.settings.channel_capacity,
            on_progress=lambda state, fraction, message: host.progress(
                "loading", fraction, f"{address}: {message or state}"
            ),
        )
        if group is not None:
            group.new_call(link)
        failure: NodeError | None = None
        # (Errors are caught inside the nursery, not around it: out of it they would come
        # wrapped in an ExceptionGroup, and the failure must be reported before the call is
        # torn down.)
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            try:
                await _initialised(host, link)
                host.state.fire(NodeEvent.INIT_DONE)
                host.progress("ready", 1.0)
                task_status.started()
                if group is not None:
                    group.ready.set()
                await _exchange(members, link, group)
            except NodeError as exc:
                failure = exc
                host.state.fire(NodeEvent.FAIL)
                if exc.phase == "initialize":
                    host.progress("failed", 0.0, str(exc))
                host.report_failure(exc)
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        host.state.fire(NodeEvent.FINISHED)
        if group is not None:
            group.done.set()


@asynccontextmanager
async def _session(executor: RemoteExecutor) -> AsyncIterator[NodeRunner]:
    yield _Runner(executor)


class _Runner:
    """One session's remote nodes: alone, or in fused runs (:mod:`._chain`)."""

    def __init__(self, executor: RemoteExecutor) -> None:
        self.executor = executor
        self.groups: dict[tuple[str, ...], Group] = {}

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        assert isinstance(ports, SupervisorPorts), "the planner gives supervisor-placed nodes SupervisorPorts"
        if not host.chain:
            await self.executor.run_call([(host, ports)], None, task_status)
            return
        group = self.groups.setdefault(host.chain, Group(host.chain))
        if host.node_id != host.chain[0]:
            await run_member(group, host, ports, task_status)
            return
        group.register(host, ports)
        members = await group.all_registered()
        await self.executor.run_call(members, group, task_status)


def _manifest_for(hosts: list[NodeHost], session_id: str) -> dict[str, Any]:
    """The manifest the remote server runs: the entries as written, without ``host``, one
    after the other."""
    nodes: list[dict[str, Any]] = []
    ids: list[str] = []
    for host in hosts:
        spec = host.spec
        assert spec is not None
        nodes.append({"id": spec.id, "node_type": spec.node_type, "params": dict(spec.params)})
        ids.append(spec.id)
    return {
        "version": "v1",
        "metadata": {"name": f"{session_id}/{'+'.join(ids)}"},
        "nodes": nodes,
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


async def _initialised(host: NodeHost, link: Link) -> None:
    from ._link import Failed, Ready

    with initializing(host), trio.fail_after(host.settings.init_timeout_secs):
        event = await link.events.receive()
    if isinstance(event, Failed):
        raise event.error
    assert isinstance(event, Ready), f"a link's first event is Ready or Failed, not {event!r}"
    host.logger.debug("node %s runs in session %s on %s", host.node_id, event.session_id, link.address)


async def _exchange(members: list[tuple[NodeHost, SupervisorPorts]], link: Link, group: Group | None) -> None:
    """Inputs out (the first member's), outputs back (to the last member's edges), until the
    remote session closes or fails."""
    host, ports = members[0]
    seqs = SequenceMap()
    host.unanswered = seqs.unanswered  # what a failure now loses (reported by the session)
    sent = group.sent if group is not None else {host.node_id: deque()}
    failure: NodeError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_feed, host, ports, link, seqs, sent[host.node_id])
        try:
            await _forward(members, link, seqs, sent)
        except NodeError as exc:
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _feed(
    host: NodeHost, ports: SupervisorPorts, link: Link, seqs: SequenceMap, sent: deque[Signal]
) -> None:
    metrics, signals = host.metrics, ports.signals
    while ports.open_inputs:  # (a node restarted after its inputs ended has nothing to read)
        if signals:  # forwarded ahead of the frames still queued here
            for signal in signals.take():
                sent.append(signal)
                await link.signal(signal)
        message = await ports.receive()
        if message is None:
            break
        if isinstance(message, EndOfStream):
            ports.open_inputs -= 1
            continue
        if not isinstance(message, Envelope):  # a WAKE: the signal is taken at the top
            continue
        metrics.count_in(message.frame)
        host.state.fire(NodeEvent.FRAME)
        await link.send(seqs.outgoing(message.seq), message.frame)
        host.state.fire(NodeEvent.FRAME_DONE)
    host.state.fire(NodeEvent.STOP)
    await link.close()


async def _forward(
    members: list[tuple[NodeHost, SupervisorPorts]],
    link: Link,
    seqs: SequenceMap,
    sent: dict[str, deque[Signal]],
) -> None:
    from ._link import Closed, Failed, Output, SignalTaken

    tail, tail_ports = members[-1]
    hosts = {h.node_id: h for h, _ in members}
    async for event in link.events:
        if isinstance(event, Output):
            tail.metrics.count_out(event.frame)
            tail.metrics.processing_s += event.processing_s
            seq = seqs.incoming(event.sequence)
            for port in tail_ports.outputs:
                await port.send(seq, event.frame)
        elif isinstance(event, SignalTaken):  # a remote node took our oldest signal for it
            queue = sent.get(event.node_id)
            if queue:
                hosts[event.node_id].on_signal_handled(
                    queue.popleft(),
                    tuple(seqs.local_of(r) for r in event.dropped),
                    None if event.aborted is None else seqs.local_of(event.aborted),
                )
        elif isinstance(event, Failed):
            raise event.error
        elif isinstance(event, Closed):
            break
    # The run's own local edges end too (they carried no frame): the head's first, so the
    # next member sees its input end; the tail's carried everything the remote run made.
    for _, ports in (members[0], members[-1]) if len(members) > 1 else (members[0],):
        if not ports.outputs_ended:
            for port in ports.outputs:
                await port.end()
            ports.outputs_ended = True
