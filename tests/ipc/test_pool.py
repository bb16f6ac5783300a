"""The supervisor's segment pool (ipc/_pool.py): an output frame is a view of a segment taken
out of its ring, never written while a view of it lives; back in the pool it is reused, warm,
for the next input; bounded; nothing left in /dev/shm."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from nursery_pipes.ipc import (
    FLAG_EXTERNAL,
    Consumer,
    Namespace,
    Producer,
    Ring,
    RingSpec,
    SegmentPool,
    SlotHeader,
    unlink_namespace,
)
from nursery_pipes.ipc._names import SHM_DIR
from nursery_pipes.ipc._spec import REC_FRAME_SEG, REC_OWNED_SEG

SLOT = 256
BIG = 8192


@pytest.fixture
def ring(ns: Namespace) -> Iterator[Ring]:
    made = Ring.create(RingSpec(ns, 0, 2, SLOT))
    yield made
    made.close()


@contextmanager
def ends(ring: Ring) -> Iterator[tuple[Producer, Consumer]]:
    """Both ends of ``ring``, closed afterwards."""
    p, c = ring.producer(), ring.consumer()
    try:
        yield p, c
    finally:
        p.close()
        c.close()


@contextmanager
def fresh(
    ns: Namespace, slots: int, **pool_args: Any
) -> Iterator[tuple[Ring, SegmentPool, Producer, Consumer]]:
    """A ring of ``slots`` slots, a pool, and both ends of the ring; all closed afterwards."""
    ring = Ring.create(RingSpec(ns, 0, slots, SLOT))
    pool = SegmentPool(ns.seg_name, **pool_args)
    try:
        with ends(ring) as (p, c):
            yield ring, pool, p, c
    finally:
        pool.close()
        ring.close()


@pytest.fixture
def pool(ns: Namespace) -> Iterator[SegmentPool]:
    made = SegmentPool(ns.seg_name)
    yield made
    made.close()


def payload(seq: int, n: int = BIG) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 256, n, dtype=np.uint8)


def send(ring_producer: object, seq: int, n: int = BIG) -> np.ndarray:
    data = payload(seq, n)
    ring_producer.send(SlotHeader(seq=seq, ndim=1, shape=(n,)), b"{}", data)  # type: ignore[attr-defined]
    return data


def lend(pool: SegmentPool, received: object) -> np.ndarray:
    """What the pump does: borrow, wrap the payload, bind the array."""
    borrowed = pool.borrow(received)  # type: ignore[arg-type]
    assert borrowed is not None
    array = np.frombuffer(borrowed.payload, dtype=np.uint8)
    assert borrowed.bind(array)
    return array


def owned_ids(ring: Ring) -> list[int]:
    return [ring.words[ring.spec.record_word(s, REC_OWNED_SEG)] for s in range(ring.spec.slot_count)]


def entries(ns: Namespace) -> set[str]:
    return {e for e in os.listdir(SHM_DIR) if e.startswith(ns.prefix) and "x" in e.rsplit(".", 1)[1]}


def test_a_lent_segment_is_never_written_while_a_view_lives(ring: Ring, pool: SegmentPool) -> None:
    with ends(ring) as (p, c):
        p.use_pool(pool)  # it would write into any segment the pool has free
        held = []
        for seq in range(6):  # 3 times round the 2 slots: each slot written again twice
            sent = send(p, seq)
            with c.receive(timeout=5) as received:
                assert received.header.flags & FLAG_EXTERNAL
                taken = ring.words[ring.spec.record_word(received.position % 2, REC_FRAME_SEG)]
                array = lend(pool, received)
                assert taken not in owned_ids(ring), "the slot still owns the lent segment"
            held.append((array[1:-1], sent))  # a slice: it holds the memory too
            del array
        gc.collect()
        for view, sent in held:
            np.testing.assert_array_equal(view, sent[1:-1])  # nobody wrote over a lent segment
            assert not view.flags.writeable
        assert pool.lent == 6
        assert pool.lent_total == 6
        del view
        held.clear()
        gc.collect()
        assert pool.lent == 0
        assert pool.free == 6


def test_a_returned_segment_is_the_next_input_s_warm_segment(ring: Ring, pool: SegmentPool) -> None:
    with ends(ring) as (p, c):
        send(p, 0)
        send(p, 1)
        with c.receive(timeout=5) as received:
            lent_id = ring.words[ring.spec.record_word(0, REC_FRAME_SEG)]
            array = lend(pool, received)
        assert owned_ids(ring)[0] == 0  # the pool had nothing to give for it
        c.receive(timeout=5).release()
        del array
        gc.collect()
        assert [sid for sid, *_ in pool._warm] == [lent_id]
        p.use_pool(pool)
        before = owned_ids(ring)[1]
        send(p, 2)  # slot 0, owning none: takes the warm one
        assert owned_ids(ring)[0] == lent_id
        assert pool.free == 0
        with c.receive(timeout=5) as received:
            array = lend(pool, received)
        del array
        gc.collect()
        sent = send(p, 3)  # slot 1 owns a segment: the warm one is swapped in, its own parked cold
        assert owned_ids(ring)[1] == lent_id
        assert [sid for sid, *_ in pool._cold] == [before]
        with c.receive(timeout=5) as received:
            np.testing.assert_array_equal(np.frombuffer(received.payload, dtype=np.uint8), sent)


def test_over_budget_or_not_owned_is_refused(ns: Namespace, ring: Ring) -> None:
    small = SegmentPool(ns.seg_name, budget=BIG // 2)
    with ends(ring) as (p, c):
        send(p, 0)
        with c.receive(timeout=5) as received:
            assert small.borrow(received) is None  # over budget: the pump copies
        send(p, 1, n=100)  # in its slot
        with c.receive(timeout=5) as received:
            assert small.borrow(received) is None
        pool = SegmentPool(ns.seg_name)
        send(p, 2)
        with c.receive(timeout=5) as received:
            array = lend(pool, received)
            assert pool.borrow(received) is None  # its slot no longer owns it
        del array
        gc.collect()
        pool.close()
    small.close()


def test_a_view_dropped_in_another_thread_comes_back(ring: Ring, pool: SegmentPool) -> None:
    with ends(ring) as (p, c):
        send(p, 0)
        with c.receive(timeout=5) as received:
            box = [lend(pool, received)]
        thread = threading.Thread(target=box.clear)
        thread.start()
        thread.join()
        gc.collect()
        assert pool.lent == 0
        assert pool.free == 1


def test_free_segments_beyond_keep_are_unlinked(ns: Namespace) -> None:
    with fresh(ns, 8, keep=2, linger=0, spare=8) as (ring, pool, p, c):
        arrays = []
        for seq in range(8):  # 8 segments lent out of the ring
            send(p, seq)
            with c.receive(timeout=5) as received:
                arrays.append(lend(pool, received))
        arrays.clear()
        gc.collect()
        assert pool.free == 8
        p.use_pool(pool)
        send(p, 8)  # the slot owns none now: takes the warmest, the coldest 5 beyond keep go
        assert pool.free == 2
        c.receive(timeout=5).release()
        owned = {ns.seg_name(sid).lstrip("/") for sid in owned_ids(ring) if sid}
        kept = {ns.seg_name(sid).lstrip("/") for sid, *_ in [*pool._warm, *pool._cold]}
        assert entries(ns) == owned | kept  # the trimmed ones are gone from /dev/shm


def test_a_view_outlives_the_session(ns: Namespace) -> None:
    ring = Ring.create(RingSpec(ns, 0, 2, SLOT))
    pool = SegmentPool(ns.seg_name)
    with ends(ring) as (p, c):
        sent = send(p, 0)
        with c.receive(timeout=5) as received:
            array = lend(pool, received)
    pool.close()
    ring.close()
    unlink_namespace(ns)
    assert not entries(ns)  # every name is gone ...
    np.testing.assert_array_equal(array, sent)  # ... the memory is not, while a view holds it
    del array
    gc.collect()
    assert pool.lent == 0
    assert pool.free == 0


def test_nothing_is_created_while_the_pool_holds_a_segment_big_enough(ns: Namespace) -> None:
    """Sizes alternating between frames must not churn segments (create one, unlink another):
    a slot that owns none (or too small a one) takes a free one big enough, whatever its size;
    a slot whose segment is taken gets a free one back, the biggest if none is as big."""
    with fresh(ns, 2) as (ring, pool, p, c):
        p.use_pool(pool)
        send(p, 0, n=8 * BIG)
        send(p, 1, n=BIG)
        with c.receive(timeout=5) as received:
            big = lend(pool, received)  # slot 0 owns none now
        with c.receive(timeout=5) as received:
            small = lend(pool, received)  # slot 1 neither
        del big, small  # both free, the small one the most recent
        gc.collect()
        assert owned_ids(ring) == [0, 0]
        made = entries(ns)
        send(p, 2, n=BIG)  # slot 0: the most recent big enough, the small one
        send(p, 3, n=BIG)  # slot 1: the big one, 8 times bigger than the frame
        assert entries(ns) == made, "a segment was created while the pool held one big enough"
        assert pool.free == 0
        with c.receive(timeout=5) as received:
            small = lend(pool, received)
        del small  # the small one is free again
        gc.collect()
        with c.receive(timeout=5) as received:  # slot 1's big one taken: the small one instead
            big = lend(pool, received)
            assert owned_ids(ring)[1] != 0, "the slot got nothing while the pool had a segment"
        del big
        gc.collect()


def test_a_burst_takes_at_most_spare_segments_out_of_the_rings(ns: Namespace) -> None:
    """With nothing free to give a slot in exchange, only ``spare`` outputs are lent (the ring
    lacks their segments until its producer makes new ones); the next are copies."""
    with fresh(ns, 4, spare=2) as (ring, pool, p, c):
        for seq in range(3):
            send(p, seq)
        held = []
        for _ in range(2):
            with c.receive(timeout=5) as received:
                held.append(lend(pool, received))
        with c.receive(timeout=5) as received:
            assert pool.borrow(received) is None
        assert owned_ids(ring)[2] != 0  # the third slot keeps its segment
        held.pop()
        gc.collect()
        send(p, 3)
        with c.receive(timeout=5) as received:  # one is free again: lent, in exchange for it
            held.append(lend(pool, received))
        assert owned_ids(ring)[3] != 0
        held.clear()
        gc.collect()


def test_free_segments_stay_for_the_next_burst_until_they_linger(ns: Namespace) -> None:
    """A free segment beyond ``keep`` is unlinked only once unused for ``linger`` seconds: a
    segment unlinked between two bursts is one a producer creates again."""
    for linger, kept in ((60.0, 3), (0.0, 0)):
        with fresh(ns, 4, keep=0, linger=linger) as (_, pool, p, c):
            for seq in range(4):
                send(p, seq)
            held = []
            for _ in range(3):
                with c.receive(timeout=5) as received:
                    held.append(lend(pool, received))
            held.clear()
            gc.collect()
            assert pool.free == 3
            with c.receive(timeout=5) as received:  # a borrow trims what has lingered
                held.append(lend(pool, received))
            assert pool.free == kept - 1 if kept else pool.free == 0
            held.clear()
            gc.collect()
        unlink_namespace(ns)


def test_a_consumer_using_the_pool_maps_through_it_read_only(ring: Ring, pool: SegmentPool) -> None:
    """The supervisor maps each segment once (the pool's cache), and received views stay
    read-only although that mapping is writable."""
    with ends(ring) as (p, c):
        c.use_pool(pool)
        sent = send(p, 0)
        with c.receive(timeout=5) as received:
            assert received.payload.readonly
            assert len(pool.cache) == 1  # mapped by the consumer, through the pool
            array = lend(pool, received)
            assert len(pool.cache) == 1  # the lend found it there
        np.testing.assert_array_equal(array, sent)
        del array
        gc.collect()
    assert len(pool.cache) == 1  # closing the consumer left the pool's cache alone


def test_a_shared_segment_is_reused_only_once_every_ring_returned_its_reference(ns: Namespace) -> None:
    """Fan-out from the supervisor (``SegmentPool.share``): one copy that two rings refer to;
    it is not handed out again while either ring's consumer holds its reference, nor while
    it is the last frame shared (more rings of its fan-out may come); then it is, warm."""
    from nursery_pipes import TensorFrame
    from nursery_pipes.ipc import encode_frame

    rings = [Ring.create(RingSpec(ns, i, 4, SLOT, checksum=True)) for i in range(2)]
    pool = SegmentPool(ns.seg_name)
    try:
        with ends(rings[0]) as (p0, c0), ends(rings[1]) as (p1, c1):
            frames = [TensorFrame(data=payload(i)) for i in range(4)]
            encoded = [encode_frame(f) for f in frames]

            def fan_out(i: int) -> int:
                ids = set()
                for p in (p0, p1):
                    ref = pool.share(frames[i], encoded[i], checksum=True)
                    assert ref is not None
                    pos = p.try_send_ref(encoded[i], i, *ref)
                    assert pos is not None
                    pool.published(ref[0], p.words, pos)
                    ids.add(ref[0])
                assert len(ids) == 1  # one copy for both rings
                return ids.pop()

            a = fan_out(0)
            with c0.receive(timeout=5) as r:
                assert bytes(r.payload) == frames[0].data.tobytes()  # checksum verified too
            held = c1.receive(timeout=5)  # ring 1 still reads frame 0
            b = fan_out(1)
            with c0.receive(timeout=5) as r:
                assert bytes(r.payload) == frames[1].data.tobytes()
            c = fan_out(2)
            assert a not in (b, c)  # not reused under ring 1's reader
            assert bytes(held.payload) == frames[0].data.tobytes()
            held.release()
            with c1.receive(timeout=5) as r, c0.receive(timeout=5) as r0:
                assert bytes(r.payload) == frames[1].data.tobytes()
                assert bytes(r0.payload) == frames[2].data.tobytes()
            with c1.receive(timeout=5) as r:
                assert bytes(r.payload) == frames[2].data.tobytes()
            assert fan_out(3) in (a, b)  # both read: free again, reused
            assert pool.shared_total == 4
    finally:
        pool.close()
        for ring in rings:
            ring.close()
        unlink_namespace(ns)  # what the pool made goes with the session's names
