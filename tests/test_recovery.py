"""Restarting a worker inside a live session: ``ShmTransport.recover`` and ``take_over`` with the
real worker (``worker.run_node``) in real processes.

The test plays the supervisor: it owns the transport, sends through a ShmPort, reads the
outputs through a pump and the events ring, kills or loses workers and starts new worker jobs
with the same ShmPorts. What must hold, whatever the worker was doing when it died: every
frame sent comes out exactly once or is reported dropped, in order; nothing leaks.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import numpy as np
import pytest
import trio

from nursery_pipes.executors import Recovery, RingGeometry, ShmPort, ShmPorts, ShmTransport
from nursery_pipes.frames import Frame, TensorFrame
from nursery_pipes.ipc import RingError
from nursery_pipes.nodes._base import Node
from nursery_pipes.nodes._registry import import_ref
from nursery_pipes.nodes.builtin._basic import PassThrough
from nursery_pipes.nodes.faults import HangNode, RaiseNode, SignalNode
from nursery_pipes.worker import WorkerJob, run_node
from nursery_pipes.worker._events import decode_event

SPAWN = multiprocessing.get_context("spawn")
SLOTS, SLOT_SIZE = 4, 4096


def frame(seq: int) -> TensorFrame:
    """Every third frame is oversize for its slot (an external segment)."""
    n = 3 * SLOT_SIZE + seq if seq % 3 == 2 else seq + 1
    return TensorFrame(data=np.full(n, seq % 251, dtype=np.uint8))


class Collect:
    """A supervisor-side OutPort that keeps what the pump delivers."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.ended = trio.Event()

    async def send(self, seq: int, frame: Frame) -> None:
        assert isinstance(frame, TensorFrame)
        assert frame.data.nbytes == frame_bytes(seq)
        assert bool(np.all(frame.data == seq % 251)), f"frame {seq} damaged"
        self.seqs.append(seq)
        await trio.lowlevel.checkpoint()

    async def end(self) -> None:
        self.ended.set()
        await trio.lowlevel.checkpoint()

    def full(self) -> bool:
        return False


def frame_bytes(seq: int) -> int:
    return int(frame(seq).data.nbytes)


class Supervisor:
    """One session's transport, a chain of worker nodes, and their processes."""

    def __init__(self, transport: ShmTransport, nodes: int, *, temporary: bool = False) -> None:
        self.transport = transport
        self.ports = [transport.node_ports() for _ in range(nodes)]
        rings = [
            transport.edge(producer_in_supervisor=i == 0, takeover_producer=temporary and i > 0)
            for i in range(nodes + 1)
        ]
        for i, ports in enumerate(self.ports):
            ports.inputs.append(rings[i].spec)
            ports.outputs.append(rings[i + 1].spec)
            ports.rings += [rings[i], rings[i + 1]]
        self.ingress: ShmPort = transport.port(rings[0])
        self.out = Collect()
        self.pump = transport.pump(rings[-1], self.out)
        self.procs: list[Any] = []

    def start(self, index: int, cls: type[Node[Any]], **params: Any) -> Any:
        ports = self.ports[index]
        assert ports.events is not None
        job = WorkerJob(
            session_id="recovery",
            node_id=f"n{index}",
            node_type=cls.__name__,
            import_ref=import_ref(cls),
            params=msgspec.to_builtins(params),
            inputs=tuple(ports.inputs),
            outputs=tuple(ports.outputs),
            events=ports.events,
            supervisor_pid=os.getpid(),
            parent_is_forkserver=False,
            copy_inputs=not cls.zero_copy,
        )
        proc = SPAWN.Process(target=run_node, args=(job,))
        proc.start()
        self.procs.append(proc)
        return proc

    async def events_until(self, index: int, kind: str) -> dict[str, Any]:
        consumer = self.ports[index].events_consumer
        assert consumer is not None
        while True:
            with await consumer.receive() as received:
                event = decode_event(received.meta)
            if event["type"] == kind:
                return event

    def recover(self, index: int) -> Recovery:
        return self.transport.recover(self.ports[index])


def ring_of(ports: ShmPorts, spec: Any) -> Any:
    """The ring of ``ports`` with that spec (its events and control rings come first)."""
    return next(ring for ring in ports.rings if ring.spec == spec)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition on a worker's shared state: another process, nothing to wait on."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)


async def exited(proc: Any) -> int:
    await trio.lowlevel.wait_readable(proc.sentinel)
    proc.join()
    return int(proc.exitcode)


@pytest.fixture
async def supervisor_of() -> AsyncIterator[Any]:
    made: list[Supervisor] = []

    def make(nodes: int, **kw: Any) -> Supervisor:
        sup = Supervisor(ShmTransport(RingGeometry(SLOTS, SLOT_SIZE, checksum=True)), nodes, **kw)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        for proc in sup.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
        sup.transport.close()


async def send_all(sup: Supervisor, seqs: range, *, end: bool = True) -> None:
    for seq in seqs:
        await sup.ingress.send(seq, frame(seq))
    if end:
        await sup.ingress.end()


async def test_worker_killed_in_process_is_replaced_and_its_frame_reported(supervisor_of: Any) -> None:
    sup = supervisor_of(1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.pump, pytest.fail)
            dying = sup.start(0, SignalNode, phase="process", signal="SIGKILL", after_frames=2)
            await send_all(sup, range(6), end=False)  # 2 kills it; 3.. stay queued
            assert await exited(dying) == -signal.SIGKILL

            recovery = sup.recover(0)

            assert recovery.dropped == (2,)
            assert (recovery.inputs_ended, recovery.loans_returned) == (0, 2)  # output + events
            sup.start(0, PassThrough)
            await send_all(sup, range(6, 9))
            await sup.out.ended.wait()
            done = await sup.events_until(0, "done")  # its events ring was repaired too
    assert sup.out.seqs == [0, 1, 3, 4, 5, 6, 7, 8]
    assert done["frames_in"] == 6  # 3, 4, 5 queued for it, then 6, 7, 8


async def test_worker_whose_process_raised_is_replaced_and_its_frame_reported(supervisor_of: Any) -> None:
    sup = supervisor_of(1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.pump, pytest.fail)
            failing = sup.start(0, RaiseNode, phase="process", after_frames=1, message="bad frame")
            await send_all(sup, range(3), end=False)
            event = await sup.events_until(0, "failed")
            assert "bad frame" in event["message"]
            assert await exited(failing) == 0  # the job returned; its rings closed cleanly

            recovery = sup.recover(0)

            assert recovery.dropped == (1,)
            assert all(rep.clean for rep in (*recovery.inputs, *recovery.outputs))
            sup.start(0, PassThrough)
            await send_all(sup, range(3, 5))
            await sup.out.ended.wait()
    assert sup.out.seqs == [0, 2, 3, 4]


async def test_worker_killed_after_its_input_ended_is_replaced_and_ends_its_output(
    supervisor_of: Any,
) -> None:
    sup = supervisor_of(1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.pump, pytest.fail)
            hanging = sup.start(0, HangNode, phase="flush")
            await send_all(sup, range(3))
            input_ring = ring_of(sup.ports[0], sup.ports[0].inputs[0])
            await until(lambda: input_ring.statistics().eos_taken)  # in flush() for good
            hanging.kill()  # hangs in flush() for good: its input has ended
            await exited(hanging)

            recovery = sup.recover(0)

            assert (recovery.dropped, recovery.inputs_ended) == ((), 1)
            sup.start(0, PassThrough)  # sees its input ended at once, flushes, ends its output
            await sup.out.ended.wait()
    assert sup.out.seqs == [0, 1, 2]


async def test_both_workers_of_an_edge_killed_and_replaced_lose_only_what_they_held(
    supervisor_of: Any,
) -> None:
    sup = supervisor_of(2)  # client → a → b → client; a → b worker to worker
    sent = range(12)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.pump, pytest.fail)
            a = sup.start(0, SignalNode, phase="process", signal="SIGKILL", after_frames=4)
            b = sup.start(1, HangNode, phase="process", after_frames=2)  # holds its 3rd frame
            nursery.start_soon(send_all, sup, sent)
            assert await exited(a) == -signal.SIGKILL
            a_to_b = ring_of(sup.ports[1], sup.ports[1].inputs[0]).statistics
            await until(lambda: (a_to_b().taken, a_to_b().consumed) == (3, 2))  # b stuck in frame 2
            b.kill()  # one_for_all: the stuck neighbour goes too
            await exited(b)

            dropped_a, dropped_b = sup.recover(0).dropped, sup.recover(1).dropped

            assert (dropped_a, dropped_b) == ((4,), (2,))
            sup.start(0, PassThrough)
            sup.start(1, PassThrough)
            await sup.out.ended.wait()
    assert sup.out.seqs == [s for s in sent if s not in (*dropped_a, *dropped_b)]


async def test_temporary_node_taken_over_ends_its_output_and_drains_its_input(supervisor_of: Any) -> None:
    sup = supervisor_of(1, temporary=True)
    discarded: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.pump, pytest.fail)
            dying = sup.start(0, SignalNode, phase="process", signal="SIGKILL", after_frames=1)
            await send_all(sup, range(3), end=False)
            assert await exited(dying) == -signal.SIGKILL
            assert sup.recover(0).dropped == (1,)

            retire = sup.transport.take_over(sup.ports[0])

            async def run_retire() -> None:
                assert await retire(discarded.append) == 3  # 1 queued + 2 sent afterwards

            nursery.start_soon(run_retire)
            await sup.out.ended.wait()  # downstream sees the end of stream at once
            await send_all(sup, range(3, 5))  # never backpressure on the dead node
    assert sup.out.seqs == [0]
    assert discarded == [2, 3, 4]


async def test_take_over_needs_the_doorbells(supervisor_of: Any) -> None:
    sup = supervisor_of(1)
    with pytest.raises(RingError, match="takeover_producer"):
        sup.transport.take_over(sup.ports[0])
    await trio.lowlevel.checkpoint()


async def test_recover_refuses_a_ring_of_another_transport() -> None:
    transport = ShmTransport(RingGeometry(SLOTS, SLOT_SIZE))
    other = ShmTransport(RingGeometry(SLOTS, SLOT_SIZE))
    try:
        with pytest.raises(RingError, match="not a ring of this transport"):
            transport.recover(other.node_ports())
    finally:
        other.close()
        transport.close()
