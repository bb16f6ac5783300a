"""Who owns which external segment, and when a frame may be forwarded by reference. Sans-I/O.

External segments (frames bigger than a slot, see ``_ring.py``) are owned by ring SLOTS, one
segment per slot at most, and every segment by at most one slot. A worker that passes a big
input frame on unchanged (a ``zero_copy`` node returning its input, ``PassThrough``) does not
copy it: it publishes, in its output slot, a reference to the segment the input already lives
in, and SWAPS ownership — the output slot takes the input's segment, the input slot takes the
segment the output slot owned. Segments circulate between the rings of a session; none is
created, copied or unlinked by a forward, and each process keeps its mappings (cached by
segment name, ``_segment.SegmentCache``), so a forward costs a few stores.

Segment ids
    ``(ring index, slot, generation)`` of the ring slot that CREATED the segment, packed in one
    u64 (:func:`seg_id`; 0 means "none") so that a store or load of an id is one instruction
    (never torn by a SIGKILL). The name is ``…r<ring>x<slot>g<gen>`` (``RingSpec.ext_name``):
    a segment keeps the name it was created with wherever it goes, and a name is never reused
    (the creating slot's generation counter lives in shared memory). Records hold, per slot,
    the *owned* id and the *frame* id (the segment the frame in the slot lives in).

Ownership table (slot ``s`` of ring ``r``, owning segment ``X``)

    ============================  ==================  ===============  ==========================
    state of slot s               may write X         may read X       owned id changed by
    ============================  ==================  ===============  ==========================
    free (producer holds token)   r's producer        —                r's producer (grow: a new
                                                                       segment, the old unlinked)
    published, not yet taken      —                   —                —
    taken (consumer holds it)     —                   r's consumer     r's consumer, in a forward
                                                                       (gives X away, gets Y)
    ============================  ==================  ===============  ==========================

    A frame published in slot ``s`` always lives in ``s``'s owned segment (the producer writes
    in it, or a forward has just swapped it in): so the only readers of a slot's owned segment
    are the readers of that slot's frame, and once the consumer returns the slot nobody reads
    it — the producer may write in it. A forward (worker holding input frame ``q`` in slot
    ``s`` of ring ``r``, owning X, and the free token of slot ``t`` of ring ``r'``, owning Y)
    makes ``t`` own X and ``s`` own Y: X is then read by ``r'``'s consumer (and still by the
    forwarder until it returns ``q``), and written again only once ``t`` is free again; Y was
    read by nobody (``t`` was free) and is written by ``r``'s producer only after the forwarder
    returned ``q``. A forwarded frame can be forwarded again, down a whole chain.

    A ``zero_copy`` node that keeps a view of its input past ``process()`` would see X written
    once X is free again, wherever it went: the worker's ``KeptInputError`` check stops the
    node before it returns the input slot, forwarded or not.

A forward is a journalled swap (a dead forwarder leaves it repairable)

    ====  ========================================  =========================================
    step  store (by the forwarder)                  if the forwarder dies after this step
    ====  ========================================  =========================================
    1     ``t.swap_out := Y``, ``t.swap_in := X``   journal says: swap in progress
    2     ``t.owned := X``                          X owned twice (``s`` and ``t``), Y by none
    3     ``s.owned := Y``                          swap done, journal stale
    4     ``t.swap_in := 0``                        nothing pending
    5     frame id, header, stamp, post of ``t``    (the ring's usual publish)
    ====  ========================================  =========================================

    The repair of a dead worker (:func:`resolve_swap`, run by the supervisor before it returns
    the dead worker's slots) rolls a pending swap FORWARD: ``t`` owns X, the held input slot
    that still owns X owns Y. Every segment has one owner again and none is lost. Step 2
    before step 3 matters: never may two slots that can be written (a returned input slot and
    a free output slot) own the same segment.

What goes by reference: any payload that lies in the input frame's segment — the input's
payload unchanged, or a contiguous part of it (a slice along the first axis) — with any
metadata: unless the frame is the input's very bytes, the metadata goes into the output slot
and the slot record says where the payload starts in the segment (``REC_PAYLOAD_AT``).

Fan-out: a forward moves the ownership once, to the first output; other outputs get a copy.
A frame forwarded twice (a node emitting its input twice) is copied the second time (its input
slot no longer owns the segment).

Fan-out by reference: a SHARE (``Producer.share``) publishes a reference to X in the output
slot WITHOUT moving ownership — the output slot keeps owning Y, its frame id is X — so one
payload can go to several output rings. X stays owned by the input slot ``s``, which the
sharing worker keeps (does not return) until every output ring's consumer has returned the
slot of its reference (``Producer.returned``); until then no producer may write X, since
only ``s``'s producer writes it, once ``s`` is free. A shared frame is never passed on by
reference again (its slot does not own X: ``forward_refusal``), and a supervisor's pump does
not lend it (``SegmentPool.borrow``): its readers copy what they keep, so every reader of X is
a reader of one of the shares, and the sharer sees each of them go.

    ================================  ===========================================================
    event                             what keeps X safe
    ================================  ===========================================================
    sharer publishes refs to O1..Ok   it stores ``finished`` (outputs out), then keeps ``s``
    a reader returns its slot         the sharer returns ``s`` once all k are returned
    a reader dies                     its repair returns its slot (it passed nothing on by ref.)
    the sharer dies (or ends)         ``repair_shares``: each held input slot owning a segment
                                      that unread frames in its output rings refer to is made to
                                      own nothing (its producer makes another); the segment,
                                      owned by none, is unlinked with the session's names
    ================================  ===========================================================

    Slots go back in ring order, so a kept slot holds back the later ones too: the input
    ring's producer may wait for the slowest reader of a shared frame (an ordinary reader
    returns its slot once its ``process()`` is done). The sharer does not wait for anything
    else: idle, it also sleeps on its output rings' "free" doorbells, which a consumer rings
    when it returns a shared frame's slot (``FLAG_SHARED``), and returns its kept slots the
    moment the last reader is done. It keeps at most ``slot_count - 1`` per input ring
    (beyond, it forwards and copies as above). Which frames are shared is the wiring's choice
    (``ShmPorts.share_outputs``): fan-outs where at least two readers copy their input anyway
    (ordinary nodes), so that no copy is added.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

__all__ = ["forward_refusal", "resolve_swap", "retired_by_death", "seg_gen", "seg_id", "seg_origin"]

_RING_BITS: Final = 20  # RingSpec.index < 1_000_000 < 2**20
_SLOT_BITS: Final = 17  # slot < MAX_SLOTS = 65536 < 2**17
_GEN_BITS: Final = 64 - _RING_BITS - _SLOT_BITS
MAX_GEN: Final = (1 << _GEN_BITS) - 1


def seg_id(ring: int, slot: int, gen: int) -> int:
    """The u64 id of segment generation ``gen`` (>= 1) created by slot ``slot`` of ring ``ring``."""
    if not (0 <= ring < 1 << _RING_BITS and 0 <= slot < 1 << _SLOT_BITS and 1 <= gen <= MAX_GEN):
        raise ValueError(f"segment id out of range: ring={ring} slot={slot} gen={gen}")
    return (ring << (_SLOT_BITS + _GEN_BITS)) | (slot << _GEN_BITS) | gen


def seg_origin(sid: int) -> tuple[int, int, int]:
    """``(ring, slot, gen)`` of a segment id (its name's parts)."""
    return sid >> (_SLOT_BITS + _GEN_BITS), (sid >> _GEN_BITS) & ((1 << _SLOT_BITS) - 1), seg_gen(sid)


def seg_gen(sid: int) -> int:
    return sid & MAX_GEN


def forward_refusal(
    *,
    external: bool,
    same_namespace: bool,
    released: bool,
    input_owns_segment: bool,
    inside: bool,
    meta_fits: bool,
) -> str | None:
    """Why a frame may NOT be published by reference to the input frame's segment (None: it may).

    The payload to publish must lie in the input frame's external segment (all of the input's
    payload, or a part of it: a slice), of the same session, which the input's slot still owns
    (not forwarded already), the input still held (not returned to its producer). Unless the
    frame is the input's very bytes in place, its metadata goes into the output slot (it must
    fit there) and the slot record says where the payload starts."""
    if not external:
        return "the input frame is in its slot, not in an external segment"
    if not same_namespace:
        return "the rings belong to different sessions"
    if released:
        return "the input frame was already returned to its producer"
    if not input_owns_segment:
        return "the input frame's segment was already forwarded"
    if not inside:
        return "the payload is not in the input frame's segment"
    if not meta_fits:
        return "the metadata does not fit the output ring's slot"
    return None


def resolve_swap(
    out_owned: int, swap_in: int, swap_out: int, held_owned: Sequence[int]
) -> tuple[int, dict[int, int]]:
    """Roll a forward's swap forward after its forwarder died (see the journal table).

    ``out_owned`` / ``swap_in`` / ``swap_out``: the output slot's owned id and journal
    (``swap_in != 0``: a swap was in progress); ``held_owned``: the owned ids of the input
    slots the dead forwarder held. Returns the output slot's owned id and, by index into
    ``held_owned``, the input slots to change."""
    if not swap_in:
        return out_owned, {}
    changes = {i: swap_out for i, owned in enumerate(held_owned) if owned == swap_in}
    return swap_in, changes


def retired_by_death(held_owned: Sequence[int], referenced: Collection[int]) -> list[int]:
    """After a sharing worker died (fan-out, see above): which of the input slots it held
    (``held_owned``: their owned ids) must give their segment up, because frames it shared,
    still unread in its output rings, live in it (``referenced``). Indexes into
    ``held_owned``."""
    return [i for i, owned in enumerate(held_owned) if owned and owned in referenced]
