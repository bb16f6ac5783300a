"""Repairing a ring end whose process was SIGKILLed at each stage of a handoff (real processes).

Each test kills the process at one end at an exact stage (``recovery_workers``), repairs the
ring in place while the other end stays attached, attaches a new process and checks:

* the new consumer receives exactly the frames not yet taken, in order, then the new ones;
* the repair reports as dropped exactly the frames that were in process;
* the counts are right: the ring fills to exactly its free capacity, drains, and ends with
  ``free == slot_count, used == 0`` once the new consumer waits on an empty ring;
* nothing leaks (the autouse fixtures).

Frames carry checksums; every third one lives in an external segment.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
from recovery_workers import (
    SLOT_SIZE,
    check,
    collect,
    consumer_at,
    fan_in_consumer_at,
    producer_at,
    refill,
    send,
    wait_blocked,
)

from nursery_pipes.ipc import EndOfStream, Namespace, Ring, RingSpec, RingStatistics

SPAWN = multiprocessing.get_context("spawn")
SLOTS = 4

Procs = list[multiprocessing.process.BaseProcess]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started: Procs = []
    yield started
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(10)


def start(procs: Procs, target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(*args[:1], theirs, *args[1:]))
    proc.start()
    theirs.close()
    procs.append(proc)
    return proc, ours


def report(conn: Connection, timeout: float = 60) -> Any:
    assert conn.poll(timeout), "the process never reported"
    return conn.recv()


def kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.002)


def assert_settled(stats: RingStatistics) -> None:
    """Everything published was taken and returned; the semaphores say exactly that."""
    assert stats.produced == stats.taken == stats.consumed
    assert (stats.free, stats.used) == (stats.slot_count, 0)


def spec_for(ns: Namespace, index: int = 0, **kw: Any) -> RingSpec:
    return RingSpec(ns, index, SLOTS, SLOT_SIZE, checksum=True, **kw)


# -- consumer killed ------------------------------------------------------------------------

# stage → (frames the test sends for the stage, frames in process when it dies)
CONSUMER_STAGES = {
    "blocked": ([], []),
    "acquired": ([2], []),  # the token of frame 2 was taken, the frame was not: delivered again
    "checked": ([2], []),
    "taken": ([2], [2]),
    "mid_copy": ([2], [2]),  # frame 2 is oversize: an external segment
    "processing": ([2], [2]),
    "mid_release": ([2, 3], []),  # both released (one free token posted): none in process
}


@pytest.mark.parametrize("stage", list(CONSUMER_STAGES))
def test_consumer_killed_new_consumer_gets_exactly_what_was_not_taken(
    ns: Namespace, procs: Procs, stage: str
) -> None:
    spec = spec_for(ns)
    for_stage, in_process = CONSUMER_STAGES[stage]
    with Ring.create(spec) as ring:
        prod = ring.producer()  # the live end: stays attached throughout
        for seq in range(2):
            send(prod, seq)
        dying, conn = start(procs, consumer_at, spec, stage, 2)
        for seq in for_stage:
            send(prod, seq)
        assert report(conn)[0] == "at"
        if stage == "blocked":
            wait_blocked(dying.pid)
        kill(dying)
        queued = [seq for seq in for_stage if seq not in in_process and stage != "mid_release"]
        nxt = max([1, *for_stage]) + 1
        queued.append(nxt)  # published after the death, before the repair
        send(prod, nxt)

        repair = ring.repair_consumer()

        assert [d.seq for d in repair.dropped] == in_process
        assert (repair.eos_taken, repair.clean) == (False, False)
        # The free capacity is exactly what the queued frames leave.
        fill = []
        while send(prod, nxt + 1 + len(fill), block=False):
            fill.append(nxt + 1 + len(fill))
        assert len(fill) == SLOTS - len(queued)
        new, conn = start(procs, collect, [spec])
        wait_for(lambda: ring.statistics().consumed == ring.statistics().produced)
        wait_blocked(new.pid)  # on an empty ring: any token a repair posted too many is gone
        assert_settled(ring.statistics())
        prod.end_of_stream(timeout=30)
        assert report(conn) == [queued + fill]
        new.join(30)
        assert new.exitcode == 0


def test_consumer_killed_after_the_end_of_stream_leaves_it_ended(ns: Namespace, procs: Procs) -> None:
    spec = spec_for(ns)
    with Ring.create(spec) as ring:
        prod = ring.producer()
        for seq in range(3):
            send(prod, seq)
        prod.end_of_stream()
        dying, conn = start(procs, consumer_at, spec, "eos", 0)
        assert report(conn) == ("at", "eos")
        kill(dying)

        repair = ring.repair_consumer()

        assert (repair.dropped, repair.eos_taken) == ((), True)
        assert_settled(ring.statistics())  # no token for a receive that can never happen
        new, conn = start(procs, collect, [spec])
        assert report(conn) == [[]]  # ended at once: not blocked forever
        new.join(30)


def test_consumer_that_closed_cleanly_holding_a_frame_is_repaired_exactly(ns: Namespace) -> None:
    spec = spec_for(ns)
    with Ring.create(spec) as ring:
        prod = ring.producer()
        for seq in range(3):
            send(prod, seq)
        with Ring.attach(spec) as worker_side:
            cons = worker_side.consumer()
            cons.receive().release()
            cons.receive()  # a worker whose process() raised keeps its input frame
        repair = ring.repair_consumer()
        assert ([d.seq for d in repair.dropped], repair.clean) == ([1], True)
        stats = ring.statistics()
        assert (stats.free, stats.used, stats.repairs) == (SLOTS - 1, 1, 0)  # exact: no excess
        assert ring.repair_consumer().dropped == ()  # a second repair is a no-op


def test_a_finished_frame_still_kept_is_not_reported_dropped(ns: Namespace) -> None:
    spec = spec_for(ns)
    with Ring.create(spec) as ring:
        prod = ring.producer()
        for seq in range(3):
            send(prod, seq)
        with Ring.attach(spec) as worker_side:
            cons = worker_side.consumer()
            cons.receive().finish()  # outputs out, slot kept (shared: ipc/_ownership.py)
            cons.receive()  # in process when the end went away
        repair = ring.repair_consumer()
        assert [d.seq for d in repair.dropped] == [1]
        stats = ring.statistics()
        assert (stats.consumed, stats.free, stats.used) == (2, SLOTS - 1, 1)  # both slots back


# -- producer killed ------------------------------------------------------------------------

# stage → (frames published before it, frames the consumer must get, frame published by repair)
PRODUCER_STAGES = {
    "idle": (2, [0, 1], False),
    "blocked": (SLOTS, list(range(SLOTS)), False),
    "acquired": (2, [0, 1], False),
    "mid_loan": (2, [0, 1], False),  # frame 2 (oversize) half written: never seen
    "filled": (2, [0, 1], False),
    "posting": (2, [0, 1, 2], False),  # complete and counted, not posted: delivered
    "stamped": (2, [0, 1, 2], True),  # complete, not counted: delivered
}


@pytest.mark.parametrize("stage", list(PRODUCER_STAGES))
def test_producer_killed_new_producer_continues_after_the_last_complete_frame(
    ns: Namespace, procs: Procs, stage: str
) -> None:
    spec = spec_for(ns)
    count, expected, published = PRODUCER_STAGES[stage]
    with Ring.create(spec) as ring:
        cons = ring.consumer()  # the live end
        dying, conn = start(procs, producer_at, spec, stage, count)
        assert report(conn)[0] == "at"
        if stage == "blocked":
            wait_blocked(dying.pid)
        kill(dying)

        repair = ring.repair_producer()

        assert (repair.published, repair.eos_sent, repair.clean) == (published, False, False)
        assert repair.returned == (0 if published else 1)
        got = []
        while (frame := cons.try_receive()) is not None:
            with frame:
                got.append(check(frame))
        assert got == expected
        start_seq = ring.statistics().produced
        assert start_seq == len(expected)
        new, conn = start(procs, refill, spec, start_seq)
        assert report(conn) == SLOTS  # exactly the capacity: no slot lost, none made up
        refilled = []
        for _ in range(SLOTS):
            with cons.receive(timeout=30) as frame:
                refilled.append(check(frame))
        assert refilled == list(range(start_seq, start_seq + SLOTS))
        assert cons.try_receive() is None
        assert_settled(ring.statistics())
        conn.send("end")
        with pytest.raises(EndOfStream):
            cons.receive(timeout=30)
        new.join(30)
        assert new.exitcode == 0


def test_producer_killed_after_ending_the_stream(ns: Namespace, procs: Procs) -> None:
    spec = spec_for(ns)
    with Ring.create(spec) as ring:
        cons = ring.consumer()
        dying, conn = start(procs, producer_at, spec, "eos", 2)
        assert report(conn) == ("at", "eos")
        kill(dying)
        repair = ring.repair_producer()
        assert repair.eos_sent
        assert [check(cons.receive(timeout=5)) for _ in range(2)] == [0, 1]
        with pytest.raises(EndOfStream):
            cons.receive(timeout=5)
        with Ring.attach(spec) as again:  # a new producer may attach, and can send nothing
            assert again.producer().eos_sent


# -- both ends killed (a worker → worker edge, one_for_all) ---------------------------------

# case → producer stage (after publishing 0, 1, 2), consumer stage (after taking `take`), take,
#        frames in process, first frame not taken
BOTH = {
    "processing+mid_loan": ("mid_loan", "processing", 1, [1], 2),
    "acquired+posting": ("posting", "acquired", 2, [], 2),  # 2 taken unrecorded, 3 unposted
    "mid_release+filled": ("filled", "mid_release", 0, [], 2),  # 0, 1 released in one batch
    "taken+stamped": ("stamped", "taken", 0, [0], 1),  # 3 complete, produced not stored
}


@pytest.mark.parametrize("case", list(BOTH))
def test_both_ends_killed_and_replaced(ns: Namespace, procs: Procs, case: str) -> None:
    pstage, cstage, take, in_process, first = BOTH[case]
    spec = spec_for(ns)
    with Ring.create(spec) as ring:  # the supervisor: holds neither end
        producer, pconn = start(procs, producer_at, spec, pstage, 3)
        assert report(pconn)[0] == "at"
        consumer, cconn = start(procs, consumer_at, spec, cstage, take)
        assert report(cconn)[0] == "at"
        kill(producer)
        kill(consumer)

        crep, prep = ring.repair_consumer(), ring.repair_producer()

        assert [d.seq for d in crep.dropped] == in_process
        assert (prep.returned, prep.published) == ((0, True) if pstage == "stamped" else (1, False))
        produced = ring.statistics().produced
        assert produced == 4 if pstage in ("posting", "stamped") else 3
        new_producer, pconn = start(procs, refill, spec, produced)
        assert report(pconn) == SLOTS - (produced - first)  # exactly the free capacity
        new_consumer, cconn = start(procs, collect, [spec])
        wait_for(lambda: ring.statistics().consumed == ring.statistics().produced)
        wait_blocked(new_consumer.pid)
        assert_settled(ring.statistics())
        pconn.send("end")
        assert report(cconn) == [list(range(first, first + SLOTS))]
        for proc in (new_producer, new_consumer):
            proc.join(30)
            assert proc.exitcode == 0


# -- fan-in ----------------------------------------------------------------------------------


def test_fan_in_consumer_killed_while_processing(ns: Namespace, procs: Procs) -> None:
    specs = [spec_for(ns, i, async_consumer=True) for i in range(2)]
    with Ring.create(specs[0]) as r0, Ring.create(specs[1]) as r1:
        rings, prods = [r0, r1], [r0.producer(), r1.producer()]
        for seq in range(3):
            send(prods[0], seq)
            send(prods[1], 10 + seq)
        dying, conn = start(procs, fan_in_consumer_at, specs, 1, 11)
        assert report(conn) == ("at", "processing", [11])
        kill(dying)

        repairs = [r.repair_consumer() for r in rings]

        assert [[d.seq for d in rep.dropped] for rep in repairs] == [[], [11]]
        taken0 = r0.statistics().taken
        new, conn = start(procs, collect, specs)
        for seq in (3, 4):
            send(prods[0], seq)
            send(prods[1], 10 + seq)
        for prod in prods:
            prod.end_of_stream(timeout=30)
        assert report(conn) == [list(range(taken0, 5)), [12, 13, 14]]
        new.join(30)
        assert new.exitcode == 0
