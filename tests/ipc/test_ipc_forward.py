"""Forwarding a big frame by reference (ipc/_ownership.py): no copy, no reuse under a reader,
every external segment owned by exactly one slot — also after a forwarder was SIGKILLed."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import pytest
from forward_workers import forward_and_die, share_and_park

from nursery_pipes.ipc import FLAG_EXTERNAL, Namespace, Received, Ring, RingSpec, SlotHeader, wait_any
from nursery_pipes.ipc._names import SHM_DIR
from nursery_pipes.ipc._ownership import forward_refusal, resolve_swap, seg_id, seg_origin
from nursery_pipes.ipc._spec import REC_FRAME_SEG, REC_OWNED_SEG, REC_SWAP_IN

SLOT = 256
BIG = 4096
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def rings(ns: Namespace) -> Iterator[list[Ring]]:
    made = [Ring.create(RingSpec(ns, i, 2, SLOT, checksum=True)) for i in range(3)]
    yield made
    for ring in made:
        ring.close()


def owned(rings: list[Ring]) -> list[int]:
    """Every owned segment id of every slot (0s left out)."""
    ids = []
    for ring in rings:
        for slot in range(ring.spec.slot_count):
            sid = ring.words[ring.spec.record_word(slot, REC_OWNED_SEG)]
            if sid:
                ids.append(sid)
    return ids


def assert_one_owner_each(rings: list[Ring]) -> None:
    twice = {hex(s): n for s, n in Counter(owned(rings)).items() if n > 1}
    assert not twice, f"segments owned by more than one slot: {twice}"


def frame(seq: int, n: int) -> tuple[SlotHeader, bytes, np.ndarray]:
    payload = np.random.default_rng(seq).integers(0, 256, n, dtype=np.uint8)
    return SlotHeader(seq=seq, ndim=1, shape=(n,)), f'{{"seq": {seq}}}'.encode(), payload


def forward(out: object, received: Received) -> bool:
    return out.forward(received, received.header, received.meta, received.payload)  # type: ignore[attr-defined]


@contextlib.contextmanager
def child(
    target: Callable[..., None], before: tuple[Any, ...], after: tuple[Any, ...]
) -> Iterator[tuple[Connection, BaseProcess]]:
    """A spawned ``target(*before, conn, *after)``, and our end of ``conn``; killed and reaped
    on the way out if it is still alive."""
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(*before, theirs, *after))
    proc.start()
    theirs.close()
    try:
        yield ours, proc
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        ours.close()


def ext_entries(ns: Namespace) -> set[str]:
    return {e for e in os.listdir(SHM_DIR) if e.startswith(ns.prefix) and "x" in e.rsplit(".", 1)[1]}


def test_segment_ids_pack_and_unpack() -> None:
    assert seg_origin(seg_id(999_999, 65_535, 7)) == (999_999, 65_535, 7)
    assert seg_id(0, 0, 1) != 0  # 0 is "none"
    with pytest.raises(ValueError, match="out of range"):
        seg_id(0, 0, 0)


def test_resolve_swap_rolls_a_pending_swap_forward() -> None:
    x, y, z = seg_id(0, 0, 1), seg_id(1, 0, 1), seg_id(0, 1, 1)
    assert resolve_swap(y, 0, 0, [x]) == (y, {})  # nothing pending
    assert resolve_swap(y, x, y, [z, x]) == (x, {1: y})  # died before the output took X
    assert resolve_swap(x, x, y, [z, x]) == (x, {1: y})  # ... before the input took Y
    assert resolve_swap(x, x, y, [z, y]) == (x, {})  # ... after: only the journal is left


def test_forward_refusal_names_the_reason() -> None:
    ok = dict(external=True, same_namespace=True, released=False, input_owns_segment=True,
              inside=True, meta_fits=True)  # fmt: skip
    assert forward_refusal(**ok) is None
    for key in ok:
        assert forward_refusal(**{**ok, key: not ok[key]}) is not None, key


def test_a_forwarded_frame_is_not_copied_and_its_input_slot_gets_another_segment(
    ns: Namespace, rings: list[Ring]
) -> None:
    a, b = rings[0], rings[1]
    pa, ca, pb, cb = a.producer(), a.consumer(), b.producer(), b.consumer()
    header, meta, payload = frame(1, BIG)
    pa.send(header, meta, payload)
    segments = ext_entries(ns)
    received = ca.receive(timeout=5)
    assert received.header.flags & FLAG_EXTERNAL
    assert forward(pb, received)
    received.release()
    assert ext_entries(ns) == segments  # no segment made for the forward
    # The producer of A fills every slot of A again, the one the frame came from included: it
    # must write somewhere else than the segment B's frame lives in.
    for seq in range(2, 2 + 2 * a.spec.slot_count):
        pa.send(*frame(seq, BIG))
        ca.receive(timeout=5).release()
    got = cb.receive(timeout=5)  # the ring checks the checksum too
    assert bytes(got.payload) == payload.tobytes()
    assert bytes(got.meta) == meta
    slot = got.position % b.spec.slot_count
    assert seg_origin(b.words[b.spec.record_word(slot, REC_FRAME_SEG)])[0] == a.spec.index
    got.release()
    assert_one_owner_each(rings)


def test_forward_refuses_what_is_not_in_the_input_segment(rings: list[Ring]) -> None:
    a, b = rings[0], rings[1]
    pa, ca, pb = a.producer(), a.consumer(), b.producer()
    pa.send(*frame(1, 10))  # fits its slot: nothing to forward by reference
    small = ca.receive(timeout=5)
    assert not forward(pb, small)
    small.release()
    header, meta, payload = frame(2, BIG)
    pa.send(header, meta, payload)
    big = ca.receive(timeout=5)
    assert not pb.forward(big, header, big.meta, bytes(big.payload))  # equal bytes, other memory
    assert not pb.forward(big, header, b" " * (SLOT + 1), big.payload)  # metadata too big for a slot
    assert forward(pb, big)
    assert not forward(pb, big)  # its segment went with the first forward
    big.release()
    assert b.statistics().produced == 1  # a refusal publishes nothing


def test_a_slice_with_new_metadata_goes_by_reference_and_on_down_a_chain(rings: list[Ring]) -> None:
    a, b, c = rings
    pa, ca, pb, cb, pc, cc = (
        a.producer(), a.consumer(), b.producer(), b.consumer(), c.producer(), c.consumer(),
    )  # fmt: skip
    header, meta, payload = frame(1, BIG)
    pa.send(header, meta, payload)
    with ca.receive(timeout=5) as r1:
        assert pb.forward(r1, header, b'{"cut": 1}', r1.payload[100:3000])
    with cb.receive(timeout=5) as r2:  # checksum verified by the ring
        assert bytes(r2.meta) == b'{"cut": 1}'
        assert bytes(r2.payload) == payload[100:3000].tobytes()
        assert forward(pc, r2)  # the split frame again, unchanged
    for seq in range(2, 2 + 2 * a.spec.slot_count):  # A's slots rewritten meanwhile
        pa.send(*frame(seq, BIG))
        ca.receive(timeout=5).release()
    with cc.receive(timeout=5) as r3:
        assert bytes(r3.meta) == b'{"cut": 1}'
        assert bytes(r3.payload) == payload[100:3000].tobytes()
    assert_one_owner_each(rings)


def test_frames_forwarded_down_a_chain_stay_intact_and_every_segment_has_one_owner(
    rings: list[Ring],
) -> None:
    a, b, c = rings
    pa, ca, pb, cb, pc, cc = (
        a.producer(), a.consumer(), b.producer(), b.consumer(), c.producer(), c.consumer(),
    )  # fmt: skip
    sizes = [BIG, 10, BIG * 3, BIG, SLOT - 32, BIG * 2] * 6
    for seq, n in enumerate(sizes):
        header, meta, payload = frame(seq, n)
        pa.send(header, meta, payload)
        with ca.receive(timeout=5) as r1:
            if not forward(pb, r1):
                pb.send(r1.header, r1.meta, r1.payload)
        with cb.receive(timeout=5) as r2:
            if not forward(pc, r2):
                pc.send(r2.header, r2.meta, r2.payload)
        with cc.receive(timeout=5) as r3:
            assert bytes(r3.payload) == payload.tobytes(), seq
        assert_one_owner_each(rings)


@pytest.mark.parametrize("stores", [0, 1, 2], ids=["before-output-takes-it", "before-input-gives-it", "done"])
def test_a_forwarder_killed_mid_swap_is_repaired_to_one_owner_per_segment(
    ns: Namespace, rings: list[Ring], stores: int
) -> None:
    a, b = rings[0], rings[1]
    pa = a.producer()
    pa.send(*frame(0, BIG))  # slot 0 of A owns X
    pa.send(*frame(1, BIG))  # slot 1 of A owns another
    # B's slot 0 owns Y: a frame sent and consumed there before.
    with Ring.attach(b.spec) as b2:
        p, c = b2.producer(), b2.consumer()
        p.send(*frame(9, BIG))
        c.receive(timeout=5).release()
        p.close()
        c.close()
    with child(forward_and_die, (a.spec, b.spec), (stores,)) as (conn, proc):
        if stores >= 2:
            assert conn.poll(60)
            assert conn.recv() == "forwarded"
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
    pending = Ring.repair_swaps([a], [b])
    assert pending == (1 if stores < 2 else 0)
    a.repair_consumer()
    b.repair_producer()
    assert_one_owner_each(rings)
    assert not any(b.words[b.spec.record_word(s, REC_SWAP_IN)] for s in range(b.spec.slot_count))
    # Both rings go on: A's slots are written again while B's frames (if any) are read.
    ca, pb, cb = a.consumer(), b.producer(), b.consumer()
    expected = []
    if stores >= 2:
        expected.append(frame(0, BIG)[2].tobytes())
    with ca.receive(timeout=5) as r:  # frame 1
        assert forward(pb, r)
        expected.append(frame(1, BIG)[2].tobytes())
    for seq in range(2, 6):
        pa.send(*frame(seq, BIG))
        with ca.receive(timeout=5) as r:
            assert bytes(r.payload) == frame(seq, BIG)[2].tobytes()
    for payload in expected:
        with cb.receive(timeout=5) as r:
            assert bytes(r.payload) == payload
    assert_one_owner_each(rings)


def share(out: object, received: Received) -> int | None:
    return out.share(received, received.header, received.meta, received.payload)  # type: ignore[attr-defined,no-any-return]


def frame_id(ring: Ring, slot: int) -> int:
    return ring.words[ring.spec.record_word(slot, REC_FRAME_SEG)]


def owned_id(ring: Ring, slot: int) -> int:
    return ring.words[ring.spec.record_word(slot, REC_OWNED_SEG)]


def test_a_shared_frame_goes_to_two_rings_by_reference_and_its_input_slot_keeps_the_segment(
    ns: Namespace, rings: list[Ring]
) -> None:
    a, b, c = rings
    pa, ca, pb, cb, pc, cc = (
        a.producer(),
        a.consumer(),
        b.producer(),
        b.consumer(),
        c.producer(),
        c.consumer(),
    )
    header, meta, payload = frame(1, BIG)
    pa.send(header, meta, payload)
    made = ext_entries(ns)
    r = ca.receive(timeout=5)
    x = frame_id(a, 0)
    assert (share(pb, r), share(pc, r)) == (0, 0)
    assert ext_entries(ns) == made  # no segment made: nothing copied
    assert frame_id(b, 0) == frame_id(c, 0) == owned_id(a, 0) == x
    assert owned_id(b, 0) != x  # referred to, not owned
    assert owned_id(c, 0) != x
    with cb.receive(timeout=5) as rb:
        assert bytes(rb.payload) == payload.tobytes()  # checksum verified too
        # A reader of a shared frame does not pass it on by reference: it does not own it.
        assert share(pc, rb) is None
        assert not forward(pc, rb)
    assert pb.returned(0)
    assert not pc.returned(0)
    with cc.receive(timeout=5) as rc:
        assert bytes(rc.payload) == payload.tobytes()
    assert pc.returned(0)
    r.release()
    assert_one_owner_each(rings)


@pytest.mark.parametrize("finish", [True, False], ids=["finished", "in-process"])
def test_a_sharer_killed_while_a_reader_still_reads_gives_its_input_slot_another_segment(
    ns: Namespace, rings: list[Ring], finish: bool
) -> None:
    a, b, c = rings
    pa = a.producer()
    header, meta, payload = frame(1, BIG)
    pa.send(header, meta, payload)
    with child(share_and_park, (a.spec, [b.spec, c.spec]), (finish,)) as (conn, proc):
        assert conn.poll(60)
        assert conn.recv() == "shared"
        cb, cc = b.consumer(), c.consumer()
        cb.receive(timeout=5).release()  # one reader is done, the other still reads:
        held = cc.receive(timeout=5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
    x = owned_id(a, 0)
    assert Ring.repair_shares([a], [b, c]) == 1
    assert owned_id(a, 0) == 0  # the segment the reader reads is no slot's any more
    repair = a.repair_consumer()
    assert [d.seq for d in repair.dropped] == ([] if finish else [1])
    b.repair_producer()
    c.repair_producer()
    # The input ring goes on, round and round, while the reader still holds the shared frame.
    ca = a.consumer()
    for seq in range(2, 8):
        pa.send(*frame(seq, BIG))
        with ca.receive(timeout=5) as r:
            assert bytes(r.payload) == frame(seq, BIG)[2].tobytes()
    assert bytes(held.payload) == payload.tobytes()
    assert frame_id(c, 0) == x
    held.release()
    assert_one_owner_each(rings)


def test_repair_shares_leaves_a_segment_whose_shares_were_all_read(rings: list[Ring]) -> None:
    a, b, c = rings
    a.producer().send(*frame(1, BIG))
    with Ring.attach(a.spec) as a2, Ring.attach(b.spec) as b2, Ring.attach(c.spec) as c2:
        r = a2.consumer().receive(timeout=5)
        assert share(b2.producer(), r) == 0
        assert share(c2.producer(), r) == 0
        r.finish()
        for ring in (b, c):
            ring.consumer().receive(timeout=5).release()
        x = owned_id(a, 0)
        # the sharer closes holding its input (as a worker whose inputs ended does)
    assert Ring.repair_shares([a], [b, c]) == 0
    assert owned_id(a, 0) == x
    assert a.repair_consumer().dropped == ()


def test_returning_a_shared_frame_wakes_its_sharer_waiting_for_input(ns: Namespace) -> None:
    """A sharer that is idle with a kept frame sleeps on its inputs and on its outputs' "free"
    doorbells (``wait_any(also=...)``): the reader returning the share wakes it, although the
    output ring was never full."""
    specs = [RingSpec(ns, i, 4, SLOT, async_producer=True, async_consumer=True) for i in range(2)]
    with Ring.create(specs[0]) as a, Ring.create(specs[1]) as b:
        a.producer().send(*frame(1, BIG))
        ca, pb, cb = a.consumer(), b.producer(), b.consumer()
        r = ca.receive(timeout=5)
        assert share(pb, r) == 0
        shared = cb.receive(timeout=5)
        woke: list[list[object]] = []
        waiter = threading.Thread(target=lambda: woke.append(wait_any([ca], None, also=[pb])))
        waiter.start()
        time.sleep(0.05)
        assert not woke  # nothing to take, the share not read yet
        shared.release()
        waiter.join(10)
        assert woke == [[]]  # woken by the share's return, with no frame to take
        assert pb.returned(0)
        r.release()
