"""Repair within one process: its preconditions, the token checks, abort and trio wake-ups
after a repair. (Dying processes at every stage: test_ipc_recovery.py.)

A dead end is simulated by its open flag: what a process that died holding the end leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from nursery_pipes.executors import TrioConsumer, TrioProducer
from nursery_pipes.ipc import (
    EndOfStream,
    Namespace,
    Ring,
    RingAbortedError,
    RingBusyError,
    RingCorruptError,
    RingSpec,
    SlotHeader,
)
from nursery_pipes.ipc._spec import OFF_CONSUMER_OPEN, OFF_PRODUCER_OPEN

SLOTS = 4


@pytest.fixture
def ring(ns: Namespace) -> Iterator[Ring]:
    spec = RingSpec(ns, 0, SLOTS, 256, async_producer=True, async_consumer=True)
    with Ring.create(spec) as r:
        yield r


def die(ring: Ring, *, consumer: bool) -> None:
    """What a process killed while holding that end leaves behind: the end still open."""
    ring.buf[OFF_CONSUMER_OPEN if consumer else OFF_PRODUCER_OPEN] = 1


def test_a_new_end_is_refused_until_the_dead_one_is_repaired(ring: Ring) -> None:
    die(ring, consumer=True)
    die(ring, consumer=False)
    with Ring.attach(ring.spec) as other:
        with pytest.raises(RingBusyError, match=r"repair_consumer\(\) first"):
            other.consumer()
        with pytest.raises(RingBusyError, match=r"repair_producer\(\) first"):
            other.producer()
    ring.repair_consumer()
    ring.repair_producer()
    with Ring.attach(ring.spec) as other:
        other.producer().send(SlotHeader(seq=1))
        assert other.consumer().receive().header.seq == 1


def test_repair_is_refused_on_an_aborted_ring_and_for_an_end_this_ring_holds(ring: Ring) -> None:
    ring.consumer()
    with pytest.raises(RingBusyError, match="still holds the ring's consumer"):
        ring.repair_consumer()
    ring.abort()
    with pytest.raises(RingAbortedError):
        ring.repair_producer()


def test_a_token_for_no_slot_is_corruption_in_a_ring_never_repaired(ring: Ring) -> None:
    prod = ring.producer()
    for seq in range(SLOTS):
        prod.send(SlotHeader(seq=seq))
    ring.free_sem.release()  # a token nobody returned a slot for
    with pytest.raises(RingCorruptError, match="consumer returned only 0 slots"):
        prod.try_loan(1)


def test_excess_tokens_are_dropped_where_they_stand_for_nothing(ring: Ring) -> None:
    with Ring.attach(ring.spec) as first:
        first.producer().send(SlotHeader(seq=0))
    die(ring, consumer=True)
    die(ring, consumer=False)
    ring.repair_consumer()  # a used token too many (it may have died holding one)
    ring.repair_producer()  # a free and a used token too many
    stats = ring.statistics()
    assert (stats.free, stats.used, stats.repairs) == (SLOTS, 3, 2)
    with Ring.attach(ring.spec) as other:
        cons, prod = other.consumer(), other.producer()
        with cons.receive(timeout=5) as frame:
            assert frame.header.seq == 0
        assert cons.try_receive() is None  # dropped both excess tokens
        sent = 0
        while prod.try_send(SlotHeader(seq=1 + sent)):
            sent += 1
        assert sent == SLOTS  # and one excess free token when the ring was full
        assert (other.statistics().free, other.statistics().used) == (0, SLOTS)


def test_abort_after_a_repair_still_wakes_both_ends(ring: Ring) -> None:
    die(ring, consumer=True)
    die(ring, consumer=False)
    ring.repair_consumer()
    ring.repair_producer()
    with Ring.attach(ring.spec) as a, Ring.attach(ring.spec) as b:
        cons, prod = a.consumer(), b.producer()
        for _ in range(2):  # fill and drain; then full, with an excess free token left
            for seq in range(SLOTS):
                prod.send(SlotHeader(seq=seq))
            if not _:
                for _ in range(SLOTS):
                    cons.receive().release()
        assert ring.statistics().free == 1
        errors: list[type[BaseException]] = []

        def loan() -> None:
            try:
                prod.loan(1, timeout=30)  # drops the excess token, then waits
            except RingAbortedError as exc:
                errors.append(type(exc))

        blocked = threading.Thread(target=loan)
        blocked.start()
        deadline = time.monotonic() + 30
        while ring.statistics().free and time.monotonic() < deadline:  # it took the excess
            time.sleep(0.001)
        ring.abort()
        blocked.join(30)
        assert errors == [RingAbortedError]
        with pytest.raises(RingAbortedError):
            cons.receive(timeout=5)  # frames pending: abort still wins


async def test_trio_ends_after_a_repair_drop_excess_tokens_and_lose_no_wake_up(ring: Ring) -> None:
    die(ring, consumer=True)
    die(ring, consumer=False)
    ring.repair_consumer()
    ring.repair_producer()
    with Ring.attach(ring.spec) as a, Ring.attach(ring.spec) as b:
        rx, tx = TrioConsumer(a.consumer()), TrioProducer(b.producer())
        got: list[int] = []
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def receive_all() -> None:
                        async for frame in rx:
                            with frame:
                                got.append(frame.header.seq)

                    nursery.start_soon(receive_all)
                    await trio.testing.wait_all_tasks_blocked()  # dropped the excess, waits
                    assert ring.statistics().used == 0
                    for seq in range(3 * SLOTS):
                        await tx.send(SlotHeader(seq=seq))
                    await tx.end_of_stream()
        finally:
            rx.close()
            tx.close()
    assert got == list(range(3 * SLOTS))
    with Ring.attach(ring.spec) as later, pytest.raises(EndOfStream):
        later.consumer().try_receive()  # the end of stream it took stays taken
