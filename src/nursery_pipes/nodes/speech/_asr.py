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
from ._reply import PARTIAL, REPLY_OPENERS, REPLY_PHRASES, TURN

__all__ = [
    "SpeechRecognitionNode",
    "SpeechRecognitionParams",
    "choose_transcript",
    "complete_phrases",
    "jsgf_grammar",
    "normalize_words",
    "phone_similarity",
    "spoken_words",
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
    early_turn: bool = False
    """End the turn at a VAD ``speech_pause`` (SileroVADNode ``pause_ms``) instead of its
    ``speech_end`` when what was heard so far is a complete question: whole phrases of the
    grammar, the last not an opener, and the grammar's transcript taken (see ``agreement``).
    That transcript goes out at once, marked ``turn: "early"``. If the speaker goes on
    (``speech_resume``), the utterance is not split: it is decoded to its real end, its
    transcript goes out marked ``turn: "revised"``, and ``cancel_turn`` goes to ``retract``.
    Needs a ``phrases`` vocabulary."""
    openers: list[_Phrase] | None = None
    """``early_turn``: phrases people usually go on after (greetings); a pause after one is not
    an end of turn. Default: ReplyNode's greetings with the default phrases, else none."""
    retract: list[str] = msgspec.field(default_factory=list)
    """``early_turn``: nodes sent ``cancel_turn`` when the speaker goes on after an early end
    (e.g. the reply and speech-synthesis nodes: the early answer is dropped)."""

    def __post_init__(self) -> None:
        for index, phrase in enumerate(self.phrases or ()):
            if not normalize_words(phrase):
                raise ValueError(f"phrases[{index}] ({phrase!r}) has no words")
        if self.phrases is not None and self.vocabulary == "open":
            raise ValueError("phrases are only used by vocabulary 'phrases' or 'phrases+open', not 'open'")
        if self.early_turn and self.mode == "open":
            raise ValueError(
                "early_turn needs a grammar to know a complete question: vocabulary 'phrases' or 'phrases+open'"
            )
        if not self.early_turn and (self.openers is not None or self.retract):
            raise ValueError("openers and retract are only used with early_turn")

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

    With ``early_turn`` (and a VAD's ``pause_ms``), a complete question ends the turn at the
    first pause after it rather than after the VAD's hangover: its transcript goes out
    marked ``turn: "early"``, hundreds of milliseconds sooner. Should the speaker go on, the
    whole utterance is still one transcript (``turn: "revised"``) and the ``retract`` nodes
    are told to drop the early answer (``cancel_turn``).
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
        self._heard = Recording()  # the utterance's audio as decoded (before the noise floor)
        self._noise = np.random.default_rng(0)
        self._in_utterance = False
        self._segment: str | None = None
        self._metadata: Mapping[str, str] = {}
        self._partial = ""
        self._phrases: tuple[tuple[str, ...], ...] = ()  # the grammar's phrases, as words
        self._openers: frozenset[tuple[str, ...]] = frozenset()
        self._early: str | None = None  # the transcript this utterance's turn ended early with
        self._revised = False  # the speaker went on after an early end

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
            self._phrases = tuple(dict.fromkeys(tuple(normalize_words(p)) for p in phrases))
            default_openers = REPLY_OPENERS if self.params.phrases is None else ()
            openers = self.params.openers if self.params.openers is not None else default_openers
            self._openers = frozenset(tuple(normalize_words(p)) for p in openers)
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
            self._heard.clear()
            self._in_utterance, self._segment, self._metadata = True, segment, frame.metadata
            self._partial, self._early, self._revised = "", None, False
        self._decode(self._stream.push(frame))
        if self.params.partials and self._early is None:  # after an early end, the turn is answered
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
        silence = value.get("silence", 0.0) if isinstance(value, dict) else 0.0
        silence_s = float(silence) if isinstance(silence, int | float) else 0.0
        if event == "speech_end":
            return self._end_utterance(silence_s)
        if event == "speech_start" and self._in_utterance:
            return self._end_utterance()  # a start while decoding: that segment's end was lost
        if event == "speech_pause" and self.params.early_turn:
            return self._end_turn_early(silence_s)
        if event == "speech_resume" and self._early is not None:
            self._take_back_early_turn()
        return []  # other JSON is not ours to interpret

    def _end_turn_early(self, silence_s: float) -> list[Frame]:
        """At a pause: the turn's transcript now, if what was said before the ``silence_s``
        of silence is a complete question (the utterance stays open: the speaker may go on).
        Words the decoders put into that silence do not count."""
        if not self._in_utterance or self._early is not None or self._revised:
            return []
        text, source = self._transcript(silence_s)
        if source != "phrases":
            return []
        said = complete_phrases(text.split(), self._phrases)
        if said is None or said[-1] in self._openers:
            return []
        self._early = text
        metadata = {**self._metadata, SOURCE: source, TURN: "early"}
        return [TextFrame(text=text, language=LANGUAGE, metadata=metadata)]

    def _take_back_early_turn(self) -> None:
        """The speaker went on: the early transcript was not the turn; its answer is cancelled."""
        self._early, self._revised, self._partial = None, True, ""
        if self.params.retract:
            payload = {"reason": "speech_resume", "segment": self._segment or ""}
            self.context.signal("cancel_turn", to=self.params.retract, payload=payload)

    def _decode(self, samples: npt.NDArray[np.float32]) -> None:
        if not len(samples):
            return
        self._heard.append(samples)
        if self.params.noise_floor_dbfs is not None:
            sigma = 10.0 ** (self.params.noise_floor_dbfs / 20.0)
            samples = samples + self._noise.normal(0.0, sigma, len(samples)).astype(np.float32)
        pcm = from_float(samples, AudioFormat.I16).tobytes()
        for decoder in self._decoders():
            decoder.process_raw(pcm, False, False)

    def _transcript(self, silence_s: float = 0.0) -> tuple[str, str]:
        """What was said, leaving out any word the decoders found in the last ``silence_s``
        (the VAD's silence after the speech: the noise floor read as "who" or "do")."""
        frames = round(silence_s * 100)  # pocketsphinx: 100 frames a second
        audio = self._heard.samples()
        grammar = spoken_words(self._grammar, audio, frames) if self._grammar is not None else None
        heard = spoken_words(self._open, audio, frames) if self._open is not None else None
        return choose_transcript(grammar, heard, self._pronounce, self.params.agreement)

    def _interim(self) -> list[Frame]:
        text, source = self._transcript()
        if not text or text == self._partial:
            return []
        self._partial = text
        metadata = {**self._metadata, SOURCE: source, PARTIAL: "true"}
        return [TextFrame(text=text, language=LANGUAGE, metadata=metadata)]

    def _end_utterance(self, silence_s: float = 0.0) -> list[Frame]:
        if not self._in_utterance:
            return []
        self._decode(self._stream.drain())
        for decoder in self._decoders():
            decoder.end_utt()
        self._in_utterance = False
        if self._early is not None:
            return []  # the turn was answered at its pause, and the speaker did not go on
        text, source = self._transcript(silence_s)
        if not text:
            return []
        metadata = {**self._metadata, SOURCE: source}
        if self._revised:
            metadata[TURN] = "revised"
        return [TextFrame(text=text, language=LANGUAGE, metadata=metadata)]


_FILLERS = re.compile(r"^(<.*>|\[.*\]|\(NULL\))$")
FRAME = 160
"""Samples of one pocketsphinx frame at 16 kHz (10 ms)."""
QUIET_DB = 25.0
"""A word this much quieter (RMS, dB) than the utterance's loudest is not taken as speech."""


class Recording:
    """The samples of one utterance, appended as they come (amortised O(1), one buffer)."""

    def __init__(self) -> None:
        self._buffer: npt.NDArray[np.float32] = np.zeros(16_000, np.float32)
        self._length = 0

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        end = self._length + len(samples)
        if end > len(self._buffer):
            grown = np.zeros(max(end, 2 * len(self._buffer)), np.float32)
            grown[: self._length] = self._buffer[: self._length]
            self._buffer = grown
        self._buffer[self._length : end] = samples
        self._length = end

    def samples(self) -> npt.NDArray[np.float32]:
        return self._buffer[: self._length]

    def clear(self) -> None:
        self._length = 0


def spoken_words(decoder: Any, audio: npt.NDArray[np.float32], last_frames: int = 0) -> str:
    """The decoder's current words that were spoken: none that start in the last ``last_frames``
    frames (a VAD's silence after the speech), none over audio ``QUIET_DB`` quieter than the
    loudest word (a grammar decoder reads the noise floor of a pause as "who" or "hey")."""
    cut = decoder.n_frames() - last_frames
    words: list[tuple[str, float]] = []
    for segment in decoder.seg() or ():  # None before the decoder has any hypothesis
        if segment.start_frame >= cut or _FILLERS.match(segment.word):
            continue
        piece = audio[segment.start_frame * FRAME : (segment.end_frame + 1) * FRAME]
        level = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64)))) if len(piece) else 0.0
        words.append((segment.word.split("(", 1)[0], level))
    if not words:
        return ""
    floor = max(level for _, level in words) * 10.0 ** (-QUIET_DB / 20.0)
    return " ".join(word for word, level in words if level >= floor)


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


def complete_phrases(words: list[str], phrases: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]] | None:
    """``words`` as a sequence of whole ``phrases`` (the grammar's ``<phrase>+``), or None when
    they are not: a question cut short, or nothing. Of several readings, the one with the
    longest last phrase.

    >>> phrases = (("what", "time", "is", "it"), ("hello",), ("hello", "there"), ("thanks",))
    >>> complete_phrases("hello what time is it".split(), phrases)
    [('hello',), ('what', 'time', 'is', 'it')]
    >>> complete_phrases("what time".split(), phrases) is None
    True
    """
    if not words:
        return None
    # reading[i]: a split of words[:i] into phrases (None: there is none)
    reading: list[list[tuple[str, ...]] | None] = [[]] + [None] * len(words)
    for i in range(1, len(words) + 1):
        for phrase in sorted(phrases, key=len, reverse=True):
            j = i - len(phrase)
            before = reading[j] if j >= 0 else None
            if before is not None and tuple(words[j:i]) == phrase:
                reading[i] = [*before, phrase]
                break
    return reading[-1]


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
