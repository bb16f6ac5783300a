"""Turn-taking over gRPC, as an independent client sees it: end of a spoken question → first
reply audio, with speech we did not synthesise.

Usage: python benchmarks/bench_turn.py [--quick]

- the server is a real ``nursery-pipes serve`` process (loopback);
- the client is grpcio with ``_pb2`` modules generated from the *upstream* remotemedia.v1
  protos (no nursery_pipes extensions), in its own process (benchmarks/_turn_client.py);
- the speech is espeak-ng (not our Piper voice): six short questions per voice, 22050 Hz
  int16, streamed in real time as 20 ms chunks (chunk i is sent once its 20 ms have been
  "captured"), each question followed by 2 s of silence;
- the pipeline is examples/speech_to_speech.json (VAD → ASR → reply → TTS, each in its own
  worker), as an upstream client can send it (without the ``metadata.multiprocess``
  extension; the speech nodes run in workers by default).

Per question, at the client (``time.perf_counter``):

- **end → reply audio**: from the instant the question's last loud sample (> -40 dBFS) was
  captured to the arrival of the first ``tts`` audio result after it;
- **heard**: the final transcript(s) (``transcript`` results without ``partial: "true"``) in
  the question's window, and whether the assistant answers it as it would the question
  (the same topics); more than one final transcript is an utterance **split**;
- **retracted**: early ends the recogniser took back (a ``turn: "revised"`` transcript
  replaces the ``turn: "early"`` one before it: not a split).

Baseline, same run, same server, same audio: the example with the turn ended by silence
alone: ``pause_ms`` removed from the VAD, ``early_turn``/``retract`` from the recogniser and
``speculate`` from the reply, so the 300 ms hangover decides every end.

Goals (issue 14): p50 ≤ 350 ms, max ≤ 450 ms, no split, ≥ 5 of 6 questions heard right.
Prints tables; the LAST line is one JSON object (also benchmarks/results/turn.json).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the upstream protos

import numpy as np
from _common import finish, parse_args, percentile, print_table
from service_fixtures import run_protoc, write_stripped_protos

from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.cli._demo import _start_server, _stop_server
from nursery_pipes.nodes.speech._reply import PARTIAL, TOPICS
from nursery_pipes.testing import espeak_ng
from nursery_pipes.wire import manifest_to_proto

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What time is it?",
    "What is your name?",
    "Hello, how are you?",
    "Tell me a joke.",
    "What is the weather like today?",
    "Thank you very much.",
]
VOICES_QUICK = [("en-us", 175)]
VOICES_FULL = [("en-us", 175), ("en-gb", 160), ("en-us+f3", 175)]
LEAD_S, GAP_S = 0.6, 2.0
PACE_S = 0.02
SILENT = 0.01 * 32767  # -40 dBFS
CLIENT = Path(__file__).resolve().parent / "_turn_client.py"
EXAMPLE = ROOT / "examples" / "speech_to_speech.json"


def topics(text: str) -> frozenset[int]:
    """Which of the assistant's topics a transcript asks about (what its answer depends on)."""
    return frozenset(i for i, topic in enumerate(TOPICS) if topic.pattern.search(text.lower()))


class Script:
    """The stream: questions with silence around them, and where each one is."""

    def __init__(self, voice: str, wpm: int) -> None:
        clips = [espeak_ng(q, voice=voice, words_per_minute=wpm) for q in QUESTIONS]
        self.rate = clips[0].sample_rate
        pieces: list[np.ndarray[Any, Any]] = [np.zeros(int(LEAD_S * self.rate), np.int16)]
        self.starts: list[float] = []
        self.ends: list[float] = []
        at = len(pieces[0])
        for clip in clips:
            samples = np.asarray(clip.samples).reshape(-1)
            loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENT)
            self.starts.append((at + int(loud[0])) / self.rate)
            self.ends.append((at + int(loud[-1]) + 1) / self.rate)
            pieces += [samples, np.zeros(int(GAP_S * self.rate), np.int16)]
            at += len(samples) + int(GAP_S * self.rate)
        self.samples = np.concatenate(pieces)

    def chunks(self) -> list[str]:
        step = int(self.rate * PACE_S)
        out = []
        for seq, i in enumerate(range(0, len(self.samples), step)):
            piece = self.samples[i : i + step]
            buffer = pb.DataBuffer(
                audio=pb.AudioBuffer(
                    samples=piece.tobytes(),
                    sample_rate=self.rate,
                    channels=1,
                    format=pb.AudioFormat.I16,
                    num_samples=len(piece),
                )
            )
            request = pb.StreamRequest(data_chunk=pb.DataChunk(node_id="vad", buffer=buffer, sequence=seq))
            out.append(bytes(request).hex())
        return out


def manifests() -> dict[str, dict[str, Any]]:
    """The example as an upstream client can send it, and the same with silence-only turn ends."""
    doc = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    doc["metadata"].pop("multiprocess", None)  # an extension; the speech nodes default to workers
    baseline = copy.deepcopy(doc)
    for node in baseline["nodes"]:
        params = node.get("params", {})
        for name in ("pause_ms", "early_turn", "retract", "speculate"):
            params.pop(name, None)
    return {"silence only (baseline)": baseline, "example": doc}


def run_client(gen: Path, address: str, doc: dict[str, Any], script: Script, work: Path) -> dict[str, Any]:
    init = pb.StreamRequest(init=pb.StreamInit(manifest=manifest_to_proto(doc), client_version="1.0"))
    close = pb.StreamRequest(control=pb.StreamControl(command=pb.StreamControlCommand.COMMAND_CLOSE))
    plan = work / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "init": bytes(init).hex(),
                "chunks": script.chunks(),
                "close": bytes(close).hex(),
                "pace_s": PACE_S,
            }
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(gen), address, str(plan)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != "OK":
        raise RuntimeError(f"the stream ended with {result['status']}")
    return result


def outputs(responses: list[dict[str, Any]], node: str) -> list[tuple[float, dict[str, Any]]]:
    return [
        (r["t"], out)
        for r in responses
        if r["which"] == "result"
        for out in r["outputs"]
        if out["node"] == node
    ]


def score(script: Script, seen: dict[str, Any]) -> list[dict[str, Any]]:
    responses = seen["responses"]
    transcripts = outputs(responses, "transcript")
    audio = [t for t, out in outputs(responses, "tts") if out["type"] == "audio"]
    rows = []
    for i, question in enumerate(QUESTIONS):
        start, end = script.starts[i], script.ends[i]
        until = script.starts[i + 1] if i + 1 < len(QUESTIONS) else float("inf")
        window = [(t, o) for t, o in transcripts if start <= t < until]
        finals = [o for _, o in window if o["metadata"].get(PARTIAL) != "true"]
        final_at = [t for t, o in window if o["metadata"].get(PARTIAL) != "true" and t >= end]
        kept: list[dict[str, Any]] = []
        retracted = 0
        for o in finals:  # a revised transcript replaces the early one it took back
            if (
                o["metadata"].get("turn") == "revised"
                and kept
                and kept[-1]["metadata"].get("turn") == "early"
            ):
                kept.pop()
                retracted += 1
            kept.append(o)
        replies = [t for t in audio if end <= t < until]
        heard = " | ".join(o["text"] for o in kept)
        rows.append(
            {
                "question": question,
                "heard": heard,
                "right": len(kept) == 1 and topics(kept[0]["text"]) == topics(question),
                "split": len(kept) > 1,
                "retracted": retracted,
                "early": sum(o["metadata"].get("turn") == "early" for o in kept),
                "latency_ms": (replies[0] - end) * 1000 if replies else None,
                "transcript_ms": (final_at[0] - end) * 1000 if final_at else None,
            }
        )
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    voices = VOICES_QUICK if args.quick else VOICES_FULL
    scripts = {f"{voice} {wpm} wpm": Script(voice, wpm) for voice, wpm in voices}
    docs = manifests()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in docs}
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp:
        work = Path(tmp)
        protos = write_stripped_protos(work / "protos")
        gen = work / "gen"
        gen.mkdir()
        run_protoc(protos, f"--python_out={gen}", f"--grpc_python_out={gen}")
        server, address = _start_server()
        try:
            for voice, script in scripts.items():
                for name, doc in docs.items():  # interleaved: the same minute for both
                    results[name][voice] = score(script, run_client(gen, address, doc, script, work))
        finally:
            code = _stop_server(server)
    summary: dict[str, Any] = {}
    for name, by_voice in results.items():
        rows = [(voice, r) for voice, per in by_voice.items() for r in per]
        print_table(
            f"{name}: end of question → first reply audio (independent grpcio client, espeak-ng)",
            ["voice", "question", "ms", "transcript ms", "heard", "right", "split", "early", "retracted"],
            [
                (
                    voice,
                    r["question"],
                    "—" if r["latency_ms"] is None else round(r["latency_ms"]),
                    "—" if r["transcript_ms"] is None else round(r["transcript_ms"]),
                    r["heard"],
                    r["right"],
                    r["split"],
                    r["early"],
                    r["retracted"],
                )
                for voice, r in rows
            ],
        )
        latencies = [r["latency_ms"] for _, r in rows if r["latency_ms"] is not None]
        summary[name] = {
            "questions": len(rows),
            "answered": len(latencies),
            "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "heard_right": sum(r["right"] for _, r in rows),
            "split": sum(r["split"] for _, r in rows),
            "early": sum(r["early"] for _, r in rows),
            "retracted": sum(r["retracted"] for _, r in rows),
            "per_voice_right": {v: sum(r["right"] for r in per) for v, per in by_voice.items()},
        }
    print_table(
        "summary (goals: p50 ≤ 350 ms, max ≤ 450 ms, no split, ≥ 5/6 heard right per voice)",
        ["pipeline", "answered", "p50 ms", "max ms", "heard right", "split", "early", "retracted"],
        [
            (n, f"{s['answered']}/{s['questions']}", s["p50_ms"], s["max_ms"], s["heard_right"], s["split"],
             s["early"], s["retracted"])
            for n, s in summary.items()
        ],
    )  # fmt: skip
    ours, base = summary["example"], summary["silence only (baseline)"]
    worst_voice = min(ours["per_voice_right"].values())
    goals = {
        "p50 end of question -> reply audio": {
            "goal": "<= 350 ms", "measured": f"{ours['p50_ms']} ms (baseline {base['p50_ms']} ms)",
            "met": ours["p50_ms"] is not None and ours["p50_ms"] <= 350,
        },
        "max end of question -> reply audio": {
            "goal": "<= 450 ms", "measured": f"{ours['max_ms']} ms (baseline {base['max_ms']} ms)",
            "met": ours["max_ms"] is not None and ours["max_ms"] <= 450,
        },
        "every question answered": {
            "goal": f"{ours['questions']}", "measured": f"{ours['answered']}",
            "met": ours["answered"] == ours["questions"],
        },
        "no utterance split": {"goal": "0", "measured": f"{ours['split']}", "met": ours["split"] == 0},
        "questions heard right, worst voice": {
            "goal": ">= 5 of 6", "measured": f"{worst_voice} of 6", "met": worst_voice >= 5,
        },
    }  # fmt: skip
    print_table(
        "goals (issue 14)",
        ["goal", "target", "measured", "met"],
        [(k, g["goal"], g["measured"], "MET" if g["met"] else "NOT MET") for k, g in goals.items()],
    )
    finish(
        "turn",
        {"quick": args.quick, "server_exit": code, "summary": summary, "goals": goals, "questions": results},
    )


if __name__ == "__main__":
    main()
