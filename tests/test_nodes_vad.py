"""EnergyVADNode and its sans-I/O state machine, on synthetic bursts in silence."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nursery_pipes._errors import ManifestError
from nursery_pipes.frames import AudioFrame, Frame, JsonFrame
from nursery_pipes.nodes._calls import make_node
from nursery_pipes.nodes.builtin import EnergyVADNode
from nursery_pipes.nodes.builtin._vad import VadOp, VadTracker
from nursery_pipes.testing._drive import run_node_sync

RATE = 16000


def bursts(
    segments: list[tuple[float, float]],
    total: float,
    *,
    rate: int = RATE,
    level_db: float = -20.0,
    floor_db: float = -70.0,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """White noise at ``level_db`` RMS inside ``segments`` (seconds), a faint floor elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(round(total * rate)) * 10 ** (floor_db / 20)
    for a, b in segments:
        ia, ib = round(a * rate), round(b * rate)
        x[ia:ib] = rng.standard_normal(ib - ia) * 10 ** (level_db / 20)
    return x.astype(np.float32)


def chunks(x: npt.NDArray[Any], ms: float, rate: int = RATE) -> list[AudioFrame]:
    step = max(1, round(rate * ms / 1000))
    return [AudioFrame.from_array(x[i : i + step], rate) for i in range(0, len(x), step)]


def events(out: list[Frame]) -> list[dict[str, Any]]:
    return [f.value for f in out if isinstance(f, JsonFrame)]


def segments_of(evts: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) sample pairs, checking that events alternate start/end and agree."""
    pairs: list[tuple[int, int]] = []
    for start, end in zip(evts[::2], evts[1::2], strict=True):
        assert (start["event"], end["event"]) == ("speech_start", "speech_end")
        assert end["start_time"] == start["time"]
        pairs.append((start["sample"], end["sample"]))
    return pairs


def vad(frames: list[AudioFrame], **params: Any) -> list[Frame]:
    return run_node_sync(EnergyVADNode, frames, params)


# --- the state machine alone ----------------------------------------------------------------


def run_tracker(pattern: str, min_frames: int, hangover_frames: int, size: int = 10) -> list[VadOp]:
    tracker = VadTracker(min_frames=min_frames, hangover_samples=hangover_frames * size)
    ops: list[VadOp] = []
    for i, c in enumerate(pattern):
        ops += tracker.step(i * size, (i + 1) * size, c == "#")
    ops += tracker.finish(len(pattern) * size)
    return [op for op in ops if op.kind in ("start", "end")]


def test_tracker_min_speech_hangover_and_finish() -> None:
    # ## is too short for min_frames=3; ### is not; a gap of 2 is bridged by hangover 2.
    ops = run_tracker("..##...###..#.....", min_frames=3, hangover_frames=2)
    assert ops == [VadOp("start", 70, 0), VadOp("end", 70, 150)]
    # A gap of 3 > hangover 2 splits; the open segment ends at the end of the stream.
    ops = run_tracker("###...###", min_frames=1, hangover_frames=2)
    assert ops == [
        VadOp("start", 0, 0),
        VadOp("end", 0, 50),
        VadOp("start", 60, 0),
        VadOp("end", 60, 90),
    ]


def test_tracker_zero_hangover_ends_at_the_last_active_frame() -> None:
    ops = run_tracker("..##..", min_frames=1, hangover_frames=0)
    assert ops == [VadOp("start", 20, 0), VadOp("end", 20, 40)]


def test_tracker_unconfirmed_candidate_at_end_is_dropped() -> None:
    assert run_tracker("....##", min_frames=3, hangover_frames=5) == []


# --- the node -------------------------------------------------------------------------------


TRUTH = [(0.5, 1.2), (2.0, 2.75)]


@pytest.mark.parametrize("chunk_ms", [7, 20, 33, 1000])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_boundaries_close_to_truth(chunk_ms: int, frame_ms: int) -> None:
    x = bursts(TRUTH, 3.5)
    out = vad(chunks(x, chunk_ms), frame_ms=frame_ms)
    evts = events(out)
    frame, hangover = RATE * frame_ms // 1000, RATE * 300 // 1000
    found = segments_of(evts)
    assert len(found) == len(TRUTH)
    for (start, end), (a, b) in zip(found, TRUTH, strict=True):
        ta, tb = round(a * RATE), round(b * RATE)
        assert ta - frame < start <= ta
        assert tb <= end <= tb + hangover + frame
    for e in evts:
        assert e["time"] == round(e["sample"] / RATE, 3)
    end = evts[1]
    assert end["duration"] == pytest.approx(end["time"] - end["start_time"], abs=0.0015)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=30))
def test_any_chunking_gives_identical_events_and_audio(cuts: list[int]) -> None:
    x = bursts(TRUTH, 3.0, seed=1)
    bounds = sorted({0, len(x), *(c * 5 % len(x) for c in cuts)})
    frames = [AudioFrame.from_array(x[a:b], RATE) for a, b in pairwise(bounds)]
    reference = vad([AudioFrame.from_array(x, RATE)], emit_audio=True)
    assert len(events(reference)) == 4
    out = vad(frames, emit_audio=True)
    assert events(out) == events(reference)
    gated = [f.samples for f in out if isinstance(f, AudioFrame)]
    expected = [f.samples for f in reference if isinstance(f, AudioFrame)]
    np.testing.assert_array_equal(np.concatenate(gated), np.concatenate(expected))


def test_hangover_merges_short_gaps_only() -> None:
    merged = segments_of(events(vad(chunks(bursts([(0.5, 0.8), (0.95, 1.2)], 2.0), 33))))
    assert len(merged) == 1
    split = segments_of(events(vad(chunks(bursts([(0.5, 0.8), (1.3, 1.6)], 2.5), 33))))
    assert len(split) == 2
    short_hangover = vad(chunks(bursts([(0.5, 0.8), (0.95, 1.2)], 2.0), 33), hangover_ms=100)
    assert len(segments_of(events(short_hangover))) == 2


def test_short_blips_are_ignored() -> None:
    x = bursts([(0.3, 0.33), (0.8, 0.84), (1.5, 1.65)], 2.2)
    found = segments_of(events(vad(chunks(x, 7), min_speech_ms=60)))
    assert len(found) == 1
    assert abs(found[0][0] - round(1.5 * RATE)) <= RATE * 20 // 1000


def test_quiet_noise_below_threshold_is_silence() -> None:
    x = bursts([(0.5, 1.0)], 1.5, level_db=-50.0)
    assert vad(chunks(x, 20)) == []
    assert len(segments_of(events(vad(chunks(x, 20), threshold_db=-55.0)))) == 1


def test_flush_ends_an_open_segment_at_end_of_stream() -> None:
    x = bursts([(0.5, 1.0)], 1.0)
    evts = events(vad(chunks(x, 33)))
    assert evts[-1]["event"] == "speech_end"
    assert evts[-1]["sample"] == len(x)


def test_gated_audio_is_exactly_the_speech_samples() -> None:
    rng = np.random.default_rng(5)
    mono = bursts(TRUTH, 3.2)
    stereo = np.round(np.stack([mono, mono * 0.5], axis=1) * 32767).astype(np.int16)
    stereo[:, 1] += rng.integers(-2, 3, len(stereo)).astype(np.int16)  # channels differ
    frames = [AudioFrame(samples=stereo[i : i + 528], sample_rate=RATE) for i in range(0, len(stereo), 528)]
    out = vad(frames, emit_audio=True)
    found = segments_of(events(out))
    assert len(found) == 2
    # Order: each segment's audio sits between its start and end events.
    kinds = ["a" if isinstance(f, AudioFrame) else f.value["event"][7] for f in out]
    text = "".join(kinds)
    assert text.startswith("s")
    assert text.endswith("e")
    assert text.replace("a", "") == "sese"
    gated = np.concatenate([f.samples for f in out if isinstance(f, AudioFrame)])
    expected = np.concatenate([stereo[a:b] for a, b in found])
    assert gated.dtype == np.int16
    assert gated.shape[1] == 2
    np.testing.assert_array_equal(gated, expected)


def test_audio_only_mode() -> None:
    x = bursts([(0.2, 0.6)], 1.0)
    out = vad(chunks(x, 7), emit_audio=True, emit_events=False)
    assert out
    assert all(isinstance(f, AudioFrame) for f in out)
    (segment,) = segments_of(events(vad(chunks(x, 7))))
    assert sum(f.samples.shape[0] for f in out if isinstance(f, AudioFrame)) == segment[1] - segment[0]


def test_odd_rate_and_i32_input() -> None:
    rate = 22050
    x = bursts([(0.4, 0.9)], 1.5, rate=rate)
    frames = [
        AudioFrame.from_array(np.round(x * 2**31).astype(np.int32)[i : i + 700], rate)
        for i in range(0, len(x), 700)
    ]
    (found,) = segments_of(events(vad(frames, frame_ms=10)))
    assert abs(found[0] - round(0.4 * rate)) <= 221


def test_sample_rate_change_is_an_error() -> None:
    frames = [
        AudioFrame.from_array(np.zeros(160, np.float32), 16000),
        AudioFrame.from_array(np.zeros(80, np.float32), 8000),
    ]
    with pytest.raises(ValueError, match="sample rate changed from 16000 Hz to 8000 Hz"):
        vad(frames)


def test_params_validation() -> None:
    with pytest.raises(ManifestError, match="both false"):
        make_node(EnergyVADNode, {"emit_audio": False, "emit_events": False})
    with pytest.raises(ManifestError, match="frame_ms"):
        make_node(EnergyVADNode, {"frame_ms": 25})
    with pytest.raises(ManifestError, match="hangover_ms"):
        make_node(EnergyVADNode, {"hangover_ms": -1})


def test_empty_stream_and_empty_frames() -> None:
    assert vad([]) == []
    assert vad([AudioFrame.from_array(np.zeros(0, np.float32), RATE)]) == []
