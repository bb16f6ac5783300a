"""Process target for the forward-by-reference crash tests (spawned children; no trio here)."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

from nursery_pipes.ipc import Ring, RingSpec, _producer


def forward_and_die(inp: RingSpec, out: RingSpec, conn: Connection, stores: int) -> None:
    """Take one frame from ``inp`` and forward it into ``out``, SIGKILLing this process just
    before the forward's ``stores``-th owned-id store (0: before step 2, 1: before step 3,
    2: never, the forward completes; see ipc/_ownership.py)."""
    real = _producer._store
    done = 0

    def store(words: memoryview, index: int, value: int) -> None:
        nonlocal done
        if done == stores:
            os.kill(os.getpid(), signal.SIGKILL)
        done += 1
        real(words, index, value)

    _producer._store = store
    a, b = Ring.attach(inp), Ring.attach(out)
    received = a.consumer().receive(timeout=30)
    assert b.producer().forward(received, received.header, received.meta, received.payload)
    conn.send("forwarded")  # only when the forward completed (stores >= 2)
    conn.recv()  # parked until the test kills us


def share_and_park(inp: RingSpec, outs: list[RingSpec], conn: Connection, finish: bool) -> None:
    """Take one frame from ``inp``, share it into every ring of ``outs`` (fan-out by reference),
    mark it finished if ``finish``, and park holding it until the test kills us."""
    a = Ring.attach(inp)
    producers = [Ring.attach(out).producer() for out in outs]
    received = a.consumer().receive(timeout=30)
    for producer in producers:
        assert producer.share(received, received.header, received.meta, received.payload) is not None
    if finish:
        received.finish()
    conn.send("shared")
    conn.recv()  # parked until the test kills us
