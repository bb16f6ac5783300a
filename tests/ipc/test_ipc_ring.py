"""The ring within one process (sync producer and consumer)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import posix_ipc
import pytest

from nursery_pipes import ipc
from nursery_pipes.ipc import (
    FLAG_CHECKSUM,
    FLAG_EOS,
    FLAG_EXTERNAL,
    ChecksumError,
    EndOfStream,
    HeaderError,
    Namespace,
    Ring,
    RingAbortedError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
    RingSpec,
    SlotHeader,
    wait_any,
)
from nursery_pipes.ipc._spec import CTRL_SIZE, REC_HEADER, RECORD_SIZE


@pytest.fixture
def ring(ns: Namespace) -> Iterator[Ring]:
    with Ring.create(RingSpec(ns, 0, 4, 256)) as r:
        yield r


def _frame(i: int) -> tuple[SlotHeader, bytes, bytes]:
    payload = bytes([i % 251]) * (i * 7 % 200)
    meta = f'{{"i": {i}}}'.encode()
    return SlotHeader(kind=3, seq=i, ndim=1, shape=(len(payload),), aux=(i, 0, 0, 1)), meta, payload


def test_worker_side_modules_do_not_import_trio() -> None:
    import ast
    from pathlib import Path

    pkg = Path(ipc.__file__).parent
    for path in pkg.glob("_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "trio" for n in names), path.name


def test_public_names_match_all() -> None:
    public = {n for n in dir(ipc) if not n.startswith("_")} - {"annotations", "TYPE_CHECKING"}
    public -= {"Any"}
    assert set(ipc.__all__) >= public
    for name in ipc.__all__:
        assert getattr(ipc, name) is not None


def test_fifo_order_and_wraparound(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    sent = 0
    for burst in [1, 4, 3, 2, 4, 1, 4] * 5:
        for _ in range(burst):
            prod.send(*_frame(sent))
            sent += 1
        assert ring.statistics().used == burst
        for _ in range(burst):
            with cons.receive() as got:
                header, meta, payload = _frame(got.position)
                assert got.header == SlotHeader(
                    kind=3, seq=header.seq, ndim=1, shape=header.shape, aux=header.aux,
                    payload_len=len(payload), meta_len=len(meta),
                )  # fmt: skip
                assert bytes(got.meta) == meta
                assert bytes(got.payload) == payload
                assert got.payload.readonly
    stats = ring.statistics()
    assert (stats.produced, stats.consumed, stats.free, stats.used) == (sent, sent, 4, 0)


def test_full_and_empty_never_block_the_try_calls(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    assert cons.try_receive() is None
    for i in range(4):
        assert prod.try_send(*_frame(i))
    assert not prod.try_send(*_frame(4))
    assert prod.try_loan(1) is None
    with pytest.raises(TimeoutError, match="no free slot"):
        prod.loan(1, timeout=0.01)
    for i in range(4):
        with cons.try_receive() as got:  # type: ignore[union-attr]
            assert got.header.seq == i
    with pytest.raises(TimeoutError, match="no frame"):
        cons.receive(timeout=0.01)


def test_loan_is_zero_copy_and_single(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    loan = prod.loan(4 * 32, meta_len=5)
    with pytest.raises(RingBusyError):
        prod.try_loan(1)
    np.frombuffer(loan.payload, np.float32)[:] = np.arange(32)
    loan.meta[:] = b"hello"
    loan.commit(SlotHeader(seq=9), payload_len=4 * 30)
    with pytest.raises(RingError, match="already committed"):
        loan.commit(SlotHeader())
    with cons.receive() as got:
        assert np.array_equal(np.frombuffer(got.payload, np.float32), np.arange(30))
        assert bytes(got.meta) == b"hello"
    assert ring.statistics().free == 4


def test_eos_flag_is_refused_without_leaking_the_slot(ring: Ring) -> None:
    prod = ring.producer()
    eos = SlotHeader(flags=FLAG_EOS)
    with pytest.raises(HeaderError, match="end_of_stream"):
        prod.send(eos)
    with pytest.raises(HeaderError, match="end_of_stream"), prod.loan(0) as loan:
        loan.commit(eos)
    assert ring.statistics().free == 4
    assert ring.statistics().produced == 0


def test_discarded_loans_return_their_slot(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    prod.loan(10).discard()
    with pytest.raises(ZeroDivisionError), prod.loan(10):
        1 / 0  # noqa: B018
    assert ring.statistics().free == 4
    prod.send(SlotHeader(seq=1), b"", b"abc")
    with cons.receive() as got:
        assert got.position == 0
        assert bytes(got.payload) == b"abc"


def test_out_of_order_release_returns_slots_in_order(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    for i in range(3):
        prod.send(*_frame(i))
    a, b, c = cons.receive(), cons.receive(), cons.receive()
    c.release()
    b.release()
    assert ring.statistics().free == 1
    a.release()
    a.release()  # idempotent
    assert ring.statistics().free == 4


def test_end_of_stream_after_drain_and_sticky(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    for i in range(3):
        prod.send(*_frame(i))
    prod.end_of_stream()
    with pytest.raises(RingClosedError, match="end_of_stream"):
        prod.send(*_frame(3))
    assert [cons.receive().header.seq for _ in range(3)] == [0, 1, 2]
    for _ in range(2):
        with pytest.raises(EndOfStream):
            cons.try_receive()
    assert ring.statistics().eos_sent


def test_try_end_of_stream_needs_a_free_slot(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    for i in range(4):
        prod.send(*_frame(i))
    assert not prod.try_end_of_stream()
    cons.receive().release()
    assert prod.try_end_of_stream()


def test_abort_discards_pending_frames(ns: Namespace, ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    prod.send(*_frame(0))
    with Ring.attach(ring.spec) as third_party:
        third_party.abort()
        assert third_party.aborted
    with pytest.raises(RingAbortedError, match=ring.name):
        cons.try_receive()
    with pytest.raises(RingAbortedError):
        prod.try_loan(1)
    with pytest.raises(RingAbortedError):
        cons.receive()


def test_abort_wakes_threads_blocked_in_receive_and_loan(ns: Namespace) -> None:
    with Ring.create(RingSpec(ns, 1, 1, 64)) as full, Ring.create(RingSpec(ns, 2, 1, 64)) as empty:
        prod, cons = full.producer(), empty.consumer()
        prod.send(SlotHeader())
        errors: list[BaseException] = []

        def run(fn: object) -> None:
            try:
                fn()  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(lambda: prod.loan(1),)),
            threading.Thread(target=run, args=(cons.receive,)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.05)  # let both block in sem_wait (a missed race only weakens the test)
        full.abort()
        empty.abort()
        for t in threads:
            t.join(5)
        assert [type(e) for e in errors] == [RingAbortedError, RingAbortedError]


def test_oversize_frames_use_reused_external_segments(ns: Namespace) -> None:
    spec = RingSpec(ns, 0, 2, 256)
    with Ring.create(spec) as ring:
        prod, cons = ring.producer(), ring.consumer()

        def roundtrip(n: int, seq: int) -> int:
            loan = prod.loan(n, meta_len=3)
            gen = loan.ext_gen
            loan.meta[:] = b"big"
            np.frombuffer(loan.payload, np.uint8)[:] = np.arange(n) % 256
            loan.commit(SlotHeader(seq=seq))
            with cons.receive() as got:
                assert bool(got.header.flags & FLAG_EXTERNAL) == (gen != 0)
                assert got.header.ext_gen == gen
                assert bytes(got.meta) == b"big"
                assert np.array_equal(np.frombuffer(got.payload, np.uint8), np.arange(n) % 256)
            return gen

        assert roundtrip(1000, 0) == 1  # slot 0, fresh segment
        assert roundtrip(1000, 1) == 1  # slot 1, its own fresh segment
        assert roundtrip(1000, 2) == 1  # slot 0 again: reused, same generation
        assert roundtrip(4000, 3) == 1  # slot 1: still fits its page-rounded 4 KiB
        assert roundtrip(5000, 4) == 2  # slot 0: grown → generation 2
        ext = sorted(e for e in os.listdir("/dev/shm") if e.startswith(spec.ext_prefix))
        assert ext == [f"{spec.ext_prefix}0g2", f"{spec.ext_prefix}1g1"]  # g1 of slot 0 unlinked
        assert os.path.getsize(f"/dev/shm/{spec.ext_prefix}0g2") == 8192  # 2x growth
        assert roundtrip(100, 5) == 0  # small again: back inside the slot


def test_checksum_mismatch_is_detected(ns: Namespace) -> None:
    spec = RingSpec(ns, 0, 2, 256, checksum=True)
    with Ring.create(spec) as ring:
        prod, cons = ring.producer(), ring.consumer()
        prod.send(SlotHeader(seq=41), b"m", b"payload")
        with cons.receive() as got:
            assert got.header.flags & FLAG_CHECKSUM
        prod.send(SlotHeader(seq=42), b"m", b"payload")
        ring.buf[spec.slot_offset(1) + 16 + 3] ^= 0x01  # flip one payload bit in shm
        with pytest.raises(ChecksumError, match=r"seq=42") as info:
            cons.receive()
        assert info.value.ring == ring.name
        prod.send(SlotHeader(seq=43), b"", b"x" * 1000)  # external; still usable
        with cons.receive() as got:
            assert got.header.seq == 43


def test_corrupt_slot_header_is_reported(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    prod.send(SlotHeader())
    ring.buf[CTRL_SIZE + REC_HEADER] ^= 0xFF  # magic of slot 0's header
    with pytest.raises(RingCorruptError, match="magic"):
        cons.receive()


def test_lost_frame_is_reported(ring: Ring) -> None:
    prod, cons = ring.producer(), ring.consumer()
    prod.send(SlotHeader())
    ring.buf[CTRL_SIZE + RECORD_SIZE * 0] = 9  # stamp says another frame
    with pytest.raises(RingCorruptError, match="expected #0"):
        cons.receive()


def test_close_with_exported_views_does_not_crash(ns: Namespace) -> None:
    ring = Ring.create(RingSpec(ns, 0, 3, 256))
    prod, cons = ring.producer(), ring.consumer()
    prod.send(SlotHeader(), b"", np.arange(8, dtype=np.int64))
    prod.send(SlotHeader(), b"", np.arange(100, dtype=np.int64))  # external
    held = [np.frombuffer(cons.receive().payload, np.int64) for _ in range(2)]
    loan = prod.loan(16)
    in_loan = np.frombuffer(loan.payload, np.uint8)
    ring.close()
    ring.close()
    assert held[0][7] == 7  # still mapped, still readable
    assert held[1][99] == 99
    assert in_loan.shape == (16,)
    with pytest.raises(RingClosedError):
        loan.commit(SlotHeader())
    with pytest.raises(RingClosedError):
        cons.try_receive()
    with pytest.raises(RingClosedError):
        ring.producer()


def test_attach_checks_existence_and_geometry(ns: Namespace) -> None:
    with pytest.raises(RingError, match="does not exist"):
        Ring.attach(RingSpec(ns, 7, 2, 64))
    with Ring.create(RingSpec(ns, 7, 2, 64)) as ring:
        with pytest.raises(RingCorruptError, match="geometry"):
            Ring.attach(RingSpec(ns, 7, 3, 64))
        with pytest.raises(posix_ipc.ExistentialError):
            Ring.create(RingSpec(ns, 7, 2, 64))
        with Ring.attach(ring.spec) as again:  # the failed create removed nothing of ours
            again.producer().send(SlotHeader(seq=3))
        assert ring.consumer().receive().header.seq == 3
    lonely = Namespace(os.getpid(), "00000000abcd")  # no directory: doorbells impossible
    with pytest.raises(RingError, match="directory"):
        Ring.create(RingSpec(lonely, 0, 1, 64, async_consumer=True))


def test_one_endpoint_per_side(ring: Ring) -> None:
    ring.producer()
    with pytest.raises(RingBusyError):
        ring.producer()
    with pytest.raises(RingError, match="no doorbell"):
        ring.consumer().fileno()


def test_spec_validation(ns: Namespace) -> None:
    with pytest.raises(RingError, match="slot_count"):
        RingSpec(ns, 0, 0, 64)
    with pytest.raises(RingError, match="multiple of 64"):
        RingSpec(ns, 0, 2, 100)


def test_wait_any_fan_in(ns: Namespace) -> None:
    specs = [RingSpec(ns, i, 2, 64, async_consumer=True) for i in range(3)]
    rings = [Ring.create(s) for s in specs]
    try:
        prods = [r.producer() for r in rings]
        conss = [r.consumer() for r in rings]
        assert wait_any(conss, timeout=0.01) == []
        sender = threading.Thread(target=lambda: (time.sleep(0.02), prods[2].send(SlotHeader())))
        sender.start()
        assert wait_any(conss, timeout=5) == [conss[2]]
        sender.join()
        conss[2].receive().release()
        prods[0].send(SlotHeader(seq=5))
        prods[1].end_of_stream()
        assert wait_any(conss) == [conss[0], conss[1]]
        assert conss[0].receive().header.seq == 5
        with pytest.raises(EndOfStream):
            conss[1].receive()
    finally:
        for r in rings:
            r.close()


@pytest.mark.parametrize("checksum", [False, True])
def test_send_frame_round_trips_inline_and_external(ns: Namespace, checksum: bool) -> None:
    # The frame hot path (header packed from the encoded fields): same frame out, in a slot or
    # in the slot's external segment, checksum verified on the way out.
    from nursery_pipes import AudioFrame, TensorFrame
    from nursery_pipes.ipc import decode_frame, encode_frame

    small = AudioFrame.from_array(np.arange(8, dtype=np.float32), sample_rate=16000)
    big = TensorFrame(data=np.arange(300, dtype=np.uint8).reshape(3, 100), layout="HW")
    with Ring.create(RingSpec(ns, 0, 2, 256, checksum=checksum)) as ring:
        prod, cons = ring.producer(), ring.consumer()
        for seq, frame in ((7, small), (8, big), (9, small)):
            if seq == 8:
                prod.send_frame(encode_frame(frame), seq, timeout=1)
            else:
                assert prod.try_send_frame(encode_frame(frame), seq)
            with cons.receive(timeout=1) as got:
                assert got.header.seq == seq
                assert bool(got.header.flags & FLAG_EXTERNAL) == (frame is big)
                assert bool(got.header.flags & FLAG_CHECKSUM) == checksum
                assert decode_frame(got.header, got.meta, got.payload, copy=True) == frame


def test_try_send_frame_on_a_full_ring_sends_nothing(ns: Namespace) -> None:
    from nursery_pipes import TensorFrame
    from nursery_pipes.ipc import encode_frame

    encoded = encode_frame(TensorFrame(data=np.zeros(4, dtype=np.uint8)))
    with Ring.create(RingSpec(ns, 0, 1, 256)) as ring:
        prod, cons = ring.producer(), ring.consumer()
        assert prod.try_send_frame(encoded, 1)
        assert not prod.try_send_frame(encoded, 2)
        with pytest.raises(TimeoutError):
            prod.send_frame(encoded, 2, timeout=0.01)
        assert ring.statistics().produced == 1
        with cons.receive(timeout=1) as got:
            assert got.header.seq == 1
        assert cons.try_receive() is None


def test_send_frame_refusing_a_header_returns_the_slot(ns: Namespace) -> None:
    # A field the header cannot hold is named, and the slot it had taken goes back.
    import dataclasses

    from nursery_pipes import TensorFrame
    from nursery_pipes.ipc import encode_frame

    encoded = encode_frame(TensorFrame(data=np.zeros(4, dtype=np.uint8)))
    with Ring.create(RingSpec(ns, 0, 1, 256)) as ring:
        prod = ring.producer()
        with pytest.raises(HeaderError) as info:
            prod.send_frame(dataclasses.replace(encoded, aux=(0, 0, 0, 2**64)), 1)
        assert info.value.field == "aux"
        assert ring.statistics().free == 1
        assert prod.try_send_frame(encoded, 1)


def test_a_sync_consumer_sleeps_on_its_doorbell_and_anyone_may_ring_it(ns: Namespace) -> None:
    # Consumer.wait: a worker's idle wait. A post rings it; so may a third party (the supervisor
    # after a signal), which wakes it with nothing to take; a timeout returns False.
    from nursery_pipes.ipc._doorbell import ring_once

    with Ring.create(RingSpec(ns, 0, 2, 256, async_consumer=True)) as ring:
        prod, cons = ring.producer(), ring.consumer()
        assert cons.has_doorbell
        assert cons.try_receive() is None
        assert not cons.wait(0.01)
        prod.send(SlotHeader(seq=5), b"", b"x")
        assert cons.wait(1)
        with cons.try_receive() as got:  # type: ignore[union-attr]
            assert got.header.seq == 5
        assert not cons.wait(0)  # drained
        assert ring.spec.used_doorbell is not None
        ring_once(ring.spec.used_doorbell)
        assert cons.wait(1)
        assert cons.try_receive() is None
        prod.send(SlotHeader(seq=6), b"", b"y")
        assert cons.wait()  # no timeout: sleeps in a blocking read of the FIFO (here: at once)
        with cons.try_receive() as got:  # type: ignore[union-attr]
            assert got.header.seq == 6
        assert not cons.wait(0)  # that read drained the doorbell too
        woken = threading.Timer(0.05, ring_once, [ring.spec.used_doorbell])
        woken.start()
        assert cons.wait()
        woken.join()
        ring.abort()
        assert cons.wait()
        with pytest.raises(RingAbortedError):
            cons.try_receive()
    with Ring.create(RingSpec(ns, 1, 2, 256)) as plain:
        consumer = plain.consumer()
        assert not consumer.has_doorbell
        with pytest.raises(RingError, match="no doorbell"):
            consumer.wait(0)


def _rung(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_doorbells_ring_when_a_semaphore_leaves_empty_and_only_then(ns: Namespace) -> None:
    # The waiter of a doorbell waits only after finding its semaphore empty: a post that takes
    # it up from empty rings; one that finds tokens already there does not (no write for a busy
    # waiter). Both directions, and the waits still wake.
    with Ring.create(RingSpec(ns, 0, 3, 256, async_producer=True, async_consumer=True)) as ring:
        prod, cons = ring.producer(), ring.consumer()
        prod.send(SlotHeader(seq=1), b"", b"a")
        assert _rung(cons.fileno())  # used: 0 -> 1
        cons.clear_doorbell()
        prod.send(SlotHeader(seq=2), b"", b"b")
        assert not _rung(cons.fileno())  # used: 1 -> 2, the consumer is behind: no byte
        first, second = cons.try_receive(), cons.try_receive()
        assert first is not None
        assert second is not None
        assert cons.try_receive() is None  # empty now: a waiter would wait...
        prod.send(SlotHeader(seq=3), b"", b"c")
        assert cons.wait(1)  # ...and the post from empty wakes it
        third = cons.try_receive()
        assert third is not None
        assert not prod.try_send(SlotHeader(seq=4), b"", b"d")  # full: the producer would wait
        first.release()
        assert _rung(prod.fileno())  # free: 0 -> 1
        prod.clear_doorbell()
        second.release()
        assert not _rung(prod.fileno())  # free: 1 -> 2, nobody can be waiting
        assert prod.try_send(SlotHeader(seq=4), b"", b"d")
        third.release()
