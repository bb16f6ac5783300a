"""Process targets for the recovery tests (imported by spawned children; no trio here).

Each ``*_at`` function attaches to a ring, goes to one exact stage of a handoff,
reports it to the test through a pipe and parks there until the test SIGKILLs it.
Stages inside the ring code (between a semaphore operation and the store that
records it) are reached with a :class:`Tripwire` standing in for the semaphore.
The other functions are the *new* processes attached after a repair.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from nursery_pipes.ipc import Consumer, EndOfStream, Producer, Ring, RingSpec, SlotHeader, wait_any
from nursery_pipes.ipc._spec import W_PRODUCED, W_TAKEN

PARK_SECONDS = 600
SLOT_SIZE = 256  # of every ring in these tests
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())


# -- frames -------------------------------------------------------------------------------


def size_of(seq: int) -> int:
    """Every third frame is oversize (an external segment); the others fit their slot."""
    return SLOT_SIZE * 3 + seq if seq % 3 == 2 else seq % 40 + 1


def send(prod: Producer, seq: int, *, block: bool = True) -> bool:
    n = size_of(seq)
    header = SlotHeader(seq=seq, ndim=1, shape=(n,))
    meta, payload = f"{seq}".encode(), np.full(n, seq % 251, dtype=np.uint8)
    if block:
        prod.send(header, meta, payload, timeout=60)
        return True
    return prod.try_send(header, meta, payload)


def check(frame: Any) -> int:
    """A frame's seq, after checking its meta and payload say the same (checksums: the ring)."""
    seq: int = frame.header.seq
    payload = np.frombuffer(frame.payload, np.uint8)
    assert bytes(frame.meta) == f"{seq}".encode(), (bytes(frame.meta), seq)
    assert len(payload) == frame.header.shape[0], (len(payload), frame.header.shape)
    assert bool(np.all(payload == seq % 251)), f"frame {seq}: payload overwritten"
    return seq


def _park(conn: Connection, *info: object) -> None:
    conn.send(info)
    time.sleep(PARK_SECONDS)
    os._exit(99)  # never reached: the test kills us


def wait_blocked(pid: int, timeout: float = 20.0) -> None:
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
    raise AssertionError(f"process {pid} never blocked")


class Tripwire:
    """Stands in for a ring semaphore: every call passes through, except the ``skip``-th call
    of ``op`` (``acquire`` / ``release``), which reports and parks — ``after`` the real
    operation, or ``before`` it."""

    def __init__(self, sem: Any, conn: Connection, op: str, when: str, skip: int = 0) -> None:
        self._sem, self._conn, self._op, self._when, self._skip = sem, conn, op, when, skip

    def _trip(self, op: str, real: Any, *args: Any) -> Any:
        if op != self._op or self._skip:
            if op == self._op:
                self._skip -= 1
            return real(*args)
        if self._when == "before":
            _park(self._conn, "at", f"{op}:before")
        result = real(*args)
        _park(self._conn, "at", f"{op}:after")
        return result

    def acquire(self, timeout: float | None = None) -> None:
        self._trip("acquire", self._sem.acquire, timeout)

    def release(self) -> None:
        self._trip("release", self._sem.release)

    @property
    def value(self) -> int:
        return int(self._sem.value)


class WordTrip:
    """Stands in for ``Ring.words``: parks just before the store to word ``index`` (a window
    between two stores, where no semaphore operation could stop the process)."""

    def __init__(self, words: memoryview, conn: Connection, index: int) -> None:
        self._words, self._conn, self._index = words, conn, index

    def __getitem__(self, index: int) -> int:
        return int(self._words[index])

    def __setitem__(self, index: int, value: int) -> None:
        if index == self._index:
            _park(self._conn, "at", f"store:{index}")
        self._words[index] = value


# -- the dying ends --------------------------------------------------------------------------


def consumer_at(spec: RingSpec, conn: Connection, stage: str, take: int) -> None:
    """Receive (and release) ``take`` frames, then go to ``stage`` with the next one:

    blocked      block in receive() on an empty ring (the test waits until it sleeps)
    acquired     take the "used" token, park before recording it (a repair's window a)
    checked      take the token, check the frame is there, park before recording it (a, later)
    taken        receive the next frame, park holding it
    mid_copy     receive it, copy half of its payload out, park
    processing   receive it, copy it all out, park (the worker's process())
    mid_release  receive two frames, return both slots in one release, park after the
                 first free post (window b)
    eos          receive until the end of stream, park
    """
    ring = Ring.attach(spec)
    cons = ring.consumer()
    for _ in range(take):
        with cons.receive(timeout=60) as frame:
            check(frame)
    if stage == "blocked":
        conn.send(("at", stage))
        cons.receive()
        os._exit(98)  # the test sends nothing: never reached
    if stage == "acquired":
        cons._used = Tripwire(cons._used, conn, "acquire", "after")  # type: ignore[assignment]
        cons.receive(timeout=60)
    if stage == "checked":  # the token checked, the frame not yet recorded as taken
        cons._words = WordTrip(cons._words, conn, W_TAKEN)  # type: ignore[assignment]
        cons.receive(timeout=60)
    if stage == "eos":
        try:
            while True:
                cons.receive(timeout=60).release()
        except EndOfStream:
            _park(conn, "at", stage)
    frame = cons.receive(timeout=60)
    seq = frame.header.seq
    if stage == "taken":
        _park(conn, "at", stage, [seq])
    if stage == "mid_copy":
        half = bytes(frame.payload[: len(frame.payload) // 2])
        _park(conn, "at", stage, [seq], len(half))
    if stage == "processing":
        check(frame)
        copy = np.array(np.frombuffer(frame.payload, np.uint8))
        _park(conn, "at", stage, [seq], len(copy))
    if stage == "mid_release":
        second = cons.receive(timeout=60)
        second.release()  # out of order: waits for the first
        cons._free = Tripwire(cons._free, conn, "release", "after")  # type: ignore[assignment]
        frame.release()  # consumed := +2, post, park
    raise AssertionError(f"unknown stage {stage}")


def producer_at(spec: RingSpec, conn: Connection, stage: str, count: int) -> None:
    """Publish frames 0..count-1, then go to ``stage`` with frame ``count``:

    idle         park (busy elsewhere: the worker's process())
    blocked      block in loan() on the full ring (the test waits until it sleeps)
    acquired     take a "free" token, park before using it (a repair's window c)
    mid_loan     loan the slot, fill half of it, park
    filled       loan it, fill it all, park before commit
    posting      commit it, park before posting "used" (window d)
    stamped      commit it, park after its stamp, before storing ``produced``
    eos          end the stream, park
    """
    ring = Ring.attach(spec)
    prod = ring.producer()
    for seq in range(count):
        send(prod, seq)
    if stage == "idle":
        _park(conn, "at", stage)
    if stage == "blocked":
        conn.send(("at", stage))
        prod.loan(1)
        os._exit(98)  # the test never frees a slot: never reached
    if stage == "acquired":
        prod._free = Tripwire(prod._free, conn, "acquire", "after")  # type: ignore[assignment]
        send(prod, count)
    if stage == "posting":
        prod._used = Tripwire(prod._used, conn, "release", "before")  # type: ignore[assignment]
        send(prod, count)
    if stage == "stamped":
        prod._words = WordTrip(prod._words, conn, W_PRODUCED)  # type: ignore[assignment]
        send(prod, count)
    if stage == "eos":
        prod.end_of_stream(timeout=60)
        _park(conn, "at", stage)
    n = size_of(count)
    loan = prod.loan(n, 4, timeout=60)
    loan.meta[:] = b"junk"
    fill = n // 2 if stage == "mid_loan" else n
    np.frombuffer(loan.payload, np.uint8)[:fill] = 0xEE
    _park(conn, "at", stage)


def fan_in_consumer_at(specs: Sequence[RingSpec], conn: Connection, ring_index: int, seq: int) -> None:
    """Receive from every ring (wait_any, releasing each frame); park while "processing" frame
    ``seq`` of ring ``ring_index`` (copied out, still held)."""
    rings = [Ring.attach(spec) for spec in specs]
    consumers = [r.consumer() for r in rings]
    active = list(consumers)
    while active:
        for cons in wait_any(active, timeout=60):
            try:
                frame = cons.try_receive()
            except EndOfStream:
                active.remove(cons)
                continue
            if frame is None:
                continue
            got = check(frame)
            if consumers.index(cons) == ring_index and got == seq:
                _park(conn, "at", "processing", [got])
            frame.release()
    raise AssertionError("the frame to stop at never came")


# -- the new ends ---------------------------------------------------------------------------


def collect(specs: Sequence[RingSpec], conn: Connection) -> None:
    """A new consumer of every ring: receive until each ended; report the seqs per ring."""
    rings = [Ring.attach(spec) for spec in specs]
    consumers: list[Consumer] = [r.consumer() for r in rings]
    seqs: list[list[int]] = [[] for _ in consumers]
    active = list(consumers)
    while active:
        ready = active if len(consumers) == 1 else wait_any(active, timeout=60)
        for cons in ready:
            try:
                frame = cons.receive(timeout=60) if len(consumers) == 1 else cons.try_receive()
            except EndOfStream:
                active.remove(cons)
                continue
            if frame is not None:
                with frame:
                    seqs[consumers.index(cons)].append(check(frame))
    for ring in rings:
        ring.close()
    conn.send(seqs)


def refill(spec: RingSpec, conn: Connection, start: int) -> None:
    """A new producer: publish frames ``start, start+1, ...`` until the ring is full, report
    how many, then end the stream when the test says so."""
    with Ring.attach(spec) as ring:
        prod = ring.producer()
        seq = start
        while send(prod, seq, block=False):
            seq += 1
        conn.send(seq - start)
        assert conn.recv() == "end"
        prod.end_of_stream(timeout=60)
