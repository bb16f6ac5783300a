"""Sans-I/O codec for the fixed-size slot header of a frame ring.

A slot header describes one frame in a ring slot. It is plain data: this module
does no I/O, knows nothing about rings or processes, and is tested with plain
``def test_...`` functions.

Wire layout (little-endian, :data:`HEADER_SIZE` = 136 bytes)::

    off  size  field
      0   u16  magic (0x504E, "NP") — catches reads of an unwritten/overwritten slot
      2   u8   kind          frame kind code (audio, video, tensor, ...; frame layer)
      3   u8   fmt           sample/pixel/dtype code (frame layer)
      4   u16  flags         FLAG_EOS | FLAG_CHECKSUM | FLAG_EXTERNAL | FLAG_SHARED; other bits
                             reserved (0)
      6   u8   ndim          0..6
      7   u8   (reserved, 0)
      8   u32  meta_len      bytes of opaque metadata stored before the payload
     12   u32  checksum      crc32 of meta+payload when FLAG_CHECKSUM, else 0
     16   u32  ext_gen       generation of the external payload segment (FLAG_EXTERNAL)
     20   u32  (reserved, 0)
     24   u64  seq           causal sequence number
     32   u64  payload_len
     40   u64  ext_size      size of the external segment (FLAG_EXTERNAL), else 0
     48   u64  timestamp_us
     56  6xu64 shape         first ``ndim`` entries used, the rest 0
    104  4xu64 aux           free for the frame layer (sample_rate, channels, ...)

Invariants checked on construction (so both on encode and on decode):
every integer fits its width; ``len(shape) == ndim <= 6``; no reserved flag bit;
``checksum == 0`` unless FLAG_CHECKSUM; ``ext_gen == ext_size == 0`` unless
FLAG_EXTERNAL; FLAG_SHARED only with FLAG_EXTERNAL; an EOS header carries no meta and no
payload. A violation raises
:class:`HeaderError` naming the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._errors import HeaderError

__all__ = [
    "FLAG_CHECKSUM",
    "FLAG_EOS",
    "FLAG_EXTERNAL",
    "FLAG_SHARED",
    "HEADER_SIZE",
    "MAX_NDIM",
    "SlotHeader",
    "decode_from",
    "encode_into",
]

MAGIC: Final = 0x504E
MAX_NDIM: Final = 6
FLAG_EOS: Final = 0x0001
FLAG_CHECKSUM: Final = 0x0002
FLAG_EXTERNAL: Final = 0x0004
FLAG_SHARED: Final = 0x0008
"""The external segment is not the slot's but a shared reference (fan-out, ``_ownership``):
the consumer rings the producer's free doorbell when it returns the slot."""
_KNOWN_FLAGS: Final = FLAG_EOS | FLAG_CHECKSUM | FLAG_EXTERNAL | FLAG_SHARED

_U8: Final = 0xFF
_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF

_STRUCT: Final = struct.Struct("<HBBHBxIII4xQQQQ6Q4Q")
HEADER_SIZE: Final = _STRUCT.size
_ZERO_SHAPE: Final = (0,) * MAX_NDIM


def _check(field: str, value: object, limit: int) -> None:
    if type(value) is not int or not 0 <= value <= limit:
        raise HeaderError(field, f"{value!r} is not an integer in 0..{limit}")


@dataclass(frozen=True, slots=True)
class SlotHeader:
    """Description of one frame in a ring slot (see the module docstring)."""

    kind: int = 0
    fmt: int = 0
    flags: int = 0
    ndim: int = 0
    shape: tuple[int, ...] = ()
    seq: int = 0
    payload_len: int = 0
    meta_len: int = 0
    checksum: int = 0
    ext_gen: int = 0
    ext_size: int = 0
    timestamp_us: int = 0
    aux: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        # Fast path: struct packing checks every width at C speed; only when it
        # fails do we walk the fields to name the culprit.
        try:
            if self.ndim > MAX_NDIM or type(self.shape) is not tuple or type(self.aux) is not tuple:
                raise ValueError("ndim/shape/aux")
            _STRUCT.pack(
                *_fields(
                    self,
                    self.flags,
                    self.meta_len,
                    self.payload_len,
                    self.checksum,
                    self.ext_gen,
                    self.ext_size,
                )
            )
        except (struct.error, TypeError, ValueError):
            self._diagnose()
            raise  # pragma: no cover - _diagnose always raises a HeaderError
        self._check_flags()

    def _diagnose(self) -> None:
        _check("ndim", self.ndim, MAX_NDIM)
        if type(self.shape) is not tuple or len(self.shape) != self.ndim:
            raise HeaderError("shape", f"{self.shape!r} must be a tuple of ndim={self.ndim} ints")
        if type(self.aux) is not tuple or len(self.aux) != 4:
            raise HeaderError("aux", f"{self.aux!r} must be a tuple of 4 ints")
        for name, limit in _LIMITS:
            _check(name, getattr(self, name), limit)
        for dim in self.shape:
            _check("shape", dim, _U64)
        for value in self.aux:
            _check("aux", value, _U64)
        raise HeaderError("shape", "unencodable header")  # pragma: no cover

    def _check_flags(self) -> None:
        if self.flags & ~_KNOWN_FLAGS:
            raise HeaderError("flags", f"reserved bits set in {self.flags:#06x}")
        if not self.flags & FLAG_CHECKSUM and self.checksum:
            raise HeaderError("checksum", "is non-zero but FLAG_CHECKSUM is not set")
        if self.flags & FLAG_SHARED and not self.flags & FLAG_EXTERNAL:
            raise HeaderError("flags", "FLAG_SHARED without FLAG_EXTERNAL")
        if not self.flags & FLAG_EXTERNAL and (self.ext_gen or self.ext_size):
            raise HeaderError("ext_gen", "external fields set but FLAG_EXTERNAL is not set")
        if self.flags & FLAG_EOS and (self.payload_len or self.meta_len):
            raise HeaderError("payload_len", "an end-of-stream header carries no data")

    @property
    def is_eos(self) -> bool:
        return bool(self.flags & FLAG_EOS)


_LIMITS: Final = (
    ("kind", _U8), ("fmt", _U8), ("flags", _U16), ("meta_len", _U32), ("checksum", _U32),
    ("ext_gen", _U32), ("seq", _U64), ("payload_len", _U64), ("ext_size", _U64),
    ("timestamp_us", _U64),
)  # fmt: skip


def _fields(
    h: SlotHeader,
    flags: int,
    meta_len: int,
    payload_len: int,
    checksum: int,
    ext_gen: int,
    ext_size: int,
) -> tuple[int, ...]:
    return (
        MAGIC, h.kind, h.fmt, flags, h.ndim, meta_len, checksum, ext_gen,
        h.seq, payload_len, ext_size, h.timestamp_us,
        *h.shape, *_ZERO_SHAPE[h.ndim :], *h.aux,
    )  # fmt: skip


def encode_into(buf: bytearray | memoryview, offset: int, header: SlotHeader) -> None:
    """Write ``header`` into ``buf[offset:offset + HEADER_SIZE]``."""
    h = header
    _STRUCT.pack_into(
        buf, offset,
        *_fields(h, h.flags, h.meta_len, h.payload_len, h.checksum, h.ext_gen, h.ext_size),
    )  # fmt: skip


def encode_frame_into(
    buf: bytearray | memoryview,
    offset: int,
    header: SlotHeader,
    *,
    flags: int,
    meta_len: int,
    payload_len: int,
    checksum: int,
    ext_gen: int,
    ext_size: int,
) -> None:
    """Write ``header`` with the transport-owned fields replaced (the ring's fast path).

    Saves building a new :class:`SlotHeader` per frame; the caller (the ring)
    guarantees the replaced fields are consistent with each other.
    """
    _STRUCT.pack_into(
        buf, offset, *_fields(header, flags, meta_len, payload_len, checksum, ext_gen, ext_size)
    )


def _plain(value: int) -> int:
    return int(value) if isinstance(value, int) and type(value) is not bool else value


def pack_frame_into(
    buf: bytearray | memoryview,
    offset: int,
    kind: int,
    fmt: int,
    shape: tuple[int, ...],
    seq: int,
    timestamp_us: int,
    aux: tuple[int, int, int, int],
    *,
    flags: int,
    meta_len: int,
    payload_len: int,
    checksum: int,
    ext_gen: int,
    ext_size: int,
) -> None:
    """Write a header from its fields, without building a :class:`SlotHeader` (the hot path of
    a frame's send). The struct checks every width at C speed; only when it refuses a value is
    the header built, to raise the :class:`HeaderError` that names the field."""
    ndim = len(shape)
    try:
        if ndim > MAX_NDIM or len(aux) != 4:
            raise ValueError("ndim/aux")
        _STRUCT.pack_into(
            buf, offset, MAGIC, kind, fmt, flags, ndim, meta_len, checksum, ext_gen,
            seq, payload_len, ext_size, timestamp_us, *shape, *_ZERO_SHAPE[ndim:], *aux,
        )  # fmt: skip
    except (struct.error, TypeError, ValueError):
        SlotHeader(  # kind and fmt may be IntEnums (frame codes): as plain ints, not culprits
            kind=_plain(kind), fmt=_plain(fmt), flags=flags, ndim=ndim, shape=shape, seq=seq,
            payload_len=payload_len, meta_len=meta_len, checksum=checksum, ext_gen=ext_gen,
            ext_size=ext_size, timestamp_us=timestamp_us, aux=aux,
        )  # fmt: skip
        raise  # pragma: no cover - the constructor raised a HeaderError


def decode_from(buf: bytes | bytearray | memoryview, offset: int) -> SlotHeader:
    """Read and validate the header at ``buf[offset:offset + HEADER_SIZE]``.

    Raises :class:`HeaderError` naming the field when the bytes are not a valid
    header (wrong magic, ndim > 6, stray shape entries, reserved bits, ...).
    """
    if len(buf) - offset < HEADER_SIZE or offset < 0:
        raise HeaderError("magic", f"need {HEADER_SIZE} bytes at offset {offset}")
    v = _STRUCT.unpack_from(buf, offset)
    if v[0] != MAGIC:
        raise HeaderError("magic", f"{v[0]:#06x} is not {MAGIC:#06x} (slot never written?)")
    ndim = v[4]
    if ndim > MAX_NDIM:
        raise HeaderError("ndim", f"{ndim} exceeds the maximum of {MAX_NDIM}")
    dims = v[12:18]
    if any(dims[ndim:]):
        raise HeaderError("shape", f"entries beyond ndim={ndim} are non-zero: {dims!r}")
    header = _trusted(v, ndim)
    header._check_flags()
    return header


_new = object.__new__
_set = object.__setattr__


def _trusted(v: tuple[int, ...], ndim: int) -> SlotHeader:
    """Build a header from unpacked values without re-checking their widths.

    The widths are guaranteed by the struct format; skipping ``__init__``
    halves the cost of decoding (this runs once per received frame).
    """
    h: SlotHeader = _new(SlotHeader)
    _set(h, "kind", v[1])
    _set(h, "fmt", v[2])
    _set(h, "flags", v[3])
    _set(h, "ndim", ndim)
    _set(h, "shape", v[12 : 12 + ndim])
    _set(h, "seq", v[8])
    _set(h, "payload_len", v[9])
    _set(h, "meta_len", v[5])
    _set(h, "checksum", v[6])
    _set(h, "ext_gen", v[7])
    _set(h, "ext_size", v[10])
    _set(h, "timestamp_us", v[11])
    _set(h, "aux", v[18:22])
    return h
