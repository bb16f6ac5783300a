"""Frame transport between processes: shared-memory rings, one per graph edge.

Both sides import this package: worker processes and the supervisor. So it is
synchronous and imports no trio; the supervisor's trio adapters of the ring
endpoints are ``executors/_rings.py``. The design (wake-up protocol, external
segments, EOS/abort) is described in ``_ring.py``; repairing the end of a
dead process in place in ``_repair.py``; naming and sweeping in
``_names.py``; frames ↔ slot contents in ``_codec.py``.
"""

from __future__ import annotations

from ._codec import EncodedFrame, decode_frame, encode_frame, shm_refusal, slot_array
from ._consumer import Consumer, Received
from ._errors import (
    ChecksumError,
    EndOfStream,
    HeaderError,
    IpcError,
    NamespaceError,
    RingAbortedError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
)
from ._header import (
    FLAG_CHECKSUM,
    FLAG_EOS,
    FLAG_EXTERNAL,
    FLAG_SHARED,
    HEADER_SIZE,
    MAX_NDIM,
    SlotHeader,
    decode_from,
    encode_into,
)
from ._names import Namespace, sweep_stale, unlink_namespace
from ._pool import Borrowed, SegmentPool
from ._producer import Loan, Producer
from ._repair import ConsumerRepair, DroppedFrame, ProducerRepair
from ._ring import Ring, RingStatistics, wait_any
from ._spec import RingSpec

__all__ = [
    "FLAG_CHECKSUM",
    "FLAG_EOS",
    "FLAG_EXTERNAL",
    "FLAG_SHARED",
    "HEADER_SIZE",
    "MAX_NDIM",
    "Borrowed",
    "ChecksumError",
    "Consumer",
    "ConsumerRepair",
    "DroppedFrame",
    "EncodedFrame",
    "EndOfStream",
    "HeaderError",
    "IpcError",
    "Loan",
    "Namespace",
    "NamespaceError",
    "Producer",
    "ProducerRepair",
    "Received",
    "Ring",
    "RingAbortedError",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
    "RingSpec",
    "RingStatistics",
    "SegmentPool",
    "SlotHeader",
    "decode_frame",
    "decode_from",
    "encode_frame",
    "encode_into",
    "shm_refusal",
    "slot_array",
    "sweep_stale",
    "unlink_namespace",
    "wait_any",
]
