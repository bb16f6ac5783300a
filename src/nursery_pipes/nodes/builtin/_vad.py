"""Energy-based voice activity detection.

Split in two: :class:`VadTracker` is the sans-I/O decision state machine (one
call per analysis frame, returns what happened), and :class:`EnergyVADNode`
does the buffering — analysis windows straddle input frames, and with
``emit_audio`` the raw samples wait until the tracker has decided about them.

States and transitions (``active`` = the frame's RMS reaches the threshold)::

    state     active                          inactive
    SILENCE   → PENDING (candidate starts)    stay, drop the frame
    PENDING   → SPEECH once min_speech long   → SILENCE, drop the candidate
    SPEECH    stay                            → HANGOVER
    HANGOVER  → SPEECH (gap bridged)          stay while within hangover, else → SILENCE (end)

A segment runs from the first active frame to the end of the last active frame
plus ``hangover`` (or to the end of the stream if that comes first).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ...frames import AudioFrame, Frame, FrameKind, JsonFrame
from .._base import Node, NodeContext, Params
from .._pcm import to_float64

__all__ = ["EnergyVADNode", "EnergyVADParams", "VadOp", "VadTracker"]


class EnergyVADParams(Params, kw_only=True):
    frame_ms: Literal[10, 20, 30] = 20
    """Analysis frame length in milliseconds."""
    threshold_db: Annotated[float, msgspec.Meta(ge=-200.0, le=0.0)] = -40.0
    """A frame whose mono RMS reaches this many dBFS counts as speech (full-scale sine: -3)."""
    hangover_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 300
    """Speech continues through this much silence; shorter gaps are bridged."""
    min_speech_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 60
    """Bursts of continuous energy shorter than this are ignored."""
    emit_audio: bool = False
    """Also emit the audio that falls inside speech segments (gated audio)."""
    emit_events: bool = True
    """Emit speech_start / speech_end JSON events."""

    def __post_init__(self) -> None:
        if not (self.emit_audio or self.emit_events):
            raise ValueError("emit_audio and emit_events are both false: nothing would be emitted")


class _State(enum.Enum):
    SILENCE = "silence"
    PENDING = "pending"
    SPEECH = "speech"
    HANGOVER = "hangover"


@dataclass(frozen=True, slots=True)
class VadOp:
    """One decision. ``kind``: ``start`` (at ``a``), ``end`` (segment ``a``..``b``),
    ``keep`` (samples ``a``..``b`` are speech) or ``drop`` (samples before ``b`` are not)."""

    kind: Literal["start", "end", "keep", "drop"]
    a: int
    b: int


@dataclass(slots=True)
class VadTracker:
    """The VAD state machine over analysis frames given as sample ranges ``[start, end)``."""

    min_frames: int
    hangover_samples: int
    state: _State = _State.SILENCE
    segment_start: int = 0
    active_run: int = 0
    last_active_end: int = 0

    def step(self, start: int, end: int, active: bool) -> list[VadOp]:
        ops: list[VadOp] = []
        if self.state is _State.SILENCE:
            if active:
                self.state, self.segment_start, self.active_run = _State.PENDING, start, 0
            else:
                ops.append(VadOp("drop", start, end))
        if self.state is _State.PENDING:
            if not active:
                self.state = _State.SILENCE
                ops.append(VadOp("drop", self.segment_start, end))
                return ops
            self.active_run += 1
            self.last_active_end = end
            if self.active_run >= self.min_frames:
                self.state = _State.SPEECH
                ops.append(VadOp("start", self.segment_start, 0))
                ops.append(VadOp("keep", self.segment_start, end))
            return ops
        if self.state is _State.SILENCE:
            return ops
        if active:
            self.state, self.last_active_end = _State.SPEECH, end
            ops.append(VadOp("keep", start, end))
            return ops
        self.state = _State.HANGOVER
        segment_end = self.last_active_end + self.hangover_samples
        if end <= segment_end:
            ops.append(VadOp("keep", start, end))
            return ops
        # Hangover used up inside this frame: the segment ends at segment_end.
        if segment_end > start:
            ops.append(VadOp("keep", start, segment_end))
        ops += [VadOp("end", self.segment_start, segment_end), VadOp("drop", segment_end, end)]
        self.state = _State.SILENCE
        return ops

    def finish(self, stream_end: int) -> list[VadOp]:
        """End of stream: close an open segment there; forget an unconfirmed candidate."""
        state, self.state = self.state, _State.SILENCE
        if state in (_State.SPEECH, _State.HANGOVER):
            return [VadOp("end", self.segment_start, stream_end)]
        return [VadOp("drop", stream_end, stream_end)]


class EnergyVADNode(Node[EnergyVADParams]):
    """Detect speech by frame energy; emit speech_start/speech_end events and/or gated audio.

    Audio of any rate, format and channel count is analysed as its mono mix in
    frames of ``frame_ms``; a frame is active when its RMS reaches ``threshold_db``
    dBFS. A segment starts at the first frame of a run of at least
    ``min_speech_ms`` of active frames, and ends ``hangover_ms`` after the last
    active frame (gaps shorter than that are bridged) or at the end of the stream.
    Events are JSON frames (schema_type ``vad_event``)::

        {"event": "speech_start", "time": 1.24, "sample": 19840}
        {"event": "speech_end", "time": 2.9, "sample": 46400, "start_time": 1.24, "duration": 1.66}

    Times are seconds from the start of the stream (3 decimals); ``sample`` counts
    samples per channel. Events are emitted once decided, so speech_start lags by
    ``min_speech_ms`` and speech_end by ``hangover_ms``. With ``emit_audio`` the
    input audio inside segments is passed on unchanged (format and channels kept),
    exactly the samples between each start and end. The sample rate must stay
    constant over the stream (put an AudioResampleNode in front otherwise).
    """

    accepts = frozenset({FrameKind.AUDIO})
    produces = frozenset({FrameKind.AUDIO, FrameKind.JSON})
    executor = "inprocess"

    def __init__(self, params: EnergyVADParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._threshold_power = 10.0 ** (params.threshold_db / 10.0)
        self._reset()

    def _reset(self) -> None:
        self._rate: int | None = None
        self._frame_len = 0
        self._tracker: VadTracker | None = None
        self._position = 0  # samples received so far
        # Invariant: _mono holds samples [_mono_start, _position), not yet analysed (< 1 frame).
        self._mono: npt.NDArray[np.float64] = np.zeros(0)
        self._mono_start = 0
        # Raw input kept while undecided (emit_audio only): (first sample index, samples).
        self._raw: list[tuple[int, npt.NDArray[Any]]] = []
        self._metadata: Mapping[str, str] = {}

    def process(self, frame: Frame) -> list[Frame]:
        if not isinstance(frame, AudioFrame):
            raise ValueError(f"EnergyVADNode takes audio frames, got {frame.kind.label}")
        if frame.num_samples == 0:
            return []
        tracker = self._tracker_for(frame.sample_rate)
        self._metadata = frame.metadata
        if self.params.emit_audio:
            self._raw.append((self._position, frame.samples))
        self._position += frame.num_samples
        mono = to_float64(frame.samples).mean(axis=1)
        buffered = np.concatenate([self._mono, mono]) if len(self._mono) else mono
        size = self._frame_len
        count = len(buffered) // size
        powers = np.mean(np.square(buffered[: count * size].reshape(count, size)), axis=1)
        ops: list[VadOp] = []
        for i, power in enumerate(powers.tolist()):
            start = self._mono_start + i * size
            ops += tracker.step(start, start + size, power >= self._threshold_power)
        self._mono = buffered[count * size :]
        self._mono_start += count * size
        return self._render(ops)

    def flush(self) -> list[Frame]:
        if self._tracker is None:
            return []
        ops: list[VadOp] = []
        if len(self._mono):  # the last, short analysis frame
            power = float(np.mean(np.square(self._mono)))
            end = self._mono_start + len(self._mono)
            ops += self._tracker.step(self._mono_start, end, power >= self._threshold_power)
        ops += self._tracker.finish(self._position)
        out = self._render(ops)
        self._reset()
        return out

    def _tracker_for(self, rate: int) -> VadTracker:
        if self._tracker is None:
            p = self.params
            self._rate = rate
            self._frame_len = max(1, round(rate * p.frame_ms / 1000))
            hangover_frames = math.ceil(p.hangover_ms / p.frame_ms)
            self._tracker = VadTracker(
                min_frames=max(1, math.ceil(p.min_speech_ms / p.frame_ms)),
                hangover_samples=hangover_frames * self._frame_len,
            )
        elif rate != self._rate:
            raise ValueError(
                f"sample rate changed from {self._rate} Hz to {rate} Hz mid-stream; "
                "EnergyVADNode needs one rate per stream (resample before it)"
            )
        return self._tracker

    def _render(self, ops: list[VadOp]) -> list[Frame]:
        out: list[Frame] = []
        keep: list[int] = []  # [a, b): adjacent keep ops coalesced, so audio is cut once per run
        for op in ops:
            if op.kind == "keep" and keep and keep[1] == op.a:
                keep[1] = op.b
                continue
            if keep:
                out.extend(self._take_raw(keep[0], keep[1]))
                keep = []
            if op.kind in ("start", "end"):
                if self.params.emit_events:
                    out.append(self._event(op))
            elif self.params.emit_audio:
                self._drop_raw(op.a if op.kind == "keep" else op.b)
                if op.kind == "keep":
                    keep = [op.a, op.b]
        if keep:
            out.extend(self._take_raw(keep[0], keep[1]))
        return _merge_audio(out)

    def _event(self, op: VadOp) -> JsonFrame:
        assert self._rate is not None
        rate = self._rate
        value: dict[str, Any]
        if op.kind == "start":
            value = {"event": "speech_start", "time": round(op.a / rate, 3), "sample": op.a}
        else:
            value = {
                "event": "speech_end",
                "time": round(op.b / rate, 3),
                "sample": op.b,
                "start_time": round(op.a / rate, 3),
                "duration": round((op.b - op.a) / rate, 3),
            }
        return JsonFrame(value=value, schema_type="vad_event", metadata=self._metadata)

    def _take_raw(self, a: int, b: int) -> list[Frame]:
        """The raw input samples [a, b) (one piece per input frame), forgotten afterwards."""
        assert self._rate is not None
        pieces: list[Frame] = []
        for first, samples in self._raw:
            lo, hi = max(a, first), min(b, first + len(samples))
            if lo < hi:
                piece = samples[lo - first : hi - first]
                pieces.append(AudioFrame(samples=piece, sample_rate=self._rate, metadata=self._metadata))
        self._drop_raw(b)
        return pieces

    def _drop_raw(self, before: int) -> None:
        self._raw = [(first, s) for first, s in self._raw if first + len(s) > before]


def _merge_audio(frames: list[Frame]) -> list[Frame]:
    """Join each run of consecutive audio pieces of the same format and channels into one frame."""
    out: list[Frame] = []
    run: list[AudioFrame] = []
    for frame in [*frames, None]:
        if isinstance(frame, AudioFrame) and (not run or _same_layout(run[0], frame)):
            run.append(frame)
            continue
        if run:
            samples = run[0].samples if len(run) == 1 else np.concatenate([f.samples for f in run])
            out.append(replace(run[-1], samples=samples))
            run = []
        if isinstance(frame, AudioFrame):
            run.append(frame)
        elif frame is not None:
            out.append(frame)
    return out


def _same_layout(a: AudioFrame, b: AudioFrame) -> bool:
    return a.samples.dtype == b.samples.dtype and a.channels == b.channels
