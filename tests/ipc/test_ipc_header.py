"""Slot header codec: plain sync tests (sans-I/O)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nursery_pipes.ipc import (
    FLAG_CHECKSUM,
    FLAG_EOS,
    FLAG_EXTERNAL,
    HEADER_SIZE,
    HeaderError,
    SlotHeader,
    decode_from,
    encode_into,
)
from nursery_pipes.ipc._header import pack_frame_into

U8, U16, U32, U64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))


@st.composite
def headers(draw: st.DrawFn) -> SlotHeader:
    ndim = draw(st.integers(0, 6))
    flags = draw(st.sampled_from([0, FLAG_CHECKSUM, FLAG_EXTERNAL, FLAG_CHECKSUM | FLAG_EXTERNAL]))
    eos = draw(st.booleans())
    return SlotHeader(
        kind=draw(U8),
        fmt=draw(U8),
        flags=flags | (FLAG_EOS if eos else 0),
        ndim=ndim,
        shape=tuple(draw(st.lists(U64, min_size=ndim, max_size=ndim))),
        seq=draw(U64),
        payload_len=0 if eos else draw(U64),
        meta_len=0 if eos else draw(U32),
        checksum=draw(U32) if flags & FLAG_CHECKSUM else 0,
        ext_gen=draw(U32) if flags & FLAG_EXTERNAL else 0,
        ext_size=draw(U64) if flags & FLAG_EXTERNAL else 0,
        timestamp_us=draw(U64),
        aux=(draw(U64), draw(U64), draw(U64), draw(U64)),
    )


@given(headers(), st.integers(0, 64))
def test_round_trip(header: SlotHeader, offset: int) -> None:
    buf = bytearray(offset + HEADER_SIZE + 7)
    encode_into(buf, offset, header)
    assert decode_from(buf, offset) == header
    assert decode_from(memoryview(buf), offset) == header


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_decoding_garbage_raises_header_error_or_round_trips(data: bytes) -> None:
    for blob in (data, b"NP"[::-1] + data[2:]):  # also with a valid magic
        try:
            header = decode_from(blob, 0)
        except HeaderError as exc:
            field = exc.field
        else:
            again = bytearray(HEADER_SIZE)
            encode_into(again, 0, header)
            assert decode_from(again, 0) == header
            continue
        assert field in (*SlotHeader.__slots__, "magic")


def test_size_is_fixed() -> None:
    assert HEADER_SIZE == 136
    buf = bytearray(b"\xee" * (HEADER_SIZE + 2))
    encode_into(buf, 1, SlotHeader())
    assert buf[0] == 0xEE
    assert buf[-1] == 0xEE


def _encoded(header: SlotHeader) -> bytearray:
    buf = bytearray(HEADER_SIZE)
    encode_into(buf, 0, header)
    return buf


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": 256}, "kind"),
        ({"fmt": -1}, "fmt"),
        ({"flags": 0x10000}, "flags"),
        ({"flags": 0x0100}, "flags"),
        ({"ndim": 7, "shape": (1,) * 7}, "ndim"),
        ({"ndim": 2, "shape": (1,)}, "shape"),
        ({"ndim": 1, "shape": (2**64,)}, "shape"),
        ({"ndim": 1, "shape": [3]}, "shape"),
        ({"seq": 2**64}, "seq"),
        ({"payload_len": -5}, "payload_len"),
        ({"meta_len": 2**32}, "meta_len"),
        ({"timestamp_us": 1.5}, "timestamp_us"),
        ({"aux": (1, 2, 3)}, "aux"),
        ({"aux": (1, 2, 3, -1)}, "aux"),
        ({"checksum": 7}, "checksum"),
        ({"ext_gen": 1}, "ext_gen"),
        ({"flags": FLAG_EOS, "payload_len": 1}, "payload_len"),
    ],
)
def test_invalid_header_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(HeaderError) as info:
        SlotHeader(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_corrupt_magic() -> None:
    buf = _encoded(SlotHeader(seq=3))
    buf[0] ^= 0xFF
    with pytest.raises(HeaderError, match="magic"):
        decode_from(buf, 0)
    with pytest.raises(HeaderError, match="magic"):
        decode_from(bytes(HEADER_SIZE), 0)  # never written


def test_corrupt_ndim_and_stray_shape() -> None:
    buf = _encoded(SlotHeader(ndim=2, shape=(3, 4)))
    bad = bytearray(buf)
    bad[6] = 9
    with pytest.raises(HeaderError) as info:
        decode_from(bad, 0)
    assert info.value.field == "ndim"
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, 56 + 8 * 5, 1)  # shape[5] set while ndim == 2
    with pytest.raises(HeaderError) as info:
        decode_from(bad, 0)
    assert info.value.field == "shape"


def test_corrupt_flags_and_truncation() -> None:
    bad = _encoded(SlotHeader())
    struct.pack_into("<H", bad, 4, 0x8000)
    with pytest.raises(HeaderError) as info:
        decode_from(bad, 0)
    assert info.value.field == "flags"
    with pytest.raises(HeaderError):
        decode_from(_encoded(SlotHeader())[:-1], 0)


def test_eos_property() -> None:
    assert SlotHeader(flags=FLAG_EOS).is_eos
    assert not SlotHeader().is_eos


@given(headers(), st.integers(0, 64))
def test_pack_frame_into_writes_what_encode_into_writes(header: SlotHeader, offset: int) -> None:
    # The send hot path packs a header from its fields without building a SlotHeader: the bytes
    # must be exactly those of the validated header.
    fast, slow = bytearray(offset + HEADER_SIZE), bytearray(offset + HEADER_SIZE)
    h = header
    pack_frame_into(
        fast, offset, h.kind, h.fmt, h.shape, h.seq, h.timestamp_us, h.aux, flags=h.flags,
        meta_len=h.meta_len, payload_len=h.payload_len, checksum=h.checksum, ext_gen=h.ext_gen,
        ext_size=h.ext_size,
    )  # fmt: skip
    encode_into(slow, offset, h)
    assert fast == slow


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": 256}, "kind"),
        ({"fmt": -1}, "fmt"),
        ({"shape": (1,) * 7}, "ndim"),
        ({"shape": (2**64,)}, "shape"),
        ({"shape": (1.5,)}, "shape"),
        ({"seq": 2**64}, "seq"),
        ({"timestamp_us": -1}, "timestamp_us"),
        ({"aux": (1, 2, 3)}, "aux"),
        ({"aux": (1, 2, 3, 2**64)}, "aux"),
        ({"payload_len": -5}, "payload_len"),
        ({"meta_len": 2**32}, "meta_len"),
    ],
)
def test_pack_frame_into_names_the_field_it_refuses(fields: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "kind": 3, "fmt": 1, "shape": (4,), "seq": 1, "timestamp_us": 0, "aux": (0, 0, 0, 0),
        "flags": 0, "meta_len": 0, "payload_len": 4, "checksum": 0, "ext_gen": 0, "ext_size": 0,
    }  # fmt: skip
    args.update(fields)
    buf = bytearray(HEADER_SIZE)
    with pytest.raises(HeaderError) as info:
        pack_frame_into(
            buf, 0, args.pop("kind"), args.pop("fmt"), args.pop("shape"), args.pop("seq"),
            args.pop("timestamp_us"), args.pop("aux"), **args,
        )  # fmt: skip
    assert info.value.field == field
