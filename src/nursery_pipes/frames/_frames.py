"""The data that flows along pipeline edges.

Frames are immutable values. Array payloads are numpy arrays marked read-only
when the frame is built, so a node that fans a frame out to several consumers
can never see one of them mutate it. Every constructor checks that the data
agrees with the declared format and shape, and says what disagrees.
"""

from __future__ import annotations

import io
import math
import os
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from .._errors import FrameError
from ._kinds import AudioFormat, FrameKind, PixelFormat, TensorDtype
from ._nesting import MAX_JSON_DEPTH, deeper_than

__all__ = [
    "AudioFrame",
    "BinaryFrame",
    "Frame",
    "JsonFrame",
    "TensorFrame",
    "TextFrame",
    "VideoFrame",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})

E = TypeVar("E")


def _parse_format(parse: Callable[[Any], E], value: Any) -> E:
    """An AudioFormat/PixelFormat/TensorDtype from a caller's value or an array dtype; an unknown one
    is a FrameError."""
    try:
        return parse(value)
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def _readonly(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 40, 40
_show = _repr.repr
"""repr() for user values in error messages: short, and bounded however deep the value nests."""


def _freeze_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    if not metadata:
        return _EMPTY
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise FrameError(f"frame metadata must map str to str, got {_show(key)}: {_show(value)}")
    return MappingProxyType(dict(metadata))


def _check_str(kind: str, name: str, value: object) -> None:
    """String fields travel in the slot's metadata blob and on the wire: only str will do."""
    if not isinstance(value, str):
        raise FrameError(f"{kind} frame {name} must be a str, got {type(value).__name__} {_show(value)}")


@dataclass(frozen=True, eq=False, kw_only=True)
class Frame:
    """Base of all frames. ``metadata`` is a small str→str map carried along unchanged."""

    kind: ClassVar[FrameKind]
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _freeze_metadata(self.metadata))

    @property
    def nbytes(self) -> int:
        """Size of the payload in bytes (what metrics count)."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The payload as bytes, in the wire encoding of this kind."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Frame)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> tuple[Any, ...]:
        return (dict(self.metadata),)


@dataclass(frozen=True, eq=False, kw_only=True)
class AudioFrame(Frame):
    """Interleaved PCM audio: ``samples`` has shape ``(num_samples, channels)``.

    >>> import numpy as np
    >>> frame = AudioFrame.from_array(np.zeros(160, dtype=np.float32), sample_rate=16000)
    >>> frame.channels, frame.num_samples, frame.duration
    (1, 160, 0.01)
    """

    kind: ClassVar[FrameKind] = FrameKind.AUDIO
    samples: npt.NDArray[Any]
    sample_rate: int

    def __post_init__(self) -> None:
        super().__post_init__()
        samples = np.asarray(self.samples)
        _parse_format(AudioFormat.from_dtype, samples.dtype)
        if samples.ndim != 2 or samples.shape[1] < 1:
            raise FrameError(f"audio samples must have shape (num_samples, channels), got {samples.shape}")
        rate = self.sample_rate
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            raise FrameError(f"audio sample_rate must be a positive integer, got {_show(self.sample_rate)}")
        object.__setattr__(self, "samples", _readonly(samples))

    @classmethod
    def from_array(
        cls,
        samples: npt.ArrayLike,
        sample_rate: int,
        *,
        channels: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AudioFrame:
        """Build from a 1-D (mono, or interleaved with ``channels``) or 2-D array."""
        array = np.asarray(samples)
        if array.ndim == 1:
            ch = channels or 1
            if array.size % ch:
                raise FrameError(f"{array.size} interleaved samples are not a multiple of {ch} channels")
            array = array.reshape(-1, ch)
        return cls(samples=array, sample_rate=sample_rate, metadata=metadata or _EMPTY)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        sample_rate: int,
        channels: int,
        format: AudioFormat | str,
        metadata: Mapping[str, str] | None = None,
    ) -> AudioFrame:
        """Decode interleaved little-endian PCM; the length must be whole samples."""
        fmt = _parse_format(AudioFormat.parse, format)
        if channels < 1:
            raise FrameError(f"audio channels must be ≥ 1, got {channels}")
        frame_size = fmt.dtype.itemsize * channels
        if len(data) % frame_size:
            raise FrameError(
                f"audio byte length {len(data)} is not a multiple of the frame size "
                f"{frame_size} ({fmt.name.lower()} × {channels} channel{'s' * (channels != 1)})"
            )
        array = np.frombuffer(data, dtype=fmt.dtype).reshape(-1, channels)
        return cls(samples=array, sample_rate=sample_rate, metadata=metadata or _EMPTY)

    @classmethod
    def from_wav(
        cls, source: str | os.PathLike[str] | bytes, *, format: AudioFormat | str | None = None
    ) -> AudioFrame:
        """Read a WAV (or any libsndfile format) file, path or bytes.

        Integer files stay integer (16-bit → i16, 24/32-bit → i32) unless
        ``format`` asks otherwise; float files become f32.
        """
        import soundfile

        handle: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        wanted = _parse_format(AudioFormat.parse, format) if format is not None else None
        try:
            info = soundfile.info(handle)
            if isinstance(handle, io.BytesIO):
                handle.seek(0)
            fmt = wanted if wanted is not None else _wav_default_format(info.subtype)
            data, rate = soundfile.read(handle, dtype=_SF_DTYPE[fmt], always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            where = "WAV bytes" if isinstance(source, bytes) else f"{os.fspath(source)!r}"
            raise FrameError(f"cannot read audio from {where}: {exc}") from exc
        return cls(samples=data, sample_rate=int(rate))

    def to_wav(self, target: str | os.PathLike[str] | None = None) -> bytes | None:
        """Write a WAV file (or return its bytes when ``target`` is None)."""
        import soundfile

        subtype = {AudioFormat.F32: "FLOAT", AudioFormat.I16: "PCM_16", AudioFormat.I32: "PCM_32"}[
            self.format
        ]
        if target is None:
            buffer = io.BytesIO()
            soundfile.write(buffer, self.samples, self.sample_rate, subtype=subtype, format="WAV")
            return buffer.getvalue()
        soundfile.write(os.fspath(target), self.samples, self.sample_rate, subtype=subtype, format="WAV")
        return None

    @property
    def format(self) -> AudioFormat:
        return AudioFormat.from_dtype(self.samples.dtype)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def num_samples(self) -> int:
        """Samples per channel."""
        return int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def nbytes(self) -> int:
        return int(self.samples.nbytes)

    def to_bytes(self) -> bytes:
        return np.ascontiguousarray(self.samples, dtype=self.format.dtype).tobytes()

    def _key(self) -> tuple[Any, ...]:
        return (
            *super()._key(),
            self.sample_rate,
            self.samples.dtype.str,
            self.samples.shape,
            self.to_bytes(),
        )

    def __repr__(self) -> str:
        return (
            f"AudioFrame({self.num_samples} samples × {self.channels} ch, "
            f"{self.sample_rate} Hz, {self.format.name.lower()})"
        )


_SF_DTYPE = {AudioFormat.F32: "float32", AudioFormat.I16: "int16", AudioFormat.I32: "int32"}


def _wav_default_format(subtype: str) -> AudioFormat:
    if subtype in {"PCM_16", "PCM_U8", "PCM_S8"}:
        return AudioFormat.I16
    if subtype in {"PCM_24", "PCM_32"}:
        return AudioFormat.I32
    return AudioFormat.F32


@dataclass(frozen=True, eq=False, kw_only=True)
class VideoFrame(Frame):
    """One picture. ``pixels`` is uint8: (h, w, 3) rgb24, (h, w, 4) rgba32, (h, w) gray8,
    or the flat planar bytes of yuv420p."""

    kind: ClassVar[FrameKind] = FrameKind.VIDEO
    pixels: npt.NDArray[np.uint8]
    width: int
    height: int
    format: PixelFormat
    frame_number: int = 0
    timestamp_us: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        fmt = _parse_format(PixelFormat, self.format)
        object.__setattr__(self, "format", fmt)
        if self.width <= 0 or self.height <= 0:
            raise FrameError(f"video size must be positive, got {self.width}×{self.height}")
        pixels = np.asarray(self.pixels)
        if pixels.dtype != np.uint8:
            raise FrameError(f"video pixels must be uint8, not {pixels.dtype}")
        expected = fmt.array_shape(self.width, self.height)
        if pixels.shape != expected:
            raise FrameError(
                f"{fmt.name.lower()} frame of {self.width}×{self.height} needs pixel array shape "
                f"{expected}, got {pixels.shape}"
            )
        object.__setattr__(self, "pixels", _readonly(pixels))

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        width: int,
        height: int,
        format: PixelFormat | int,
        frame_number: int = 0,
        timestamp_us: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> VideoFrame:
        fmt = _parse_format(PixelFormat, format)
        if width <= 0 or height <= 0:
            raise FrameError(f"video size must be positive, got {width}×{height}")
        need = fmt.byte_length(width, height)
        if len(data) != need:
            raise FrameError(
                f"{fmt.name.lower()} frame of {width}×{height} needs {need} bytes, got {len(data)}"
            )
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(fmt.array_shape(width, height))
        return cls(
            pixels=pixels,
            width=width,
            height=height,
            format=fmt,
            frame_number=frame_number,
            timestamp_us=timestamp_us,
            metadata=metadata or _EMPTY,
        )

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def to_bytes(self) -> bytes:
        return np.ascontiguousarray(self.pixels).tobytes()

    def _key(self) -> tuple[Any, ...]:
        return (
            *super()._key(),
            self.width,
            self.height,
            self.format,
            self.frame_number,
            self.timestamp_us,
            self.to_bytes(),
        )

    def __repr__(self) -> str:
        return f"VideoFrame({self.width}×{self.height} {self.format.name.lower()}, #{self.frame_number})"


@dataclass(frozen=True, eq=False, kw_only=True)
class TensorFrame(Frame):
    """An n-dimensional array (f32/f16/i32/i8/u8) with an optional layout tag such as ``"NCHW"``."""

    kind: ClassVar[FrameKind] = FrameKind.TENSOR
    data: npt.NDArray[Any]
    layout: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str("tensor", "layout", self.layout)
        data = np.asarray(self.data)
        _parse_format(TensorDtype.from_dtype, data.dtype)
        object.__setattr__(self, "data", _readonly(data))

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        shape: tuple[int, ...] | list[int],
        dtype: TensorDtype | int,
        layout: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> TensorFrame:
        fmt = _parse_format(TensorDtype, dtype)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise FrameError(f"tensor shape must not be negative, got {shape}")
        need = math.prod(shape) * fmt.dtype.itemsize  # exact: numpy's int64 product would wrap
        if len(data) != need:
            raise FrameError(
                f"tensor of shape {list(shape)} and dtype {fmt.name.lower()} needs {need} bytes, "
                f"got {len(data)}"
            )
        array = np.frombuffer(data, dtype=fmt.dtype).reshape(shape)
        return cls(data=array, layout=layout, metadata=metadata or _EMPTY)

    @property
    def dtype(self) -> TensorDtype:
        return TensorDtype.from_dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def to_bytes(self) -> bytes:
        return np.ascontiguousarray(self.data).tobytes()

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.layout, self.data.dtype.str, self.data.shape, self.to_bytes())

    def __repr__(self) -> str:
        return f"TensorFrame({list(self.data.shape)} {self.dtype.name.lower()})"


@dataclass(frozen=True, eq=False, kw_only=True)
class JsonFrame(Frame):
    """A JSON value (object, array, string, number, bool or null), nested at most
    :data:`MAX_JSON_DEPTH` (128) levels deep — deeper values would make the JSON tools that
    handle them later (encoders, decoders, ``repr``) run out of stack."""

    kind: ClassVar[FrameKind] = FrameKind.JSON
    value: Any
    schema_type: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str("JSON", "schema_type", self.schema_type)
        try:
            encoded = msgspec.json.encode(self.value)
        except RecursionError:  # msgspec's own guard: far deeper than allowed, or contains itself
            raise FrameError(
                f"JSON frame value nests deeper than {MAX_JSON_DEPTH} levels (or contains itself)"
            ) from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise FrameError(f"JSON frame value is not JSON-serialisable: {exc}") from None
        where = deeper_than(encoded, MAX_JSON_DEPTH)
        if where is not None:
            raise FrameError(
                f"JSON frame value nests deeper than {MAX_JSON_DEPTH} levels (at byte {where} of its JSON)"
            )
        object.__setattr__(self, "_encoded", encoded)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview | str,
        *,
        schema_type: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> JsonFrame:
        raw = data if isinstance(data, (bytes, str)) else bytes(data)
        where = deeper_than(raw, MAX_JSON_DEPTH)  # before the decoder recurses into it
        if where is not None:
            raise FrameError(
                f"JSON frame payload nests deeper than {MAX_JSON_DEPTH} levels (at byte {where})"
            )
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise FrameError(f"JSON frame payload is not valid JSON: {exc}") from None
        return cls(value=value, schema_type=schema_type, metadata=metadata or _EMPTY)

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    def to_bytes(self) -> bytes:
        encoded: bytes = self.__dict__["_encoded"]
        return encoded

    def _key(self) -> tuple[Any, ...]:
        # Equal JSON values are equal frames whatever their object key order ({"a":1,"b":2}
        # == {"b":2,"a":1}), as after decoding; true and 1 stay different.
        canonical = msgspec.json.encode(msgspec.json.decode(self.to_bytes()), order="sorted")
        return (*super()._key(), self.schema_type, canonical)

    def __repr__(self) -> str:
        text = self.to_bytes().decode()
        return f"JsonFrame({text if len(text) < 60 else text[:57] + '...'})"


@dataclass(frozen=True, eq=False, kw_only=True)
class TextFrame(Frame):
    """Unicode text with an optional BCP-47 language tag."""

    kind: ClassVar[FrameKind] = FrameKind.TEXT
    text: str
    language: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.text, str):
            raise FrameError(f"text frame needs a str, got {type(self.text).__name__}")
        _check_str("text", "language", self.language)
        try:  # encoded once here: a lone surrogate fails now, not later in metrics or on the wire
            encoded = self.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FrameError(f"text is not valid Unicode: {exc.reason} at index {exc.start}") from None
        object.__setattr__(self, "_encoded", encoded)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        encoding: str = "utf-8",
        language: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> TextFrame:
        codec = encoding or "utf-8"
        try:
            text = bytes(data).decode(codec)
        except LookupError:
            raise FrameError(f"unknown text encoding {codec!r}") from None
        except UnicodeDecodeError as exc:
            raise FrameError(f"text is not valid {codec}: {exc.reason} at byte {exc.start}") from None
        return cls(text=text, language=language, metadata=metadata or _EMPTY)

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    def to_bytes(self) -> bytes:
        encoded: bytes = self.__dict__["_encoded"]
        return encoded

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.text, self.language)

    def __repr__(self) -> str:
        text = self.text if len(self.text) < 60 else self.text[:57] + "..."
        return f"TextFrame({text!r}{', ' + self.language if self.language else ''})"


@dataclass(frozen=True, eq=False, kw_only=True)
class BinaryFrame(Frame):
    """Opaque bytes with a MIME type."""

    kind: ClassVar[FrameKind] = FrameKind.BINARY
    data: bytes
    mime_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str("binary", "mime_type", self.mime_type)
        data: object = self.data
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise FrameError(f"binary frame data must be bytes, got {type(data).__name__}")
            object.__setattr__(self, "data", bytes(data))

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        mime_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> BinaryFrame:
        return cls(
            data=bytes(data), mime_type=mime_type or "application/octet-stream", metadata=metadata or _EMPTY
        )

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def to_bytes(self) -> bytes:
        return self.data

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.mime_type, self.data)

    def __repr__(self) -> str:
        return f"BinaryFrame({len(self.data)} bytes, {self.mime_type})"
