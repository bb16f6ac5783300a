"""A tiny dialogue for the speech demo: echo what was heard, or answer a few fixed questions.

The assistant's table (:data:`TOPICS`) is also what a restricted recogniser listens for:
:data:`REPLY_PHRASES` are the questions it knows, and ``SpeechRecognitionNode`` builds its
grammar from them (``vocabulary: "phrases"`` / ``"phrases+open"`` without ``phrases``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from ...frames import Frame, FrameKind, TextFrame
from .._base import Node, NodeContext, Params

__all__ = [
    "PARTIAL",
    "REPLY_OPENERS",
    "REPLY_PHRASES",
    "SPECULATIVE",
    "TOPICS",
    "TURN",
    "ReplyNode",
    "ReplyParams",
    "Topic",
    "assistant_reply",
]

PARTIAL = "partial"
"""Metadata key of an interim transcript (value ``"true"``): the recogniser's current guess,
which later frames revise. ReplyNode answers only final transcripts."""
TURN = "turn"
"""Metadata key of a final transcript that did not wait for the end of the speech segment:
``"early"`` (the recogniser ended the turn at a pause, holding a complete question) or
``"revised"`` (the speaker went on after an early end: this transcript, of the whole
utterance, replaces the early one, whose reply was cancelled)."""
SPECULATIVE = "speculative"
"""Metadata key of a reply to an interim transcript (value ``"true"``): what the answer will be
if the question stays as heard so far. Speech synthesis prepares it and says nothing until
the final reply comes."""


class ReplyParams(Params, kw_only=True):
    mode: Literal["echo", "assistant"] = "assistant"
    """``echo``: "You said: …"; ``assistant``: answer a few fixed questions, else "I heard: …"."""
    speculate: bool = False
    """``assistant``: also answer interim transcripts that ask a known question, marked
    ``speculative: "true"``, once per different answer: speech synthesis prepares the answer
    while the user is still talking, and says it the moment the final transcript asks for it."""


def _clock() -> str:
    now = time.localtime()
    hour = now.tm_hour % 12 or 12
    return f"It is {hour}:{now.tm_min:02d} {'AM' if now.tm_hour < 12 else 'PM'}."


@dataclass(frozen=True)
class Topic:
    """One thing the assistant answers: how people ask it, how to spot it, and the answer."""

    phrases: tuple[str, ...]
    """Ways to ask, in the en-US dictionary's words: the recogniser's grammar is made of these."""
    pattern: re.Pattern[str]
    """Matched against the lower-cased transcript (forgiving the open recogniser's usual confusions)."""
    answer: Callable[[], str]
    opens: bool = False
    """People usually go on after it ("Hello, how are you?"): a turn is not ended early on it."""


# Every topic that matches is answered, in this order ("hello how are you" gets two answers).
TOPICS: tuple[Topic, ...] = (
    Topic(
        ("hello", "hi", "hey", "hello there", "good morning", "good afternoon", "good evening"),
        re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
        lambda: "Hello there!",
        opens=True,
    ),
    Topic(
        ("how are you", "how are you doing", "how are you today", "how are you doing today"),
        re.compile(r"\b((how|oh|all) are|how're) you\b"),  # "how are you" often comes out "oh are you"
        lambda: "I am doing well, thank you.",
    ),
    Topic(
        ("what is your name", "what's your name", "who are you"),
        re.compile(r"\b(your name|who are you)\b"),
        lambda: "My name is Nursery Pipes.",
    ),
    Topic(
        ("what time is it", "what is the time", "tell me the time", "can you tell me the time"),
        re.compile(r"\b(what time|the time)\b"),
        _clock,
    ),
    Topic(
        ("tell me a joke", "do you know a joke"),
        re.compile(r"\bjoke\b"),
        # A short first sentence: it is what the listener waits for (Piper: ~70 ms against ~150
        # for the question), and it is ready in time even when "joke" is the last word heard.
        lambda: "Here is one. Why did the scarecrow win an award? Because he was outstanding in his field.",
    ),
    Topic(
        ("what is the weather like", "what is the weather like today", "how is the weather"),
        re.compile(r"\bweather\b"),
        lambda: "I cannot see outside, but I hope the weather is kind to you.",
    ),
    Topic(
        ("thank you", "thank you very much", "thanks"),
        re.compile(r"\b(thank you|thanks)\b"),
        lambda: "You are welcome.",
    ),
    Topic(("goodbye", "bye"), re.compile(r"\b(goodbye|bye)\b"), lambda: "Goodbye!"),
)

REPLY_PHRASES: tuple[str, ...] = tuple(phrase for topic in TOPICS for phrase in topic.phrases)
"""Every question the assistant knows, as a restricted recogniser should expect it."""

REPLY_OPENERS: tuple[str, ...] = tuple(phrase for topic in TOPICS if topic.opens for phrase in topic.phrases)
"""The phrases after which people usually go on (greetings): no early end of turn on them."""


def assistant_reply(text: str) -> str:
    """The assistant's answer to a transcript (a fallback echo when no question matches)."""
    heard = " ".join(text.split())
    answers = [topic.answer() for topic in TOPICS if topic.pattern.search(heard.lower())]
    return " ".join(answers) if answers else f"I heard: {heard}."


class ReplyNode(Node[ReplyParams]):
    """Answer each final transcript with a short text (echo it, or a few fixed assistant answers).

    ``assistant`` knows greetings, "how are you", its name, the time of day, a joke,
    the weather, thanks and goodbye (every matching answer is given, in that order);
    anything else gets "I heard: <text>." Blank text and interim transcripts
    (metadata ``partial: "true"``) get no reply — except, with ``speculate``, an interim
    transcript asking a known question, answered ``speculative: "true"`` (for speech
    synthesis to prepare, not to say). The reply keeps the input's metadata
    (e.g. the VAD's ``segment``) and language.
    """

    accepts = frozenset({FrameKind.TEXT})
    produces = frozenset({FrameKind.TEXT})
    executor = "multiprocess"

    def __init__(self, params: ReplyParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._speculated = ""  # the last speculative answer sent (one per different answer)

    def process(self, frame: Frame) -> Frame | None:
        if not isinstance(frame, TextFrame):  # the graph only routes text here
            raise ValueError(f"ReplyNode takes text frames, got {frame.kind.label}")
        if not frame.text.strip():
            return None
        if frame.metadata.get(PARTIAL) == "true":
            return self._speculate(frame)
        self._speculated = ""
        if self.params.mode == "echo":
            return replace(frame, text=f"You said: {' '.join(frame.text.split())}.")
        return replace(frame, text=assistant_reply(frame.text))

    def _speculate(self, frame: TextFrame) -> Frame | None:
        if not self.params.speculate or self.params.mode != "assistant":
            return None
        heard = frame.text.lower()
        if not any(topic.pattern.search(heard) for topic in TOPICS):
            return None  # not (yet) a question it knows: "I heard: …" is not worth preparing
        answer = assistant_reply(frame.text)
        if answer == self._speculated:
            return None
        self._speculated = answer
        metadata = {k: v for k, v in frame.metadata.items() if k != PARTIAL}
        return replace(frame, text=answer, metadata={**metadata, SPECULATIVE: "true"})
