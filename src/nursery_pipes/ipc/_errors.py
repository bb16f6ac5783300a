"""Exceptions of the frame transport.

Hierarchy (named by meaning, like trio's flat error set)::

    IpcError                       base of everything raised by nursery_pipes.ipc
    ├── HeaderError (ValueError)   a slot header is invalid or corrupt; names the field
    ├── NamespaceError             a namespace name or directory is unusable
    └── RingError                  something about one ring; ``.ring`` names it
        ├── RingClosedError        YOU closed this endpoint/ring (trio: ClosedResourceError)
        ├── RingAbortedError       someone aborted the ring (trio: BrokenResourceError)
        ├── RingBusyError          one loan at a time / one endpoint per side
        ├── RingCorruptError       the shared control area or a slot record is inconsistent
        ├── ChecksumError          crc32 of meta+payload does not match; names ring and seq
        └── EndOfStream            the producer ended the stream (trio: EndOfChannel)

Every message says which ring (``/np.<pid>.<token>.r<n>``) and what went wrong,
so an error surfacing in the supervisor can be tied to a graph edge.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "EndOfStream",
    "HeaderError",
    "IpcError",
    "NamespaceError",
    "RingAbortedError",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
]


class IpcError(Exception):
    """Base class of every error raised by :mod:`nursery_pipes.ipc`."""


class HeaderError(IpcError, ValueError):
    """A slot header is invalid (on encode) or corrupt (on decode).

    ``field`` names the offending header field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"slot header field {field!r}: {message}")
        self.field = field


class NamespaceError(IpcError):
    """A namespace name or its private directory is unusable."""


class RingError(IpcError):
    """An error concerning one ring; ``ring`` is its shared-memory name."""

    def __init__(self, ring: str, message: str) -> None:
        super().__init__(f"ring {ring}: {message}")
        self.ring = ring


class RingClosedError(RingError):
    """This process closed the ring or endpoint and then tried to use it."""


class RingAbortedError(RingError):
    """The ring was aborted (by either side or by the supervisor)."""


class RingBusyError(RingError):
    """The operation conflicts with one already in progress on this endpoint."""


class RingCorruptError(RingError):
    """Shared state of the ring is inconsistent (bad magic, lost/duplicated slot)."""


class ChecksumError(RingError):
    """A received frame's crc32 does not match the one its producer computed."""

    def __init__(self, ring: str, seq: int, expected: int, actual: int) -> None:
        super().__init__(
            ring,
            f"checksum mismatch for frame seq={seq}: header says {expected:#010x}, "
            f"meta+payload hash to {actual:#010x}",
        )
        self.seq = seq
        self.expected = expected
        self.actual = actual


class EndOfStream(RingError):
    """The producer sent end-of-stream and every frame before it was received."""
