"""ipc/_codec.py: frames ↔ ring slot parts, sans-I/O (no ring, no process).

Every kind round-trips through the header, metadata blob and payload — empty
payloads included (a 0-sample audio frame, a tensor with a 0 in its shape).
What a slot header cannot describe (a tensor of more than 6 dimensions) is
named by ``shm_refusal`` and refused by ``encode_frame`` with a FrameError.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nursery_pipes import (
    AudioFrame,
    BinaryFrame,
    Frame,
    FrameError,
    JsonFrame,
    PixelFormat,
    TensorFrame,
    TextFrame,
    VideoFrame,
)
from nursery_pipes.ipc import MAX_NDIM, decode_frame, encode_frame, shm_refusal


def round_trip(frame: Frame, *, copy: bool = True) -> Frame:
    encoded = encode_frame(frame)
    header = encoded.header(seq=7)
    assert header.payload_len == encoded.payload.nbytes
    return decode_frame(header, encoded.meta, memoryview(bytes(encoded.payload)), copy=copy)


FRAMES: dict[str, Any] = {
    "audio": lambda: AudioFrame.from_array(
        np.arange(12, dtype=np.float32), sample_rate=8000, channels=2, metadata={"k": "v"}
    ),
    "audio-empty": lambda: AudioFrame.from_array(np.zeros(0, dtype=np.int16), sample_rate=16000),
    "audio-empty-stereo": lambda: AudioFrame(samples=np.zeros((0, 2), dtype=np.float32), sample_rate=48000),
    "video": lambda: VideoFrame(
        pixels=np.full((2, 3, 3), 9, dtype=np.uint8), width=3, height=2, format=PixelFormat.RGB24
    ),
    "tensor": lambda: TensorFrame(data=np.ones((2, 3), dtype=np.float32), layout="NC"),
    "tensor-empty": lambda: TensorFrame(data=np.zeros((0, 3), dtype=np.float32)),
    "tensor-empty-6d": lambda: TensorFrame(data=np.zeros((1, 2, 0, 1, 1, 4), dtype=np.uint8)),
    "tensor-6d": lambda: TensorFrame(data=np.ones((1,) * MAX_NDIM, dtype=np.int32)),
    "json": lambda: JsonFrame(value={"a": [1, 2]}, schema_type="x"),
    "text-empty": lambda: TextFrame(text="", language="en"),
    "binary-empty": lambda: BinaryFrame(data=b"", mime_type="application/x-test"),
}


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "view"])
@pytest.mark.parametrize("name", list(FRAMES))
def test_every_frame_round_trips_empty_ones_too(name: str, copy: bool) -> None:
    frame = FRAMES[name]()
    assert shm_refusal(frame) is None
    back = round_trip(frame, copy=copy)
    assert back == frame
    if isinstance(frame, AudioFrame):
        assert isinstance(back, AudioFrame)
        assert back.samples.shape == frame.samples.shape  # (0, channels) survives
    if isinstance(frame, TensorFrame):
        assert isinstance(back, TensorFrame)
        assert back.data.shape == frame.data.shape


def test_a_tensor_of_more_than_six_dimensions_is_refused_by_name() -> None:
    frame = TensorFrame(data=np.zeros((1,) * (MAX_NDIM + 1), dtype=np.float32))
    why = shm_refusal(frame)
    assert why is not None
    assert "7 dimensions" in why
    assert "at most 6" in why
    with pytest.raises(FrameError, match="7 dimensions cannot travel through shared memory"):
        encode_frame(frame)
