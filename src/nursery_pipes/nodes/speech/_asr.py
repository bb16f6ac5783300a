"""Speech recognition with pocketsphinx 5 and its bundled en-US model (BSD-style licences).

One utterance per VAD segment, decoded incrementally: audio goes into
``process_raw`` as it arrives, so when the segment ends only ``end_utt`` (the
final search passes) stands between the VAD's speech_end and the transcript.

Three vocabularies (measured on speech from an independent synthesiser, espeak-ng,
in benchmarks/bench_speech.py and docs/design.md §8):

- ``open``: the full en-US language model — any English, many errors;
- ``phrases``: a JSGF grammar of the expected phrases (one or more in a row) —
  near-perfect on them, a forced wrong match on anything else;
- ``phrases+open``: both decoders on the same audio; the grammar's transcript is
  taken when it *sounds like* what the open model heard (phone similarity ≥
  ``agreement``), else the open transcript.

Before decoding, a quiet deterministic noise floor (``noise_floor_dbfs``, what a
quiet microphone has anyway) is added: pocketsphinx does poorly on very clean
synthetic audio with digitally silent gaps. Measured with the open model and a
-50 dBFS floor: WER on espeak-ng speech 73 % → 35 %, on our own Piper voice
8.7 % → 13 % (filling only the exact-zero samples does not help).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ...frames import AudioFormat, AudioFrame, Frame, FrameKind, JsonFrame, TextFrame
from .._base import Node, NodeContext, Params, ProgressReporter
from .._pcm import from_float
from ._audio import SpeechStream, require
from ._reply import PARTIAL, REPLY_PHRASES

__all__ = [
    "SpeechRecognitionNode",
    "SpeechRecognitionParams",
    "choose_transcript",
    "jsgf_grammar",
    "normalize_words",
    "phone_similarity",
]

LANGUAGE = "en-US"
SOURCE = "vocabulary"
"""Metadata key of a transcript: which model produced it (``"phrases"`` or ``"open"``)."""

_Phrase = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Vocabulary = Literal["open", "phrases", "phrases+open"]


def normalize_words(text: str) -> list[str]:
    """Lower-case words as the en-US dictionary spells them (letters and apostrophes)."""
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split()


class SpeechRecognitionParams(Params, kw_only=True):
    vocabulary: Vocabulary | None = None
    """``open`` (the full en-US model), ``phrases`` (a grammar of ``phrases`` only) or
    ``phrases+open`` (the grammar's transcript when it sounds like what the open model heard,
    else the open one). Default: ``phrases`` if ``phrases`` are given, else ``open``."""
    phrases: Annotated[list[_Phrase], msgspec.Meta(min_length=1, max_length=10_000)] | None = None
    """The expected phrases (any sequence of them is recognised). Default for the ``phrases``
    vocabularies: the questions ReplyNode's assistant answers. Every word must be in the en-US
    pronunciation dictionary."""
    agreement: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.4
    """``phrases+open``: the least phone similarity (1 - phone edit distance / phones of the
    grammar's transcript) between the two transcripts for the grammar's to be taken."""
    partials: bool = False
    """Also send interim transcripts as they change, marked ``partial: "true"`` in metadata."""
    noise_floor_dbfs: Annotated[float, msgspec.Meta(ge=-120.0, le=-20.0)] | None = -50.0
    """Deterministic Gaussian noise at this RMS level (dBFS) added before decoding; None: none."""

    def __post_init__(self) -> None:
        for index, phrase in enumerate(self.phrases or ()):
            if not normalize_words(phrase):
                raise ValueError(f"phrases[{index}] ({phrase!r}) has no words")
        if self.phrases is not None and self.vocabulary == "open":
            raise ValueError("phrases are only used by vocabulary 'phrases' or 'phrases+open', not 'open'")

    @property
    def mode(self) -> Vocabulary:
        if self.vocabulary is not None:
            return self.vocabulary
        return "open" if self.phrases is None else "phrases"


class SpeechRecognitionNode(Node[SpeechRecognitionParams]):
    """Transcribe speech with pocketsphinx (offline, en-US): one text frame per utterance.

    Takes audio of any rate, format and channel count (mixed to 16 kHz mono int16,
    what the model reads) and, optionally, the JSON events of a VAD. Audio is
    decoded as it arrives; an utterance ends at a ``speech_end`` event, when the
    ``segment`` metadata of the audio changes, or at the end of the stream, and
    its transcript goes out as ``TextFrame(text, language="en-US")`` carrying the
    utterance's metadata (``segment`` from the VAD) and ``vocabulary`` (the model
    whose transcript it is: ``phrases`` or ``open``). Empty hypotheses are not sent.
    Without a VAD, the whole stream is one utterance. Transcripts are lower case,
    without punctuation. With ``partials``, the current hypothesis also goes out
    whenever it changes, marked ``partial: "true"`` (ReplyNode ignores those).
    """

    accepts = frozenset({FrameKind.AUDIO, FrameKind.JSON})
    produces = frozenset({FrameKind.TEXT})
    executor = "multiprocess"

    def __init__(self, params: SpeechRecognitionParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._open: Any = None
        self._grammar: Any = None
        self._pronounce: Callable[[str], str | None] = lambda word: None
        self._stream = SpeechStream()
        self._noise = np.random.default_rng(0)
        self._in_utterance = False
        self._segment: str | None = None
        self._metadata: Mapping[str, str] = {}
        self._partial = ""

    def initialize(self, progress: ProgressReporter) -> None:
        progress(0.1, "importing pocketsphinx")
        pocketsphinx = require("pocketsphinx", "SpeechRecognitionNode")
        mode = self.params.mode
        if mode != "phrases":
            progress(0.3, "loading the en-US acoustic model, dictionary and language model")
            self._open = pocketsphinx.Decoder(loglevel="ERROR")
            self._pronounce = self._open.lookup_word
        if mode != "open":
            phrases = self.params.phrases or list(REPLY_PHRASES)
            progress(0.7, f"building a grammar of {len(phrases)} phrases")
            self._grammar = _grammar_decoder(pocketsphinx, phrases)
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
            for decoder in self._decoders():
                decoder.start_utt()
            self._in_utterance, self._segment, self._metadata = True, segment, frame.metadata
            self._partial = ""
        self._decode(self._stream.push(frame))
        if self.params.partials:
            out.extend(self._interim())
        return out

    def flush(self) -> list[Frame]:
        return self._end_utterance()

    def cleanup(self) -> None:
        self._open = self._grammar = None

    def _decoders(self) -> list[Any]:
        return [d for d in (self._grammar, self._open) if d is not None]

    def _on_event(self, frame: JsonFrame) -> list[Frame]:
        value = frame.value
        event = value.get("event") if isinstance(value, dict) else None
        if event == "speech_end" or (event == "speech_start" and self._in_utterance):
            return self._end_utterance()  # a start while decoding: that segment's end was lost
        return []  # other JSON is not ours to interpret

    def _decode(self, samples: npt.NDArray[np.float32]) -> None:
        if not len(samples):
            return
        if self.params.noise_floor_dbfs is not None:
            sigma = 10.0 ** (self.params.noise_floor_dbfs / 20.0)
            samples = samples + self._noise.normal(0.0, sigma, len(samples)).astype(np.float32)
        pcm = from_float(samples, AudioFormat.I16).tobytes()
        for decoder in self._decoders():
            decoder.process_raw(pcm, False, False)

    def _transcript(self) -> tuple[str, str]:
        grammar = _hypothesis(self._grammar) if self._grammar is not None else None
        heard = _hypothesis(self._open) if self._open is not None else None
        return choose_transcript(grammar, heard, self._pronounce, self.params.agreement)

    def _interim(self) -> list[Frame]:
        text, source = self._transcript()
        if not text or text == self._partial:
            return []
        self._partial = text
        metadata = {**self._metadata, SOURCE: source, PARTIAL: "true"}
        return [TextFrame(text=text, language=LANGUAGE, metadata=metadata)]

    def _end_utterance(self) -> list[Frame]:
        if not self._in_utterance:
            return []
        self._decode(self._stream.drain())
        for decoder in self._decoders():
            decoder.end_utt()
        self._in_utterance = False
        text, source = self._transcript()
        if not text:
            return []
        return [TextFrame(text=text, language=LANGUAGE, metadata={**self._metadata, SOURCE: source})]


def _hypothesis(decoder: Any) -> str:
    hypothesis = decoder.hyp()
    return " ".join(hypothesis.hypstr.split()) if hypothesis is not None else ""


def choose_transcript(
    grammar: str | None, heard: str | None, pronounce: Callable[[str], str | None], agreement: float
) -> tuple[str, str]:
    """``(text, "phrases" | "open")``: the grammar's transcript, unless the open model heard
    something that does not sound like it (phone similarity below ``agreement``).

    >>> say = {"what": "W AH T", "time": "T AY M", "i": "AY", "train": "T R EY N"}.get
    >>> choose_transcript("what time", "what i", say, 0.4)
    ('what time', 'phrases')
    >>> choose_transcript("what time", "train", say, 0.4)
    ('train', 'open')
    """
    if grammar is None:
        return heard or "", "open"
    if heard is None or (grammar and phone_similarity(grammar, heard, pronounce) >= agreement):
        return grammar, "phrases"
    return heard, "open"


def phone_similarity(reference: str, other: str, pronounce: Callable[[str], str | None]) -> float:
    """1 - (phone edit distance) / (phones of ``reference``); words without a pronunciation count none."""
    ref, hyp = _phones(reference, pronounce), _phones(other, pronounce)
    if not ref:
        return 0.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return 1.0 - row[-1] / len(ref)


def _phones(text: str, pronounce: Callable[[str], str | None]) -> list[str]:
    return [phone for word in text.split() for phone in (pronounce(word) or "").split()]


def jsgf_grammar(phrases: list[str] | tuple[str, ...]) -> str:
    """A JSGF grammar accepting any sequence of one or more of ``phrases`` (normalised words).

    >>> print(jsgf_grammar(["Hello!", "how are you", "hello"]), end="")
    #JSGF V1.0;
    grammar phrases;
    public <utterance> = <phrase>+;
    <phrase> = hello | how are you;
    """
    sentences = list(dict.fromkeys(" ".join(normalize_words(p)) for p in phrases))
    return (
        "#JSGF V1.0;\ngrammar phrases;\npublic <utterance> = <phrase>+;\n"
        f"<phrase> = {' | '.join(sentences)};\n"
    )


def _grammar_decoder(pocketsphinx: Any, phrases: list[str]) -> Any:
    """A decoder over the phrases' grammar, with a dictionary of just their words.

    The small dictionary is what makes this fast to load (~10 ms against ~1 s for the
    full 134k-word one), and the grammar's search is cheap: ``end_utt`` well under 1 ms.
    """
    words = {w for p in phrases for w in normalize_words(p)}
    entries = _dictionary_entries(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"), words)
    missing = sorted(words - {_base_word(line) for line in entries})
    if missing:
        raise ValueError(
            f"phrases use words that are not in the en-US pronunciation dictionary: {', '.join(missing)}"
        )
    with tempfile.TemporaryDirectory(prefix="nursery-pipes-asr-") as directory:
        grammar_path = os.path.join(directory, "phrases.gram")
        dict_path = os.path.join(directory, "phrases.dict")
        with open(grammar_path, "w", encoding="utf-8") as file:
            file.write(jsgf_grammar(phrases))
        with open(dict_path, "w", encoding="utf-8") as file:
            file.writelines(entries)
        # FATAL: a path that ends inside a phrase is logged as an ERROR on every such utterance.
        return pocketsphinx.Decoder(jsgf=grammar_path, dict=dict_path, loglevel="FATAL")


def _dictionary_entries(path: str, words: set[str]) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return [line for line in file if _base_word(line) in words]


def _base_word(line: str) -> str:
    """``hello(2) HH EH L OW`` → ``hello`` (alternative pronunciations are numbered)."""
    word = line.split(" ", 1)[0]
    return word.split("(", 1)[0]
