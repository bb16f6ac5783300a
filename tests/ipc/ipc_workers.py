"""Process targets for the ipc tests (imported by spawned children; no trio here)."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

import numpy as np

from nursery_pipes.ipc import (
    EndOfStream,
    Namespace,
    Ring,
    RingAbortedError,
    RingSpec,
    SlotHeader,
)

ABORTED_EXIT = 7
BAD_DATA_EXIT = 5


def make_entries_and_die(conn: Connection, how: str) -> None:
    """Create a namespace with a ring (and an external segment), report, then die.

    ``how``: "exit" (os._exit without cleanup) or "kill" (wait for SIGKILL).
    """
    ns = Namespace.create()
    ring = Ring.create(RingSpec(ns, 0, 2, 64, async_consumer=True, async_producer=True))
    ring.producer().send(SlotHeader(), b"", b"x" * 1000)  # oversize → external segment
    conn.send((ns.owner_pid, ns.token))
    conn.close()
    if how == "exit":
        os._exit(0)
    time.sleep(60)


def produce_external_and_exit(spec: RingSpec) -> None:
    """Attach to someone else's ring and create an external segment in their namespace."""
    ring = Ring.attach(spec)
    ring.producer().send(SlotHeader(seq=1), b"", b"y" * (spec.slot_size + 1))
    os._exit(0)  # no cleanup: the namespace owner must sweep our segment


def echo(in_spec: RingSpec, out_spec: RingSpec) -> None:
    """Echo every frame (header, meta, payload) from in_spec to out_spec; then EOS."""
    try:
        with Ring.attach(in_spec) as rin, Ring.attach(out_spec) as rout:
            cons, prod = rin.consumer(), rout.producer()
            while True:
                try:
                    frame = cons.receive()
                except EndOfStream:
                    prod.end_of_stream()
                    return
                with frame, prod.loan(len(frame.payload), len(frame.meta)) as loan:
                    loan.meta[:] = frame.meta
                    loan.payload[:] = frame.payload
                    loan.commit(frame.header)
    except RingAbortedError:
        os._exit(ABORTED_EXIT)


def slow_consume(spec: RingSpec, count: int, delay: float) -> None:
    """Receive ``count`` frames slowly, checking order and content; exit 0 if all good."""
    with Ring.attach(spec) as ring:
        cons = ring.consumer()
        for i in range(count):
            with cons.receive() as frame:
                values = np.frombuffer(frame.payload, np.int64)
                if frame.header.seq != i or values[0] != i or len(values) != 16:
                    os._exit(BAD_DATA_EXIT)
            time.sleep(delay)
        try:
            cons.receive()
        except EndOfStream:
            return
        os._exit(BAD_DATA_EXIT)


def block_in_receive(spec: RingSpec) -> None:
    """Block in receive() on an empty ring until someone aborts it."""
    with Ring.attach(spec) as ring:
        try:
            ring.consumer().receive()
        except RingAbortedError:
            os._exit(ABORTED_EXIT)


def block_in_loan(spec: RingSpec) -> None:
    """Fill the ring, then block in loan() until someone aborts it."""
    with Ring.attach(spec) as ring:
        prod = ring.producer()
        for i in range(spec.slot_count):
            prod.send(SlotHeader(seq=i), b"", b"z")
        try:
            prod.loan(1)
        except RingAbortedError:
            os._exit(ABORTED_EXIT)


def abort_ring(spec: RingSpec) -> None:
    """A third party: attach and abort."""
    with Ring.attach(spec) as ring:
        ring.abort()
