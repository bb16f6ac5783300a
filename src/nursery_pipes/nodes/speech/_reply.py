"""A tiny dialogue for the speech demo: echo what was heard, or answer a few fixed questions."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from ...frames import Frame, FrameKind, TextFrame
from .._base import Node, Params

__all__ = ["ReplyNode", "ReplyParams", "assistant_reply"]


class ReplyParams(Params, kw_only=True):
    mode: Literal["echo", "assistant"] = "assistant"
    """``echo``: "You said: …"; ``assistant``: answer a few fixed questions, else "I heard: …"."""


def _clock() -> str:
    now = time.localtime()
    hour = now.tm_hour % 12 or 12
    return f"It is {hour}:{now.tm_min:02d} {'AM' if now.tm_hour < 12 else 'PM'}."


# (pattern on the lower-cased transcript, answer): every answer that matches is given, in this order.
# The patterns forgive pocketsphinx's usual confusions: "how are you" often comes out as "oh/all are you".
_ANSWERS: tuple[tuple[re.Pattern[str], Callable[[], str]], ...] = (
    (re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"), lambda: "Hello there!"),
    (re.compile(r"\b((how|oh|all) are|how're) you\b"), lambda: "I am doing well, thank you."),
    (re.compile(r"\b(your name|who are you)\b"), lambda: "My name is Nursery Pipes."),
    (re.compile(r"\b(what time|the time)\b"), _clock),
    (re.compile(r"\b(thank you|thanks)\b"), lambda: "You are welcome."),
    (re.compile(r"\b(goodbye|bye)\b"), lambda: "Goodbye!"),
)


def assistant_reply(text: str) -> str:
    """The assistant's answer to a transcript (a fallback echo when no question matches)."""
    heard = " ".join(text.split())
    answers = [answer() for pattern, answer in _ANSWERS if pattern.search(heard.lower())]
    return " ".join(answers) if answers else f"I heard: {heard}."


class ReplyNode(Node[ReplyParams]):
    """Answer each transcript with a short text (echo it, or a few fixed assistant answers).

    ``assistant`` knows greetings, "how are you", its name, the time of day, thanks
    and goodbye (every matching answer is given, in that order); anything else gets
    "I heard: <text>." Blank text gets no reply. The reply keeps the input's
    metadata (e.g. the VAD's ``segment``) and language.
    """

    accepts = frozenset({FrameKind.TEXT})
    produces = frozenset({FrameKind.TEXT})
    executor = "multiprocess"

    def process(self, frame: Frame) -> Frame | None:
        if not isinstance(frame, TextFrame):  # the graph only routes text here
            raise ValueError(f"ReplyNode takes text frames, got {frame.kind.label}")
        if not frame.text.strip():
            return None
        if self.params.mode == "echo":
            return replace(frame, text=f"You said: {' '.join(frame.text.split())}.")
        return replace(frame, text=assistant_reply(frame.text))
