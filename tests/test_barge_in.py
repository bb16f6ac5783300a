"""Barge-in: the voice-activity node interrupts the reply path when the user starts talking.

The real speech nodes, each in its worker process: SileroVAD (with ``interrupt``) → ASR →
reply → TTS. Two spoken questions; every speech start reaches the reply and TTS nodes as an
``interrupt`` (origin: the VAD), ahead of whatever they had queued, and the second question
is still answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nursery_pipes import AudioFrame, Runtime, TextFrame
from nursery_pipes._config import MultiprocessDefaults, RuntimeConfig
from nursery_pipes.runtime import Output, SignalHandled

pytestmark = pytest.mark.slow

QUESTIONS = ["What is your name?", "What time is it?"]


def manifest() -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "barge-in", "multiprocess": {"init_timeout_secs": 60}},
        "nodes": [
            {"id": "vad", "node_type": "SileroVADNode", "params": {"interrupt": ["reply", "tts"]}},
            {"id": "asr", "node_type": "SpeechRecognitionNode"},
            {"id": "reply", "node_type": "ReplyNode", "params": {"mode": "assistant"}},
            {"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1}},
        ],
        "connections": [
            {"from": "vad", "to": "asr"},
            {"from": "asr", "to": "reply"},
            {"from": "reply", "to": "tts"},
        ],
    }


async def spoken(runtime: Runtime) -> tuple[np.ndarray[Any, Any], int]:
    say = {
        "version": "v1",
        "metadata": {"name": "say"},
        "nodes": [{"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1}}],
        "connections": [],
    }
    result = await runtime.run_pipeline(say, {"tts": [TextFrame(text=q) for q in QUESTIONS]})
    frames = [f for f in result.outputs["tts"] if isinstance(f, AudioFrame)]
    rate = frames[0].sample_rate
    gap = np.zeros(int(1.0 * rate), np.float32)
    parts = [gap]
    for frame in frames:
        parts += [frame.samples[:, 0].astype(np.float32), gap]
    return np.concatenate(parts), rate


async def test_speech_start_interrupts_the_reply_path_and_the_next_question_is_answered() -> None:
    runtime = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.5)))
    async with runtime:
        audio, rate = await spoken(runtime)
        step = rate // 50
        async with runtime.open_session(manifest()) as session:
            for i in range(0, len(audio), step):
                await session.send("vad", AudioFrame.from_array(audio[i : i + step], rate))
            await session.close()
            events = [e async for e in session.events()]
    handled = [e for e in events if isinstance(e, SignalHandled)]
    assert {(h.node_id, h.name, h.origin) for h in handled} == {
        ("reply", "interrupt", "vad"),
        ("tts", "interrupt", "vad"),
    }
    assert sorted(h.node_id for h in handled) == ["reply", "reply", "tts", "tts"]  # one per question
    last_interrupt = max(i for i, e in enumerate(events) if isinstance(e, SignalHandled))
    answered_after = [e for e in events[last_interrupt:] if isinstance(e, Output) and e.node_id == "tts"]
    assert answered_after, "the question that interrupted is answered normally"
