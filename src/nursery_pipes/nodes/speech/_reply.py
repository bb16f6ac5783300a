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
from .._base import Node, Params

__all__ = ["PARTIAL", "REPLY_PHRASES", "TOPICS", "ReplyNode", "ReplyParams", "Topic", "assistant_reply"]

PARTIAL = "partial"
"""Metadata key of an interim transcript (value ``"true"``): the recogniser's current guess,
which later frames revise. ReplyNode answers only final transcripts."""


class ReplyParams(Params, kw_only=True):
    mode: Literal["echo", "assistant"] = "assistant"
    """``echo``: "You said: …"; ``assistant``: answer a few fixed questions, else "I heard: …"."""


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


# Every topic that matches is answered, in this order ("hello how are you" gets two answers).
TOPICS: tuple[Topic, ...] = (
    Topic(
        ("hello", "hi", "hey", "hello there", "good morning", "good afternoon", "good evening"),
        re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
        lambda: "Hello there!",
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
        lambda: "Why did the scarecrow win an award? Because he was outstanding in his field.",
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
    (metadata ``partial: "true"``) get no reply. The reply keeps the input's metadata
    (e.g. the VAD's ``segment``) and language.
    """

    accepts = frozenset({FrameKind.TEXT})
    produces = frozenset({FrameKind.TEXT})
    executor = "multiprocess"

    def process(self, frame: Frame) -> Frame | None:
        if not isinstance(frame, TextFrame):  # the graph only routes text here
            raise ValueError(f"ReplyNode takes text frames, got {frame.kind.label}")
        if frame.metadata.get(PARTIAL) == "true" or not frame.text.strip():
            return None
        if self.params.mode == "echo":
            return replace(frame, text=f"You said: {' '.join(frame.text.split())}.")
        return replace(frame, text=assistant_reply(frame.text))
