"""Turning a plan's edges into channels, rings and ports for one session.

Memory edges (both ends in the supervisor) are trio memory channels feeding
the downstream node's inbox. Shared-memory edges are rings from the session's
transport: the supervisor-side end becomes an OutPort (producer) or a pump
task (consumer); a worker-side end becomes a ring spec in that worker's
wiring.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ._events import EventQueue
from ._executor import NodePorts
from ._plan import CLIENT, SessionPlan
from ._ports import EventPort, MemoryPort, Message, OutPort

if TYPE_CHECKING:
    from ..executors._transport import ShmTransport

__all__ = ["Wiring", "wire"]


@dataclass
class Wiring:
    ports: dict[str, NodePorts]
    ingress: dict[str, OutPort]
    pumps: list[Callable[[Callable[[BaseException], None]], Awaitable[None]]] = field(default_factory=list)
    """Tasks moving frames from a worker's ring to a supervisor-side port: ``pump(on_error)``."""


def wire(plan: SessionPlan, events: EventQueue, capacity: float, transport: ShmTransport | None) -> Wiring:
    inboxes: dict[str, trio.MemorySendChannel[Message]] = {}
    ports: dict[str, NodePorts] = {}
    for nid, node in plan.nodes.items():
        if node.on_supervisor:
            send, recv = trio.open_memory_channel[Message](capacity)
            inboxes[nid] = send
            ports[nid] = NodePorts(expected_eos=len(node.inputs), inbox=recv)
        else:
            assert transport is not None, "worker nodes need a shared-memory transport"
            ports[nid] = NodePorts(expected_eos=len(node.inputs), worker=_worker_wiring(transport))
    wiring = Wiring(ports=ports, ingress={})
    for edge in plan.edges:
        if edge.transport == "memory":
            _add_sender(wiring, edge.src, edge.dst, _receiving_port(edge.src, edge.dst, inboxes, events))
        else:
            assert transport is not None
            _shm_edge(wiring, plan, edge.src, edge.dst, inboxes, events, transport)
    for send in inboxes.values():
        send.close()  # each edge holds its own clone; the inbox closes when all have ended
    return wiring


def _worker_wiring(transport: ShmTransport) -> Any:
    from ..executors._transport import WorkerWiring

    ring, consumer = transport.events()
    return WorkerWiring(events=ring.spec, events_consumer=consumer, rings=[ring])


def _receiving_port(
    src: str, dst: str, inboxes: dict[str, trio.MemorySendChannel[Message]], events: EventQueue
) -> OutPort:
    """Where a supervisor-side edge end delivers: the client's event queue, or ``dst``'s inbox."""
    return EventPort(events, src) if dst == CLIENT else MemoryPort(inboxes[dst].clone(), src)


def _add_sender(wiring: Wiring, src: str, dst: str, port: OutPort) -> None:
    """``port`` is how ``src`` (a supervisor-side node, or the client) sends along src → dst."""
    if src == CLIENT:
        wiring.ingress[dst] = port
    else:
        wiring.ports[src].outputs.append(port)


def _shm_edge(
    wiring: Wiring,
    plan: SessionPlan,
    src: str,
    dst: str,
    inboxes: dict[str, trio.MemorySendChannel[Message]],
    events: EventQueue,
    transport: ShmTransport,
) -> None:
    src_in_supervisor = src == CLIENT or plan.nodes[src].on_supervisor
    dst_in_supervisor = dst == CLIENT or plan.nodes[dst].on_supervisor
    fan_in = 1 if dst == CLIENT else len(plan.nodes[dst].inputs)
    ring = transport.edge(
        producer_in_supervisor=src_in_supervisor,
        consumer_in_supervisor=dst_in_supervisor,
        consumer_fan_in=fan_in,
    )
    # producing end
    if src_in_supervisor:
        _add_sender(wiring, src, dst, transport.port(ring))
    else:
        worker = wiring.ports[src].worker
        worker.outputs.append(ring.spec)
        worker.rings.append(ring)
    # consuming end
    if dst_in_supervisor:
        wiring.pumps.append(transport.pump(ring, _receiving_port(src, dst, inboxes, events)))
    else:
        worker = wiring.ports[dst].worker
        worker.inputs.append(ring.spec)
        if ring not in worker.rings:
            worker.rings.append(ring)
