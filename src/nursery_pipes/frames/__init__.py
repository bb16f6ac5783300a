"""Frames: the values that flow along pipeline edges (audio, video, tensor, JSON, text, binary)."""

from ._frames import AudioFrame, BinaryFrame, Frame, JsonFrame, TensorFrame, TextFrame, VideoFrame
from ._kinds import AudioFormat, FrameKind, PixelFormat, TensorDtype

__all__ = [
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
