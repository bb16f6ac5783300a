"""Speech recognition with pocketsphinx 5 and its bundled en-US model (BSD-style licences).

One utterance per VAD segment, decoded incrementally: audio goes into
``process_raw`` as it arrives, so when the segment ends only ``end_utt`` (the
final search passes, ~65 ms on this VM) stands between the VAD's speech_end and
the transcript.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from ...frames import AudioFormat, AudioFrame, Frame, FrameKind, JsonFrame, TextFrame
from .._base import Node, NodeContext, Params, ProgressReporter
from .._pcm import from_float
from ._audio import SpeechStream, require

__all__ = ["SpeechRecognitionNode", "SpeechRecognitionParams", "normalize_words"]

LANGUAGE = "en-US"

_Phrase = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


def normalize_words(text: str) -> list[str]:
    """Lower-case words as the en-US dictionary spells them (letters and apostrophes)."""
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split()


class SpeechRecognitionParams(Params, kw_only=True):
    phrases: Annotated[list[_Phrase], msgspec.Meta(min_length=1, max_length=10_000)] | None = None
    """Expected phrases: decode with a small trigram model built from them instead of the
    full en-US model — far more accurate (and faster) on these phrases, word salad on
    anything else. Every word must be in the en-US pronunciation dictionary."""

    def __post_init__(self) -> None:
        for index, phrase in enumerate(self.phrases or ()):
            if not normalize_words(phrase):
                raise ValueError(f"phrases[{index}] ({phrase!r}) has no words")


class SpeechRecognitionNode(Node[SpeechRecognitionParams]):
    """Transcribe speech with pocketsphinx (offline, en-US): one text frame per utterance.

    Takes audio of any rate, format and channel count (mixed to 16 kHz mono int16,
    what the model reads) and, optionally, the JSON events of a VAD. Audio is
    decoded as it arrives; an utterance ends at a ``speech_end`` event, when the
    ``segment`` metadata of the audio changes, or at the end of the stream, and
    its transcript goes out as ``TextFrame(text, language="en-US")`` carrying the
    utterance's metadata (``segment`` from the VAD). Empty hypotheses are not sent.
    Without a VAD, the whole stream is one utterance. Transcripts are lower case,
    without punctuation.
    """

    accepts = frozenset({FrameKind.AUDIO, FrameKind.JSON})
    produces = frozenset({FrameKind.TEXT})
    executor = "multiprocess"

    def __init__(self, params: SpeechRecognitionParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._decoder: Any = None
        self._stream = SpeechStream()
        self._in_utterance = False
        self._segment: str | None = None
        self._metadata: Mapping[str, str] = {}

    def initialize(self, progress: ProgressReporter) -> None:
        progress(0.1, "importing pocketsphinx")
        pocketsphinx = require("pocketsphinx", "SpeechRecognitionNode")
        if self.params.phrases is None:
            progress(0.3, "loading the en-US acoustic model, dictionary and language model")
            self._decoder = pocketsphinx.Decoder(loglevel="ERROR")
        else:
            progress(0.3, f"building a language model from {len(self.params.phrases)} phrases")
            self._decoder = _phrase_decoder(pocketsphinx, self.params.phrases)
        progress(1.0, "pocketsphinx ready")

    def process(self, frame: Frame) -> list[Frame]:
        if isinstance(frame, JsonFrame):
            return self._on_event(frame)
        if not isinstance(frame, AudioFrame):  # the graph only routes audio and JSON here
            raise ValueError(f"SpeechRecognitionNode takes audio and JSON frames, got {frame.kind.label}")
        out: list[Frame] = []
        segment = frame.metadata.get("segment")
        if self._in_utterance and segment != self._segment:
            out.extend(self._end_utterance())
        if not self._in_utterance:
            self._decoder.start_utt()
            self._in_utterance, self._segment, self._metadata = True, segment, frame.metadata
        self._decode(self._stream.push(frame))
        return out

    def flush(self) -> list[Frame]:
        return self._end_utterance()

    def cleanup(self) -> None:
        self._decoder = None

    def _on_event(self, frame: JsonFrame) -> list[Frame]:
        value = frame.value
        event = value.get("event") if isinstance(value, dict) else None
        if event == "speech_end" or (event == "speech_start" and self._in_utterance):
            return self._end_utterance()  # a start while decoding: that segment's end was lost
        return []  # other JSON is not ours to interpret

    def _decode(self, samples: Any) -> None:
        if len(samples):
            self._decoder.process_raw(from_float(samples, AudioFormat.I16).tobytes(), False, False)

    def _end_utterance(self) -> list[Frame]:
        if not self._in_utterance:
            return []
        self._decode(self._stream.drain())
        self._decoder.end_utt()
        self._in_utterance = False
        hypothesis = self._decoder.hyp()
        text = " ".join(hypothesis.hypstr.split()) if hypothesis is not None else ""
        if not text:
            return []
        return [TextFrame(text=text, language=LANGUAGE, metadata=self._metadata)]


def _phrase_decoder(pocketsphinx: Any, phrases: list[str]) -> Any:
    """A decoder over a trigram model of ``phrases``, with a dictionary of just their words.

    The small dictionary is what makes this fast: loading the full 134k-word one next to
    an ARPA model takes ~1.3 s, against ~10 ms for the phrases' words.
    """
    lm_module = require("pocketsphinx.lm", "SpeechRecognitionNode")
    sentences = [" ".join(normalize_words(p)) for p in phrases]
    words = {w for s in sentences for w in s.split()}
    entries = _dictionary_entries(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"), words)
    missing = sorted(words - {_base_word(line) for line in entries})
    if missing:
        raise ValueError(
            f"phrases use words that are not in the en-US pronunciation dictionary: {', '.join(missing)}"
        )
    # add_start: the builder must add <s> and </s>, or the decoder refuses the model.
    model = lm_module.ArpaBoLM(text="\n".join(sentences) + "\n", add_start=True, case="lower")
    model.compute()
    with tempfile.TemporaryDirectory(prefix="nursery-pipes-asr-") as directory:
        lm_path = os.path.join(directory, "phrases.arpa")
        dict_path = os.path.join(directory, "phrases.dict")
        model.write_file(lm_path)
        with open(dict_path, "w", encoding="utf-8") as file:
            file.writelines(entries)
        return pocketsphinx.Decoder(lm=lm_path, dict=dict_path, loglevel="ERROR")


def _dictionary_entries(path: str, words: set[str]) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return [line for line in file if _base_word(line) in words]


def _base_word(line: str) -> str:
    """``hello(2) HH EH L OW`` → ``hello`` (alternative pronunciations are numbered)."""
    word = line.split(" ", 1)[0]
    return word.split("(", 1)[0]
