"""Faster turn-taking: the recogniser ends a turn at a pause when it holds a complete question,
and takes it back (without splitting the utterance) when the speaker goes on.

The pieces, each on its own: the VAD's pause/resume decisions (sans-I/O), the grammar's idea
of a complete question, the reply's speculative answers and the speech synthesis that
prepares them. Then the real speech nodes, each in its worker process, on speech from an
independent synthesiser (espeak-ng): the session is *not* closed and the audio after the
question is shorter than the VAD's hangover, so a transcript and a spoken answer can only
come from an early end of turn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio

from nursery_pipes import AudioFrame, ManifestError, Runtime, TextFrame
from nursery_pipes._config import MultiprocessDefaults, RuntimeConfig
from nursery_pipes.manifest import Manifest
from nursery_pipes.nodes import NodeContext
from nursery_pipes.nodes.speech._asr import complete_phrases
from nursery_pipes.nodes.speech._reply import PARTIAL, SPECULATIVE, TURN, ReplyNode, ReplyParams
from nursery_pipes.nodes.speech._vad import SegmentTracker
from nursery_pipes.runtime import Output, SignalHandled, SignalSent
from nursery_pipes.testing import espeak_ng

W = 512


def steps(tracker: SegmentTracker, probs: list[float]) -> list[tuple[int, str, int, int]]:
    made = [(i, tracker.step(i * W, (i + 1) * W, p)) for i, p in enumerate(probs)]
    return [(i, d.kind, d.start // W, d.end // W) for i, d in made if d is not None]


def test_the_vad_reports_a_pause_inside_a_segment_and_speech_that_resumes_after_it() -> None:
    tracker = SegmentTracker(threshold=0.5, neg_threshold=0.35, min_speech=2 * W, hangover=5 * W, pause=2 * W)
    #        0    1    2    3    4    5    6    7    8    9   10   11   12   13   14
    probs = [0.1, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]
    # Start confirmed at 2. Silence from 4: a pause once it spans 2 windows (at 5), reporting the
    # segment so far [1, 3); speech at 7 resumes it (no new segment); silence from 9 pauses
    # again at 10 and ends the segment at 13 (5 windows), where its last voiced window starts.
    assert steps(tracker, probs) == [
        (2, "start", 1, 0),
        (5, "pause", 1, 3),
        (7, "resume", 1, 7),
        (10, "pause", 1, 8),
        (13, "end", 1, 8),
    ]


def test_a_bridged_gap_shorter_than_the_pause_is_no_pause_and_no_resume() -> None:
    tracker = SegmentTracker(threshold=0.5, neg_threshold=0.35, min_speech=2 * W, hangover=5 * W, pause=3 * W)
    probs = [0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert steps(tracker, probs) == [(1, "start", 0, 0), (7, "pause", 0, 4), (9, "end", 0, 4)]


def test_a_pause_must_be_shorter_than_the_hangover() -> None:
    with pytest.raises(ValueError, match="shorter than the hangover"):
        SegmentTracker(threshold=0.5, neg_threshold=0.35, min_speech=W, hangover=3 * W, pause=3 * W)


def test_a_complete_question_is_whole_phrases() -> None:
    phrases = (("what", "time", "is", "it"), ("what", "is", "the", "weather", "like"), ("hello",))
    assert complete_phrases(["hello", "what", "time", "is", "it"], phrases) == [("hello",), phrases[0]]
    assert complete_phrases(["what", "is", "the", "weather"], phrases) is None
    assert complete_phrases(["what", "time", "is", "it", "please"], phrases) is None
    assert complete_phrases([], phrases) is None


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"vad": {"pause_ms": 300}}, "pause_ms (300) must be shorter than hangover_ms (300)"),
        ({"asr": {"early_turn": True, "vocabulary": "open"}}, "early_turn needs a grammar"),
        ({"asr": {"retract": ["tts"]}}, "openers and retract are only used with early_turn"),
        ({"asr": {"openers": ["hello"]}}, "openers and retract are only used with early_turn"),
    ],
)
def test_turn_taking_settings_that_cannot_work_are_refused_naming_the_node(
    params: dict[str, dict[str, Any]], problem: str
) -> None:
    doc = s2s_manifest(early=False)
    for node in doc["nodes"]:
        node["params"].update(params.get(node["id"], {}))
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(doc)
    index = [node["id"] for node in doc["nodes"]].index(next(iter(params)))
    assert f"nodes[{index}].params: {problem}" in str(info.value)


def context(node_id: str) -> NodeContext:
    return NodeContext(node_id, "X", "session", "inprocess", logging.getLogger("test"))


def test_the_reply_speculates_once_per_answer_and_only_on_known_questions() -> None:
    node = ReplyNode(ReplyParams(speculate=True), context("reply"))

    def partial(text: str) -> Any:
        return node.process(TextFrame(text=text, metadata={PARTIAL: "true", "segment": "3"}))

    assert partial("what") is None  # no question it knows yet
    first = partial("what time")
    assert isinstance(first, TextFrame)
    assert first.text.startswith("It is ")
    assert first.metadata == {"segment": "3", SPECULATIVE: "true"}
    assert partial("what time is") is None  # the same answer: prepared already
    final = node.process(TextFrame(text="what time is it", metadata={"segment": "3"}))
    assert isinstance(final, TextFrame)
    assert SPECULATIVE not in final.metadata
    assert final.text == first.text
    quiet = ReplyNode(ReplyParams(), context("reply"))
    assert quiet.process(TextFrame(text="what time", metadata={PARTIAL: "true"})) is None


@pytest.fixture(scope="module")
def tts() -> Iterator[Any]:
    from nursery_pipes.nodes.speech import TextToSpeechNode, TextToSpeechParams

    node = TextToSpeechNode(TextToSpeechParams(threads=1), context("tts"))
    node.initialize(lambda *args: None)
    yield node
    node.cleanup()


def test_speech_synthesis_prepares_a_speculative_answer_and_says_it_only_when_asked(tts: Any) -> None:
    answer = "My name is Nursery Pipes. What is yours?"
    fresh = [f.samples for f in tts.process(TextFrame(text=answer))]
    said: list[str] = []
    synthesize = tts._voice.synthesize

    def counting(text: str, **kwargs: Any) -> Any:
        said.append(text)
        return synthesize(text, **kwargs)

    tts._voice.synthesize = counting
    try:
        assert list(tts.process(TextFrame(text=answer, metadata={SPECULATIVE: "true"}))) == []
        assert said == ["My name is Nursery Pipes."]  # prepared, not said
        out = list(tts.process(TextFrame(text=answer, metadata={"segment": "1"})))
        assert said == ["My name is Nursery Pipes.", "What is yours?"]  # the first piece was ready
        assert [f.metadata for f in out] == [
            {"segment": "1", "sentence": "0"},
            {"segment": "1", "sentence": "1"},
        ]
        assert all(np.array_equal(a.samples, b) for a, b in zip(out, fresh, strict=True))
        # Speculations end with the turn's answer: a later, different answer synthesises all.
        list(tts.process(TextFrame(text="Hello there!", metadata={SPECULATIVE: "true"})))
        list(tts.process(TextFrame(text="Goodbye!")))
        list(tts.process(TextFrame(text="Hello there!")))
        assert said[-3:] == ["Hello there!", "Goodbye!", "Hello there!"]
    finally:
        tts._voice.synthesize = synthesize


def test_the_recogniser_reads_its_words_from_the_first_20_ms_on() -> None:
    # Before the decoders have any hypothesis, pocketsphinx's seg() is None, not empty.
    from nursery_pipes.nodes.speech import SpeechRecognitionNode, SpeechRecognitionParams

    asr = SpeechRecognitionNode(
        SpeechRecognitionParams(vocabulary="phrases+open", partials=True), context("asr")
    )
    asr.initialize(lambda *args: None)
    try:
        out = [o for frame in said("What time is it?", 0.3) for o in asr.process(frame)]
        final = asr.flush()
    finally:
        asr.cleanup()
    assert out, "interim transcripts"
    assert [f.text for f in final if isinstance(f, TextFrame)] == ["what time is it"]


# -- the real speech nodes, each in its worker, on espeak-ng speech ------------------------------------


def s2s_manifest(*, early: bool = True) -> dict[str, Any]:
    asr: dict[str, Any] = {"vocabulary": "phrases+open"}
    if early:
        asr |= {"early_turn": True, "retract": ["reply", "tts"]}
    return {
        "version": "v1",
        "metadata": {"name": "turn-taking", "multiprocess": {"init_timeout_secs": 60}},
        "nodes": [
            {"id": "vad", "node_type": "SileroVADNode", "params": {"hangover_ms": 300} | ({"pause_ms": 160} if early else {})},
            {"id": "asr", "node_type": "SpeechRecognitionNode", "params": asr},
            {"id": "transcript", "node_type": "PassThrough", "params": {}},
            {"id": "reply", "node_type": "ReplyNode", "params": {"speculate": early}},
            {"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1}},
        ],
        "connections": [
            {"from": "vad", "to": "asr"},
            {"from": "asr", "to": "transcript"},
            {"from": "asr", "to": "reply"},
            {"from": "reply", "to": "tts"},
        ],
    }  # fmt: skip


RATE = 22050
STEP = RATE // 50


def said(text: str, silence_after_s: float, *, silence_before_s: float = 0.5) -> list[AudioFrame]:
    """``text`` from espeak-ng, trimmed to its loud part (> -40 dBFS), with silence around it."""
    clip = espeak_ng(text, voice="en-us")
    assert clip.sample_rate == RATE
    samples = clip.samples[:, 0]
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 327)
    audio = np.concatenate(
        [
            np.zeros(int(silence_before_s * RATE), np.int16),
            samples[loud[0] : loud[-1] + 1],
            np.zeros(int(silence_after_s * RATE), np.int16),
        ]
    )
    return [AudioFrame.from_array(audio[i : i + STEP], RATE) for i in range(0, len(audio), STEP)]


def silence(seconds: float) -> list[AudioFrame]:
    return [AudioFrame.from_array(np.zeros(STEP, np.int16), RATE) for _ in range(int(seconds * 50))]


class Listener:
    """Every event of a session, as it comes; wait for the first one that matches."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = trio.Event()

    async def run(self, session: Any) -> None:
        async for event in session.events():
            self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    def transcripts(self) -> list[TextFrame]:
        return [
            e.frame
            for e in self.events
            if isinstance(e, Output) and e.node_id == "transcript" and isinstance(e.frame, TextFrame)
        ]

    def answered(self) -> bool:
        return any(isinstance(e, Output) and e.node_id == "tts" for e in self.events)

    async def until(self, done: Any, seconds: float) -> bool:
        with trio.move_on_after(seconds):
            while not done():
                await self._changed.wait()
            return True
        return False


@asynccontextmanager
async def listening(doc: dict[str, Any]) -> AsyncIterator[tuple[Any, Listener]]:
    """A session of ``doc`` on the real speech nodes, and a listener taking its events."""
    runtime = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.5)))
    async with runtime, runtime.open_session(doc) as session, trio.open_nursery() as nursery:
        listener = Listener()
        nursery.start_soon(listener.run, session)
        yield session, listener


async def send_all(session: Any, frames: list[AudioFrame]) -> None:
    for frame in frames:
        await session.send("vad", frame)


@pytest.mark.slow
async def test_a_complete_question_is_answered_before_the_hangover_is_over() -> None:
    # 0.3 s of silence after the question: past the 160 ms pause, short of the 300 ms hangover
    # (the VAD's silence starts ~60-90 ms after the last loud sample: Silero lags the audio).
    async with listening(s2s_manifest()) as (session, listener):
        await send_all(session, said("What time is it?", 0.3))
        assert await listener.until(listener.answered, 20), f"no early answer: {listener.transcripts()}"
        [early] = listener.transcripts()
        assert early.text == "what time is it"
        assert early.metadata[TURN] == "early"
        # The speaker does not go on: the segment ends and no second transcript comes.
        await send_all(session, silence(1.0))
        await session.close()
    assert [t.text for t in listener.transcripts()] == ["what time is it"]
    assert not any(isinstance(e, SignalSent) and e.origin == "asr" for e in listener.events)


@pytest.mark.slow
async def test_without_early_turns_the_same_audio_gets_no_answer_until_the_hangover() -> None:
    # The same stream with the turn ended by silence alone: 0.3 s is not enough.
    async with listening(s2s_manifest(early=False)) as (session, listener):
        await send_all(session, said("What time is it?", 0.3))
        assert not await listener.until(listener.answered, 3)
        assert listener.transcripts() == []
        await session.close()
    assert [t.text for t in listener.transcripts()] == ["what time is it"]


@pytest.mark.slow
async def test_a_speaker_who_goes_on_gets_one_transcript_and_the_early_answer_is_cancelled() -> None:
    async with listening(s2s_manifest()) as (session, listener):
        await send_all(session, said("What time is it?", 0.3))
        assert await listener.until(lambda: listener.transcripts(), 20)
        # ... and goes on within the hangover: the same utterance.
        more = said("Tell me a joke.", 1.0, silence_before_s=0.0)
        await send_all(session, more)
        await session.close()
    texts = listener.transcripts()
    assert [t.metadata.get(TURN) for t in texts] == ["early", "revised"]
    assert texts[1].text == "what time is it tell me a joke"
    cancels = [e for e in listener.events if isinstance(e, SignalSent) and e.name == "cancel_turn"]
    assert [(c.origin, c.targets) for c in cancels] == [("asr", ("reply", "tts"))]
    handled = {(e.node_id, e.name) for e in listener.events if isinstance(e, SignalHandled)}
    assert handled == {("reply", "cancel_turn"), ("tts", "cancel_turn")}
    revised_at = listener.events.index(
        next(e for e in listener.events if isinstance(e, Output) and e.frame is texts[1])
    )
    assert any(isinstance(e, Output) and e.node_id == "tts" for e in listener.events[revised_at:]), "answered"


@pytest.mark.slow
async def test_a_greeting_then_a_pause_is_not_an_end_of_turn() -> None:
    # "Hello," and a pause: people go on after a greeting, so the hangover decides.
    async with listening(s2s_manifest()) as (session, listener):
        await send_all(session, said("Hello.", 0.3))
        assert not await listener.until(lambda: listener.transcripts(), 3)
        await session.close()
    assert [(t.text, t.metadata.get(TURN)) for t in listener.transcripts()] == [("hello", None)]
