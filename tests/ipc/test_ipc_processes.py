"""Rings between real processes (multiprocessing spawn): echo, backpressure, abort."""

from __future__ import annotations

import json
import multiprocessing
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ipc_workers import ABORTED_EXIT, abort_ring, block_in_loan, block_in_receive, echo, slow_consume

from nursery_pipes.ipc import (
    FLAG_CHECKSUM,
    EndOfStream,
    Namespace,
    Ring,
    RingSpec,
    SlotHeader,
)

SPAWN = multiprocessing.get_context("spawn")
BIG = 10 << 20
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())


def _wait_blocked(pid: int, timeout: float = 20.0) -> None:
    """Wait until ``pid``'s (only) thread sleeps in futex, i.e. in sem_wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            call = Path(f"/proc/{pid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            call = ""
        if _FUTEX is None or call == str(_FUTEX):
            if _FUTEX is None:
                time.sleep(0.5)  # unknown arch: best effort
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} never blocked")


@pytest.fixture
def spawn() -> Iterator[list[multiprocessing.process.BaseProcess]]:
    procs: list[multiprocessing.process.BaseProcess] = []
    yield procs
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


def _small(i: int) -> np.ndarray:
    return np.arange(i, i + i % 64 + 1, dtype=np.int64)


def _big(i: int) -> np.ndarray:
    return np.full(BIG, i % 256, dtype=np.uint8)


def test_echo_worker_round_trips_everything_in_order(ns: Namespace, spawn: list) -> None:
    out_spec = RingSpec(ns, 0, 8, 1024, checksum=True)
    back_spec = RingSpec(ns, 1, 8, 1024, checksum=True)
    big_every = 1000
    count = 10_000
    with Ring.create(out_spec) as out_ring, Ring.create(back_spec) as back_ring:
        worker = SPAWN.Process(target=echo, args=(out_spec, back_spec))
        spawn.append(worker)
        worker.start()
        prod, cons = out_ring.producer(), back_ring.consumer()

        def send_all() -> None:
            for i in range(count):
                big = i % big_every == big_every - 1
                payload = _big(i) if big else _small(i)
                header = SlotHeader(kind=2 if big else 1, seq=i, ndim=1, shape=payload.shape)
                with prod.loan(payload.nbytes, 16) as loan:  # write in place
                    loan.meta[:] = json.dumps({"i": i}).encode().ljust(16)
                    np.frombuffer(loan.payload, payload.dtype)[:] = payload
                    loan.commit(header)
            prod.end_of_stream()

        sender = threading.Thread(target=send_all)
        sender.start()
        try:
            received = 0
            while True:
                try:
                    frame = cons.receive(timeout=30)
                except EndOfStream:
                    break
                with frame:
                    i = frame.header.seq
                    assert i == received, "lost, duplicated or reordered"
                    assert frame.header.flags & FLAG_CHECKSUM
                    assert json.loads(bytes(frame.meta)) == {"i": i}
                    if frame.header.kind == 2:
                        assert len(frame.payload) == BIG
                        got = np.frombuffer(frame.payload, np.uint8)
                        assert got[0] == got[-1] == i % 256
                    else:
                        assert np.array_equal(np.frombuffer(frame.payload, np.int64), _small(i))
                received += 1
        finally:
            sender.join(60)
        assert received == count
        worker.join(30)
        assert worker.exitcode == 0


def test_backpressure_blocks_producer_and_drops_nothing(ns: Namespace, spawn: list) -> None:
    spec = RingSpec(ns, 0, 4, 128)
    count, delay = 40, 0.005
    with Ring.create(spec) as ring:
        consumer = SPAWN.Process(target=slow_consume, args=(spec, count, delay))
        spawn.append(consumer)
        consumer.start()
        prod = ring.producer()
        max_ahead = 0
        start = time.monotonic()
        for i in range(count):
            prod.send(SlotHeader(seq=i), b"", np.arange(i, i + 16, dtype=np.int64))
            stats = ring.statistics()
            max_ahead = max(max_ahead, stats.produced - stats.consumed)
            assert stats.produced - stats.consumed <= spec.slot_count
        elapsed = time.monotonic() - start
        prod.end_of_stream()
        consumer.join(30)
        assert consumer.exitcode == 0  # saw every frame, in order, then EOS
        assert max_ahead == spec.slot_count  # the producer really ran ahead and was held
        assert elapsed >= (count - spec.slot_count - 1) * delay


@pytest.mark.parametrize("side", ["receive", "loan"])
def test_abort_from_third_process_wakes_blocked_party(ns: Namespace, spawn: list, side: str) -> None:
    spec = RingSpec(ns, 0, 2, 64, async_consumer=True, async_producer=True)
    with Ring.create(spec) as ring:
        blocked = SPAWN.Process(target=block_in_receive if side == "receive" else block_in_loan,
                                args=(spec,))  # fmt: skip
        spawn.append(blocked)
        blocked.start()
        assert blocked.pid is not None
        _wait_blocked(blocked.pid)
        third = SPAWN.Process(target=abort_ring, args=(spec,))
        spawn.append(third)
        third.start()
        third.join(30)
        blocked.join(30)
        assert third.exitcode == 0
        assert blocked.exitcode == ABORTED_EXIT
        assert ring.aborted


def test_worker_killed_mid_stream_leaves_owner_able_to_clean_up(ns: Namespace, spawn: list) -> None:
    out_spec = RingSpec(ns, 0, 2, 64)
    back_spec = RingSpec(ns, 1, 2, 64)
    with Ring.create(out_spec) as out_ring, Ring.create(back_spec) as back_ring:
        worker = SPAWN.Process(target=echo, args=(out_spec, back_spec))
        spawn.append(worker)
        worker.start()
        prod, cons = out_ring.producer(), back_ring.consumer()
        prod.send(SlotHeader(seq=1), b"", b"x" * 500)  # external segment made by us
        with cons.receive(timeout=30) as frame:  # external segment made by the worker
            assert frame.header.ext_gen == 1
        worker.kill()
        worker.join()
        back_ring.abort()  # what the supervisor does when a worker dies
        with pytest.raises(Exception, match="aborted"):
            cons.receive()
