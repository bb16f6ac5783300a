"""``nursery-pipes demo``: the main job, end to end, on an embedded default input.

1. start ``nursery-pipes serve`` on a free loopback port (a real server process);
2. make the input: a 44.1 kHz stereo recording with three "utterances"
   (voiced, syllable-modulated harmonics) separated by silence;
3. stream it, 20 ms per chunk, through a manifest that mixes in-process
   (format conversion) and multiprocess (resampler, voice activity detector)
   nodes, showing each node's init progress;
4. print what came back — the speech segments found, their timing, the
   per-chunk latency — and write the gated speech to a WAV file;
5. stop the server with SIGTERM (graceful drain) and check it exited cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._errors import NurseryPipesError
from ..frames import AudioFrame, Frame, JsonFrame

__all__ = ["DEMO_MANIFEST", "make_demo_audio", "run_demo"]

DEMO_MANIFEST: dict[str, Any] = {
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

UTTERANCES = [(0.50, 1.10), (1.60, 2.60), (3.00, 3.45)]  # seconds: where the "speech" is


def make_demo_audio(rate: int = 44100, seconds: float = 4.0) -> AudioFrame:
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


def run_demo(directory: Path, *, console: Console, out: Console) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    audio = make_demo_audio()
    wav = directory / "input.wav"
    audio.to_wav(wav)
    (directory / "manifest.json").write_text(json.dumps(DEMO_MANIFEST, indent=2) + "\n", encoding="utf-8")
    out.print(
        f"[bold]1.[/] input: {wav} — {audio.duration:.1f} s, {audio.sample_rate} Hz, {audio.channels} channels; "
        f"speech at {', '.join(f'{a:.2f}–{b:.2f} s' for a, b in UTTERANCES)}"
    )
    server, address = _start_server(console)
    out.print(f"[bold]2.[/] server: pid {server.pid} listening on {address}")
    try:
        run = _stream(address, audio, console)
    finally:
        code = _stop_server(server)
    _report(run, directory, out)
    out.print(f"[bold]5.[/] server drained and exited with code {code}")
    return 0 if code == 0 else 1


def _start_server(console: Console) -> tuple[subprocess.Popen[str], str]:
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


def _stream(address: str, audio: AudioFrame, console: Console) -> Any:
    from ._remote import stream_job

    step = audio.sample_rate // 50  # 20 ms chunks
    chunks: list[tuple[str, Frame]] = [
        ("mono", AudioFrame(samples=audio.samples[i : i + step], sample_rate=audio.sample_rate))
        for i in range(0, audio.num_samples, step)
    ]
    console.file.flush()
    console.print(f"[bold]3.[/] streaming {len(chunks)} chunks of 20 ms (init progress below)")
    started = time.perf_counter()
    run = asyncio.run(
        stream_job(address, DEMO_MANIFEST, chunks, token=None, console=console, show_progress=True)
    )
    run.wall_s = time.perf_counter() - started
    return run


def _report(run: Any, directory: Path, out: Console) -> None:
    events = [f.value for f in run.outputs.get("vad", []) if isinstance(f, JsonFrame)]
    speech = [f for f in run.outputs.get("vad", []) if isinstance(f, AudioFrame)]
    table = Table(title="4. speech segments found by the pipeline")
    for column in ("segment", "start s", "end s", "expected"):
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
    nodes = ", ".join(
        f"{a.node_id}→{a.executor}" + (f" (pid {a.pid})" if a.pid else "") for a in run.assignments
    )
    out.print(f"nodes: {escape(nodes)}")
    lat = sorted(run.latencies_ms)
    if lat:
        p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        out.print(
            f"per-chunk latency on the server (input received → output sent): p50 {p50:.2f} ms, p95 {p95:.2f} ms"
        )
    out.print(
        f"session {run.session_id}: {len(ends)} segments, wall time {run.wall_s:.2f} s "
        f"for {sum(1 for _ in run.outputs.get('vad', []))} outputs"
    )
