"""Frame transport between processes: shared-memory rings, one per graph edge.

Worker processes import only the sync parts (``Ring``, ``Producer``,
``Consumer``, ...); the trio adapters (``TrioProducer``, ``TrioConsumer``) are
loaded lazily on first access, so importing this package never imports trio.
The design (wake-up protocol, external segments, EOS/abort) is described in
``_ring.py``; naming and sweeping in ``_names.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    HEADER_SIZE,
    MAX_NDIM,
    SlotHeader,
    decode_from,
    encode_into,
)
from ._names import Namespace, sweep_stale, unlink_namespace
from ._producer import Loan, Producer
from ._ring import Ring, RingStatistics, wait_any
from ._spec import RingSpec

if TYPE_CHECKING:
    from ._trio import TrioConsumer, TrioProducer

__all__ = [
    "FLAG_CHECKSUM",
    "FLAG_EOS",
    "FLAG_EXTERNAL",
    "HEADER_SIZE",
    "MAX_NDIM",
    "ChecksumError",
    "Consumer",
    "EndOfStream",
    "HeaderError",
    "IpcError",
    "Loan",
    "Namespace",
    "NamespaceError",
    "Producer",
    "Received",
    "Ring",
    "RingAbortedError",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
    "RingSpec",
    "RingStatistics",
    "SlotHeader",
    "TrioConsumer",
    "TrioProducer",
    "decode_from",
    "encode_into",
    "sweep_stale",
    "unlink_namespace",
    "wait_any",
]

_LAZY = {"TrioConsumer", "TrioProducer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import _trio

        return getattr(_trio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
