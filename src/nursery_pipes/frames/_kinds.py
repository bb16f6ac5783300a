"""Frame kinds and sample/pixel/tensor formats.

The integer values are the remotemedia.v1 wire numbers (``DataBuffer`` oneof
field numbers, ``AudioFormat``, ``PixelFormat``, ``TensorDtype``), so they can
be copied across the gRPC boundary and into shared-memory slot headers as is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

import numpy as np

__all__ = [
    "AUDIO_NUMPY_DTYPES",
    "TENSOR_NUMPY_DTYPES",
    "AudioFormat",
    "FrameKind",
    "PixelFormat",
    "TensorDtype",
]


class FrameKind(enum.IntEnum):
    """What a frame carries. Values match the ``DataBuffer.data_type`` oneof numbers."""

    AUDIO = 1
    VIDEO = 2
    TENSOR = 3
    JSON = 4
    TEXT = 5
    BINARY = 6

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | FrameKind) -> FrameKind:
        if isinstance(value, FrameKind):
            return value
        try:
            return cls[value.upper()]
        except KeyError:
            choices = ", ".join(k.label for k in cls)
            raise ValueError(f"unknown frame kind {value!r} (expected one of {choices})") from None


class AudioFormat(enum.IntEnum):
    """Sample format of interleaved PCM audio."""

    F32 = 1
    I16 = 2
    I32 = 3

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return AUDIO_NUMPY_DTYPES[self]

    @classmethod
    def from_dtype(cls, dtype: np.dtype[np.generic]) -> AudioFormat:
        fmt = _AUDIO_BY_NP.get(dtype)  # per frame: a dict lookup, not a dtype build per format
        if fmt is not None:
            return fmt
        for fmt, name in _AUDIO_DTYPES.items():
            if np.dtype(name) == dtype:
                return fmt
        raise ValueError(f"audio samples must be float32, int16 or int32, not {dtype}")

    @classmethod
    def parse(cls, value: str | int | AudioFormat) -> AudioFormat:
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown audio format {value!r} (expected f32, i16 or i32)") from None
        return cls(value)


_AUDIO_DTYPES = {AudioFormat.F32: "<f4", AudioFormat.I16: "<i2", AudioFormat.I32: "<i4"}
AUDIO_NUMPY_DTYPES: Final[Mapping[int, np.dtype[np.generic]]] = {
    fmt: np.dtype(name) for fmt, name in _AUDIO_DTYPES.items()
}
"""numpy dtype by audio format code (the keys are the members, so plain ints find them too:
the frame codec's hot path looks a slot header's code up here without an enum call)."""
_AUDIO_BY_NP = {dt: AudioFormat(code) for code, dt in AUDIO_NUMPY_DTYPES.items()}


class PixelFormat(enum.IntEnum):
    """Pixel layout of a video frame (8 bits per channel)."""

    RGB24 = 1
    RGBA32 = 2
    YUV420P = 3
    GRAY8 = 4

    def byte_length(self, width: int, height: int) -> int:
        if self is PixelFormat.YUV420P:
            chroma = ((width + 1) // 2) * ((height + 1) // 2)
            return width * height + 2 * chroma
        return width * height * _PIXEL_CHANNELS[self]

    def array_shape(self, width: int, height: int) -> tuple[int, ...]:
        if self is PixelFormat.YUV420P:
            return (self.byte_length(width, height),)
        if self is PixelFormat.GRAY8:
            return (height, width)
        return (height, width, _PIXEL_CHANNELS[self])


_PIXEL_CHANNELS = {PixelFormat.RGB24: 3, PixelFormat.RGBA32: 4, PixelFormat.GRAY8: 1}


class TensorDtype(enum.IntEnum):
    """Element type of a tensor frame."""

    F32 = 1
    F16 = 2
    I32 = 3
    I8 = 4
    U8 = 5

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return TENSOR_NUMPY_DTYPES[self]

    @classmethod
    def from_dtype(cls, dtype: np.dtype[np.generic]) -> TensorDtype:
        fmt = _TENSOR_BY_NP.get(dtype)  # per frame, twice: a dict lookup, not 5 dtype builds
        if fmt is not None:
            return fmt
        for fmt, name in _TENSOR_DTYPES.items():
            if np.dtype(name) == dtype:
                return fmt
        allowed = "float32, float16, int32, int8, uint8"
        raise ValueError(f"tensor dtype must be one of {allowed}, not {dtype}")


_TENSOR_DTYPES = {
    TensorDtype.F32: "<f4",
    TensorDtype.F16: "<f2",
    TensorDtype.I32: "<i4",
    TensorDtype.I8: "i1",
    TensorDtype.U8: "u1",
}
TENSOR_NUMPY_DTYPES: Final[Mapping[int, np.dtype[np.generic]]] = {
    fmt: np.dtype(name) for fmt, name in _TENSOR_DTYPES.items()
}
"""numpy dtype by tensor dtype code (members as keys: plain ints find them too)."""
_TENSOR_BY_NP = {dt: TensorDtype(code) for code, dt in TENSOR_NUMPY_DTYPES.items()}
