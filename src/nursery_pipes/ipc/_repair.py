"""Repairing the end of a ring whose process died, so that a new process can take it over.

A node restarted inside a live session (issue 10) reuses its rings: the
supervisor repairs, in place, every ring end the dead worker held, while the
other end of each ring goes on (an upstream worker still producing, a
downstream worker still consuming). The other end only ever notices a pause.

Who writes what
    * producer line (``produced``, ``eos_sent``, ``producer_open``), the slot
      records (stamp, external generation, header) and slot data: the producer;
    * consumer line (``consumed``, ``released``, ``taken``, ``eos_taken``,
      ``consumer_open``): the consumer;
    * ``free``: posted by the consumer (slots returned), by the producer (a
      token it did not use), by abort and by the repair; acquired only by the
      producer. ``used``: posted by the producer, by abort and by the repair;
      acquired only by the consumer.

    A repair runs only once the end it repairs is gone (its process died, or
    it closed the endpoint). So the repair is the only writer of that end's
    line and records, and the one thing it shares with the live other end is
    *posting* to the semaphores — which is why it never acquires.

What a dead end may leave half done
    An end records each move in its own line, but a semaphore operation and
    the store recording it are two instructions; a process killed between
    them leaves a token nobody recorded:

    (a) consumer: acquired a ``used`` token, died before storing ``taken``;
    (b) consumer: stored ``consumed``, died before posting every ``free``
        token of that release (``released < consumed`` says so);
    (c) producer: acquired a ``free`` token (a loan), died before publishing
        or returning it;
    (d) producer: stored ``produced`` (the frame is complete), died before
        posting ``used``.

    (a), (c) and (d) look exactly like "was blocked in ``sem_wait``" or "was
    busy elsewhere": only the semaphore's value could tell them apart, and the
    live other end changes it concurrently.

Tokens are checked, so the repair posts the upper bound
    Every acquirer checks that a token stands for something before using it:
    the consumer takes frame ``pos`` only when its slot's stamp is ``pos + 1``
    (the producer stores the stamp after the frame, before its post); the
    producer lends slot ``pos`` only when ``pos < consumed + slot_count`` (the
    consumer stores ``consumed`` before its posts). A token that stands for
    nothing is dropped and the end waits again; ``try_*`` keep trying until the
    semaphore is empty, so the no-lost-wake-up argument of ``_ring.py`` holds
    unchanged. In a ring never repaired (``repairs == 0``) every token stands
    for exactly one slot, and a failed check is corruption: it raises
    ``RingCorruptError`` as it always did.

    So for each window above the repair posts the token that may be missing.
    One too many is harmless: the end that acquires it finds nothing behind it
    and drops it — at the latest when it catches up with the other end (the
    ring empty for the consumer, full for the producer). One too few would
    lose a slot for good (a deadlock at the end of the stream, or a ring of
    capacity 1 stuck). A check never drops a token that stands for something:
    every post is preceded, in its poster's program order, by the store that
    makes the check pass (stamp, ``consumed``), and the acquire synchronizes
    with the post. An end holding an excess token may also see a store whose
    post has not happened yet; it then uses that slot a little early, and the
    late post becomes the excess. That relies on one process's stores being
    seen in order by another (x86-64); the ring's normal path does not.

Repairing a consumer (:func:`repair_consumer`)
    Frames ``[consumed, taken)`` were taken by the dead consumer and not
    returned. A worker returns an input slot only after ``process()`` and its
    outputs are done (``worker/_main.py``), and it stores ``finished`` (the
    position after the last frame it finished) before it returns or keeps the
    slot (a frame it shared with several outputs is kept until they were read:
    ``_ownership``). So ``[max(consumed, finished), taken)`` are the frames it
    was processing: they are reported (sequence numbers from their slot
    headers, intact since a slot not returned is never rewritten); all of
    ``[consumed, taken)`` are dropped:
    ``consumed := taken``, post ``taken - released`` free tokens (the held
    slots, plus what (b) may have missed), ``released := taken``. An EOS among
    them (or ``eos_taken``) means the dead consumer had received the end of
    stream: ``eos_taken`` stays set and the new consumer raises
    ``EndOfStream`` at once. For (a), unless the end closed cleanly or had
    taken the EOS, one ``used`` token. The new consumer starts at ``taken``:
    frames published and not taken stay, in order.

Repairing a producer (:func:`repair_producer`)
    If the slot at ``produced`` carries the stamp ``produced + 1``, the dead
    producer completed that frame and died before storing ``produced``, hence
    before posting: publish it (``produced += 1``, post ``used``) — the token
    it held is now that frame's. Otherwise, unless it closed cleanly: one
    ``free`` token for (c) and, if it ever published, one ``used`` token for
    (d). ``eos_sent`` is set if the last frame published is the EOS. The new
    producer continues at ``produced``; external generations survive in the
    slot records (``_ring.py``).

A forward in progress (``_ownership``)
    A dead worker may have been forwarding a frame by reference: swapping the ownership of two
    external segments between a slot of an output ring and a slot of an input ring it held.
    :func:`repair_swaps` rolls such a swap forward from the output slot's journal; it must run
    before :func:`repair_consumer` returns the held input slots (their producer would write in
    what they own) and before a new producer takes the output ring.

Both ends dead (a worker→worker edge, one_for_all): the two repairs touch
disjoint lines and only post; repair both. Abort: a repair refuses an aborted
ring; an abort during or after one posts and rings as always, and acquirers
check ``aborted`` before the token check, so abort's token is never dropped.
A repair of an end that is clean and settled is a no-op, so repairing twice is
harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _spec as L
from ._doorbell import ring_once
from ._errors import HeaderError, RingCorruptError
from ._header import FLAG_EXTERNAL, decode_from
from ._ownership import resolve_swap, retired_by_death

if TYPE_CHECKING:
    from ._header import SlotHeader
    from ._ring import Ring

__all__ = [
    "ConsumerRepair",
    "DroppedFrame",
    "ProducerRepair",
    "repair_consumer",
    "repair_producer",
    "repair_shares",
    "repair_swaps",
]


@dataclass(frozen=True, slots=True)
class DroppedFrame:
    """A frame the dead consumer had taken and not finished: never delivered again."""

    position: int
    """Its position in the ring (0, 1, 2, ...)."""
    seq: int
    """Its header's sequence number (the client input it descends from)."""


@dataclass(frozen=True, slots=True)
class ConsumerRepair:
    """What :meth:`Ring.repair_consumer` found and did."""

    ring: str
    dropped: tuple[DroppedFrame, ...]
    """Frames the dead consumer had taken and not released (in process), in ring order."""
    eos_taken: bool
    """The dead consumer had received the end of stream: the new one gets ``EndOfStream``."""
    clean: bool
    """The end had closed its endpoint (exact counts) rather than died (upper bounds posted)."""


@dataclass(frozen=True, slots=True)
class ProducerRepair:
    """What :meth:`Ring.repair_producer` found and did."""

    ring: str
    published: bool
    """A frame the dead producer had completed but not posted was published."""
    returned: int
    """Free tokens posted for a loan the producer may have held (0 or 1)."""
    eos_sent: bool
    """The stream has ended: the new producer may send nothing more."""
    clean: bool
    """The end had closed its endpoint (nothing to return) rather than died."""


def _header(ring: Ring, pos: int) -> SlotHeader:
    rec = ring.spec.record_offset(pos % ring.spec.slot_count)
    try:
        return decode_from(ring.buf, rec + L.REC_HEADER)
    except HeaderError as exc:
        raise RingCorruptError(ring.name, f"frame #{pos}: {exc}") from exc


def _mark_repaired(ring: Ring) -> None:
    # Before any post that may be excess: an end that acquires such a token must see it
    # (the post orders this store before the acquire) and drop the token instead of raising.
    ring.words[L.W_REPAIRS] += 1


def _post(ring: Ring, sem_free: bool, count: int) -> None:
    """Post ``count`` tokens, then ring the doorbell of whoever waits for them (once)."""
    if count <= 0:
        return
    sem = ring.free_sem if sem_free else ring.used_sem
    for _ in range(count):
        sem.release()
    bell = ring.spec.free_doorbell if sem_free else ring.spec.used_doorbell
    if bell is not None:
        ring_once(bell)  # after the posts: the wake-up protocol of _ring.py


def repair_consumer(ring: Ring) -> ConsumerRepair:
    """Repair the consuming end of ``ring`` after its process died (see the module docstring).

    The caller (``Ring``) checked that the ring is open, not aborted, and that this process does
    not hold the end itself."""
    w, buf = ring.words, ring.buf
    consumed, released, taken = w[L.W_CONSUMED], w[L.W_RELEASED], w[L.W_TAKEN]
    clean = not buf[L.OFF_CONSUMER_OPEN]
    if not (released <= consumed <= taken and taken - released <= ring.spec.slot_count):
        raise RingCorruptError(
            ring.name, f"consumer line released={released} consumed={consumed} taken={taken}"
        )
    eos = bool(buf[L.OFF_EOS_TAKEN])
    dropped = []
    finished = w[L.W_FINISHED]
    for pos in range(consumed, taken):  # not returned: the slots still hold these frames
        header = _header(ring, pos)
        if header.is_eos:
            eos = True  # taken, but the consumer died before returning its slot
        elif pos >= finished:  # else done (outputs out), kept only while they were read
            dropped.append(DroppedFrame(pos, header.seq))
    extra_used = 0 if clean or eos else 1  # (a): a used token it may have taken unrecorded
    if not clean:
        _mark_repaired(ring)
    buf[L.OFF_EOS_TAKEN] = int(eos)
    w[L.W_CONSUMED] = taken  # before the posts: the producer's token check reads it
    _post(ring, True, taken - released)  # the held slots, and (b)
    w[L.W_RELEASED] = taken
    _post(ring, False, extra_used)
    buf[L.OFF_CONSUMER_OPEN] = 0  # last: a new consumer may attach now
    return ConsumerRepair(ring.name, tuple(dropped), eos, clean)


def repair_producer(ring: Ring) -> ProducerRepair:
    """Repair the producing end of ``ring`` after its process died (see the module docstring).

    The caller (``Ring``) checked as for :func:`repair_consumer`."""
    w, buf, spec = ring.words, ring.buf, ring.spec
    produced = w[L.W_PRODUCED]
    clean = not buf[L.OFF_PRODUCER_OPEN]
    eos = bool(buf[L.OFF_EOS])
    published = False
    returned = extra_used = 0
    if w[spec.stamp_word(produced % spec.slot_count)] == produced + 1:
        # Stamped (complete) and produced not stored: it was never posted. Its token is ours.
        eos = eos or _header(ring, produced).is_eos
        produced += 1
        published = True
    elif not clean:
        returned = 1  # (c)
        extra_used = 1 if produced else 0  # (d)
    if produced:
        eos = eos or _header(ring, produced - 1).is_eos
    if returned or extra_used:
        _mark_repaired(ring)
    w[L.W_PRODUCED] = produced
    buf[L.OFF_EOS] = int(eos)
    _post(ring, False, int(published) + extra_used)
    _post(ring, True, returned)
    buf[L.OFF_PRODUCER_OPEN] = 0  # last: a new producer may attach now
    return ProducerRepair(ring.name, published, returned, eos, clean)


def repair_swaps(inputs: Sequence[Ring], outputs: Sequence[Ring]) -> int:
    """Roll forward the segment swaps a dead worker left half done (``_ownership``).

    ``inputs`` / ``outputs``: the rings whose consuming / producing end the dead worker held.
    Call before :func:`repair_consumer` and :func:`repair_producer` of those rings. Returns how
    many swaps were pending (0 or 1 per output ring)."""
    held: list[tuple[Ring, int]] = []  # (ring, word of the owned id) of each held input slot
    for ring in inputs:
        w, spec = ring.words, ring.spec
        for pos in range(w[L.W_CONSUMED], w[L.W_TAKEN]):
            held.append((ring, spec.record_word(pos % spec.slot_count, L.REC_OWNED_SEG)))
    pending = 0
    for ring in outputs:
        w, spec = ring.words, ring.spec
        for slot in range(spec.slot_count):
            swap_in = w[spec.record_word(slot, L.REC_SWAP_IN)]
            if not swap_in:
                continue
            pending += 1
            owned_word = spec.record_word(slot, L.REC_OWNED_SEG)
            owned, changes = resolve_swap(
                w[owned_word],
                swap_in,
                w[spec.record_word(slot, L.REC_SWAP_OUT)],
                [r.words[word] for r, word in held],
            )
            w[owned_word] = owned
            for index, value in changes.items():
                r, word = held[index]
                r.words[word] = value
            w[spec.record_word(slot, L.REC_SWAP_IN)] = 0
    return pending


def repair_shares(inputs: Sequence[Ring], outputs: Sequence[Ring]) -> int:
    """Take away from a dead worker's held input slots the segments its shared frames live in
    (``_ownership``, fan-out): frames in its output rings that refer to a segment without
    owning it, not yet returned by their consumers. Returning such a slot as it is would let
    its producer write the segment under those readers; the slot owns nothing instead (its
    producer makes or finds another) and the segment, owned by none, is unlinked with the
    session's names. Call before :func:`repair_consumer` of ``inputs``. Returns how many."""
    referenced: set[int] = set()
    for ring in outputs:
        w, spec = ring.words, ring.spec
        end = w[L.W_PRODUCED]
        if w[spec.stamp_word(end % spec.slot_count)] == end + 1:
            end += 1  # complete, not counted: repair_producer publishes it
        for pos in range(w[L.W_CONSUMED], end):
            slot = pos % spec.slot_count
            frame = w[spec.record_word(slot, L.REC_FRAME_SEG)]
            owned = w[spec.record_word(slot, L.REC_OWNED_SEG)]
            if frame and owned != frame and _header(ring, pos).flags & FLAG_EXTERNAL:
                referenced.add(frame)
    count = 0
    for ring in inputs:
        w, spec = ring.words, ring.spec
        words = [
            spec.record_word(pos % spec.slot_count, L.REC_OWNED_SEG)
            for pos in range(w[L.W_CONSUMED], w[L.W_TAKEN])
        ]
        for index in retired_by_death([w[word] for word in words], referenced):
            w[words[index]] = 0
            count += 1
    return count
