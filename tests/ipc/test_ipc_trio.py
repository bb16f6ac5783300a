"""The trio adapters of ring endpoints (executors/_rings.py): a trio supervisor side talking to
sync workers; cancellation; abort."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import numpy as np
import pytest
import trio
import trio.testing
from ipc_workers import abort_ring, echo

from nursery_pipes.executors import TrioConsumer, TrioProducer
from nursery_pipes.ipc import (
    EndOfStream,
    Namespace,
    Received,
    Ring,
    RingAbortedError,
    RingSpec,
    SlotHeader,
)

SPAWN = multiprocessing.get_context("spawn")


async def _join(proc: multiprocessing.process.BaseProcess) -> int | None:
    await trio.lowlevel.wait_readable(proc.sentinel)
    proc.join()
    return proc.exitcode


@pytest.fixture
def both_ends(ns: Namespace) -> Iterator[tuple[Ring, TrioProducer, TrioConsumer]]:
    """One ring whose both ends are trio (in this process)."""
    with Ring.create(RingSpec(ns, 0, 4, 256, async_producer=True, async_consumer=True)) as ring:
        yield ring, TrioProducer(ring.producer()), TrioConsumer(ring.consumer())


async def test_trio_side_with_sync_echo_worker(ns: Namespace) -> None:
    out_spec = RingSpec(ns, 0, 8, 4096, checksum=True, async_producer=True)
    back_spec = RingSpec(ns, 1, 8, 4096, checksum=True, async_consumer=True)
    count = 3000
    with Ring.create(out_spec) as out_ring, Ring.create(back_spec) as back_ring:
        worker = SPAWN.Process(target=echo, args=(out_spec, back_spec))
        worker.start()
        try:
            tx, rx = TrioProducer(out_ring.producer()), TrioConsumer(back_ring.consumer())

            async def send_all() -> None:
                for i in range(count):
                    n = 3 << 20 if i % 500 == 499 else i % 300 + 1
                    payload = np.full(n, i % 256, dtype=np.uint8)
                    await tx.send(SlotHeader(seq=i, ndim=1, shape=(n,)), b"m", payload)
                await tx.end_of_stream()

            seen = 0
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all)
                    async for frame in rx:
                        with frame:
                            assert frame.header.seq == seen
                            assert len(frame.payload) == frame.header.shape[0]
                            assert frame.payload[0] == frame.payload[-1] == seen % 256
                        seen += 1
            assert seen == count
            assert await _join(worker) == 0
        finally:
            worker.join(10)


async def test_cancelled_receive_loses_nothing(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer], autojump_clock: trio.abc.Clock
) -> None:
    ring, tx, rx = both_ends
    with trio.move_on_after(5) as scope:
        await rx.receive()
    assert scope.cancelled_caught
    stats = ring.statistics()
    assert (stats.used, stats.free) == (0, 4)
    await tx.send(SlotHeader(seq=7))
    with await rx.receive() as frame:
        assert (frame.position, frame.header.seq) == (0, 7)


async def test_receive_cancelled_as_frame_arrives_keeps_the_frame(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer],
) -> None:
    ring, tx, rx = both_ends
    for i in range(50):
        got: list[Received] = []

        async def waiter(scope: trio.CancelScope, got: list[Received]) -> None:
            with scope:
                got.append(await rx.receive())

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, scope, got)
            await trio.testing.wait_all_tasks_blocked()
            tx.producer.send(SlotHeader(seq=i))  # doorbell rings...
            scope.cancel()  # ...and the waiter is cancelled in the same tick
        if not got:
            got.append(await rx.receive())  # it must still be in the ring
        assert got[0].header.seq == i
        got[0].release()
    assert ring.statistics().free == 4


async def test_cancelled_loan_leaks_no_slot(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer], autojump_clock: trio.abc.Clock
) -> None:
    ring, tx, rx = both_ends
    for i in range(4):
        await tx.send(SlotHeader(seq=i))
    with trio.move_on_after(5) as scope:
        await tx.loan(8)
    assert scope.cancelled_caught
    assert (ring.statistics().free, ring.statistics().used) == (0, 4)
    (await rx.receive()).release()
    with trio.move_on_after(5):  # a loan obtained then abandoned by cancellation
        with await tx.loan(8) as loan:
            loan.payload[:] = b"12345678"
            await trio.sleep(10)
    assert ring.statistics().free == 1
    with await tx.loan(8) as loan:
        loan.commit(SlotHeader(seq=4))
    assert [(await rx.receive()).header.seq for _ in range(4)] == [1, 2, 3, 4]


async def test_blocked_loan_wakes_when_consumer_releases(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer],
) -> None:
    ring, tx, rx = both_ends
    for i in range(4):
        await tx.send(SlotHeader(seq=i))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tx.send, SlotHeader(seq=4))
        await trio.testing.wait_all_tasks_blocked()
        assert ring.statistics().produced == 4
        rx.consumer.receive().release()  # rings the free doorbell
    assert ring.statistics().produced == 5


async def test_abort_from_third_party_wakes_trio_waiters(ns: Namespace) -> None:
    full_spec = RingSpec(ns, 0, 1, 64, async_producer=True)
    empty_spec = RingSpec(ns, 1, 1, 64, async_consumer=True)
    with Ring.create(full_spec) as full, Ring.create(empty_spec) as empty:
        tx, rx = TrioProducer(full.producer()), TrioConsumer(empty.consumer())
        await tx.send(SlotHeader())
        errors: list[type[BaseException]] = []

        async def expect_abort(fn: object) -> None:
            try:
                await fn()  # type: ignore[operator]
            except RingAbortedError as exc:
                errors.append(type(exc))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(expect_abort, lambda: tx.loan(1))
                nursery.start_soon(expect_abort, rx.receive)
                await trio.testing.wait_all_tasks_blocked()
                for spec in (full_spec, empty_spec):  # a real third process
                    third = SPAWN.Process(target=abort_ring, args=(spec,))
                    third.start()
                    assert await _join(third) == 0
        assert errors == [RingAbortedError, RingAbortedError]


async def test_async_iteration_stops_at_end_of_stream(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer],
) -> None:
    _, tx, rx = both_ends
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(10):
                await tx.send(SlotHeader(seq=i), b"", bytes([i]))
            await tx.end_of_stream()

        nursery.start_soon(produce)
        seqs = []
        async for frame in rx:
            with frame:
                seqs.append(frame.header.seq)
    assert seqs == list(range(10))
    with pytest.raises(EndOfStream):
        await rx.receive()


async def test_close_wakes_a_waiting_task(
    both_ends: tuple[Ring, TrioProducer, TrioConsumer],
) -> None:
    _, _, rx = both_ends

    async def close_while_waiting() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rx.receive)
            await trio.testing.wait_all_tasks_blocked()
            rx.close()

    with pytest.RaisesGroup(trio.ClosedResourceError):
        await close_while_waiting()
