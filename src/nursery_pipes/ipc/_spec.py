"""What a ring is called and how its shared segment is laid out (no I/O).

A :class:`RingSpec` is everything a process needs to attach to one ring; it is
a frozen, picklable value the supervisor sends to a worker.

Segment layout (offsets in bytes)::

    0      control area (CTRL_SIZE = 256)
             0  static: magic[8], version u32, slot_count u32, record_size u32,
                flags u32 (bit 0: checksums), slot_size u64, data_offset u64
            64  producer line: produced u64 (frames+EOS published), eos_sent u8 @72,
                producer_open u8 @73
           128  consumer line: consumed u64 (slots returned; stored before the free posts),
                released u64 @136 (the same, stored after them), taken u64 @144 (frames
                taken), eos_taken u8 @152, consumer_open u8 @153, finished u64 @160 (frames
                whose processing is done: every output published; a worker stores it before
                it returns, or keeps, the frame's slot — a repair does not report those)
           192  aborted u8; repairs u64 @200 (how often an end was repaired, see _repair)
    256    slot records, RECORD_SIZE = 192 each:
             +0 stamp u64 (ring position + 1 of the frame in the slot)
             +8 last external-segment generation this slot created u32
            +16 SlotHeader (HEADER_SIZE = 136 bytes)
           +152 frame segment u64: id of the external segment the frame in the slot lives in
           +160 owned segment u64: id of the external segment the slot owns (0: none)
           +168 swap journal u64: id of the segment a forward is bringing in (0: none)
           +176 swap journal u64: id of the segment that forward gives away
           +184 payload offset u64 of an external frame: 0, meta and payload are in the
                segment laid out as in a slot; else the payload is at offset - 1 in the
                segment and the meta in the slot (a frame forwarded by reference)
           (segment ids: see ``_ownership``)
    data_offset (page aligned)
           slot data, slot_size bytes each: meta at +0, payload at
           +round_up(meta_len, 16)

Producer and consumer counters live on separate cache lines so the two
processes do not false-share. The two POSIX semaphores (free, used) are the
authority on how many slots are where; the counters say which ones (the
repair of a dead end, ``_repair``, reads them). The u64 counters and the
stamps are read and written through an aligned ``Q`` view (``Ring.words``,
indexes ``W_*``): one 8-byte load or store each, never torn, which the
repair and the token checks rely on (``struct`` packs byte by byte).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._errors import RingError
from ._header import HEADER_SIZE
from ._names import Namespace
from ._segment import PAGE_SIZE, round_up

__all__ = ["RingSpec"]

MAGIC: Final = b"NPRING\x00\x01"
VERSION: Final = 4
CTRL_STATIC: Final = struct.Struct("<8sIIIIQQ")
OFF_PRODUCED: Final = 64
OFF_EOS: Final = 72
OFF_PRODUCER_OPEN: Final = 73
OFF_CONSUMED: Final = 128
OFF_RELEASED: Final = 136
OFF_TAKEN: Final = 144
OFF_EOS_TAKEN: Final = 152
OFF_CONSUMER_OPEN: Final = 153
OFF_FINISHED: Final = 160
OFF_ABORTED: Final = 192
OFF_REPAIRS: Final = 200
CTRL_SIZE: Final = 256
# Indexes of the u64 counters in Ring.words (the control area and records seen as u64s).
W_PRODUCED: Final = OFF_PRODUCED // 8
W_CONSUMED: Final = OFF_CONSUMED // 8
W_RELEASED: Final = OFF_RELEASED // 8
W_TAKEN: Final = OFF_TAKEN // 8
W_FINISHED: Final = OFF_FINISHED // 8
W_REPAIRS: Final = OFF_REPAIRS // 8
RECORD_SIZE: Final = 192
REC_GEN: Final = 8
REC_HEADER: Final = 16
REC_FRAME_SEG: Final = 152
REC_OWNED_SEG: Final = 160
REC_SWAP_IN: Final = 168
REC_SWAP_OUT: Final = 176
REC_PAYLOAD_AT: Final = 184
META_ALIGN: Final = 16
SLOT_ALIGN: Final = 64
MAX_SLOTS: Final = 65536
U64: Final = struct.Struct("<Q")
U32: Final = struct.Struct("<I")
FLAG_SPEC_CHECKSUM: Final = 1

assert REC_HEADER + HEADER_SIZE <= REC_FRAME_SEG
assert REC_PAYLOAD_AT + 8 <= RECORD_SIZE
assert CTRL_SIZE % 8 == 0  # stamps are aligned u64 words
assert RECORD_SIZE % 8 == 0


@dataclass(frozen=True)
class RingSpec:
    """Identity and geometry of one ring (one graph edge).

    ``async_producer`` / ``async_consumer`` say which ends wait on a file
    descriptor (``fileno()``) instead of blocking in the semaphore: a trio
    endpoint, or a worker multiplexing several input rings with ``wait_any``.
    Each such end gets a doorbell FIFO that the other end rings on every post.
    ``slot_size`` is a multiple of 64 (0 allowed: every frame goes external).
    """

    namespace: Namespace
    index: int
    slot_count: int
    slot_size: int
    checksum: bool = False
    async_producer: bool = False
    async_consumer: bool = False

    def __post_init__(self) -> None:
        where = f"/{self.namespace.prefix}r{self.index}"
        if not 0 <= self.index < 1_000_000:
            raise RingError(where, f"index {self.index} out of range 0..999999")
        if not 1 <= self.slot_count <= MAX_SLOTS:
            raise RingError(where, f"slot_count {self.slot_count} out of range 1..{MAX_SLOTS}")
        if self.slot_size < 0 or self.slot_size % SLOT_ALIGN:
            raise RingError(where, f"slot_size {self.slot_size} is not a multiple of 64")

    @property
    def name(self) -> str:
        """The ring's shm name, ``/np.<pid>.<token>.r<index>``."""
        return self.namespace.name(f"r{self.index}")

    @property
    def free_sem_name(self) -> str:
        return self.namespace.name(f"r{self.index}f")

    @property
    def used_sem_name(self) -> str:
        return self.namespace.name(f"r{self.index}u")

    @property
    def ext_prefix(self) -> str:
        """/dev/shm entry prefix (no ``/``) of this ring's external segments."""
        return f"{self.namespace.prefix}r{self.index}x"

    def ext_name(self, slot: int, gen: int) -> str:
        return self.namespace.name(f"r{self.index}x{slot}g{gen}")

    @property
    def used_doorbell(self) -> str | None:
        """FIFO rung by the producer on every post, if the consumer waits on an fd."""
        return self.namespace.fifo_path(f"r{self.index}.used") if self.async_consumer else None

    @property
    def free_doorbell(self) -> str | None:
        """FIFO rung by the consumer on every release, if the producer waits on an fd."""
        return self.namespace.fifo_path(f"r{self.index}.free") if self.async_producer else None

    @property
    def data_offset(self) -> int:
        return round_up(CTRL_SIZE + self.slot_count * RECORD_SIZE, PAGE_SIZE)

    @property
    def total_size(self) -> int:
        return self.data_offset + self.slot_count * self.slot_size

    @staticmethod
    def record_offset(slot: int) -> int:
        return CTRL_SIZE + slot * RECORD_SIZE

    @staticmethod
    def stamp_word(slot: int) -> int:
        """Index of slot ``slot``'s stamp in ``Ring.words``."""
        return (CTRL_SIZE + slot * RECORD_SIZE) // 8

    @staticmethod
    def record_word(slot: int, field: int) -> int:
        """Index in ``Ring.words`` of the u64 at ``field`` (``REC_*``) of slot ``slot``'s record."""
        return (CTRL_SIZE + slot * RECORD_SIZE + field) // 8

    def slot_offset(self, slot: int) -> int:
        return self.data_offset + slot * self.slot_size
