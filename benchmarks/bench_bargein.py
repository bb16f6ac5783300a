"""Barge-in: from the VAD hearing speech start to the speech synthesis giving up its answer.

Usage: python benchmarks/bench_bargein.py [--quick]

One session, two sources, every speech node in its own worker process:

- ``tts`` (Piper) is given a long answer (six sentences, ~12 s of audio, synthesised
  sentence by sentence) — it is busy, its output ring filling, when the user speaks;
- ``vad`` (Silero, ``interrupt: ["tts"]``) gets a spoken question in real time (20 ms
  chunks, 16 kHz); its ``speech_start`` event goes to the client through a tap.

Per trial: the answer is sent, and once its first audio arrives the question is streamed.
Measured at the client (``time.perf_counter``), same session, from the VAD's ``speech_start``
event:

- **told** = the ``SignalSent`` event (the VAD's interrupt routed to tts: what a client
  playing the reply stops on); goal (issue 14): ≤ 100 ms;
- **stopped** = the tts node's ``SignalHandled`` (it took the interrupt; the sentence being
  synthesised is stopped mid-run by its ``cancel_work``, not finished and dropped);
- **from onset** = ``SignalSent`` − when the chunk with the question's first loud sample
  was sent (includes the VAD's 100 ms to confirm speech);
- **after** = tts audio frames that arrived after ``SignalHandled`` (goal 0: nothing of the
  interrupted answer gets out once the client is told) and the answer's audio that never
  got out (the point: the rest of the answer is dropped, not streamed).

Baseline, same run: the same measurement with an *idle* tts (no answer in progress):
the signal path alone, no synthesis to wait for.

Prints tables; the LAST line is one JSON object (also benchmarks/results/bargein.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import trio
from _common import finish, parse_args, percentile, print_table

from nursery_pipes import AudioFrame, JsonFrame, Runtime, TextFrame
from nursery_pipes.runtime import Output, SignalHandled, SignalSent

QUESTION = "What time is it?"
ANSWER = " ".join(
    [
        "Here is a long answer that takes a while to say.",
        "It goes on for several sentences, one after the other.",
        "Each sentence is synthesised on its own and sent as soon as it is ready.",
        "A listener who has heard enough simply starts to talk.",
        "Then the rest of this answer should never be heard.",
        "This last sentence is here to make the answer longer still.",
    ]
)
RATE = 16000
CHUNK = RATE // 50
GOAL_MS = 100.0


def manifest() -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "bench-bargein", "multiprocess": {"init_timeout_secs": 60}},
        "nodes": [
            {
                "id": "vad",
                "node_type": "SileroVADNode",
                "params": {"interrupt": ["tts"], "emit_audio": False},
            },
            {"id": "events", "node_type": "PassThrough"},
            {"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1, "sample_rate": 16000}},
        ],
        "connections": [{"from": "vad", "to": "events"}],
    }


async def question_audio(runtime: Runtime) -> tuple[np.ndarray[Any, Any], int]:
    say = {
        "version": "v1",
        "metadata": {"name": "say"},
        "nodes": [{"id": "tts", "node_type": "TextToSpeechNode", "params": {"sample_rate": RATE}}],
        "connections": [],
    }
    result = await runtime.run_pipeline(say, {"tts": TextFrame(text=QUESTION)})
    clip = np.concatenate([f.samples[:, 0] for f in result.outputs["tts"] if isinstance(f, AudioFrame)])
    loud = np.flatnonzero(np.abs(clip) > 0.01)
    lead = np.zeros(RATE // 2, np.float32)
    audio = np.concatenate([lead, clip.astype(np.float32), np.zeros(RATE, np.float32)])
    return audio, (len(lead) + int(loud[0])) // CHUNK  # the chunk with the first loud sample


async def trial(
    runtime: Runtime, audio: np.ndarray[Any, Any], onset_chunk: int, busy: bool
) -> dict[str, Any]:
    marks: dict[str, float] = {}
    after = 0
    answer_s = 0.0
    async with runtime.open_session(manifest()) as session:

        async def read() -> None:
            nonlocal after, answer_s
            async for event in session.events():
                now = time.perf_counter()
                if isinstance(event, Output) and event.node_id == "tts":
                    marks.setdefault("first_audio", now)
                    answer_s += event.frame.duration
                    if "sent" in marks:
                        after += 1
                elif isinstance(event, Output) and isinstance(event.frame, JsonFrame):
                    if event.frame.value.get("event") == "speech_start":
                        marks.setdefault("speech_start", now)
                elif isinstance(event, SignalHandled) and event.node_id == "tts":
                    marks.setdefault("handled", now)
                elif isinstance(event, SignalSent) and "tts" in event.targets:
                    marks.setdefault("sent", now)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            if busy:
                await session.send("tts", TextFrame(text=ANSWER))
                with trio.fail_after(30):
                    while "first_audio" not in marks:  # noqa: ASYNC110  (the answer has begun)
                        await trio.sleep(0.005)
            started = time.perf_counter()
            for n, i in enumerate(range(0, len(audio), CHUNK)):
                await trio.sleep_until(
                    trio.current_time() + max(0.0, started + n * 0.02 - time.perf_counter())
                )
                if n == onset_chunk:
                    marks["onset"] = time.perf_counter()
                await session.send("vad", AudioFrame.from_array(audio[i : i + CHUNK], RATE))
            await session.close()
    return {
        "told_ms": (marks["sent"] - marks["speech_start"]) * 1000,
        "stopped_ms": (marks["handled"] - marks["speech_start"]) * 1000,
        "from_onset_ms": (marks["sent"] - marks["onset"]) * 1000,
        "audio_frames_after": after,
        "answer_heard_s": answer_s,
    }


async def measure(quick: bool) -> dict[str, list[dict[str, Any]]]:
    rounds = 3 if quick else 10
    results: dict[str, list[dict[str, Any]]] = {"busy": [], "idle": []}
    async with Runtime() as runtime:
        audio, onset = await question_audio(runtime)
        for _ in range(rounds):
            for mode in ("busy", "idle"):
                results[mode].append(await trial(runtime, audio, onset, mode == "busy"))
    return results


def main() -> None:
    args = parse_args(__doc__ or "")
    raw = trio.run(measure, args.quick)
    rows, summary = [], {}

    def stat(values: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(values, 50), 1), "max": round(max(values), 1)}

    for mode, trials in raw.items():
        summary[mode] = {
            "n": len(trials),
            "told_ms": stat([t["told_ms"] for t in trials]),
            "stopped_ms": stat([t["stopped_ms"] for t in trials]),
            "from_onset_ms": stat([t["from_onset_ms"] for t in trials]),
            "audio_frames_after_max": max(t["audio_frames_after"] for t in trials),
            "answer_heard_s_p50": round(percentile([t["answer_heard_s"] for t in trials], 50), 2),
        }
        s = summary[mode]
        rows.append(
            (mode, s["n"], s["told_ms"]["p50"], s["told_ms"]["max"], s["stopped_ms"]["p50"], s["stopped_ms"]["max"],
             s["from_onset_ms"]["p50"], s["audio_frames_after_max"], s["answer_heard_s_p50"])
        )  # fmt: skip
    print_table(
        "Barge-in, at the client, from the VAD's speech_start event (ms): told = SignalSent, "
        "stopped = the tts node's SignalHandled",
        ["tts", "n", "told p50", "told max", "stopped p50", "stopped max", "from onset p50",
         "audio after (max)", "answer out s"],
        rows,
    )  # fmt: skip
    busy = summary["busy"]["told_ms"]
    goals = {
        "told_max_ms_le_100": {"goal": GOAL_MS, "measured": busy["max"], "met": busy["max"] <= GOAL_MS},
        "tts_stopped_max_ms_le_100": {
            "goal": GOAL_MS,
            "measured": summary["busy"]["stopped_ms"]["max"],
            "met": summary["busy"]["stopped_ms"]["max"] <= GOAL_MS,
        },
        "no_audio_after_the_client_is_told": {
            "goal": 0,
            "measured": summary["busy"]["audio_frames_after_max"],
            "met": summary["busy"]["audio_frames_after_max"] == 0,
        },
    }
    print_table("Goals", ["goal", "target", "measured", "met"],
                [(k, g["goal"], g["measured"], "MET" if g["met"] else "NOT MET") for k, g in goals.items()])  # fmt: skip
    finish("bargein", {"quick": args.quick, "results": summary, "goals": goals, "trials": raw})


if __name__ == "__main__":
    main()
