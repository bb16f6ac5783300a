"""Recognition of a voice we did not make: espeak-ng speaks, the real speech nodes listen.

Our own Piper voice flatters pocketsphinx (tests/test_speech.py measures it there); the
issue's six questions spoken by espeak-ng came back about half wrong. Here the same six
go through Silero VAD → SpeechRecognitionNode → ReplyNode in worker processes, with the
grammar built from the reply table. espeak-ng is a system program that ``make setup``
installs: its absence fails these tests (it is never a reason to skip them).
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from nursery_pipes import AudioFrame, Frame, ManifestError, Runtime, RuntimeConfig, TextFrame
from nursery_pipes._config import MultiprocessDefaults
from nursery_pipes.nodes.speech import REPLY_PHRASES
from nursery_pipes.nodes.speech._asr import (
    choose_transcript,
    jsgf_grammar,
    normalize_words,
    phone_similarity,
)
from nursery_pipes.nodes.speech._reply import TOPICS, assistant_reply
from nursery_pipes.testing import ESPEAK_MISSING, espeak_ng

pytestmark = pytest.mark.timeout(90)

SIX = [  # the issue's questions, as its independent client spoke them
    "what time is it",
    "what is your name",
    "hello how are you",
    "tell me a joke",
    "what is the weather like today",
    "thank you very much",
]
UNKNOWN = "please turn on the lights in the kitchen"  # nothing the reply table knows
GAP_S = 0.8


def test_espeak_ng_is_installed() -> None:
    assert shutil.which("espeak-ng"), ESPEAK_MISSING


def test_espeak_ng_speaks_deterministically_in_several_voices() -> None:
    us, gb, female = (espeak_ng("what time is it", voice=v) for v in ("en-us", "en-gb", "en-us+f3"))
    assert (us.sample_rate, us.channels, us.samples.dtype.name) == (22050, 1, "int16")
    assert 0.8 < us.duration < 1.6
    assert np.array_equal(us.samples, espeak_ng("what time is it").samples)
    assert not np.array_equal(us.samples, gb.samples)
    assert not np.array_equal(us.samples, female.samples)
    slow = espeak_ng("what time is it", words_per_minute=120)
    assert slow.duration > 1.2 * us.duration
    with pytest.raises(ValueError, match="espeak-ng -v zz-nobody -s 175 failed"):
        espeak_ng("hello", voice="zz-nobody")


def test_the_grammar_is_built_from_the_reply_table() -> None:
    assert tuple(p for topic in TOPICS for p in topic.phrases) == REPLY_PHRASES
    grammar = jsgf_grammar(REPLY_PHRASES)
    alternatives = grammar.split("<phrase> = ", 1)[1].rstrip(";\n").split(" | ")
    assert alternatives == list(dict.fromkeys(" ".join(normalize_words(p)) for p in REPLY_PHRASES))
    one = "(" + "|".join(map(re.escape, alternatives)) + ")"
    for question in SIX:  # the grammar (one or more phrases) accepts each, and the assistant answers it
        assert re.fullmatch(f"{one}( {one})*", question), question
        assert not assistant_reply(question).startswith("I heard")
    for topic in TOPICS:  # every phrase is answered by its own topic
        for phrase in topic.phrases:
            assert topic.pattern.search(phrase), phrase


def test_the_open_transcript_wins_when_it_does_not_sound_like_the_grammars() -> None:
    say = {"what": "W AH T", "time": "T AY M", "is": "IH Z", "it": "IH T", "i": "AY", "eat": "IY T"}.get
    assert phone_similarity("what time is it", "what i eat", say) == pytest.approx(1 - 5 / 10)
    assert choose_transcript("what time is it", "what i eat", say, 0.4) == ("what time is it", "phrases")
    assert choose_transcript("what time is it", "i", say, 0.4) == ("i", "open")
    assert choose_transcript("", "i", say, 0.4) == ("i", "open")
    assert choose_transcript(None, "i", say, 0.4) == ("i", "open")
    assert choose_transcript("what time", None, say, 0.4) == ("what time", "phrases")


def test_phrases_with_the_open_vocabulary_are_a_manifest_error() -> None:
    runtime = Runtime()
    m = manifest({"asr": ("SpeechRecognitionNode", {"vocabulary": "open", "phrases": ["hello"]})}, [])
    with pytest.raises(ManifestError, match="phrases are only used by vocabulary 'phrases'"):
        runtime.plan(m)


def manifest(nodes: dict[str, tuple[str, dict[str, Any]]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    overrides = {i: "inprocess" if t == "PassThrough" else "multiprocess" for i, (t, _) in nodes.items()}
    return {
        "version": "v1",
        "metadata": {"name": "voices", "multiprocess": {"executor_overrides": overrides}},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, (t, p) in nodes.items()],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


def spoken(texts: list[str], voice: str = "en-us") -> list[Frame]:
    """The texts spoken by espeak-ng, each followed by silence, cut in 20 ms chunks."""
    clips = [espeak_ng(t, voice=voice).samples[:, 0] for t in texts]
    rate = 22050
    gap = np.zeros(round(GAP_S * rate), np.int16)
    stream: npt.NDArray[np.int16] = np.concatenate([gap, *(x for c in clips for x in (c, gap))])
    step = rate // 50
    return [AudioFrame.from_array(stream[i : i + step], rate) for i in range(0, len(stream), step)]


def finals(frames: list[Frame]) -> list[TextFrame]:
    return [f for f in frames if isinstance(f, TextFrame) and f.metadata.get("partial") != "true"]


def timeless(reply: str) -> str:
    """A reply with the clock's answer blanked: the minute may change during the test."""
    return re.sub(r"\b\d{1,2}:\d{2} [AP]M\b", "<time>", reply)


def answer(text: str) -> str:
    return timeless(assistant_reply(text))


async def test_the_issues_six_questions_in_an_independent_voice_are_answered() -> None:
    """≥ 5 of 6 answered right with the grammar; partials go out and ReplyNode ignores them;
    phrases+open answers what it knows and gives an open transcript of what it does not."""
    nodes = {
        "vad": ("SileroVADNode", {}),
        "asr": ("SpeechRecognitionNode", {"vocabulary": "phrases", "partials": True}),
        "heard": ("PassThrough", {}),
        "reply": ("ReplyNode", {}),
        "mixed": ("SpeechRecognitionNode", {"vocabulary": "phrases+open"}),
    }
    edges = [("vad", "asr"), ("asr", "heard"), ("asr", "reply"), ("vad", "mixed")]
    runtime = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.5)))
    async with runtime:
        result = await runtime.run_pipeline(manifest(nodes, edges), {"vad": spoken([*SIX, UNKNOWN])})

    heard = finals(result.outputs["heard"])
    replies = [f for f in result.outputs["reply"] if isinstance(f, TextFrame)]
    segments = [f.metadata["segment"] for f in heard]
    print("\nheard:", [f.text for f in heard])
    assert segments == [str(i) for i in range(len(SIX) + 1)]  # one final per utterance, none split
    right = [answer(q) == timeless(r.text) for q, r in zip(SIX, replies, strict=False)]
    assert sum(right) >= 5, [(q, f.text) for q, f in zip(SIX, heard, strict=False)]

    # interim transcripts: several per utterance, marked, each segment's ending in its final;
    # the reply node answered the finals only (one reply each, in the same order)
    partials = [f for f in result.outputs["heard"] if f.metadata.get("partial") == "true"]
    assert len(partials) >= len(heard)
    assert {f.metadata["segment"] for f in partials} <= set(segments)
    assert [(r.metadata["segment"], timeless(r.text)) for r in replies] == [
        (f.metadata["segment"], answer(f.text)) for f in heard
    ]

    mixed = finals(result.outputs["mixed"])
    print("mixed:", [(f.text, f.metadata["vocabulary"]) for f in mixed])
    assert len(mixed) == len(SIX) + 1
    answered = [answer(q) == answer(f.text) for q, f in zip(SIX, mixed, strict=False)]
    assert sum(answered) >= 4
    unknown = mixed[-1]
    assert unknown.metadata["vocabulary"] == "open"  # not forced onto a question it knows
    assert assistant_reply(unknown.text).startswith("I heard")
