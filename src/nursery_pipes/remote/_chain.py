"""Consecutive remote nodes on one host, run as one remote session.

The planner marks each maximal run a → b → c of remote nodes on one host (``NodeHost.chain``,
``runtime/_plan.py fused_chains``): the run becomes *one* session on that server, so a frame
between a and b never comes back here. Locally the session still has three nodes with their
own edges, states and metrics; the remote executor's session runner plays them like this:

- the **head** (a) holds the StreamPipeline call: it feeds a's inputs to the remote a and
  sends what the remote c produces on c's output edges (counted as c's), then ends them;
- every other **member** (b, c) registers its ports with the :class:`Group`, becomes ready
  when the head's call is, and otherwise only sees the ends of stream of its local input
  edge, which carries no frame: the head ends its own output edge (a → b) when the remote
  session closes, b ends b → c when its input ends, and c waits for the head to finish;
- a **signal** for a member goes through the head's call to that node on the remote server;
- a **failure** of the call (any remote node, or the connection) fails the head, naming the
  remote node and host; its supervision policy restarts the head, which makes a new call for
  the whole run while the members wait.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from .._states import NodeEvent
from ..executors import EndOfStream, NodeHost, SupervisorPorts, initializing
from ..nodes._signals import Signal

if TYPE_CHECKING:
    from ._link import Link

__all__ = ["Group", "run_member"]


class Group:
    """One fused run of remote nodes within a session: who has registered, and the head's call."""

    def __init__(self, chain: tuple[str, ...]) -> None:
        self.chain = chain
        self.members: dict[str, tuple[NodeHost, SupervisorPorts]] = {}
        self._registered = trio.Event()
        self.ready = trio.Event()
        """Set by the head once the remote session is ready (a new one for each call)."""
        self.done = trio.Event()
        """Set by the head once the remote session closed and the run's outputs ended."""
        self.link: Link | None = None
        self.sent: dict[str, deque[Signal]] = {node_id: deque() for node_id in chain}
        """Per node: signals forwarded through the head's call, not answered yet."""

    def register(self, host: NodeHost, ports: SupervisorPorts) -> None:
        self.members[host.node_id] = (host, ports)
        if len(self.members) == len(self.chain):
            self._registered.set()

    async def all_registered(self) -> list[tuple[NodeHost, SupervisorPorts]]:
        await self._registered.wait()
        return [self.members[node_id] for node_id in self.chain]

    def new_call(self, link: Link) -> None:
        self.link = link
        if self.ready.is_set():
            self.ready = trio.Event()


async def run_member(
    group: Group, host: NodeHost, ports: SupervisorPorts, task_status: trio.TaskStatus[None]
) -> None:
    """A node of a fused run other than its head (see the module docstring)."""
    group.register(host, ports)
    host.progress("starting", 0.0, "runs in its run's remote session")
    host.state.fire(NodeEvent.START)
    with initializing(host), trio.fail_after(host.settings.init_timeout_secs):
        await group.ready.wait()
    host.state.fire(NodeEvent.INIT_DONE)
    host.progress("ready", 1.0)
    task_status.started()
    tail = host.node_id == group.chain[-1]
    signals = ports.signals
    while ports.open_inputs:
        if signals:
            for signal in signals.take():
                await _forward_signal(group, host.node_id, signal)
        message = await ports.receive()
        if message is None:
            break
        if isinstance(message, EndOfStream):
            ports.open_inputs -= 1
    host.state.fire(NodeEvent.STOP)
    if not tail and not ports.outputs_ended:  # the next member's input ends with this one's
        for port in ports.outputs:
            await port.end()
        ports.outputs_ended = True
    await group.done.wait()  # the tail's outputs are the head's to end
    host.state.fire(NodeEvent.FINISHED)


async def _forward_signal(group: Group, node_id: str, signal: Signal) -> None:
    while group.link is None or not group.ready.is_set():  # between two calls of the head
        await group.ready.wait()
    group.sent[node_id].append(signal)
    await group.link.signal(signal, to=node_id)
