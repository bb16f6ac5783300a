"""Turning a plan's edges into channels, rings and ports for one session.

Memory edges (both ends in the supervisor) are trio memory channels feeding
the downstream node's inbox. Shared-memory edges are rings from the session's
transport: a supervisor-side end becomes an OutPort (producer) or a pump task
(consumer); a shared-memory end becomes a ring spec in that node's ShmPorts.
Which it is follows from the placement the plan asked each executor for.

A fused run of shared-memory nodes (``NodePlan.chain``: one worker runs them all) is one
worker to the rings: its head's ports hold the head's input rings and the tail's output
rings, the edges inside the run have no ring at all (the worker hands frames from node to
node as objects), and every other member's ports point at the head's
(``ShmPorts.run``: signals go through the head's control ring, naming the member).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..executors import MemoryPort, Message, NodePorts, OutPort, ShmPorts, ShmTransport, SupervisorPorts
from ..frames import Frame
from ._events import EventQueue, Output
from ._plan import CLIENT, SessionPlan
from ._policy import RestartType

__all__ = ["EventPort", "Wiring", "wire"]


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
class Wiring:
    ports: dict[str, NodePorts]
    ingress: dict[str, OutPort]
    pumps: list[Callable[[Callable[[BaseException], None]], Awaitable[None]]] = field(default_factory=list)
    """Tasks moving frames from a ring to a supervisor-side port: ``pump(on_error)``."""


def wire(plan: SessionPlan, events: EventQueue, capacity: float, transport: ShmTransport | None) -> Wiring:
    inboxes: dict[str, trio.MemorySendChannel[Message]] = {}
    ports: dict[str, NodePorts] = {}
    for nid, node in plan.nodes.items():
        if node.on_supervisor:
            send, recv = trio.open_memory_channel[Message](capacity)
            inboxes[nid] = send
            ports[nid] = SupervisorPorts(expected_eos=len(node.inputs), inbox=recv)
        elif _worker_of(plan, nid) == nid:
            assert transport is not None, "shared-memory nodes need a shared-memory transport"
            shm = transport.node_ports()
            if plan.survives_failures:
                shm.stop_mode = "keep"  # never abort rings a restarted node will use
            ports[nid] = shm
    for nid, node in plan.nodes.items():  # the other members of fused runs: the head's worker
        if nid not in ports:
            head = ports[node.chain[0]]
            assert isinstance(head, ShmPorts)
            ports[nid] = ShmPorts(run=head, stage=node.chain.index(nid), stop_mode=head.stop_mode)
    wiring = Wiring(ports=ports, ingress={})
    for edge in plan.edges:
        if _inside_run(plan, edge.src, edge.dst):
            continue  # the worker passes frames from one member to the next itself
        if edge.transport == "memory":
            _add_sender(wiring, edge.src, edge.dst, _receiving_port(edge.src, edge.dst, inboxes, events))
        else:
            assert transport is not None
            _shm_edge(wiring, plan, edge.src, edge.dst, inboxes, events, transport)
    for nid, send in inboxes.items():
        node_ports = ports[nid]
        assert isinstance(node_ports, SupervisorPorts)
        node_ports.signals.attach(send.clone())  # wakes an idle pump when a signal comes
        send.close()  # each edge holds its own clone; the inbox closes when all have ended
    return wiring


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
        ports = wiring.ports[src]
        assert isinstance(ports, SupervisorPorts)
        ports.outputs.append(port)


def _shm_ports(wiring: Wiring, node_id: str) -> ShmPorts:
    ports = wiring.ports[node_id]
    assert isinstance(ports, ShmPorts)
    return ports


def _worker_of(plan: SessionPlan, node_id: str) -> str:
    """The node whose worker runs ``node_id``: the head of its fused run, or itself."""
    node = plan.nodes[node_id]
    return node.chain[0] if node.chain and not node.on_supervisor else node_id


def _inside_run(plan: SessionPlan, src: str, dst: str) -> bool:
    """Is src → dst a link inside a fused run of shared-memory nodes (no ring)?"""
    if CLIENT in (src, dst):
        return False
    node = plan.nodes[src]
    return bool(node.chain) and not node.on_supervisor and dst in node.chain


def _temporary(plan: SessionPlan, node_id: str) -> bool:
    return plan.nodes[node_id].restart is RestartType.TEMPORARY


def _copies_inputs(plan: SessionPlan, node_id: str) -> bool:
    """Does ``node_id`` copy every frame out of its input rings (a multiprocess worker of a node
    that is not ``zero_copy``)? Its input then costs nothing more if it is a shared reference."""
    if node_id == CLIENT:
        return False
    node = plan.nodes[node_id]
    run = [plan.nodes[n] for n in node.chain] if node.chain else [node]  # a fused run: its head reads
    return node.executor == "multiprocess" and not all(getattr(n.node_class, "zero_copy", False) for n in run)


def _shares(plan: SessionPlan, node_id: str) -> bool:
    """Does worker ``node_id`` share big frames with all of its output rings (fan-out by
    reference, ``ipc/_ownership.py``)? Where two or more readers copy their input anyway: it
    saves a copy per extra reader and adds none (a reader that would have taken the segment
    over, or had it lent, copies instead — one copy against the others')."""
    return sum(_copies_inputs(plan, dst) for dst in plan.nodes[node_id].outputs) >= 2


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
    sharing = not src_in_supervisor and transport.share_fan_out and _shares(plan, src)
    ring = transport.edge(
        producer_in_supervisor=src_in_supervisor,
        # A temporary node that fails is taken over by the supervisor for good (its outputs
        # end, its inputs are drained): its producing ends need doorbells for that (consuming
        # ends always have one).
        takeover_producer=not src_in_supervisor and _temporary(plan, src),
        sharing_producer=sharing,
    )
    # producing end
    if src_in_supervisor:
        # A supervisor-side node fanning big frames out to workers that copy what they read:
        # one copy in the pool that every such ring refers to (fan-out by reference).
        share = src != CLIENT and transport.share_fan_out and _shares(plan, src)
        _add_sender(wiring, src, dst, transport.port(ring, share=share))
    else:
        producer = _shm_ports(wiring, _worker_of(plan, src))  # a fused run's tail: its head's worker
        producer.outputs.append(ring.spec)
        producer.share_outputs = sharing
        producer.rings.append(ring)
    # consuming end
    if dst_in_supervisor:
        wiring.pumps.append(transport.pump(ring, _receiving_port(src, dst, inboxes, events)))
    else:
        consumer = _shm_ports(wiring, _worker_of(plan, dst))
        consumer.inputs.append(ring.spec)
        if ring not in consumer.rings:
            consumer.rings.append(ring)
