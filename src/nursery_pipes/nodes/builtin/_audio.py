"""Built-in audio nodes: chunking, resampling, gain, normalisation, sample format/channels.

All of them stream: state is carried across ``process`` calls and ``flush`` emits
what is still buffered. Empty audio frames (0 samples) produce no output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ...frames import AudioFormat, AudioFrame, Frame, FrameKind
from .._base import Node, NodeContext, Params
from .._pcm import apply_gain, convert_format, from_float, to_float64

__all__ = [
    "AudioChunkerNode",
    "AudioChunkerParams",
    "AudioFormatNode",
    "AudioFormatParams",
    "AudioGainNode",
    "AudioGainParams",
    "AudioNormalizeNode",
    "AudioNormalizeParams",
    "AudioResampleNode",
    "AudioResampleParams",
]

_AUDIO = frozenset({FrameKind.AUDIO})

# What must stay constant for buffered samples to be joined with new ones.
_Signature = tuple[int, int, np.dtype[Any]]


def _audio(frame: Frame, node: str) -> AudioFrame:
    if not isinstance(frame, AudioFrame):  # the graph only routes audio here
        raise ValueError(f"{node} takes audio frames, got {frame.kind.label}")
    return frame


def _signature(frame: AudioFrame) -> _Signature:
    return (frame.sample_rate, frame.channels, frame.samples.dtype)


def _db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


# ---------------------------------------------------------------------------------------------
# Chunker


class AudioChunkerParams(Params, kw_only=True):
    chunk_size: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Samples per channel in each output chunk."""
    pad_final: bool = False
    """Zero-pad a short remainder to ``chunk_size`` instead of emitting it short."""


class AudioChunkerNode(Node[AudioChunkerParams]):
    """Re-cut an audio stream into fixed-size chunks of chunk_size samples per channel.

    Samples left over from one input frame are joined with the next; ``flush``
    emits the final remainder (zero-padded to full size when ``pad_final``). If the
    sample rate, channel count or sample format changes mid-stream, the pending
    remainder is emitted first as its own chunk (short, or padded when
    ``pad_final``), then chunking restarts. Each chunk carries the metadata of the
    input frame that completed it.
    """

    accepts = _AUDIO
    produces = _AUDIO
    executor = "inprocess"

    def __init__(self, params: AudioChunkerParams, context: NodeContext) -> None:
        super().__init__(params, context)
        # Invariant: _pending is None, or 1..chunk_size-1 samples shaped like _pending_frame.
        self._pending: npt.NDArray[Any] | None = None
        self._pending_frame: AudioFrame | None = None

    def process(self, frame: Frame) -> list[Frame]:
        audio = _audio(frame, "AudioChunkerNode")
        out: list[Frame] = []
        if audio.num_samples == 0:
            return out
        if self._pending_frame is not None and _signature(self._pending_frame) != _signature(audio):
            out.extend(self._take_remainder())
        size = self.params.chunk_size
        data = audio.samples
        if self._pending is not None:
            data = np.concatenate([self._pending, data])
        full = len(data) // size
        out.extend(replace(audio, samples=data[i * size : (i + 1) * size]) for i in range(full))
        rest = data[full * size :]
        self._pending = rest if len(rest) else None
        self._pending_frame = audio if len(rest) else None
        return out

    def flush(self) -> list[Frame]:
        return self._take_remainder()

    def _take_remainder(self) -> list[Frame]:
        pending, frame = self._pending, self._pending_frame
        self._pending = self._pending_frame = None
        if pending is None or frame is None:
            return []
        missing = self.params.chunk_size - len(pending)
        if self.params.pad_final and missing > 0:
            pending = np.concatenate([pending, np.zeros((missing, frame.channels), pending.dtype)])
        return [replace(frame, samples=pending)]


# ---------------------------------------------------------------------------------------------
# Resampler


class AudioResampleParams(Params, kw_only=True):
    target_rate: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 16000
    """Output sample rate in Hz (default 16 kHz, what most speech models expect)."""
    quality: Literal["QQ", "LQ", "MQ", "HQ", "VHQ"] = "HQ"
    """libsoxr quality preset, quick to very high."""


class AudioResampleNode(Node[AudioResampleParams]):
    """Resample audio to target_rate with libsoxr, artefact-free across chunk boundaries.

    One ``soxr.ResampleStream`` carries the filter state from frame to frame, so a
    stream cut into chunks resamples exactly like one big frame; ``flush`` drains the
    filter tail. Sample format (f32/i16/i32) and channel count are kept. Audio
    already at ``target_rate`` passes through untouched. When the input rate,
    channel count or format changes mid-stream, the running stream is drained
    (its tail emitted) and a new one starts. Output frames carry the metadata of the
    input frame that produced them.
    """

    accepts = _AUDIO
    produces = _AUDIO
    executor = "inprocess"

    def __init__(self, params: AudioResampleParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._stream: Any = None  # soxr.ResampleStream, untyped
        self._signature: _Signature | None = None
        self._last_metadata: Mapping[str, str] = {}

    def process(self, frame: Frame) -> list[Frame]:
        audio = _audio(frame, "AudioResampleNode")
        out: list[Frame] = []
        if audio.num_samples == 0:
            return out
        if self._stream is not None and self._signature != _signature(audio):
            out.extend(self._drain())
        if audio.sample_rate == self.params.target_rate:
            out.append(audio)
            return out
        if self._stream is None:
            self._open(audio)
        resampled = self._stream.resample_chunk(np.ascontiguousarray(audio.samples))
        self._last_metadata = audio.metadata
        if len(resampled):
            out.append(self._frame(resampled, audio.metadata))
        return out

    def flush(self) -> list[Frame]:
        return self._drain()

    def _open(self, audio: AudioFrame) -> None:
        import soxr  # imported here: only resampling pipelines pay for it

        try:
            self._stream = soxr.ResampleStream(
                audio.sample_rate,
                self.params.target_rate,
                audio.channels,
                dtype=audio.samples.dtype.name,
                quality=self.params.quality,
            )
        except (ValueError, RuntimeError) as exc:
            raise ValueError(
                f"cannot resample {audio.sample_rate} Hz → {self.params.target_rate} Hz: {exc}"
            ) from exc
        self._signature = _signature(audio)

    def _drain(self) -> list[Frame]:
        if self._stream is None or self._signature is None:
            return []
        _, channels, dtype = self._signature
        tail = self._stream.resample_chunk(np.zeros((0, channels), dtype), last=True)
        self._stream = self._signature = None
        return [self._frame(tail, self._last_metadata)] if len(tail) else []

    def _frame(self, samples: npt.NDArray[Any], metadata: Mapping[str, str]) -> AudioFrame:
        return AudioFrame(samples=samples, sample_rate=self.params.target_rate, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Gain and normalisation


class AudioGainParams(Params, kw_only=True):
    gain_db: Annotated[float, msgspec.Meta(ge=-120.0, le=120.0)] = 0.0
    """Gain in dB (+6.02 dB doubles the amplitude)."""


class AudioGainNode(Node[AudioGainParams]):
    """Apply a fixed gain in dB; integer formats saturate at full scale instead of wrapping.

    f32 samples are scaled without clipping (they may exceed ±1.0).
    """

    accepts = _AUDIO
    produces = _AUDIO
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        audio = _audio(frame, "AudioGainNode")
        if self.params.gain_db == 0.0:
            return audio
        return replace(audio, samples=apply_gain(audio.samples, _db_to_gain(self.params.gain_db)))


class AudioNormalizeParams(Params, kw_only=True):
    target_dbfs: Annotated[float, msgspec.Meta(ge=-120.0, le=0.0)] = -1.0
    """Level to reach, in dBFS (full scale = 0 dB)."""
    mode: Literal["peak", "rms"] = "peak"
    """``peak``: the loudest sample hits the target; ``rms``: the frame's RMS does
    (a full-scale sine has an RMS of -3 dBFS)."""
    max_gain_db: Annotated[float, msgspec.Meta(ge=0.0, le=120.0)] = 30.0
    """Upper bound on the amplification, so quiet noise is not blown up."""


class AudioNormalizeNode(Node[AudioNormalizeParams]):
    """Scale each audio frame so its peak (or RMS) level reaches target_dbfs.

    Normalisation is per frame: each frame gets its own gain (put an
    AudioChunkerNode in front for uniform windows). Amplification is capped at
    ``max_gain_db``; attenuation is not capped. Digital silence passes through
    unchanged. In ``rms`` mode peaks may exceed full scale: integer formats then
    saturate, f32 is not clipped.
    """

    accepts = _AUDIO
    produces = _AUDIO
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        audio = _audio(frame, "AudioNormalizeNode")
        level = self.level(audio)
        if level <= 0.0:
            return audio  # silence (or empty): there is no gain that reaches the target
        gain_db = min(self.params.target_dbfs - 20.0 * math.log10(level), self.params.max_gain_db)
        return replace(audio, samples=apply_gain(audio.samples, _db_to_gain(gain_db)))

    def level(self, audio: AudioFrame) -> float:
        """Peak or RMS level of the frame, linear, full scale = 1.0."""
        if audio.num_samples == 0:
            return 0.0
        values = to_float64(audio.samples)
        if self.params.mode == "peak":
            return float(np.max(np.abs(values)))
        return math.sqrt(float(np.mean(values * values)))


# ---------------------------------------------------------------------------------------------
# Format and channels


class AudioFormatParams(Params, kw_only=True):
    format: Literal["f32", "i16", "i32"] | None = None
    """Output sample format; ``None`` keeps the input's."""
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    """Output channels; ``None`` keeps them, 1 averages to mono, N duplicates a mono input."""


class AudioFormatNode(Node[AudioFormatParams]):
    """Convert the sample format (f32/i16/i32) and/or channel count of audio.

    Scaling: f32 ↔ i16 by 32768 (f32 1.0 → 32767 saturated, -1.0 → -32768),
    f32 ↔ i32 by 2**31, i16 ↔ i32 by a 16-bit shift; float → integer rounds to
    nearest and saturates, so i16 → f32 → i16 is exact. Channels: 1 averages all
    channels (in float64, rounded once); N > 1 duplicates a mono input; any other
    change (e.g. 2 → 6) is an error naming both counts.
    """

    accepts = _AUDIO
    produces = _AUDIO
    executor = "inprocess"
    zero_copy = True  # keeps nothing between calls: may read inputs in place

    def process(self, frame: Frame) -> Frame:
        audio = _audio(frame, "AudioFormatNode")
        p = self.params
        fmt = audio.format if p.format is None else AudioFormat.parse(p.format)
        channels = audio.channels if p.channels is None else p.channels
        if fmt is audio.format and channels == audio.channels:
            return audio
        if channels == audio.channels:
            samples = convert_format(audio.samples, fmt)
        elif channels == 1:
            samples = _downmix(audio.samples, fmt)
        elif audio.channels == 1:
            samples = np.repeat(convert_format(audio.samples, fmt), channels, axis=1)
        else:
            raise ValueError(
                f"cannot convert {audio.channels}-channel audio to {channels} channels: "
                "AudioFormatNode only downmixes to mono (channels=1) or duplicates mono"
            )
        return replace(audio, samples=samples)


def _downmix(samples: npt.NDArray[Any], fmt: AudioFormat) -> npt.NDArray[Any]:
    mono = to_float64(samples).mean(axis=1, keepdims=True)
    return from_float(mono, fmt)
