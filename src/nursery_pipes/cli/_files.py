"""Reading CLI input files into frames and writing sink outputs to files."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import FrameError, InputError
from ..frames import AudioFrame, BinaryFrame, Frame, JsonFrame, TensorFrame, TextFrame, VideoFrame

__all__ = ["InputSpec", "parse_input_spec", "read_input", "write_outputs"]

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


@dataclass(frozen=True)
class InputSpec:
    node_id: str
    path: Path


@dataclass(frozen=True)
class SignalSpec:
    """``--signal AFTER:NAME[@NODE,...]``: send NAME to those nodes (all: none given) once
    AFTER input frames have been sent (0: before the first)."""

    after: int
    name: str
    to: tuple[str, ...] | None


def parse_signal_spec(text: str) -> SignalSpec:
    after, colon, rest = text.partition(":")
    name, at, nodes = rest.partition("@")
    to = tuple(n for n in nodes.split(",") if n) if at else None
    if not colon or not after.isdigit() or not name or (at and not to):
        raise InputError(
            f"--signal {text!r}: expected AFTER:NAME[@NODE,...], e.g. 3:interrupt@tts "
            "(after the 3rd input frame, send interrupt to node tts)"
        )
    return SignalSpec(int(after), name, to)


def signals_due(specs: Sequence[SignalSpec], sent: int) -> list[SignalSpec]:
    """The signals to send once ``sent`` input frames are out."""
    return [spec for spec in specs if spec.after == sent]


def parse_input_spec(text: str) -> InputSpec:
    """``NODE=FILE`` → InputSpec; a clear error otherwise."""
    node, sep, path = text.partition("=")
    if not sep or not node or not path:
        raise InputError(f"--input must look like NODE=FILE, got {text!r}")
    return InputSpec(node, Path(path))


def read_input(spec: InputSpec, *, chunk_ms: float) -> list[Frame]:
    """Frames from one file: audio (chunked), JSON (one frame, or one per line for .jsonl), text, bytes."""
    path = spec.path
    if not path.is_file():
        raise InputError(f"input file for node {spec.node_id!r} not found: {path}")
    suffix = path.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        return list(_audio_chunks(AudioFrame.from_wav(path), chunk_ms))
    data = path.read_bytes()
    if suffix == ".json":
        return [_json(data, path)]
    if suffix in {".jsonl", ".ndjson"}:
        return [_json(line, path, n) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    if suffix in {".txt", ".text", ".md"}:
        # A text file's final line break ends the file, not the text (write_outputs adds it back).
        text = data.removesuffix(b"\n").removesuffix(b"\r") if data.endswith(b"\n") else data
        try:
            return [TextFrame.from_bytes(text)]
        except FrameError as exc:
            raise InputError(f"{path}: {exc}") from None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return [BinaryFrame(data=data, mime_type=mime)]


def _json(data: bytes, path: Path, line: int | None = None) -> JsonFrame:
    try:
        return JsonFrame.from_bytes(data)
    except FrameError as exc:
        where = f"{path}, line {line}" if line else str(path)
        raise InputError(f"{where}: {exc}") from None


def _audio_chunks(audio: AudioFrame, chunk_ms: float) -> Iterator[AudioFrame]:
    if chunk_ms <= 0:
        yield audio
        return
    step = max(1, round(audio.sample_rate * chunk_ms / 1000))
    for start in range(0, audio.num_samples, step):
        yield AudioFrame(samples=audio.samples[start : start + step], sample_rate=audio.sample_rate)


def write_outputs(outputs: dict[str, list[Frame]], directory: Path) -> list[Path]:
    """One file per sink where the frames concatenate (audio → .wav, text → .txt, JSON → .jsonl),
    else one file per frame. Returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for node_id, frames in outputs.items():
        written.extend(_write_sink(node_id, frames, directory))
    return written


def _write_sink(node_id: str, frames: Sequence[Frame], directory: Path) -> list[Path]:
    if not frames:
        return []
    audio = [f for f in frames if isinstance(f, AudioFrame)]
    paths: list[Path] = []
    if audio:
        paths += _write_audio(node_id, audio, directory)
    texts = [f for f in frames if isinstance(f, TextFrame)]
    if texts:
        target = directory / f"{node_id}.txt"
        target.write_text("".join(f.text + "\n" for f in texts), encoding="utf-8")
        paths.append(target)
    docs = [f for f in frames if isinstance(f, JsonFrame)]
    if docs:
        target = directory / f"{node_id}.jsonl"
        target.write_bytes(b"".join(f.to_bytes() + b"\n" for f in docs))
        paths.append(target)
    for n, frame in enumerate(f for f in frames if isinstance(f, (BinaryFrame, TensorFrame, VideoFrame))):
        paths.append(_write_blob(node_id, n, frame, directory))
    return paths


def _write_audio(node_id: str, frames: list[AudioFrame], directory: Path) -> list[Path]:
    groups: list[list[AudioFrame]] = [[frames[0]]]
    for frame in frames[1:]:
        last = groups[-1][-1]
        same = (frame.sample_rate, frame.channels, frame.format) == (
            last.sample_rate,
            last.channels,
            last.format,
        )
        if same:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    paths = []
    for i, group in enumerate(groups):
        joined = AudioFrame(
            samples=np.concatenate([f.samples for f in group]), sample_rate=group[0].sample_rate
        )
        target = directory / (f"{node_id}.wav" if len(groups) == 1 else f"{node_id}-{i}.wav")
        joined.to_wav(target)
        paths.append(target)
    return paths


def _write_blob(node_id: str, n: int, frame: Frame, directory: Path) -> Path:
    if isinstance(frame, TensorFrame):
        target = directory / f"{node_id}-{n}.npy"
        np.save(target, frame.data)
        return target
    suffix = mimetypes.guess_extension(frame.mime_type) if isinstance(frame, BinaryFrame) else ".raw"
    target = directory / f"{node_id}-{n}{suffix or '.bin'}"
    target.write_bytes(frame.to_bytes())
    return target


def describe_frames(frames: Sequence[Frame]) -> str:
    """A short human summary of a sink's output, for the CLI table."""
    if not frames:
        return "no output"
    first = frames[0]
    if all(isinstance(f, AudioFrame) for f in frames):
        seconds = sum(f.duration for f in frames if isinstance(f, AudioFrame))
        assert isinstance(first, AudioFrame)
        return f"{len(frames)} audio frames, {seconds:.2f} s at {first.sample_rate} Hz"
    if all(isinstance(f, TextFrame) for f in frames):
        text = " | ".join(f.text for f in frames if isinstance(f, TextFrame))
        return text if len(text) <= 120 else text[:117] + "..."
    if all(isinstance(f, JsonFrame) for f in frames):
        parts = [json.dumps(f.value) for f in frames if isinstance(f, JsonFrame)]
        text = " ".join(parts)
        return text if len(text) <= 120 else text[:117] + "..."
    kinds: dict[str, int] = {}
    for f in frames:
        kinds[f.kind.label] = kinds.get(f.kind.label, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in kinds.items())


def frame_summary(frame: Frame) -> dict[str, Any]:
    """Machine-readable summary of one frame for ``--json``."""
    out: dict[str, Any] = {"kind": frame.kind.label, "bytes": frame.nbytes}
    if isinstance(frame, AudioFrame):
        out.update(
            sample_rate=frame.sample_rate,
            channels=frame.channels,
            samples=frame.num_samples,
            format=frame.format.name.lower(),
        )
    elif isinstance(frame, TextFrame):
        out.update(text=frame.text, language=frame.language)
    elif isinstance(frame, JsonFrame):
        out.update(value=frame.value)
    elif isinstance(frame, TensorFrame):
        out.update(shape=list(frame.data.shape), dtype=frame.dtype.name.lower())
    elif isinstance(frame, VideoFrame):
        out.update(width=frame.width, height=frame.height, format=frame.format.name.lower())
    elif isinstance(frame, BinaryFrame):
        out.update(mime_type=frame.mime_type)
    return out
