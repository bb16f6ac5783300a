"""Frames: construction checks, bytes and WAV round trips, immutability, equality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nursery_pipes._errors import FrameError
from nursery_pipes.frames import (
    MAX_JSON_DEPTH,
    AudioFormat,
    AudioFrame,
    BinaryFrame,
    FrameKind,
    JsonFrame,
    PixelFormat,
    TensorDtype,
    TensorFrame,
    TextFrame,
    VideoFrame,
)
from nursery_pipes.ipc import decode_frame, encode_frame


def ramp(fmt: AudioFormat, frames: int, channels: int) -> np.ndarray:
    """Distinct, exactly representable samples for every format and channel."""
    n = frames * channels
    if fmt is AudioFormat.F32:
        values = (np.arange(n) - n / 2) / (n + 1)
    elif fmt is AudioFormat.I16:
        values = (np.arange(n) * 97 % 65535) - 32767
    else:
        values = (np.arange(n, dtype=np.int64) * 2_654_435 % 4_294_967_295) - 2_147_483_647
    return values.astype(fmt.dtype).reshape(frames, channels)


# ---------------------------------------------------------------------------------------------
# Audio


def test_audio_from_array_mono_and_interleaved() -> None:
    mono = AudioFrame.from_array(np.zeros(160, dtype=np.float32), sample_rate=16000)
    assert (mono.channels, mono.num_samples, mono.duration) == (1, 160, 0.01)
    assert mono.kind is FrameKind.AUDIO
    stereo = AudioFrame.from_array(np.arange(6, dtype=np.int16), 8000, channels=2)
    assert stereo.samples.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert (stereo.format, stereo.nbytes) == (AudioFormat.I16, 12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": np.zeros((4, 1), np.float64)}, "float32, int16 or int32, not float64"),
        ({"samples": np.zeros((4, 1), ">f4")}, "float32, int16 or int32"),
        ({"samples": np.zeros(4, np.float32)}, "shape (num_samples, channels), got (4,)"),
        ({"samples": np.zeros((4, 0), np.float32)}, "got (4, 0)"),
        ({"sample_rate": 0}, "sample_rate must be a positive integer, got 0"),
        ({"sample_rate": 16000.0}, "got 16000.0"),
        ({"sample_rate": True}, "got True"),
        ({"metadata": {"k": 1}}, "metadata must map str to str"),
    ],
)
def test_audio_construction_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"samples": np.zeros((4, 1), np.float32), "sample_rate": 8000, **kwargs}
    with pytest.raises(FrameError) as info:
        AudioFrame(**args)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("length", "channels", "fmt", "message"),
    [
        (6, 1, "f32", "audio byte length 6 is not a multiple of the frame size 4 (f32 × 1 channel)"),
        (6, 2, "i16", "audio byte length 6 is not a multiple of the frame size 4 (i16 × 2 channels)"),
        (10, 2, "i32", "audio byte length 10 is not a multiple of the frame size 8 (i32 × 2 channels)"),
    ],
)
def test_audio_bytes_must_be_whole_samples(length: int, channels: int, fmt: str, message: str) -> None:
    with pytest.raises(FrameError) as info:
        AudioFrame.from_bytes(b"\0" * length, sample_rate=16000, channels=channels, format=fmt)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "f64"}, "unknown audio format 'f64'"),
        ({"format": 9}, "9 is not a valid AudioFormat"),
        ({"channels": 0}, "channels must be ≥ 1, got 0"),
        ({"sample_rate": -1}, "sample_rate must be a positive integer, got -1"),
    ],
)
def test_audio_from_bytes_bad_declarations(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"sample_rate": 16000, "channels": 1, "format": "i16", **kwargs}
    with pytest.raises(FrameError) as info:
        AudioFrame.from_bytes(b"\0" * 8, **args)
    assert message in str(info.value)


def test_audio_from_array_interleaved_needs_whole_frames() -> None:
    with pytest.raises(FrameError, match="5 interleaved samples are not a multiple of 2 channels"):
        AudioFrame.from_array(np.zeros(5, np.int16), 8000, channels=2)


@pytest.mark.parametrize("fmt", list(AudioFormat))
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_audio_bytes_round_trip(fmt: AudioFormat, channels: int) -> None:
    frame = AudioFrame(samples=ramp(fmt, 50, channels), sample_rate=22050, metadata={"take": "1"})
    data = frame.to_bytes()
    assert len(data) == frame.nbytes == 50 * channels * fmt.dtype.itemsize
    back = AudioFrame.from_bytes(
        data, sample_rate=22050, channels=channels, format=fmt.name.lower(), metadata={"take": "1"}
    )
    assert back == frame
    np.testing.assert_array_equal(back.samples, frame.samples)


@pytest.mark.parametrize("fmt", list(AudioFormat))
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_wav_file_round_trip_is_exact(tmp_path: Path, fmt: AudioFormat, channels: int) -> None:
    frame = AudioFrame(samples=ramp(fmt, 300, channels), sample_rate=44100)
    target = tmp_path / "x.wav"
    assert frame.to_wav(target) is None
    back = AudioFrame.from_wav(target)
    assert (back.format, back.channels, back.sample_rate, back.num_samples) == (fmt, channels, 44100, 300)
    np.testing.assert_array_equal(back.samples, frame.samples)
    assert back == frame


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_wav_bytes_round_trip(fmt: AudioFormat) -> None:
    frame = AudioFrame(samples=ramp(fmt, 128, 2), sample_rate=16000)
    wav = frame.to_wav()
    assert isinstance(wav, bytes)
    assert wav[:4] == b"RIFF"
    assert wav[8:12] == b"WAVE"
    back = AudioFrame.from_wav(wav)
    assert back == frame


def test_wav_read_as_another_format(tmp_path: Path) -> None:
    frame = AudioFrame(samples=np.array([[0], [16384], [-32768]], np.int16), sample_rate=8000)
    frame.to_wav(tmp_path / "a.wav")
    as_float = AudioFrame.from_wav(tmp_path / "a.wav", format="f32")
    assert as_float.format is AudioFormat.F32
    np.testing.assert_allclose(as_float.samples[:, 0], [0.0, 0.5, -1.0])
    with pytest.raises(FrameError, match="unknown audio format 'f64'"):
        AudioFrame.from_wav(tmp_path / "a.wav", format="f64")


def test_wav_of_corrupt_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(FrameError) as info:
        AudioFrame.from_wav(bad)
    assert str(bad) in str(info.value)
    assert "cannot read audio" in str(info.value)
    missing = tmp_path / "missing.wav"
    with pytest.raises(FrameError, match=r"missing\.wav"):
        AudioFrame.from_wav(missing)
    with pytest.raises(FrameError, match="cannot read audio from WAV bytes"):
        AudioFrame.from_wav(b"definitely not a wav file")


def test_audio_samples_are_read_only() -> None:
    frame = AudioFrame.from_array(np.arange(8, dtype=np.float32), 8000)
    assert not frame.samples.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        frame.samples[0, 0] = 1.0
    with pytest.raises(AttributeError):
        frame.sample_rate = 1  # type: ignore[misc]
    decoded = AudioFrame.from_bytes(frame.to_bytes(), sample_rate=8000, channels=1, format="f32")
    assert not decoded.samples.flags.writeable


def test_audio_equality() -> None:
    a = AudioFrame.from_array(np.arange(4, dtype=np.int16), 8000)
    assert a == AudioFrame.from_array(np.arange(4, dtype=np.int16), 8000)
    assert a != AudioFrame.from_array(np.arange(4, dtype=np.int16), 16000)
    assert a != AudioFrame.from_array(np.arange(4, dtype=np.int32), 8000)
    assert a != AudioFrame.from_array(np.arange(4, dtype=np.int16), 8000, channels=2)
    assert a != AudioFrame.from_array(np.arange(4, dtype=np.int16), 8000, metadata={"k": "v"})
    assert a != TensorFrame(data=np.arange(4, dtype=np.int32))
    with pytest.raises(TypeError):
        hash(a)


# ---------------------------------------------------------------------------------------------
# Video


@pytest.mark.parametrize(
    ("fmt", "width", "height", "length", "shape"),
    [
        (PixelFormat.RGB24, 4, 2, 24, (2, 4, 3)),
        (PixelFormat.RGBA32, 4, 2, 32, (2, 4, 4)),
        (PixelFormat.GRAY8, 4, 2, 8, (2, 4)),
        (PixelFormat.YUV420P, 4, 2, 8 + 2 * 2, (12,)),
        (PixelFormat.YUV420P, 3, 3, 9 + 2 * 4, (17,)),
    ],
)
def test_video_bytes_round_trip(
    fmt: PixelFormat, width: int, height: int, length: int, shape: tuple[int, ...]
) -> None:
    data = bytes(range(length))
    frame = VideoFrame.from_bytes(
        data, width=width, height=height, format=fmt, frame_number=7, timestamp_us=40_000
    )
    assert frame.pixels.shape == shape
    assert frame.to_bytes() == data
    assert frame.nbytes == length
    assert not frame.pixels.flags.writeable
    assert frame == VideoFrame.from_bytes(
        data, width=width, height=height, format=int(fmt), frame_number=7, timestamp_us=40_000
    )
    assert frame != VideoFrame.from_bytes(data, width=width, height=height, format=fmt, frame_number=8)
    with pytest.raises(FrameError) as info:
        VideoFrame.from_bytes(data[:-1], width=width, height=height, format=fmt)
    assert str(info.value) == (
        f"{fmt.name.lower()} frame of {width}×{height} needs {length} bytes, got {length - 1}"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pixels": np.zeros((2, 2, 3), np.uint16)}, "video pixels must be uint8, not uint16"),
        (
            {"format": PixelFormat.RGBA32},
            "rgba32 frame of 2×2 needs pixel array shape (2, 2, 4), got (2, 2, 3)",
        ),
        ({"width": 0}, "video size must be positive, got 0×2"),
        ({"format": 99}, "99 is not a valid PixelFormat"),
        ({"format": "rgb24"}, "'rgb24' is not a valid PixelFormat"),
    ],
)
def test_video_construction_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "pixels": np.zeros((2, 2, 3), np.uint8),
        "width": 2,
        "height": 2,
        "format": PixelFormat.RGB24,
        **kwargs,
    }
    with pytest.raises(FrameError) as info:
        VideoFrame(**args)
    assert str(info.value) == message


def test_video_from_bytes_bad_format_and_size() -> None:
    with pytest.raises(FrameError, match="not a valid PixelFormat"):
        VideoFrame.from_bytes(b"\0" * 12, width=2, height=2, format=42)
    with pytest.raises(FrameError, match="video size must be positive, got 2×-1"):
        VideoFrame.from_bytes(b"", width=2, height=-1, format=PixelFormat.GRAY8)


# ---------------------------------------------------------------------------------------------
# Tensor


@pytest.mark.parametrize("dtype", list(TensorDtype))
def test_tensor_bytes_round_trip(dtype: TensorDtype) -> None:
    data = np.arange(24).astype(dtype.dtype).reshape(2, 3, 4)
    frame = TensorFrame(data=data, layout="NCH")
    raw = frame.to_bytes()
    assert len(raw) == frame.nbytes == 24 * dtype.dtype.itemsize
    back = TensorFrame.from_bytes(raw, shape=[2, 3, 4], dtype=dtype, layout="NCH")
    assert back == frame
    assert back.dtype is dtype
    assert back != TensorFrame.from_bytes(raw, shape=(4, 3, 2), dtype=dtype, layout="NCH")
    assert back != TensorFrame.from_bytes(raw, shape=(2, 3, 4), dtype=dtype, layout="")
    assert not back.data.flags.writeable


def test_tensor_errors() -> None:
    with pytest.raises(FrameError) as info:
        TensorFrame.from_bytes(b"\0" * 7, shape=(2,), dtype=TensorDtype.F32)
    assert str(info.value) == "tensor of shape [2] and dtype f32 needs 8 bytes, got 7"
    with pytest.raises(FrameError, match="must not be negative"):
        TensorFrame.from_bytes(b"", shape=(-1, 3), dtype=TensorDtype.U8)
    with pytest.raises(FrameError, match="77 is not a valid TensorDtype"):
        TensorFrame.from_bytes(b"\0" * 8, shape=(2,), dtype=77)
    with pytest.raises(FrameError, match=r"tensor dtype must be one of .* not float64"):
        TensorFrame(data=np.zeros(3))
    with pytest.raises(FrameError, match="not int64"):
        TensorFrame(data=np.zeros(3, np.int64))
    empty = TensorFrame.from_bytes(b"", shape=(0, 3), dtype=TensorDtype.U8)
    assert empty.data.shape == (0, 3)
    assert empty.nbytes == 0


# ---------------------------------------------------------------------------------------------
# JSON, text, binary


def test_json_frame_round_trip_and_errors() -> None:
    frame = JsonFrame(value={"a": [1, 2.5, None, True], "b": "é"}, schema_type="event")
    assert JsonFrame.from_bytes(frame.to_bytes(), schema_type="event") == frame
    assert JsonFrame.from_bytes(frame.to_bytes().decode(), schema_type="event") == frame
    assert frame.nbytes == len(frame.to_bytes())
    with pytest.raises(FrameError, match="not JSON-serialisable"):
        JsonFrame(value=object())
    with pytest.raises(FrameError, match="not JSON-serialisable"):
        JsonFrame(value={"when": object()})
    with pytest.raises(FrameError, match="not valid JSON"):
        JsonFrame.from_bytes(b"{bad")


def test_json_frame_equality_is_by_json_value() -> None:
    assert JsonFrame(value={"a": 1, "b": 2}) == JsonFrame(value={"b": 2, "a": 1})
    assert JsonFrame(value=[1, 2]) == JsonFrame(value=(1, 2))
    assert JsonFrame(value=True) != JsonFrame(value=1)
    assert JsonFrame(value={"a": 1}) != JsonFrame(value={"a": 1}, schema_type="x")
    assert JsonFrame(value={"a": 1}) != TextFrame(text='{"a":1}')


def test_text_frame() -> None:
    frame = TextFrame.from_bytes("grüße 👋".encode(), language="de")
    assert frame.text == "grüße 👋"
    assert frame.language == "de"
    assert TextFrame.from_bytes(frame.to_bytes(), language="de") == frame
    assert frame != TextFrame(text="grüße 👋")
    assert TextFrame.from_bytes("x".encode("utf-16"), encoding="utf-16").text == "x"
    with pytest.raises(FrameError) as info:
        TextFrame.from_bytes(b"ok\xff\xfe")
    assert str(info.value) == "text is not valid utf-8: invalid start byte at byte 2"
    with pytest.raises(FrameError, match="unknown text encoding 'klingon'"):
        TextFrame.from_bytes(b"x", encoding="klingon")
    with pytest.raises(FrameError, match="text is not valid Unicode: surrogates not allowed at index 2"):
        TextFrame(text="ab\ud800")
    with pytest.raises(FrameError, match="text frame needs a str, got bytes"):
        TextFrame(text=b"x")  # type: ignore[arg-type]


def test_binary_frame() -> None:
    frame = BinaryFrame.from_bytes(bytearray(b"\x00\x01"), mime_type="image/png")
    assert frame.data == b"\x00\x01"
    assert isinstance(frame.data, bytes)
    assert BinaryFrame(data=memoryview(b"\x00\x01"), mime_type="image/png") == frame
    assert BinaryFrame.from_bytes(b"x", mime_type="").mime_type == "application/octet-stream"
    assert frame != BinaryFrame(data=b"\x00\x01")
    with pytest.raises(FrameError, match="binary frame data must be bytes, got str"):
        BinaryFrame(data="text")  # type: ignore[arg-type]


def test_metadata_is_frozen() -> None:
    frame = TextFrame(text="x", metadata={"k": "v"})
    with pytest.raises(TypeError):
        frame.metadata["k"] = "w"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Property-based round trips

audio_formats = st.sampled_from(list(AudioFormat))


@st.composite
def audio_frames(draw: st.DrawFn) -> AudioFrame:
    fmt = draw(audio_formats)
    channels = draw(st.integers(1, 4))
    frames = draw(st.integers(0, 64))
    elements = (
        st.floats(-1, 1, width=32, allow_nan=False)
        if fmt is AudioFormat.F32
        else st.integers(int(np.iinfo(fmt.dtype).min), int(np.iinfo(fmt.dtype).max))
    )
    samples = draw(hnp.arrays(fmt.dtype, (frames, channels), elements=elements))
    return AudioFrame(samples=samples, sample_rate=draw(st.integers(1, 192_000)))


@settings(max_examples=60, deadline=None)
@given(audio_frames())
def test_property_audio_bytes_round_trip(frame: AudioFrame) -> None:
    back = AudioFrame.from_bytes(
        frame.to_bytes(), sample_rate=frame.sample_rate, channels=frame.channels, format=frame.format
    )
    assert back == frame


@settings(max_examples=25, deadline=None)
@given(audio_frames().filter(lambda f: f.num_samples > 0))
def test_property_audio_wav_bytes_round_trip(frame: AudioFrame) -> None:
    wav = frame.to_wav()
    assert wav is not None
    assert AudioFrame.from_wav(wav) == frame


@st.composite
def tensor_frames(draw: st.DrawFn) -> TensorFrame:
    dtype = draw(st.sampled_from(list(TensorDtype)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    data = draw(hnp.arrays(dtype.dtype, shape))
    return TensorFrame(data=data, layout=draw(st.sampled_from(["", "NCHW", "HWC"])))


@settings(max_examples=60, deadline=None)
@given(tensor_frames())
def test_property_tensor_bytes_round_trip(frame: TensorFrame) -> None:
    back = TensorFrame.from_bytes(
        frame.to_bytes(), shape=frame.data.shape, dtype=frame.dtype, layout=frame.layout
    )
    assert back.data.shape == frame.data.shape
    assert back.to_bytes() == frame.to_bytes()
    # NaN payloads compare by bytes, so equality holds even for NaN-filled tensors.
    assert back == frame


@st.composite
def video_frames(draw: st.DrawFn) -> VideoFrame:
    fmt = draw(st.sampled_from(list(PixelFormat)))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    data = draw(st.binary(min_size=fmt.byte_length(width, height), max_size=fmt.byte_length(width, height)))
    return VideoFrame.from_bytes(
        data, width=width, height=height, format=fmt, frame_number=draw(st.integers(0, 10**6))
    )


@settings(max_examples=60, deadline=None)
@given(video_frames())
def test_property_video_bytes_round_trip(frame: VideoFrame) -> None:
    back = VideoFrame.from_bytes(
        frame.to_bytes(),
        width=frame.width,
        height=frame.height,
        format=frame.format,
        frame_number=frame.frame_number,
    )
    assert back == frame


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_property_json_bytes_round_trip(value: Any) -> None:
    frame = JsonFrame(value=value)
    back = JsonFrame.from_bytes(frame.to_bytes())
    assert back == frame
    assert back.value == value


@settings(max_examples=100, deadline=None)
@given(st.text(), st.sampled_from(["", "en", "pt-BR"]))
def test_property_text_bytes_round_trip(text: str, language: str) -> None:
    frame = TextFrame(text=text, language=language)
    assert TextFrame.from_bytes(frame.to_bytes(), language=language) == frame


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=256), st.sampled_from(["application/octet-stream", "image/png"]))
def test_property_binary_bytes_round_trip(data: bytes, mime: str) -> None:
    frame = BinaryFrame(data=data, mime_type=mime)
    assert BinaryFrame.from_bytes(frame.to_bytes(), mime_type=mime) == frame


# -- nesting: deep JSON is a FrameError, never a RecursionError ---------------------------------


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_payload_nested_ten_thousand_levels() -> None:
    payload = "[" * 10_000 + "]" * 10_000
    for data in (payload, payload.encode(), bytearray(payload.encode()), memoryview(payload.encode())):
        with pytest.raises(
            FrameError, match=r"JSON frame payload nests deeper than 128 levels \(at byte 128\)"
        ):
            JsonFrame.from_bytes(data)


def test_json_value_nested_too_deeply_or_containing_itself() -> None:
    with pytest.raises(FrameError, match="JSON frame value nests deeper than 128 levels"):
        JsonFrame(value=nested(10_000))  # deeper than msgspec's encoder itself can go
    with pytest.raises(FrameError, match=r"nests deeper than 128 levels \(at byte 132 of its JSON\)"):
        JsonFrame(value={"a": nested(200)})  # encodable, but past the limit
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(FrameError, match="or contains itself"):
        JsonFrame(value=loop)


def test_json_nesting_limit_is_inclusive_and_survives_the_worker_codec() -> None:
    frame = JsonFrame(value=nested(MAX_JSON_DEPTH), schema_type="deep")
    encoded = encode_frame(frame)
    back = decode_frame(encoded.header(7), encoded.meta, encoded.payload, copy=True)
    assert back == frame
    assert repr(back).startswith("JsonFrame([[[")
    assert JsonFrame.from_bytes(frame.to_bytes(), schema_type="deep") == frame
    with pytest.raises(FrameError):
        JsonFrame(value=[frame.value])


def test_brackets_in_json_strings_are_not_nesting() -> None:
    frame = JsonFrame.from_bytes(json.dumps({"text": "[" * 1000 + '\\"{' * 500}))
    assert frame.value["text"].startswith("[[[")


def test_deep_values_in_frame_fields_are_frame_errors() -> None:
    deep = nested(10_000)
    with pytest.raises(FrameError, match=r"frame metadata must map str to str, got 'k': \[\[\[\["):
        TextFrame(text="x", metadata={"k": deep})
    with pytest.raises(FrameError, match="text frame needs a str, got list"):
        TextFrame(text=deep)
    with pytest.raises(FrameError, match="text frame language must be a str, got list"):
        TextFrame(text="x", language=deep)
    with pytest.raises(FrameError, match="JSON frame schema_type must be a str"):
        JsonFrame(value=1, schema_type=deep)
    with pytest.raises(FrameError, match="binary frame mime_type must be a str"):
        BinaryFrame(data=b"", mime_type=deep)
    with pytest.raises(FrameError, match="tensor frame layout must be a str"):
        TensorFrame(data=np.zeros(2, np.float32), layout=deep)
    with pytest.raises(FrameError, match="audio sample_rate must be a positive integer"):
        AudioFrame(samples=np.zeros((2, 1), np.float32), sample_rate=deep)
