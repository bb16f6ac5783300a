"""Frames: the values that flow along pipeline edges (audio, video, tensor, JSON, text, binary)."""

from ._frames import AudioFrame, BinaryFrame, Frame, JsonFrame, TensorFrame, TextFrame, VideoFrame
from ._kinds import AudioFormat, FrameKind, PixelFormat, TensorDtype
from ._nesting import MAX_JSON_DEPTH

__all__ = [
    "MAX_JSON_DEPTH",
    "AudioFormat",
    "AudioFrame",
    "BinaryFrame",
    "Frame",
    "FrameKind",
    "JsonFrame",
    "PixelFormat",
    "TensorDtype",
    "TensorFrame",
    "TextFrame",
    "VideoFrame",
]
