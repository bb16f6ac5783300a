"""StreamPipeline over real sockets: the session lifecycle, every bad-input case of the
streaming side, clients that vanish or stop reading, and graceful drain.

Clients are raw grpclib calls (``open_stream``) so a test can send exactly the
messages — or bytes — it wants, or our ``Client`` where the point is the helper.
Every bad-input test ends by checking the server still serves a fresh session.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np
import pytest
import trio
import trio_asyncio
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from service_fixtures import (
    ECHO,
    GRACE,
    STREAM_PATH,
    UPPER,
    Served,
    audio,
    audio_buffer,
    calls_finished,
    first_audio_value,
    make_config,
    manifest,
    mixed_audio_manifest,
    open_stream,
    pids_of_session,
    results_by_sink,
    served_fixture,  # noqa: F401  (the `served` fixture)
    serving,
    text_buffer,
    wait_no_session_processes,
)

from nursery_pipes import Runtime, TextFrame
from nursery_pipes._proto.remotemedia import v1 as pb
from nursery_pipes.client import ChunkOutput, StreamEvent, collect
from nursery_pipes.service import Server
from nursery_pipes.wire import manifest_to_proto

pytestmark = pytest.mark.timeout(60)

STREAM_ERROR = pb.StreamErrorType


async def still_streaming(served: Served) -> None:
    """A fresh session on the same server works end to end."""

    async def call() -> list[str]:
        async with served.client() as client, client.stream(UPPER) as stream:
            outs = await collect(stream, [("up", TextFrame(text="again"))])
        return [o.frame.text for o in outs]

    assert await served.aio(call) == ["AGAIN"]


def kinds(items: list[tuple[str, Any]]) -> list[str]:
    return [k for k, _ in items]


def rejections(items: list[tuple[str, Any]]) -> list[pb.ErrorResponse]:
    """The errors that refused one request or output while the session went on. They arrive
    as ``error``, the member every client knows; the deprecated ``stream_error`` never does."""
    assert "stream_error" not in kinds(items)
    return [v for k, v in items if k == "error" and v.session_continues]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- the happy path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("served", [{"server": {"metrics_interval_secs": 0.05}}], indirect=True)
async def test_stream_lifecycle_progress_ready_results_metrics_close(served: Served) -> None:
    doc = mixed_audio_manifest()
    doc["nodes"].append({"id": "prog", "node_type": "ProgressNode", "params": {"steps": 3}})
    doc["connections"].append({"from": "out", "to": "prog"})
    doc["metadata"]["multiprocess"]["executor_overrides"]["prog"] = "multiprocess"
    n = 6

    async def scenario() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], list[tuple[str, Any]]]:
        async with open_stream(served.port) as s:
            await s.init(doc, client_version="1.0")
            before_ready = await s.until("ready")
            for seq in range(1, n + 1):
                await s.chunk("src", audio_buffer(float(seq)), seq * 10)  # increasing, not contiguous
            # Results for every chunk, and at least one periodic StreamMetrics, before CLOSE.
            running: list[tuple[str, Any]] = []
            while len(results_by_sink(running).get("prog", [])) < n or "metrics" not in kinds(running):
                running += await s.until("result", "metrics")
            await s.close()
            return before_ready, running, await s.rest()

    before_ready, running, after_close = await served.aio(scenario)

    # progress while initialising, then ready with every node's executor
    progress = [v for k, v in before_ready if k == "progress"]
    steps = [p.message for p in progress if p.node_id == "prog" and p.message.startswith("step")]
    assert steps == ["step 1/3", "step 2/3", "step 3/3"]
    assert all(0.0 <= p.progress <= 1.0 for p in progress)
    assert {p.node_id for p in progress if p.state == "ready"} == {"src", "gain", "out", "tap", "prog"}
    kind, ready = before_ready[-1]
    assert kind == "ready"
    assert ready.session_id
    assert ready.recommended_chunk_size > 0
    executors = {a.node_id: a.executor for a in ready.assignments}
    assert executors == {
        "src": "inprocess",
        "gain": "multiprocess",
        "out": "inprocess",
        "tap": "multiprocess",
        "prog": "multiprocess",
    }
    pids = {a.node_id: a.pid for a in ready.assignments}
    assert all(pids[n_] not in (0, os.getpid()) for n_ in ("gain", "tap", "prog"))

    # one ChunkResult per sink output, carrying the sequence of the input that caused it
    everything = running + after_close
    by_sink = results_by_sink(everything)
    assert set(by_sink) == {"prog", "tap"}
    assert [seq for seq, _ in by_sink["prog"]] == [10 * i for i in range(1, n + 1)]
    assert [seq for seq, _ in by_sink["tap"]] == [10 * i for i in range(1, n + 1)]
    assert [first_audio_value(b) for _, b in by_sink["prog"]] == pytest.approx(
        [2.0 * i for i in range(1, n + 1)], rel=1e-4
    )
    assert [first_audio_value(b) for _, b in by_sink["tap"]] == [float(i) for i in range(1, n + 1)]
    totals = [v.total_items_processed for k, v in everything if k == "result"]
    assert totals == list(range(1, 2 * n + 1))

    # periodic metrics for this session
    metrics = [v for k, v in everything if k == "metrics"]
    assert metrics
    assert all(m.session_id == ready.session_id for m in metrics)
    assert [m.chunks_processed for m in metrics] == sorted(m.chunks_processed for m in metrics)
    assert all(m.chunks_processed <= n and m.chunks_dropped == 0 for m in metrics)

    # CLOSE: flushed, then StreamClosed with final metrics, then the call ends OK
    assert after_close[-1][0] == "closed"
    closed = after_close[-1][1]
    assert closed.session_id == ready.session_id
    assert closed.reason == "closed"
    final = closed.final_metrics
    assert set(final.node_metrics) == {"src", "gain", "out", "tap", "prog"}
    assert final.node_metrics["gain"].items_processed == n
    assert final.node_metrics["prog"].items_processed == n
    assert final.wall_time_ms > 0
    assert "error" not in kinds(everything)
    assert "stream_error" not in kinds(everything)
    await wait_no_session_processes(ready.session_id, within=1.0)


@pytest.mark.parametrize("served", [{"server": {"metrics_interval_secs": 0.0005}}], indirect=True)
async def test_no_result_is_lost_to_the_metrics_timer(served: Served) -> None:
    """Periodic StreamMetrics interleave with results; a metrics tick while a result is being
    written must not drop that result (every sequence comes back, in order, once)."""
    n = 300

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(ECHO)
            await s.until("ready")
            for seq in range(1, n + 1):
                await s.chunk("echo", text_buffer(str(seq)), seq)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    assert [q for q, _ in results_by_sink(items)["echo"]] == list(range(1, n + 1))
    assert "metrics" in kinds(items)
    assert items[-1][0] == "closed"


async def test_init_then_half_close_gets_ready_then_closed(served: Served) -> None:
    """grpcurl-style: StreamInit, then the client half-closes at once, while the nodes still
    initialise. The session closes once it is ready: StreamReady, then StreamClosed, status OK."""
    slow = manifest(
        [("slow", "SleepNode", {"init_seconds": 0.2}), ("up", "TextTransformNode", {"operation": "upper"})],
        [("slow", "up")],
        executors={"slow": "inprocess", "up": "inprocess"},
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(slow)
            await s.end()
            return await s.rest()  # checks the call ended with status OK

    items = await served.aio(scenario)
    assert [k for k in kinds(items) if k != "progress"] == ["ready", "closed"]
    assert items[-1][1].reason == "closed"
    assert served.runtime.sessions == {}
    await still_streaming(served)


async def test_client_helper_streams_with_progress_and_outputs(served: Served) -> None:
    seen: list[pb.InitProgress] = []

    async def call() -> tuple[list[ChunkOutput], pb.StreamClosed | None, list[pb.NodeAssignment]]:
        async with served.client() as client:
            stream = client.stream(mixed_audio_manifest(), on_progress=seen.append)
            async with stream:
                outs = await collect(stream, [("src", audio(i)) for i in range(1, 4)])
            assert stream.ready is not None
            return outs, stream.closed, list(stream.ready.assignments)

    outs, closed, assignments = await served.aio(call)
    assert closed is not None
    assert closed.reason == "closed"
    assert {(o.node_id, o.sequence) for o in outs} == {(s, i) for s in ("out", "tap") for i in (1, 2, 3)}
    assert {p.node_id for p in seen} == {"src", "gain", "out", "tap"}
    assert {a.node_id: a.executor for a in assignments}["gain"] == "multiprocess"


async def test_client_helper_reports_rejections_and_carries_on(served: Served) -> None:
    """A rejected chunk is an event for our client (``rejected``), not an exception: the
    session goes on, later chunks come back, the stream closes normally."""
    doc = manifest([("g", "AudioGainNode", {"gain_db": 0.0})], executors={"g": "inprocess"})

    async def call() -> tuple[list[ChunkOutput | StreamEvent], pb.StreamClosed | None]:
        async with served.client() as client:
            stream = client.stream(doc)
            async with stream:
                await stream.send("g", TextFrame(text="not audio"))
                await stream.send("g", audio(0.5))
                await stream.close()
                events = [event async for event in stream]
            return events, stream.closed

    events, closed = await served.aio(call)
    rejected = [e.message for e in events if isinstance(e, StreamEvent) and e.kind == "rejected"]
    assert [(r.failing_sequence, r.error_type) for r in rejected] == [(1, pb.ErrorType.TYPE_VALIDATION)]
    assert rejected[0].session_continues
    assert "accepts audio frames, not text" in rejected[0].message
    assert [(o.node_id, o.sequence) for o in events if isinstance(o, ChunkOutput)] == [("g", 2)]
    assert closed is not None
    assert closed.reason == "closed"


async def test_initial_data_inputs_come_out_with_sequence_zero(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER, data_inputs={"up": text_buffer("first")})
            await s.until("ready")
            await s.chunk("up", text_buffer("zero again"), 0)  # 0 is taken by data_inputs
            await s.chunk("up", text_buffer("second"), 1)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    texts = [(seq, b.text.text_data.decode()) for seq, b in results_by_sink(items)["up"]]
    assert texts == [(0, "FIRST"), (1, "SECOND")]
    (error,) = rejections(items)
    assert error.stream_error_type == STREAM_ERROR.STREAM_ERROR_INVALID_SEQUENCE
    assert error.failing_sequence == 0
    assert items[-1][0] == "closed"


async def test_initial_data_inputs_for_unknown_node_are_refused(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER, data_inputs={"ghost": text_buffer("x")})
            return await s.rest()

    items = await served.aio(scenario)
    assert kinds(items) == ["error"]
    assert items[0][1].error_type == pb.ErrorType.VALIDATION
    assert "ghost" in items[0][1].message
    await still_streaming(served)


async def test_initial_data_inputs_of_a_kind_the_node_does_not_take_are_refused(served: Served) -> None:
    doc = manifest([("g", "AudioGainNode", {})], executors={"g": "inprocess"})

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc, data_inputs={"g": text_buffer("x")})
            return await s.rest()

    items = await served.aio(scenario)
    assert kinds(items) == ["error"]
    assert items[0][1].error_type == pb.ErrorType.TYPE_VALIDATION
    assert "node 'g' (AudioGainNode) accepts audio frames, not text" in items[0][1].message
    assert served.runtime.sessions == {}
    await still_streaming(served)


async def test_named_buffers_feed_several_sources_with_one_sequence(served: Served) -> None:
    doc = manifest(
        [
            ("a", "TextTransformNode", {"operation": "upper"}),
            ("b", "TextTransformNode", {"operation": "lower"}),
        ]
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            await s.until("ready")
            await s.chunk("", None, 1, named_buffers={"a": text_buffer("Xy"), "b": text_buffer("Zw")})
            await s.chunk("", None, 2, named_buffers={"b": text_buffer("Q")})
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    by_sink = results_by_sink(items)
    assert [(q, b.text.text_data) for q, b in by_sink["a"]] == [(1, b"XY")]
    assert [(q, b.text.text_data) for q, b in by_sink["b"]] == [(1, b"zw"), (2, b"q")]
    assert rejections(items) == []


async def test_a_chunk_is_taken_whole_or_not_at_all(served: Served) -> None:
    """named_buffers with one bad target: nothing of the chunk is sent and its sequence is not
    used up, so the client can resend it."""
    doc = manifest(
        [("a", "TextTransformNode", {"operation": "upper"}), ("b", "AudioGainNode", {"gain_db": 0.0})]
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            await s.until("ready")
            await s.chunk("", None, 1, named_buffers={"a": text_buffer("x"), "ghost": text_buffer("y")})
            await s.chunk("", None, 1, named_buffers={"a": text_buffer("x"), "b": text_buffer("not audio")})
            await s.chunk("", None, 1, named_buffers={"a": text_buffer("x"), "b": audio_buffer(0.5)})
            await s.close()
            await s.chunk("a", text_buffer("late"), 2)
            return await s.rest()

    items = await served.aio(scenario)
    errors = rejections(items)
    assert [e.failing_sequence for e in errors] == [1, 1, 2]
    assert "unknown node 'ghost'" in errors[0].message
    assert errors[0].error_type == pb.ErrorType.VALIDATION
    assert "accepts audio frames, not text" in errors[1].message
    assert errors[1].error_type == pb.ErrorType.TYPE_VALIDATION  # a kind the node does not take
    assert "data after CLOSE" in errors[2].message
    by_sink = results_by_sink(items)
    assert [(q, b.text.text_data) for q, b in by_sink["a"]] == [(1, b"X")]
    assert [q for q, _ in by_sink["b"]] == [1]
    assert items[-1][0] == "closed"


async def test_incompatible_client_version_in_stream_init(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER, client_version="2.0")
            return await s.rest()

    items = await served.aio(scenario)
    assert kinds(items) == ["error"]
    assert items[0][1].error_type == pb.ErrorType.VERSION_MISMATCH
    assert "2.0" in items[0][1].message
    assert served.runtime.sessions == {}


async def test_legacy_audio_chunk_is_accepted(served: Served) -> None:
    """Field 3 (deprecated AudioChunk), sent as bytes: betterproto warns when one builds it."""
    chunk = pb.AudioChunk(
        node_id="echo",
        buffer=pb.AudioBuffer(
            samples=np.full(80, 0.5, dtype=np.float32).tobytes(), sample_rate=8000, channels=1
        ),
        sequence=7,
        timestamp_ms=70,
    )
    body = bytes(chunk)
    request = b"\x1a" + varint(len(body)) + body  # StreamRequest field 3, length-delimited
    with pytest.warns(
        DeprecationWarning, match="audio_chunk is deprecated"
    ):  # the same bytes as betterproto would send
        assert request == bytes(pb.StreamRequest(audio_chunk=chunk))

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(ECHO)
            await s.until("ready")
            await s.send(request)
            await s.chunk("echo", audio_buffer(0.25), 8)  # data_chunk continues the same sequence
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    assert rejections(items) == []
    outs = results_by_sink(items)["echo"]
    assert [q for q, _ in outs] == [7, 8]
    assert outs[0][1].audio.sample_rate == 8000
    assert first_audio_value(outs[0][1]) == 0.5


async def test_cancel_drops_the_session_and_its_workers(served: Served) -> None:
    doc = manifest(
        [("src", "PassThrough", {}), ("slow", "SleepNode", {"process_seconds": 30})],
        [("src", "slow")],
        executors={"src": "inprocess", "slow": "multiprocess"},
    )

    async def scenario() -> tuple[str, list[tuple[str, Any]], list[int]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            (*_, (_, ready)) = await s.until("ready")
            alive = await pids_of_session_aio(ready.session_id)
            await s.chunk("src", text_buffer("x"), 1)
            await s.cancel()
            return ready.session_id, await s.rest(), alive

    pids_of_session_aio = trio_asyncio.trio_as_aio(pids_of_session)
    began = trio.current_time()
    session_id, items, alive = await served.aio(scenario)
    assert len(alive) == 1
    assert trio.current_time() - began < 10  # not the node's 30 s
    assert items[-1][0] == "closed"
    assert items[-1][1].reason == "cancelled by client"
    assert "result" not in kinds(items)
    await wait_no_session_processes(session_id, within=1.0)
    await still_streaming(served)


async def test_client_cancel_after_close_resets_the_call_and_drops_the_session(served: Served) -> None:
    """The library's Client ends its request stream on close(): a cancel() after that cannot send
    CANCEL, so it resets the call — the session ends the same way, workers and all."""
    doc = manifest(
        [("src", "PassThrough", {}), ("slow", "SleepNode", {"process_seconds": 30})],
        [("src", "slow")],
        executors={"src": "inprocess", "slow": "multiprocess"},
    )

    async def scenario() -> str:
        async with served.client() as client:
            with contextlib.suppress(StreamTerminatedError, GRPCError):
                async with client.stream(doc) as stream:
                    await stream.send("src", TextFrame(text="x"))
                    await stream.close()  # the flush waits for the node's 30 s ...
                    await stream.cancel()  # ... unless the client gives up
            return stream.session_id

    began = trio.current_time()
    session_id = await served.aio(scenario)
    await wait_no_session_processes(session_id, within=5.0)
    assert trio.current_time() - began < 10  # not the node's 30 s
    await still_streaming(served)


async def test_half_close_flushes_and_cancel_drops(served: Served) -> None:
    """The chunker holds every sample until flush. A client that half-closes has sent everything:
    the flushed chunk must reach it before StreamClosed. After CANCEL it must not."""
    doc = manifest([("c", "AudioChunkerNode", {"chunk_size": 1000})])

    async def scenario(ending: str) -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            await s.until("ready")
            for seq in (1, 2, 3):
                await s.chunk("c", audio_buffer(float(seq)), seq)
            if ending == "half-close":
                await s.end()
            else:
                await s.cancel()
            return await s.rest()

    flushed = await served.aio(scenario, "half-close")
    results = results_by_sink(flushed).get("c", [])
    per_input = [(q, np.frombuffer(b.audio.samples, np.float32)[::160].tolist()) for q, b in results]
    assert per_input == [(3, [1.0, 2.0, 3.0])]  # one chunk: every input's samples, at flush
    assert flushed[-1][0] == "closed"
    assert flushed[-1][1].reason == "closed"

    dropped = await served.aio(scenario, "cancel")
    assert "result" not in kinds(dropped)
    assert dropped[-1][0] == "closed"
    assert dropped[-1][1].reason == "cancelled by client"


@pytest.mark.parametrize(
    ("node", "executor", "expect"),
    [
        (
            ("RaiseNode", {"phase": "process", "after_frames": 2, "message": "mid-stream"}),
            "inprocess",
            "mid-stream",
        ),
        (
            ("RaiseNode", {"phase": "process", "after_frames": 2, "message": "mid-stream"}),
            "multiprocess",
            "mid-stream",
        ),
        (("ExitNode", {"phase": "process", "after_frames": 2, "code": 7}), "multiprocess", "7"),
    ],
    ids=["raise-inprocess", "raise-worker", "exit-worker"],
)
async def test_node_failure_mid_stream_is_reported_and_ends_the_session(
    served: Served, node: tuple[str, dict[str, Any]], executor: str, expect: str
) -> None:
    node_type, params = node
    doc = manifest(
        [("src", "PassThrough", {}), ("bad", node_type, params), ("w", "PassThrough", {})],
        [("src", "bad"), ("src", "w")],
        executors={"src": "inprocess", "bad": executor, "w": "multiprocess"},
    )

    async def scenario() -> tuple[str, list[tuple[str, Any]]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            (*_, (_, ready)) = await s.until("ready")
            for seq in range(1, 6):
                await s.chunk("src", text_buffer(f"c{seq}"), seq)
            got = await s.until("error")
            await s.end()
            return ready.session_id, got + await s.rest()  # the call itself ends OK

    session_id, items = await served.aio(scenario)
    (error,) = [v for k, v in items if k == "error"]
    assert error.error_type == pb.ErrorType.NODE_EXECUTION
    assert error.failing_node_id == "bad"
    assert expect in error.message
    if node_type == "RaiseNode":
        assert "RuntimeError: mid-stream" in error.stack_trace
    assert [q for q, _ in results_by_sink(items).get("bad", [])] == [1, 2]
    assert items[-1][0] == "closed"
    assert items[-1][1].reason.startswith("failed")
    await wait_no_session_processes(session_id, within=1.0)
    await still_streaming(served)


async def test_chunks_that_keep_coming_after_a_node_failure(served: Served) -> None:
    """The session fails while chunks still arrive: Session.send raises the node's error for
    them, which escaped the stream (UNKNOWN "Internal Server Error", 4 runs in 5) instead of
    the client getting the failure as ``error``, then StreamClosed."""
    doc = manifest(
        [("bad", "RaiseNode", {"phase": "process", "after_frames": 0, "message": "first"})],
        executors={"bad": "inprocess"},
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            await s.until("ready")
            with contextlib.suppress(StreamTerminatedError):  # the server may end the call meanwhile
                for seq in range(1, 300):
                    await s.chunk("bad", text_buffer("x"), seq)
            return await s.rest()

    for _ in range(3):
        items = await served.aio(scenario)
        (error,) = [v for k, v in items if k == "error"]
        assert error.error_type == pb.ErrorType.NODE_EXECUTION
        assert error.failing_node_id == "bad"
        assert not error.session_continues
        assert items[-1][0] == "closed"
    await still_streaming(served)


@pytest.mark.parametrize(
    ("node", "expect"),
    [
        (("RaiseNode", {"phase": "initialize", "message": "no model"}), "no model"),
        (("HangNode", {"phase": "initialize"}), "init_timeout_secs"),
    ],
    ids=["raise", "timeout"],
)
async def test_init_failure_is_reported_with_progress(
    served: Served, node: tuple[str, dict[str, Any]], expect: str
) -> None:
    node_type, params = node
    doc = manifest(
        [("ok", "PassThrough", {}), ("bad", node_type, params)],
        [("ok", "bad")],
        executors={"ok": "multiprocess", "bad": "multiprocess"},
        init_timeout_secs=1,
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            got = await s.until("error", "ready")
            await s.end()
            return got + await s.rest()

    items = await served.aio(scenario)
    assert "ready" not in kinds(items)
    (error,) = [v for k, v in items if k == "error"]
    assert error.error_type == pb.ErrorType.NODE_EXECUTION
    assert error.failing_node_id == "bad"
    assert expect in error.message
    assert any(k == "progress" and v.node_id == "bad" and v.state == "failed" for k, v in items)
    assert served.runtime.sessions == {}
    await still_streaming(served)


@pytest.mark.parametrize("how", ["close", "half-close"])
async def test_close_before_ready_closes_once_ready(served: Served, how: str) -> None:
    """A client that sends StreamInit and at once CLOSE (or half-closes, as grpcurl does) gets
    StreamReady, then StreamClosed, and the call ends OK (it got UNKNOWN: the session refused
    to close while its nodes were initialising)."""
    doc = manifest([("slow", "SleepNode", {"init_seconds": 0.3})], executors={"slow": "inprocess"})

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            if how == "close":
                await s.close()
            else:
                await s.end()
            return await s.rest()

    items = await served.aio(scenario)
    assert [k for k in kinds(items) if k != "progress"] == ["ready", "closed"]
    assert items[-1][1].reason == "closed"
    assert served.runtime.sessions == {}


@pytest.mark.parametrize("served", [{"server": {"max_message_bytes": 128 * 1024}}], indirect=True)
async def test_outputs_over_a_limit_are_rejected_and_the_stream_goes_on(served: Served) -> None:
    """An output larger than the server's max_message_bytes, or than the stream's
    resource_limits.max_memory_bytes, is not sent: a RESOURCE_LIMIT rejection names its node
    and the sequence of the input that caused it; later outputs still come."""
    doc = manifest([("up", "AudioResampleNode", {"target_rate": 1_000_000, "quality": "QQ"})])

    def tones(n: int) -> pb.DataBuffer:  # 1 kHz in, 1 MHz out: ×1000 samples (4 bytes each)
        return pb.DataBuffer(
            audio=pb.AudioBuffer(samples=np.zeros(n, dtype=np.float32).tobytes(), sample_rate=1000)
        )

    async def scenario(limits: pb.ResourceLimits, sizes: list[int]) -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc, resource_limits=limits)
            for seq, n in enumerate(sizes, start=1):
                await s.chunk("up", tones(n), seq)
            await s.close()
            return await s.rest()

    for limits, sizes, clause in [
        (pb.ResourceLimits(), [100, 10], "this server's max_message_bytes is 131072"),  # ~400 KB, ~40 KB
        (pb.ResourceLimits(max_memory_bytes=20_000), [10, 1], "resource_limits.max_memory_bytes (20000)"),
    ]:
        items = await served.aio(scenario, limits, sizes)
        (refused,) = rejections(items)
        assert refused.error_type == pb.ErrorType.RESOURCE_LIMIT
        assert refused.failing_node_id == "up"
        assert refused.failing_sequence == 1
        assert refused.message.startswith("output of node 'up' for sequence 1 not sent (the stream goes on)")
        assert clause in refused.message
        assert 2 in [q for q, _ in results_by_sink(items)["up"]]
        assert items[-1][0] == "closed"
    await still_streaming(served)


async def test_init_failure_with_initial_data_inputs_is_reported_as_error(served: Served) -> None:
    """StreamInit.data_inputs wait in Session.send for READY; a failed start wakes them with the
    node's error, which escaped the stream (UNKNOWN) instead of arriving as ``error``."""
    doc = manifest([("bad", "RaiseNode", {"phase": "initialize"})], executors={"bad": "inprocess"})

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc, data_inputs={"bad": text_buffer("x")})
            return await s.rest()

    items = await served.aio(scenario)
    (error,) = [v for k, v in items if k == "error"]
    assert error.error_type == pb.ErrorType.NODE_EXECUTION
    assert error.failing_node_id == "bad"
    assert "ready" not in kinds(items)
    assert served.runtime.sessions == {}


# -- bad input -------------------------------------------------------------------------------------------


async def test_data_chunk_before_stream_init(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.chunk("up", text_buffer("x"), 1)
            return await s.rest()

    items = await served.aio(scenario)
    # An `error` every client sees (it was the extension `stream_error`), and the stream ends.
    assert kinds(items) == ["error"]
    error = items[0][1]
    assert not error.session_continues
    assert error.stream_error_type == STREAM_ERROR.STREAM_ERROR_INIT_REQUIRED
    assert error.error_type == pb.ErrorType.VALIDATION
    assert "StreamInit" in error.message
    await still_streaming(served)


async def test_second_stream_init_is_refused_and_the_session_carries_on(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER)
            await s.until("ready")
            await s.chunk("up", text_buffer("a"), 1)
            await s.init(UPPER)
            await s.chunk("up", text_buffer("b"), 2)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    (error,) = rejections(items)
    assert "already initialised" in error.message
    assert error.failing_sequence is None  # StreamInit has no sequence
    assert [(q, b.text.text_data) for q, b in results_by_sink(items)["up"]] == [(1, b"A"), (2, b"B")]
    assert items[-1][0] == "closed"


@pytest.mark.parametrize(
    ("sequences", "bad", "good"),
    [([5, 3, 6], [3], [5, 6]), ([5, 5, 6], [5], [5, 6]), ([1, 2, 0, 2, 3], [0, 2], [1, 2, 3])],
    ids=["backwards", "repeat", "zero-and-repeat"],
)
async def test_sequence_must_strictly_increase(
    served: Served, sequences: list[int], bad: list[int], good: list[int]
) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER)
            await s.until("ready")
            for seq in sequences:
                await s.chunk("up", text_buffer(f"s{seq}"), seq)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    errors = rejections(items)
    assert [e.failing_sequence for e in errors] == bad
    assert all(e.stream_error_type == STREAM_ERROR.STREAM_ERROR_INVALID_SEQUENCE for e in errors)
    assert all("does not increase" in e.message for e in errors)
    assert [q for q, _ in results_by_sink(items)["up"]] == good
    assert items[-1][0] == "closed"


async def test_unknown_node_id_is_a_rejection(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER)
            await s.until("ready")
            await s.chunk("ghost", text_buffer("x"), 1)
            await s.chunk("up", text_buffer("y"), 2)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    (error,) = rejections(items)
    assert error.failing_sequence == 1
    assert error.error_type == pb.ErrorType.VALIDATION
    assert "ghost" in error.message
    assert [q for q, _ in results_by_sink(items)["up"]] == [2]


@pytest.mark.parametrize("which_", ["both", "neither"])
async def test_exactly_one_of_buffer_or_named_buffers(served: Served, which_: str) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(UPPER)
            await s.until("ready")
            if which_ == "both":
                await s.chunk("up", text_buffer("x"), 1, named_buffers={"up": text_buffer("x")})
            else:
                await s.chunk("up", None, 1)
            await s.chunk("up", text_buffer("ok"), 2)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    (error,) = rejections(items)
    assert error.failing_sequence == 1
    assert f"sets {which_} of buffer / named_buffers" in error.message
    assert [q for q, _ in results_by_sink(items)["up"]] == [2]


async def test_params_that_are_not_json_end_the_stream_with_validation_error(served: Served) -> None:
    wire = pb.PipelineManifest(
        version="v1",
        metadata=pb.ManifestMetadata(name="bad"),
        nodes=[pb.NodeManifest(id="up", node_type="TextTransformNode", params="{'single': 'quotes'}")],
    )

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.send(pb.StreamRequest(init=pb.StreamInit(manifest=wire)))
            return await s.rest()

    items = await served.aio(scenario)
    assert kinds(items) == ["error"]
    error = items[0][1]
    assert error.error_type == pb.ErrorType.VALIDATION
    assert [i.path for i in error.issues] == ["nodes[0].params"]
    await still_streaming(served)


async def test_json_chunk_nested_ten_thousand_levels_is_a_rejection(served: Served) -> None:
    deep = pb.DataBuffer(json=pb.JsonData(json_payload="[" * 10_000 + "]" * 10_000))

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(ECHO)
            await s.until("ready")
            await s.chunk("echo", deep, 1)
            await s.chunk("echo", text_buffer("fine"), 2)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    (error,) = rejections(items)
    assert error.failing_sequence == 1
    assert error.error_type == pb.ErrorType.TYPE_VALIDATION
    assert "data_chunk.buffer" in error.message
    assert "nests deeper than 128 levels" in error.message
    assert [q for q, _ in results_by_sink(items)["echo"]] == [2]  # the session carried on
    assert items[-1][0] == "closed"


@pytest.mark.parametrize("served", [{"server": {"metrics_interval_secs": 0.05}}], indirect=True)
async def test_frame_bytes_that_disagree_with_format(served: Served) -> None:
    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(ECHO)
            await s.until("ready")
            await s.chunk("echo", audio_buffer(0.1, n=160, num_samples=161), 1)
            await s.chunk("echo", audio_buffer(0.1, n=160, samples=b"\x00" * 10), 2)
            await s.chunk(
                "echo",
                pb.DataBuffer(
                    tensor=pb.TensorBuffer(data=b"\x00" * 10, shape=[2, 2], dtype=pb.TensorDtype.F32)
                ),
                3,
            )
            await s.chunk("echo", audio_buffer(0.1, format=9), 4)
            overflow = pb.TensorBuffer(data=b"", shape=[2**32, 2**32], dtype=pb.TensorDtype.U8)
            await s.chunk("echo", pb.DataBuffer(tensor=overflow), 5)  # 2**64 elements "fit" in 0 bytes
            await s.chunk("echo", audio_buffer(0.1), 6)
            got = await s.until("result")  # every chunk before it has been judged by now
            got += await s.until("metrics")  # so this tick counts all five refusals
            await s.close()
            return got + await s.rest()

    items = await served.aio(scenario)
    errors = rejections(items)
    assert [e.failing_sequence for e in errors] == [1, 2, 3, 4, 5]
    assert all(e.error_type == pb.ErrorType.TYPE_VALIDATION for e in errors)
    assert "num_samples is 161" in errors[0].message
    assert all("data_chunk.buffer" in e.message for e in errors)
    assert [q for q, _ in results_by_sink(items)["echo"]] == [6]
    assert items[-1][0] == "closed"
    dropped = [v.chunks_dropped for k, v in items if k == "metrics"]
    assert dropped == sorted(dropped)
    assert dropped[-1] == 5


async def test_undecodable_bytes_mid_stream_end_the_stream(served: Served) -> None:
    doc = manifest([("w", "PassThrough", {})], executors={"w": "multiprocess"})

    session: list[str] = []

    async def scenario() -> None:
        async with open_stream(served.port) as s:
            await s.init(doc)
            (*_, (_, ready)) = await s.until("ready")
            session.append(ready.session_id)
            await s.send(b"\x12\xff\xff")  # data_chunk with a truncated length
            await s.rest()

    with pytest.raises(GRPCError) as caught:
        await served.aio(scenario)
    error = caught.value
    (session_id,) = session
    assert error.status == Status.INVALID_ARGUMENT
    assert "StreamRequest" in (error.message or "")
    await wait_no_session_processes(session_id, within=1.0)
    await still_streaming(served)


@pytest.mark.parametrize("served", [{"server": {"max_message_bytes": 32 * 1024}}], indirect=True)
async def test_message_over_the_size_limit_ends_the_stream(served: Served) -> None:
    items: list[tuple[str, Any]] = []

    async def scenario() -> None:
        async with open_stream(served.port) as s:
            await s.init(ECHO)
            await s.until("ready")
            await s.chunk("echo", audio_buffer(0.1, n=1000), 1)  # fits
            items.extend(await s.until("result"))
            await s.chunk("echo", audio_buffer(0.1, n=16 * 1024), 2)  # 64 KiB
            await s.rest()

    with pytest.raises(GRPCError) as caught:
        await served.aio(scenario)
    error = caught.value
    assert [q for q, _ in results_by_sink(items)["echo"]] == [1]
    assert error.status == Status.RESOURCE_EXHAUSTED
    assert "32768" in (error.message or "")
    await still_streaming(served)

    async def with_client() -> None:  # our client surfaces the server's status, not "stream reset"
        async with served.client() as client, client.stream(ECHO) as stream:
            await collect(stream, [("echo", audio(0.1, n=16 * 1024))])

    with pytest.raises(GRPCError) as caught:
        await served.aio(with_client)
    assert caught.value.status == Status.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("served", [{"server": {"auth_token": "tok"}}], indirect=True)
async def test_stream_with_wrong_or_missing_token(served: Served) -> None:
    async def attempt(metadata: dict[str, str] | None) -> list[tuple[str, Any]]:
        async with open_stream(served.port, metadata=metadata) as s:
            await s.init(UPPER)
            got = await s.until("error", "ready")
            if got[-1][0] == "ready":
                await s.chunk("up", text_buffer("in"), 1)
                await s.end()  # a half-close counts as CLOSE
            return got + await s.rest()

    for metadata in (None, {"authorization": "Bearer tok2"}, {"authorization": "tok"}):
        items = await served.aio(attempt, metadata)
        assert kinds(items) == ["error"]
        assert items[0][1].error_type == pb.ErrorType.AUTHENTICATION
    items = await served.aio(attempt, {"authorization": "Bearer tok"})
    assert [(q, b.text.text_data) for q, b in results_by_sink(items)["up"]] == [(1, b"IN")]
    assert kinds(items)[-1] == "closed"
    assert served.runtime.sessions == {}


@pytest.mark.parametrize("served", [{"limits": {"max_sessions": 2}}], indirect=True)
async def test_more_streams_than_allowed(served: Served) -> None:
    async def scenario() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        async with open_stream(served.port) as one, open_stream(served.port) as two:
            await one.init(UPPER)
            await two.init(UPPER)
            await one.until("ready")
            await two.until("ready")
            async with open_stream(served.port) as three:
                await three.init(UPPER)
                refused = await three.rest()
            await one.chunk("up", text_buffer("x"), 1)
            await one.close()
            await two.close()
            await two.rest()
            return refused, await one.rest()

    refused, first = await served.aio(scenario)
    assert kinds(refused) == ["error"]
    assert refused[0][1].error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "limits.max_sessions" in refused[0][1].message
    assert [q for q, _ in results_by_sink(first)["up"]] == [1]  # the others were unaffected
    await still_streaming(served)


# -- clients that go away or stop reading ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["call-cancelled", "connection-dropped"])
async def test_client_that_vanishes_mid_stream_ends_its_session_and_workers(served: Served, how: str) -> None:
    """A client that goes away (its call reset, or its TCP connection gone) while two worker
    nodes are busy: every process of the session is gone within 1 s."""
    doc = manifest(
        [("src", "PassThrough", {}), ("w1", "PassThrough", {}), ("w2", "SleepNode", {"process_seconds": 30})],
        [("src", "w1"), ("w1", "w2")],
        executors={"src": "inprocess", "w1": "multiprocess", "w2": "multiprocess"},
    )
    session_ids: list[str] = []
    busy = trio.Event()
    vanish = trio.Event()

    async def client() -> None:
        with contextlib.suppress(StreamTerminatedError, GRPCError):
            async with open_stream(served.port) as s:
                await s.init(doc)
                (*_, (_, ready)) = await s.until("ready")
                session_ids.append(ready.session_id)
                for seq in range(1, 4):
                    await s.chunk("src", text_buffer("x"), seq)
                busy.set()
                if how == "connection-dropped":
                    await trio_asyncio.trio_as_aio(vanish.wait)()
                    s.channel.close()  # the socket closes under the call, as if the process died
                await s.until("never")  # blocks: w2 sleeps 30 s on its first frame

    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.aio, client)
        await busy.wait()
        (session_id,) = session_ids
        assert len(await pids_of_session(session_id)) == 2
        assert session_id in served.runtime.sessions
        if how == "call-cancelled":
            nursery.cancel_scope.cancel()  # the client task dies: its call is reset mid-stream
        else:
            vanish.set()
    await wait_no_session_processes(session_id, within=1.0)
    await calls_finished(served.server)
    assert session_id not in served.runtime.sessions
    await still_streaming(served)


@pytest.mark.parametrize("served", [{"server": {"stall_timeout_secs": 0.5}}], indirect=True)
async def test_client_that_never_reads_gets_its_stream_ended(served: Served) -> None:
    """Server memory stays bounded (backpressure reaches the client), the stream ends after the
    stall timeout (server.stall_timeout_secs), the server keeps serving."""
    stall = 0.5
    frame = audio_buffer(0.1, n=64 * 1024)  # 256 KiB per chunk, echoed back
    attempts = 400  # 100 MiB if nothing pushed back
    doc = manifest([("echo", "PassThrough", {})], channel_capacity=8)
    sent: list[int] = []
    session: list[str] = []

    async def scenario() -> None:
        async with open_stream(served.port) as s:
            await s.init(doc)
            (*_, (_, ready)) = await s.until("ready")
            session.append(ready.session_id)
            for seq in range(1, attempts + 1):
                await s.chunk("echo", frame, seq)
                sent.append(seq)

    began = trio.current_time()
    with trio.fail_after(30), pytest.raises(GRPCError) as caught:
        await served.aio(scenario)
    elapsed = trio.current_time() - began
    assert caught.value.status == Status.RESOURCE_EXHAUSTED
    assert "did not read responses for 0.5 s" in (caught.value.message or "")
    # What the server holds for a stalled client is bounded by counts, not by what the client
    # tries to send: the session's channel capacity (8), the stream's response buffer (8
    # messages) and the HTTP/2 windows (4 MiB each way).
    assert len(sent) < 160, f"{len(sent)} chunks of 256 KiB were taken"
    assert elapsed < stall + 10
    (session_id,) = session
    await calls_finished(served.server)
    assert session_id not in served.runtime.sessions
    await still_streaming(served)


# -- drain -----------------------------------------------------------------------------------------------


async def test_drain_lets_a_running_stream_finish_and_refuses_new_sessions() -> None:
    doc = manifest(
        [("src", "PassThrough", {}), ("w", "PassThrough", {})],
        [("src", "w")],
        executors={"src": "inprocess", "w": "multiprocess"},
    )
    async with serving(server={"drain_timeout_secs": 20}) as served:

        async def stream_through_drain() -> tuple[
            str, list[tuple[GRPCError, list[Any]]], list[tuple[str, Any]]
        ]:
            async with open_stream(served.port) as s:
                await s.init(doc)
                (*_, (_, ready)) = await s.until("ready")
                await s.chunk("src", text_buffer("before"), 1)
                await s.until("result")
                # New calls on the same connection — what a client that reuses its connection,
                # or a balancer that keeps connections, sends a draining server — end with
                # UNAVAILABLE, no ErrorResponse before it: not processed, retry elsewhere.
                served.server.drain()
                refused: list[tuple[GRPCError, list[Any]]] = []
                for call in (_execute_on, _stream_on):
                    received: list[Any] = []
                    with pytest.raises(GRPCError) as caught:
                        await call(s.channel, received)
                    refused.append((caught.value, received))
                await s.chunk("src", text_buffer("during"), 2)
                await s.close()
                return ready.session_id, refused, await s.rest()

        session_id, refused, rest = await served.aio(stream_through_drain)
        for error, received in refused:
            assert error.status == Status.UNAVAILABLE
            assert "draining" in str(error.message)
            assert "retry on another replica" in str(error.message)
            assert received == []
        assert [q for q, _ in results_by_sink(rest)["w"]] == [2]
        assert rest[-1][0] == "closed"
        assert rest[-1][1].reason == "closed"
    await wait_no_session_processes(session_id, within=1.0)


async def _execute_on(channel: Any, received: list[Any]) -> None:
    received.append(await pb.PipelineExecutionServiceStub(channel).execute_pipeline(pb.ExecuteRequest()))


async def _stream_on(channel: Any, received: list[Any]) -> None:
    async with channel.request(
        STREAM_PATH, Cardinality.STREAM_STREAM, pb.StreamRequest, pb.StreamResponse
    ) as call:
        await call.send_message(
            pb.StreamRequest(init=pb.StreamInit(manifest=manifest_to_proto(UPPER))), end=True
        )
        while (response := await call.recv_message()) is not None:
            received.append(response)
        await call.recv_trailing_metadata()


async def test_drain_cancels_a_stream_that_outlives_the_deadline() -> None:
    """Past ``drain_timeout_secs`` the stream is cancelled: the client gets UNAVAILABLE (not a
    hang), ``serve`` returns, and the session's workers are gone."""
    doc = manifest(
        [("src", "PassThrough", {}), ("w", "SleepNode", {"process_seconds": 30})],
        [("src", "w")],
        executors={"src": "inprocess", "w": "multiprocess"},
    )
    config = make_config(server={"drain_timeout_secs": 0.3})
    session: list[str] = []
    client_error: list[BaseException] = []
    async with Runtime(config) as runtime, trio.open_nursery() as nursery:
        server = Server(runtime)
        serve_returned = trio.Event()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await server.serve(task_status=task_status)
            serve_returned.set()

        port = await nursery.start(serve)
        async with trio_asyncio.open_loop():
            busy = trio.Event()

            async def client() -> None:
                try:
                    async with open_stream(port) as s:
                        await s.init(doc)
                        (*_, (_, ready)) = await s.until("ready")
                        session.append(ready.session_id)
                        await s.chunk("src", text_buffer("x"), 1)  # w sleeps 30 s on it
                        busy.set()
                        await s.rest()
                except GRPCError as exc:
                    client_error.append(exc)

            async with trio.open_nursery() as clients:
                clients.start_soon(trio_asyncio.aio_as_trio(client))
                await busy.wait()
                began = trio.current_time()
                server.drain()
                with trio.fail_after(10):
                    await serve_returned.wait()
                drain_s = trio.current_time() - began
    assert drain_s < 0.3 + GRACE + 3
    (error,) = client_error
    assert isinstance(error, GRPCError)
    assert error.status == Status.UNAVAILABLE
    assert "shutting down" in (error.message or "")
    await wait_no_session_processes(session[0], within=1.0)


# -- StreamInit.resource_limits ---------------------------------------------------------------------


async def test_stream_resource_limits_bound_chunks_and_duration(served: Served) -> None:
    doc = manifest([("echo", "PassThrough", {})])
    limits = pb.ResourceLimits(max_audio_samples=160, max_timeout_ms=1500)

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc, resource_limits=limits)
            await s.until("ready")
            await s.chunk("echo", audio_buffer(0.1, n=160), 1)  # at the limit: fine
            await s.chunk("echo", audio_buffer(0.2, n=161), 2)  # one sample over: refused, session goes on
            await s.chunk("echo", audio_buffer(0.3, n=100), 3)
            return await s.rest()  # no CLOSE: the stream runs into max_timeout_ms

    began = trio.current_time()
    got = await served.aio(scenario)
    elapsed = trio.current_time() - began
    results = [v.sequence for k, v in got if k == "result"]
    assert results == [1, 3]
    refused = rejections(got)
    assert [r.failing_sequence for r in refused] == [2]
    assert refused[0].error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "max_audio_samples is 160" in refused[0].message
    final = [v for k, v in got if k == "error" and not v.session_continues]
    assert final
    assert final[-1].error_type == pb.ErrorType.RESOURCE_LIMIT
    assert "max_timeout_ms (1500 ms)" in final[-1].message
    assert 1.4 < elapsed < 10
    await still_streaming(served)


# -- supervision over the wire ------------------------------------------------------------------------


async def test_a_stream_survives_node_failures_and_says_what_it_dropped(served: Served) -> None:
    """With a supervision policy the session restarts a failing node: the client keeps
    getting results, and SupervisionEvent messages (an extension) say what failed, what was
    restarted and which chunks' results will never come."""
    doc = manifest(
        [("src", "PassThrough", {}), ("flaky", "RaiseNode", {"phase": "process", "after_frames": 1})],
        [("src", "flaky")],
        executors={"src": "inprocess", "flaky": "inprocess"},
    )
    doc["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 5}

    async def scenario() -> list[tuple[str, Any]]:
        async with open_stream(served.port) as s:
            await s.init(doc)
            await s.until("ready")
            for seq in range(1, 5):
                await s.chunk("src", text_buffer(f"c{seq}"), seq)
            await s.close()
            return await s.rest()

    items = await served.aio(scenario)
    assert [q for q, _ in results_by_sink(items)["flaky"]] == [1, 3]  # 2 and 4 made it fail
    events = [v for k, v in items if k == "supervision"]
    assert [(e.kind, e.node_id) for e in events] == [
        ("failed", "flaky"),
        ("dropped", "flaky"),
        ("restarted", "flaky"),
    ] * 2
    assert [list(e.dropped_sequences) for e in events if e.kind == "dropped"] == [[2], [4]]
    assert [e.restarts for e in events if e.kind == "restarted"] == [1, 2]
    failed = events[0]
    assert failed.error.error_type == pb.ErrorType.NODE_EXECUTION
    assert failed.error.failing_node_id == "flaky"
    assert "RuntimeError: boom" in failed.message
    assert not [k for k, _ in items if k == "error"]
    assert items[-1][0] == "closed"
    assert items[-1][1].reason == "closed"
    restarts = json.loads(items[-1][1].final_metrics.node_metrics["flaky"].custom_metrics)["restarts"]
    assert restarts == 2
