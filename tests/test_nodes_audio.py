"""Built-in audio nodes: chunker, resampler, gain, normalisation, format/channels."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nursery_pipes._errors import ManifestError
from nursery_pipes.frames import AudioFrame, Frame
from nursery_pipes.nodes._calls import make_node
from nursery_pipes.nodes.builtin import (
    ALIASES,
    AudioChunkerNode,
    AudioFormatNode,
    AudioGainNode,
    AudioNormalizeNode,
    AudioResampleNode,
)
from nursery_pipes.testing._drive import run_node_sync


def audio(samples: npt.ArrayLike, rate: int = 16000, **meta: str) -> AudioFrame:
    return AudioFrame.from_array(np.asarray(samples), rate, metadata=meta or None)


def only_audio(frames: list[Frame]) -> list[AudioFrame]:
    assert all(isinstance(f, AudioFrame) for f in frames)
    return [f for f in frames if isinstance(f, AudioFrame)]


def joined(frames: list[Frame]) -> npt.NDArray[Any]:
    return np.concatenate([f.samples for f in only_audio(frames)])


def split(array: npt.NDArray[Any], sizes: list[int], rate: int = 16000) -> list[AudioFrame]:
    bounds = np.cumsum([0, *sizes])
    return [audio(array[a:b], rate, i=str(i)) for i, (a, b) in enumerate(pairwise(bounds))]


# --- chunker --------------------------------------------------------------------------------


def test_chunker_fixed_chunks_remainder_and_metadata() -> None:
    data = np.arange(10, dtype=np.float32)
    out = only_audio(run_node_sync(AudioChunkerNode, split(data, [3, 3, 4]), {"chunk_size": 4}))
    assert [f.num_samples for f in out] == [4, 4, 2]
    np.testing.assert_array_equal(joined(list(out))[:, 0], data)
    # Chunk metadata comes from the frame that completed it (the remainder: the last frame).
    assert [f.metadata["i"] for f in out] == ["1", "2", "2"]
    assert all(f.sample_rate == 16000 for f in out)


def test_chunker_pad_final() -> None:
    data = np.arange(1, 11, dtype=np.int16)
    out = only_audio(run_node_sync(AudioChunkerNode, [audio(data)], {"chunk_size": 4, "pad_final": True}))
    assert [f.num_samples for f in out] == [4, 4, 4]
    np.testing.assert_array_equal(out[-1].samples[:, 0], [9, 10, 0, 0])
    assert out[-1].samples.dtype == np.int16


def test_chunker_exact_multiple_has_no_remainder() -> None:
    out = run_node_sync(
        AudioChunkerNode, [audio(np.zeros(8, np.float32))], {"chunk_size": 4, "pad_final": True}
    )
    assert [f.num_samples for f in only_audio(out)] == [4, 4]


def test_chunker_format_change_emits_pending_first() -> None:
    first = audio(np.ones(6, np.float32), 16000)
    second = audio(np.ones(6, np.int16), 16000)
    third = AudioFrame.from_array(np.ones(12, np.int16), 16000, channels=2)
    out = only_audio(run_node_sync(AudioChunkerNode, [first, second, third], {"chunk_size": 4}))
    shapes = [(f.num_samples, f.channels, f.samples.dtype.name) for f in out]
    assert shapes == [
        (4, 1, "float32"),
        (2, 1, "float32"),  # remainder of the f32 run, short
        (4, 1, "int16"),
        (2, 1, "int16"),
        (4, 2, "int16"),
        (2, 2, "int16"),
    ]


def test_chunker_rate_change_pads_when_asked() -> None:
    frames = [audio(np.ones(5, np.float32), 16000), audio(np.ones(5, np.float32), 8000)]
    out = only_audio(run_node_sync(AudioChunkerNode, frames, {"chunk_size": 4, "pad_final": True}))
    assert [(f.num_samples, f.sample_rate) for f in out] == [
        (4, 16000),
        (4, 16000),
        (4, 8000),
        (4, 8000),
    ]


def test_chunker_ignores_empty_frames_and_flushes_nothing_when_empty() -> None:
    assert run_node_sync(AudioChunkerNode, [audio(np.zeros(0, np.float32))]) == []
    assert run_node_sync(AudioChunkerNode, []) == []


def test_chunker_rejects_zero_chunk_size() -> None:
    with pytest.raises(ManifestError, match="chunk_size"):
        make_node(AudioChunkerNode, {"chunk_size": 0})


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 200),
    st.integers(1, 40),
    st.lists(st.integers(0, 60), max_size=12),
    st.integers(1, 3),
    st.booleans(),
)
def test_chunker_any_split_gives_the_same_chunks(
    total: int, size: int, cuts: list[int], channels: int, pad: bool
) -> None:
    data = np.arange(total * channels, dtype=np.int32).reshape(total, channels)
    bounds = sorted({0, total, *(c % (total + 1) for c in cuts)})
    frames = [AudioFrame(samples=data[a:b], sample_rate=8000) for a, b in pairwise(bounds)]
    out = only_audio(run_node_sync(AudioChunkerNode, frames, {"chunk_size": size, "pad_final": pad}))
    full, rest = divmod(total, size)
    expected_sizes = [size] * full + ([size if pad else rest] if rest else [])
    assert [f.num_samples for f in out] == expected_sizes
    got = np.concatenate([f.samples for f in out]) if out else np.zeros((0, channels), np.int32)
    np.testing.assert_array_equal(got[:total], data)
    assert not got[total:].any()


# --- resampler ------------------------------------------------------------------------------


def sine(
    rate: int, seconds: float, freq: float, amp: float = 0.5, n: int | None = None
) -> npt.NDArray[np.float64]:
    count = n if n is not None else round(rate * seconds)
    return amp * np.sin(2 * np.pi * freq * np.arange(count) / rate)


def snr_db(signal: npt.NDArray[Any], reference: npt.NDArray[Any]) -> float:
    noise = float(np.sum((signal - reference) ** 2))
    return 10 * math.log10(float(np.sum(reference**2)) / max(noise, 1e-30))


def peak_bin_ok(y: npt.NDArray[np.float64], rate: int, freq: float) -> bool:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    expected = freq * len(y) / rate
    return abs(int(np.argmax(spectrum)) - expected) <= 1.0


def resample(frames: list[AudioFrame], target: int, **params: Any) -> list[AudioFrame]:
    return only_audio(run_node_sync(AudioResampleNode, frames, {"target_rate": target, **params}))


RATE_PAIRS = [(44100, 16000), (16000, 48000), (48000, 16000)]


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_resample_sine_one_shot_and_streamed(rate_in: int, rate_out: int) -> None:
    freq = 1000.0
    x = sine(rate_in, 1.0, freq).astype(np.float32)
    one_shot = joined(list(resample([audio(x, rate_in)], rate_out)))[:, 0].astype(np.float64)
    step = rate_in // 50  # 20 ms chunks
    chunks = [audio(x[i : i + step], rate_in) for i in range(0, len(x), step)]
    streamed_frames = resample(chunks, rate_out)
    assert all(f.sample_rate == rate_out and f.samples.dtype == np.float32 for f in streamed_frames)
    streamed = joined(list(streamed_frames))[:, 0].astype(np.float64)

    assert len(one_shot) == len(streamed) == rate_out  # 1 s in, 1 s out
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)
    edge = rate_out // 50  # skip the filter's edge transients (20 ms each side)
    ideal = sine(rate_out, 1.0, freq, n=len(one_shot))
    for y in (one_shot, streamed):
        assert snr_db(y[edge:-edge], ideal[edge:-edge]) >= 60.0
        assert peak_bin_ok(y[edge:-edge], rate_out, freq)


def test_resample_int16_and_int32_keep_format() -> None:
    x = sine(44100, 0.5, 440.0)
    for dtype, scale in ((np.int16, 32767), (np.int32, 2**31 - 1)):
        frames = [audio(np.round(x[i : i + 441] * scale).astype(dtype), 44100) for i in range(0, len(x), 441)]
        out = resample(frames, 16000)
        assert all(f.samples.dtype == dtype for f in out)
        y = joined(list(out))[:, 0] / scale
        ideal = sine(16000, 0.5, 440.0, n=len(y))
        assert len(y) == 8000
        assert snr_db(y[320:-320], ideal[320:-320]) >= 60.0


def test_resample_multichannel_keeps_channels_apart() -> None:
    left, right = sine(48000, 0.5, 500.0), sine(48000, 0.5, 3000.0, amp=0.25)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    out = resample([audio(stereo, 48000)], 16000)
    y = joined(list(out)).astype(np.float64)
    assert y.shape == (8000, 2)
    assert snr_db(y[320:-320, 0], sine(16000, 0.5, 500.0, n=8000)[320:-320]) >= 60
    assert snr_db(y[320:-320, 1], sine(16000, 0.5, 3000.0, amp=0.25, n=8000)[320:-320]) >= 60


def test_resample_passes_target_rate_through_unchanged() -> None:
    frame = audio(np.ones(160, np.float32), 16000, a="1")
    (out,) = run_node_sync(AudioResampleNode, [frame], {"target_rate": 16000})
    assert out is frame


def test_resample_rate_change_drains_old_stream() -> None:
    a = [audio(sine(44100, 0.02, 300.0).astype(np.float32), 44100, part="a") for _ in range(10)]
    b = [audio(sine(8000, 0.02, 300.0).astype(np.float32), 8000, part="b") for _ in range(10)]
    out = resample([*a, *b], 16000)
    parts = [f.metadata["part"] for f in out]
    first_b = parts.index("b")
    assert parts[first_b:] == ["b"] * (len(parts) - first_b)  # nothing of "a" after "b" started
    assert sum(f.num_samples for f in out[:first_b]) == 3200  # 200 ms of "a", drained in full
    assert sum(f.num_samples for f in out[first_b:]) == 3200


def test_resample_target_rate_in_the_middle_of_a_stream() -> None:
    a = audio(np.zeros(4410, np.float32), 44100)
    b = audio(np.zeros(1600, np.float32), 16000)
    out = resample([a, b], 16000)
    assert out[-1] is b
    assert sum(f.num_samples for f in out[:-1]) == 1600


def test_resample_params_and_alias() -> None:
    assert ALIASES["FastResampleNode"] is AudioResampleNode
    node = make_node(AudioResampleNode, {})
    assert (node.params.target_rate, node.params.quality) == (16000, "HQ")
    with pytest.raises(ManifestError, match="quality"):
        make_node(AudioResampleNode, {"quality": "ULTRA"})
    with pytest.raises(ManifestError, match="target_rate"):
        make_node(AudioResampleNode, {"target_rate": 0})


# --- gain and normalisation -----------------------------------------------------------------


def test_gain_db_doubles_amplitude() -> None:
    x = np.array([0.25, -0.125, 0.0], np.float32)
    (out,) = only_audio(run_node_sync(AudioGainNode, [audio(x)], {"gain_db": 20 * math.log10(2)}))
    np.testing.assert_allclose(out.samples[:, 0], [0.5, -0.25, 0.0], rtol=1e-6)
    (out,) = only_audio(run_node_sync(AudioGainNode, [audio(x)], {"gain_db": 6.0206}))
    np.testing.assert_allclose(out.samples[:, 0], 2 * x, rtol=1e-4)


def test_gain_integer_formats_saturate() -> None:
    x = np.array([20000, -20000, 100, -32768], np.int16)
    (out,) = only_audio(run_node_sync(AudioGainNode, [audio(x)], {"gain_db": 6.0206}))
    assert out.samples.dtype == np.int16
    np.testing.assert_array_equal(out.samples[:, 0], [32767, -32768, 200, -32768])
    big = np.array([2**30 + 5, -(2**31)], np.int32)
    (out,) = only_audio(run_node_sync(AudioGainNode, [audio(big)], {"gain_db": 12.0}))
    np.testing.assert_array_equal(out.samples[:, 0], [2**31 - 1, -(2**31)])


def test_gain_float_is_not_clipped_and_zero_db_is_identity() -> None:
    frame = audio(np.array([0.9], np.float32))
    (out,) = only_audio(run_node_sync(AudioGainNode, [frame], {"gain_db": 6.0206}))
    assert out.samples[0, 0] == pytest.approx(1.8, rel=1e-4)
    (same,) = run_node_sync(AudioGainNode, [frame])
    assert same is frame


def level_db(samples: npt.NDArray[Any], scale: float, mode: str) -> float:
    values = samples.astype(np.float64) / scale
    level = np.max(np.abs(values)) if mode == "peak" else np.sqrt(np.mean(values**2))
    return 20 * math.log10(float(level))


@pytest.mark.parametrize(("dtype", "scale"), [(np.float32, 1.0), (np.int16, 32768.0), (np.int32, 2.0**31)])
@pytest.mark.parametrize(("mode", "target"), [("peak", -1.0), ("peak", -12.5), ("rms", -20.0)])
def test_normalize_reaches_target(dtype: Any, scale: float, mode: str, target: float) -> None:
    x = sine(16000, 0.1, 440.0, amp=0.05) * scale
    samples = x.astype(dtype) if dtype == np.float32 else np.round(x).astype(dtype)
    params = {"target_dbfs": target, "mode": mode}
    (out,) = only_audio(run_node_sync(AudioNormalizeNode, [audio(samples)], params))
    assert out.samples.dtype == dtype
    assert level_db(out.samples, scale, mode) == pytest.approx(target, abs=0.01)


def test_normalize_caps_gain_and_attenuates() -> None:
    quiet = audio((sine(16000, 0.05, 440.0, amp=1e-4)).astype(np.float32))
    (out,) = only_audio(run_node_sync(AudioNormalizeNode, [quiet], {"max_gain_db": 30.0}))
    assert level_db(out.samples, 1.0, "peak") == pytest.approx(-80.0 + 30.0, abs=0.01)
    loud = audio(np.array([[1.5], [-0.3]], np.float32))
    (out,) = only_audio(run_node_sync(AudioNormalizeNode, [loud], {"target_dbfs": -6.0}))
    assert level_db(out.samples, 1.0, "peak") == pytest.approx(-6.0, abs=0.01)


def test_normalize_silence_stays_silence() -> None:
    for dtype in (np.float32, np.int16):
        frame = audio(np.zeros(100, dtype))
        assert run_node_sync(AudioNormalizeNode, [frame])[0] is frame
    empty = audio(np.zeros(0, np.float32))
    assert run_node_sync(AudioNormalizeNode, [empty])[0] is empty


def test_normalize_is_per_frame() -> None:
    frames = [audio(np.full(10, 0.1, np.float32)), audio(np.full(10, 0.5, np.float32))]
    out = only_audio(run_node_sync(AudioNormalizeNode, frames, {"target_dbfs": 0.0}))
    assert [float(f.samples.max()) for f in out] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_normalize_params_bounds() -> None:
    with pytest.raises(ManifestError, match="target_dbfs"):
        make_node(AudioNormalizeNode, {"target_dbfs": 1.0})
    with pytest.raises(ManifestError, match="mode"):
        make_node(AudioNormalizeNode, {"mode": "lufs"})


# --- format and channels --------------------------------------------------------------------


def fmt(frame: AudioFrame, **params: Any) -> AudioFrame:
    (out,) = only_audio(run_node_sync(AudioFormatNode, [frame], params))
    return out


def test_format_float_to_int_scaling_and_saturation() -> None:
    x = audio(np.array([1.0, -1.0, 0.5, -0.5, 2.0, np.nan, np.inf, -np.inf], np.float32))
    np.testing.assert_array_equal(
        fmt(x, format="i16").samples[:, 0], [32767, -32768, 16384, -16384, 32767, 0, 32767, -32768]
    )
    i32 = fmt(x, format="i32").samples[:, 0]
    assert i32.dtype == np.int32
    np.testing.assert_array_equal(i32[:4], [2**31 - 1, -(2**31), 2**30, -(2**30)])


def test_format_int_to_float_and_int_to_int() -> None:
    x = audio(np.array([-32768, 16384, 1, 32767], np.int16))
    np.testing.assert_array_equal(fmt(x, format="f32").samples[:, 0], [-1.0, 0.5, 2**-15, 32767 / 32768])
    np.testing.assert_array_equal(fmt(x, format="i32").samples[:, 0], [-(2**31), 2**30, 65536, 32767 * 65536])
    y = audio(np.array([65536 + 65535, -1, 2**31 - 1], np.int32))
    np.testing.assert_array_equal(fmt(y, format="i16").samples[:, 0], [1, -1, 32767])


def test_format_keep_everything_is_identity() -> None:
    frame = audio(np.zeros(4, np.int16), a="b")
    assert fmt(frame) is frame
    assert fmt(frame, format="i16", channels=1) is frame


def test_format_downmix_and_duplicate() -> None:
    stereo = AudioFrame.from_array(
        np.array([100, 300, -5, -6], np.int16), 8000, channels=2, metadata={"m": "1"}
    )
    mono = fmt(stereo, channels=1)
    assert (mono.channels, mono.samples.dtype, dict(mono.metadata)) == (1, np.int16, {"m": "1"})
    np.testing.assert_array_equal(mono.samples[:, 0], [200, -6])  # -5.5 rounds to even
    mono_f = fmt(stereo, channels=1, format="f32")
    np.testing.assert_allclose(mono_f.samples[:, 0], [200 / 32768, -5.5 / 32768], rtol=1e-7)
    wide = fmt(audio(np.array([0.5, -0.25], np.float32)), channels=3, format="i16")
    np.testing.assert_array_equal(wide.samples, [[16384] * 3, [-8192] * 3])


def test_format_impossible_channel_change_names_counts() -> None:
    stereo = AudioFrame.from_array(np.zeros(4, np.float32), 8000, channels=2)
    with pytest.raises(ValueError, match="cannot convert 2-channel audio to 3 channels"):
        fmt(stereo, channels=3)
    with pytest.raises(ManifestError, match="channels"):
        make_node(AudioFormatNode, {"channels": 0})
    with pytest.raises(ManifestError, match="format"):
        make_node(AudioFormatNode, {"format": "u8"})


@given(hnp.arrays(np.int16, st.integers(0, 64)))
def test_format_i16_f32_round_trip_is_exact(x: npt.NDArray[np.int16]) -> None:
    back = fmt(fmt(audio(x), format="f32"), format="i16").samples[:, 0]
    np.testing.assert_array_equal(back, x)
    back32 = fmt(fmt(audio(x), format="i32"), format="i16").samples[:, 0]
    np.testing.assert_array_equal(back32, x)


@given(hnp.arrays(np.int32, st.integers(0, 64), elements=st.integers(-(2**23), 2**23 - 1)))
def test_format_24bit_through_f32_is_exact(k: npt.NDArray[np.int32]) -> None:
    x = k * 256  # 24 significant bits: what f32 holds exactly
    back = fmt(fmt(audio(x), format="f32"), format="i32").samples[:, 0]
    np.testing.assert_array_equal(back, x)
