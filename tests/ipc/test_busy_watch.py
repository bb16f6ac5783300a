"""worker/_busy.py: while a node's code runs, a thread takes the signals on its control ring,
tells the node at once (``cancel_work``) and keeps them, in order, for the main thread.

A real ring in shared memory; the leak fixture checks that the thread is joined.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from nursery_pipes.ipc import Namespace, Producer, Ring, RingSpec, SlotHeader
from nursery_pipes.worker._busy import BusyWatch


@pytest.fixture
def control(ns: Namespace) -> Iterator[Ring]:
    with Ring.create(RingSpec(ns, 0, 16, 4096)) as ring:
        yield ring


def send(producer: Producer, name: str, number: int) -> None:
    meta = msgspec.json.encode({"name": name, "payload": {}, "origin": "client", "id": number})
    assert producer.try_send(SlotHeader(kind=0, meta_len=len(meta)), meta)


def wait_for(condition: Any, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


def test_signals_that_come_while_node_code_runs_are_passed_on_at_once_and_kept_in_order(
    control: Ring,
) -> None:
    told: list[tuple[str, str]] = []
    consumer, producer = control.consumer(), control.producer()
    watch = BusyWatch(consumer, lambda sent: told.append((sent["name"], threading.current_thread().name)))
    try:
        send(producer, "early", 1)  # idle: the watcher leaves it on the ring for the main thread
        time.sleep(0.05)
        assert told == []
        assert not watch.pending
        watch.busy()
        assert wait_for(lambda: len(told) == 1)  # ...until node code runs
        send(producer, "interrupt", 2)
        assert wait_for(lambda: len(told) == 2)
        watch.idle()
        assert watch.took
        assert [name for name, _ in told] == ["early", "interrupt"]
        assert {thread for _, thread in told} == {"nursery-pipes-signals"}  # not the main thread
        assert [s["id"] for s in watch.take_pending()] == [1, 2]
        send(producer, "later", 3)  # idle again: not taken
        time.sleep(0.05)
        assert len(told) == 2
        assert consumer.ready()
    finally:
        watch.close()


def test_a_ring_aborted_while_node_code_runs_stops_the_watcher_quietly(control: Ring) -> None:
    errors: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda args: errors.append(args.exc_value)  # type: ignore[assignment,misc]
    try:
        watch = BusyWatch(control.consumer(), lambda sent: None)
        try:
            watch.busy()
            control.abort()  # the supervisor stops the node
            time.sleep(0.05)
            watch.idle()
        finally:
            watch.close()
    finally:
        threading.excepthook = hook
    assert errors == []
