"""The multiprocess executor with real worker processes, real shared memory and real signals.

Every test runs under the leak check (tests/conftest.py): after each one, no
worker process, thread, /dev/shm entry or FIFO directory may be left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from nursery_pipes import (
    AudioFrame,
    ManifestError,
    NodeCloseTimeout,
    NodeCrashed,
    NodeError,
    NodeInitTimeout,
    NodeProgress,
    ResourceLimitError,
    Runtime,
    RuntimeConfig,
    SessionError,
    SessionState,
    TensorFrame,
    TextFrame,
)
from nursery_pipes._config import LimitsConfig, MultiprocessDefaults, NodesConfig
from nursery_pipes.executors import MultiprocessExecutor
from nursery_pipes.runtime import Output, SignalHandled

pytestmark = pytest.mark.timeout(60)

GRACE = 0.3


def runtime(**mp: Any) -> Runtime:
    return Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True),
            multiprocess=MultiprocessDefaults(grace_period_secs=GRACE, **mp),
        )
    )


def manifest(
    nodes: list[tuple[str, str, dict[str, Any], str]], edges: list[tuple[str, str]], **mp: Any
) -> dict[str, Any]:
    """nodes: (id, type, params, executor)."""
    mp["executor_overrides"] = {nid: ex for nid, _, _, ex in nodes}
    return {
        "version": "v1",
        "metadata": {"name": "mp-test", "multiprocess": mp},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p, _ in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


def audio(i: int, n: int = 160) -> AudioFrame:
    return AudioFrame.from_array(np.full(n, i, dtype=np.float32), sample_rate=16000)


async def _process_table() -> str:
    done = await trio.run_process(["ps", "-eo", "pid=,args="], capture_stdout=True)
    return done.stdout.decode()


async def _pids_of_session(session_id: str) -> list[int]:
    return [
        int(line.split()[0])
        for line in (await _process_table()).splitlines()
        if f"session={session_id}" in line
    ]


# -- data flow ---------------------------------------------------------------------------------


async def test_worker_chain_keeps_order_and_runs_in_its_own_titled_process() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("w1", "PassThrough", {}, "multiprocess"),
            ("w2", "AudioGainNode", {"gain_db": 6.0206}, "multiprocess"),
            ("out", "PassThrough", {}, "inprocess"),
        ],
        [("src", "w1"), ("w1", "w2"), ("w2", "out")],
    )
    rt = runtime()
    async with rt.open_session(m) as session:
        titles = await _process_table()
        assert f"session={session.id} node=w1 (PassThrough)" in titles
        assert f"session={session.id} node=w2 (AudioGainNode)" in titles
        pids = {session.metrics().nodes[n].pid for n in ("w1", "w2")}
        assert len(pids) == 2
        assert os.getpid() not in pids

        async def feed() -> None:
            for i in range(200):
                await session.send("src", audio(i))
            await session.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            outs = [o async for o in session.outputs()]
    values = [float(o.frame.samples[0, 0]) for o in outs]
    assert values == pytest.approx([2.0 * i for i in range(200)], rel=1e-4)
    assert [o.seq for o in outs] == list(range(1, 201))
    metrics = session.metrics()
    assert metrics.nodes["w2"].frames_in == metrics.nodes["w2"].frames_out == 200


def _voluntary_switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


async def test_an_idle_worker_sleeps_until_a_frame_or_a_signal_comes() -> None:
    # A worker waits on its inputs' doorbells with no timeout (the supervisor rings them after
    # a signal): idle, it never wakes (it polled every 20 ms, 15% of a core for 50 idle
    # workers). The counters of its last frames still arrive; a signal still wakes it, and so
    # does a frame on either input of a fan-in worker.
    m = manifest(
        [
            ("w1", "PassThrough", {}, "multiprocess"),
            ("w2", "PassThrough", {}, "multiprocess"),
            ("join", "PassThrough", {}, "multiprocess"),
        ],
        [("w1", "join"), ("w2", "join")],
    )
    async with runtime().open_session(m) as session:
        outputs = session.outputs()
        for i in range(3):
            await session.send("w1", audio(i))
            await outputs.__anext__()
        with trio.fail_after(5):  # the counters of the frames processed last reach us
            while min(session.metrics().nodes[n].frames_in for n in ("w1", "join")) < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
        pids = [session.metrics().nodes[n].pid for n in ("w1", "w2", "join")]
        await trio.sleep(0.1)
        before = [_voluntary_switches(pid) for pid in pids if pid is not None]
        await trio.sleep(0.5)
        after = [_voluntary_switches(pid) for pid in pids if pid is not None]
        assert len(before) == 3
        assert [b - a for a, b in zip(before, after, strict=True)] == [0, 0, 0]  # asleep
        session.signal("mark", to=["w1", "join"])
        await session.send("w2", audio(9))  # join wakes on its other input too
        with trio.fail_after(5):
            handled: set[str] = set()
            async for event in session.events():
                if isinstance(event, SignalHandled):
                    handled.add(event.node_id)
                if isinstance(event, Output):
                    assert float(event.frame.samples[0, 0]) == 9.0
                    handled.add("output")
                if handled == {"w1", "join", "output"}:
                    break
        session.cancel()


async def test_fan_out_and_fan_in_between_workers() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "multiprocess"),
            ("a", "TextTransformNode", {"suffix": "a"}, "multiprocess"),
            ("b", "TextTransformNode", {"suffix": "b"}, "multiprocess"),
            ("join", "PassThrough", {}, "multiprocess"),
        ],
        [("src", "a"), ("src", "b"), ("a", "join"), ("b", "join")],
    )
    result = await runtime().run_pipeline(m, {"src": [TextFrame(text=str(i)) for i in range(100)]})
    texts = [f.text for f in result.outputs["join"]]
    assert [t for t in texts if t.endswith("a")] == [f"{i}a" for i in range(100)]
    assert [t for t in texts if t.endswith("b")] == [f"{i}b" for i in range(100)]


async def test_a_worker_join_flushes_only_after_every_input_ended() -> None:
    """src → (fast ×2, slow) → join in a worker. The join only emits at flush (one chunk of
    everything it got), so a frame of the slow branch is missing if it flushed on the fast EOS."""
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("fast", "AudioGainNode", {"gain_db": 6.0206}, "inprocess"),
            ("slow", "SleepNode", {"process_seconds": 0.05}, "inprocess"),
            ("join", "AudioChunkerNode", {"chunk_size": 1_000_000}, "multiprocess"),
        ],
        [("src", "fast"), ("src", "slow"), ("fast", "join"), ("slow", "join")],
    )
    odd = [1, 3, 5, 7, 9]  # the slow branch keeps them odd, the fast one doubles them
    with trio.fail_after(10):  # a join that stopped reading early may leave the slow branch blocked
        result = await runtime().run_pipeline(m, {"src": [audio(v) for v in odd]})
    (flushed,) = result.outputs["join"]
    runs = [round(v) for v in flushed.samples[::160, 0]]  # one value per 160-sample input frame
    assert [v for v in runs if v % 2] == odd
    assert [v for v in runs if not v % 2] == [2 * v for v in odd]


async def test_worker_to_worker_edges_are_direct() -> None:
    m = manifest(
        [("w1", "PassThrough", {}, "multiprocess"), ("w2", "PassThrough", {}, "multiprocess")], [("w1", "w2")]
    )
    plan = runtime().plan(m)
    internal = [e for e in plan.edges if e.src == "w1" and e.dst == "w2"]
    assert [e.transport for e in internal] == ["shm"]
    from nursery_pipes.executors import RingGeometry, ShmTransport
    from nursery_pipes.runtime._events import EventQueue
    from nursery_pipes.runtime._wiring import wire

    transport = ShmTransport(RingGeometry(4, 4096))
    try:
        wiring = wire(plan, EventQueue(10), 10, transport)
        shared = set(map(id, wiring.ports["w1"].outputs)) & set(map(id, wiring.ports["w2"].inputs))
        assert len(shared) == 1  # the same ring spec: w1 writes what w2 reads
        assert len(wiring.pumps) == 1  # only the sink's edge to the client passes through the supervisor
    finally:
        transport.close()


async def test_a_ring_the_worker_side_aborted_is_a_broken_port() -> None:
    """An OutPort whose other end is gone raises trio.BrokenResourceError, whatever the
    transport: a memory channel does, and so must a shared-memory ring."""
    from nursery_pipes.executors import RingGeometry, ShmTransport

    transport = ShmTransport(RingGeometry(2, 4096))
    try:
        ring = transport.edge(producer_in_supervisor=True)
        port = transport.port(ring)
        await port.send(1, TextFrame(text="taken"))
        transport.abort_all()  # what a worker being stopped sees
        with pytest.raises(trio.BrokenResourceError):
            await port.send(2, TextFrame(text="refused"))
        with pytest.raises(trio.BrokenResourceError):
            await port.end()
    finally:
        transport.close()


@pytest.mark.parametrize("executor", ["inprocess", "multiprocess"])
async def test_mixed_pipeline_checksums_match_end_to_end(executor: str) -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("mid", "PassThrough", {}, "multiprocess"),
            ("tail", "PassThrough", {}, executor),
        ],
        [("src", "mid"), ("mid", "tail")],
    )
    rng = np.random.default_rng(7)
    frames = [TensorFrame(data=rng.standard_normal((64, 33)).astype(np.float32)) for _ in range(50)]
    frames += [
        TensorFrame(data=rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8))
    ]  # 3 MiB: beyond a slot
    result = await runtime(checksums=True, slot_size=65536).run_pipeline(m, {"src": frames})
    got = [zlib.crc32(f.to_bytes()) for f in result.outputs["tail"]]
    assert got == [zlib.crc32(f.to_bytes()) for f in frames]


async def test_frames_larger_than_a_slot_pass_through() -> None:
    m = manifest([("w", "PassThrough", {}, "multiprocess")], [])
    big = [
        AudioFrame.from_array(np.arange(2_621_440, dtype=np.float32) + i, sample_rate=48000) for i in range(4)
    ]
    result = await runtime(slot_size=4096).run_pipeline(m, {"w": big})
    assert [f.samples[5, 0] for f in result.outputs["w"]] == [5.0, 6.0, 7.0, 8.0]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(result.outputs["w"], big, strict=True))


async def test_slow_consumer_applies_backpressure_without_loss() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "multiprocess"),
            ("slow", "SleepNode", {"process_seconds": 0.002}, "multiprocess"),
        ],
        [("src", "slow")],
        channel_capacity=4,
    )
    result = await runtime().run_pipeline(m, {"src": [TextFrame(text=str(i)) for i in range(300)]})
    assert [f.text for f in result.outputs["slow"]] == [str(i) for i in range(300)]


@pytest.mark.parametrize(
    ("channel_capacity", "slot_count", "bound"),
    [(1, 8, 1), (3, 8, 3), (100, 4, 4)],
    ids=["capacity-1", "capacity-bounds", "slots-bound"],
)
async def test_a_ring_holds_at_most_min_of_channel_capacity_and_slot_count(
    channel_capacity: int, slot_count: int, bound: int
) -> None:
    """The client → worker edge is a real ring; its worker hangs in process() on the first frame
    and keeps that frame's slot, so every send that completes is a frame the ring holds."""
    m = manifest(
        [("w", "HangNode", {"phase": "process"}, "multiprocess")], [], channel_capacity=channel_capacity
    )
    accepted = 0
    async with runtime(slot_count=slot_count).open_session(m) as session:

        async def feed() -> None:
            nonlocal accepted
            while True:
                await session.send("w", TextFrame(text=str(accepted)))
                accepted += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            await trio.testing.wait_all_tasks_blocked()  # the feeder waits for a free slot
            nursery.cancel_scope.cancel()
        session.cancel()
    assert accepted == bound


@pytest.mark.parametrize("executor", ["multiprocess", "inprocess", "thread"])
async def test_close_delivers_a_send_blocked_on_a_full_edge(executor: str) -> None:
    """close() while a send waits for room (a full ring, or a full in-memory edge): the end of
    stream must queue behind that frame, not race it for the slot or cut it off."""
    m = manifest([("w", "SleepNode", {"process_seconds": 0.1}, executor)], [], channel_capacity=2)
    # A ring's slots include the frame the worker is processing; an in-memory edge holds two
    # frames besides the one the node has taken.
    room = 2 if executor == "multiprocess" else 3
    async with runtime().open_session(m) as session:
        for i in range(room):
            await session.send("w", TextFrame(text=str(i)))
            await trio.testing.wait_all_tasks_blocked()
        delivered = trio.Event()

        async def send_blocked() -> None:
            await session.send("w", TextFrame(text=str(room)))
            delivered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_blocked)
            await trio.testing.wait_all_tasks_blocked()
            assert not delivered.is_set(), "the third send should wait for a slot"
            await session.close()
            outputs = [o.frame.text async for o in session.outputs()]
    assert outputs == [str(i) for i in range(room + 1)]
    assert session.state is SessionState.TERMINATED


async def test_concurrent_sends_to_a_worker_source_all_arrive() -> None:
    """Several tasks feeding one worker source while its ring is full: each send waits its
    turn (first come, first served); none fails because another is already waiting."""
    m = manifest([("w", "SleepNode", {"process_seconds": 0.02}, "multiprocess")], [], channel_capacity=1)
    outputs: list[str] = []

    async def read_outputs(session: Any) -> None:
        outputs.extend([o.frame.text async for o in session.outputs()])

    async with runtime().open_session(m) as session, trio.open_nursery() as reader:
        reader.start_soon(read_outputs, session)
        async with trio.open_nursery() as senders:
            for i in range(6):
                senders.start_soon(session.send, "w", TextFrame(text=str(i)))
        await session.close()
    assert sorted(outputs) == [str(i) for i in range(6)]


async def test_one_slot_rings_carry_a_worker_chain_in_order() -> None:
    """channel_capacity 1: every ring of the chain has one slot (lockstep), big frames included."""
    m = manifest(
        [("w1", "PassThrough", {}, "multiprocess"), ("w2", "PassThrough", {}, "multiprocess")],
        [("w1", "w2")],
        channel_capacity=1,
    )
    frames = [audio(i, n=100_000 if i % 10 == 0 else 160) for i in range(40)]  # 400 KB: external
    result = await runtime(slot_size=4096).run_pipeline(m, {"w1": frames})
    assert [float(f.samples[0, 0]) for f in result.outputs["w2"]] == [float(i) for i in range(40)]


async def test_progress_from_a_worker_reaches_the_event_stream() -> None:
    m = manifest([("p", "ProgressNode", {"steps": 4}, "multiprocess")], [])
    result = await runtime().run_pipeline(m, {"p": TextFrame(text="x")})
    loading = [e.progress for e in result.progress if e.state == "loading"]
    assert loading == [0.25, 0.5, 0.75, 1.0]
    assert result.progress[0].state == "starting"
    assert result.progress[-1].state == "ready"


# -- failures ----------------------------------------------------------------------------------


async def test_exception_in_initialize_names_node_phase_and_traceback() -> None:
    m = manifest(
        [
            ("ok", "PassThrough", {}, "multiprocess"),
            ("bad", "RaiseNode", {"phase": "initialize", "message": "weights missing"}, "multiprocess"),
        ],
        [("ok", "bad")],
    )
    with pytest.raises(NodeError) as info:
        async with runtime().open_session(m):
            pass
    assert info.value.node_id == "bad"
    assert info.value.phase == "initialize"
    assert "RuntimeError: weights missing" in str(info.value)
    assert 'File "' in (info.value.remote_traceback or "")


@pytest.mark.parametrize(
    ("node", "exit_fields"),
    [
        (("ExitNode", {"phase": "initialize", "code": 3}), {"exitcode": 3, "signal": None}),
        (("SignalNode", {"phase": "initialize"}), {"exitcode": None, "signal": signal.SIGKILL}),
    ],
    ids=["os-exit", "sigkill"],
)
async def test_a_worker_that_dies_while_initialising_is_reported_in_phase_initialize(
    node: tuple[str, dict[str, Any]], exit_fields: dict[str, Any]
) -> None:
    """No failure event comes from a process that dies: the phase is the supervisor's own verdict."""
    node_type, params = node
    m = manifest(
        [("ok", "PassThrough", {}, "multiprocess"), ("dies", node_type, params, "multiprocess")],
        [("ok", "dies")],
    )
    with pytest.raises(NodeCrashed) as info:
        async with runtime().open_session(m):
            pytest.fail("the session must not start")
    assert info.value.node_id == "dies"
    assert info.value.phase == "initialize"
    assert {"exitcode": info.value.exitcode, "signal": info.value.signal} == exit_fields
    assert "failed in initialize: worker process" in str(info.value)


async def test_exception_in_process_fails_the_session() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("bad", "RaiseNode", {"phase": "process", "after_frames": 3}, "multiprocess"),
        ],
        [("src", "bad")],
    )
    with pytest.raises(NodeError, match=r"node 'bad' failed in process: RuntimeError: boom"):
        await runtime().run_pipeline(m, {"src": [TextFrame(text=str(i)) for i in range(10)]})


@pytest.mark.parametrize(
    "frame",
    [
        AudioFrame.from_array(np.arange(160, dtype=np.float32), sample_rate=16000),
        TensorFrame(data=np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
    ],
    ids=["audio", "tensor"],
)
async def test_a_zero_copy_node_that_keeps_its_input_is_stopped_before_the_memory_is_reused(
    frame: Any,
) -> None:
    """A zero_copy node reads its input in a shared-memory slot; keeping a view of it past
    process() would let the next frames overwrite what it holds. The worker refuses to return
    that slot and fails the node with an error that names it; what it sent is delivered."""
    m = manifest([("keep", "KeepInputNode", {"after_frames": 2}, "multiprocess")], [])
    delivered: list[int] = []

    async def run() -> None:
        async with runtime().open_session(m) as session:
            for _ in range(5):
                await session.send("keep", frame)
            await session.close()
            async for out in session.outputs():
                delivered.append(out.seq)

    with pytest.raises(NodeError) as info:
        await run()
    assert info.value.node_id == "keep"
    assert info.value.phase == "process"
    assert "KeepInputNode declares zero_copy = True but kept its input frame" in str(info.value)
    assert delivered == [1, 2, 3]  # the third went out; then the worker saw what was kept


async def test_a_sender_blocked_on_a_full_ring_gets_the_error() -> None:
    m = manifest(
        [("boom", "RaiseNode", {"phase": "process", "after_frames": 2}, "multiprocess")],
        [],
        channel_capacity=2,
    )
    with pytest.raises(NodeError, match="'boom' failed in process"):
        await runtime().run_pipeline(m, {"boom": [TextFrame(text=str(i)) for i in range(100)]})


async def test_os_exit_is_reported_with_its_code() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("quit", "ExitNode", {"phase": "process", "code": 3, "after_frames": 1}, "multiprocess"),
        ],
        [("src", "quit")],
    )
    with pytest.raises(NodeCrashed) as info:
        await runtime().run_pipeline(m, {"src": [TextFrame(text=str(i)) for i in range(5)]})
    assert info.value.node_id == "quit"
    assert info.value.exitcode == 3
    assert "exited with code 3" in str(info.value)


async def test_segfault_is_reported_with_its_signal() -> None:
    m = manifest([("seg", "SignalNode", {"phase": "process", "signal": "SIGSEGV"}, "multiprocess")], [])
    with pytest.raises(NodeCrashed) as info:
        await runtime().run_pipeline(m, {"seg": TextFrame(text="x")})
    assert info.value.signal == signal.SIGSEGV
    assert "SIGSEGV" in str(info.value)


async def test_sigkill_of_a_worker_mid_stream() -> None:
    m = manifest(
        [("src", "PassThrough", {}, "inprocess"), ("w", "PassThrough", {}, "multiprocess")], [("src", "w")]
    )

    async def kill_mid_stream() -> None:
        async with runtime().open_session(m) as session:
            for i in range(5):
                await session.send("src", TextFrame(text=str(i)))
            pid = session.metrics().nodes["w"].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            async for _ in session.outputs():
                pass

    with pytest.raises(NodeCrashed) as info:
        await kill_mid_stream()
    assert info.value.node_id == "w"
    assert info.value.signal == signal.SIGKILL
    assert "SIGKILL" in str(info.value)


async def test_hang_in_initialize_times_out_and_is_killed() -> None:
    m = manifest([("hang", "HangNode", {"phase": "initialize"}, "multiprocess")], [], init_timeout_secs=1)
    start = time.monotonic()
    with pytest.raises(NodeInitTimeout) as info:
        async with runtime().open_session(m):
            pass
    elapsed = time.monotonic() - start
    assert info.value.node_id == "hang"
    assert 1.0 <= elapsed < 1.0 + GRACE + 2.0  # timeout, grace, kill — not the 30 s default


async def test_init_timeout_is_reported_at_the_deadline_then_the_worker_is_killed() -> None:
    """The error reaches the user when init_timeout_secs runs out; the worker, deaf to the stop
    request, is killed after the grace period — still inside the session's nursery."""
    timeout, grace = 0.5, 2.0
    rt = runtime()
    plan = rt.plan(manifest([("hang", "HangNode", {"phase": "initialize"}, "multiprocess")], []))
    # Below the 1 s the manifest allows, so that the test stays short.
    settings = dataclasses.replace(plan.settings, init_timeout_secs=timeout, grace_period_secs=grace)
    plan = dataclasses.replace(plan, settings=settings)
    # Start the forkserver first, so that the worker is surely inside initialize() at the deadline.
    async with rt.open_session(manifest([("w", "PassThrough", {}, "multiprocess")], [])):
        pass
    progress: list[str] = []
    seen: list[tuple[BaseException, float, SessionState]] = []
    session_ids: list[str] = []
    start = time.monotonic()

    async def scenario() -> None:
        async with rt.open_session(plan, wait_ready=False) as session:
            session_ids.append(session.id)
            try:
                async for event in session.events():
                    if isinstance(event, NodeProgress):
                        progress.append(event.state)
            except NodeInitTimeout as exc:
                seen.append((exc, time.monotonic() - start, session.state))

    with pytest.raises(NodeInitTimeout) as info:
        await scenario()
    ended_at = time.monotonic() - start
    [(error, seen_at, state)] = seen
    assert error is info.value
    assert info.value.node_id == "hang"
    assert progress == ["starting", "failed"]  # the worker was up, stuck in initialize()
    assert timeout <= seen_at < timeout + 0.5
    assert state is SessionState.ERROR  # reported while the worker was still being stopped
    assert ended_at >= timeout + grace * 0.9
    assert await _pids_of_session(session_ids[0]) == []


async def test_a_blocking_initialize_in_a_worker_that_overruns_times_out() -> None:
    """initialize() blocks the worker for 1.5 s; the 0.3 s timeout fires meanwhile. Settings are
    built directly: manifests cannot ask for less than 1 s."""
    m = manifest([("slow", "SleepNode", {"init_seconds": 1.5}, "multiprocess")], [])
    rt = runtime()
    plan = rt.plan(m)
    plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, init_timeout_secs=0.3))
    start = time.monotonic()
    with pytest.raises(NodeInitTimeout) as info:
        async with rt.open_session(plan):
            pytest.fail("the session must not start")
    elapsed = time.monotonic() - start
    assert info.value.node_id == "slow"
    assert info.value.timeout == 0.3
    assert 0.3 <= elapsed < 1.5  # the timeout, then ask → grace → kill; not the end of initialize


async def test_hang_in_process_ignoring_stop_is_killed_after_grace() -> None:
    m = manifest(
        [("src", "PassThrough", {}, "inprocess"), ("hang", "HangNode", {"phase": "process"}, "multiprocess")],
        [("src", "hang")],
    )
    rt = runtime()
    async with rt.open_session(m) as session:
        pid = session.metrics().nodes["hang"].pid  # known once the session is ready
        assert pid is not None
        await session.send("src", TextFrame(text="x"))
        await trio.sleep(0.1)  # it is inside process() now, ignoring SIGTERM and ring aborts
        start = time.monotonic()
        session.cancel()
        await session.wait()
        stopped_in = time.monotonic() - start
    assert GRACE * 0.9 <= stopped_in < GRACE + 1.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_close_timeout_stops_a_worker_stuck_in_flush() -> None:
    """The worker ignores the stop request (HangNode is deaf to ring aborts and SIGTERM): the
    error comes at the close deadline, the kill after the grace period."""
    m = manifest(
        [("src", "PassThrough", {}, "inprocess"), ("hang", "HangNode", {"phase": "flush"}, "multiprocess")],
        [("src", "hang")],
        close_timeout_secs=1,
    )
    seen: list[tuple[BaseException, float, SessionState]] = []
    session_ids: list[str] = []

    async def scenario() -> None:
        async with runtime().open_session(m) as session:
            session_ids.append(session.id)
            await session.send("src", TextFrame(text="x"))
            start = time.monotonic()
            await session.close()
            try:
                async for _ in session.events():
                    pass
            except NodeCloseTimeout as exc:
                seen.append((exc, time.monotonic() - start, session.state))

    start = time.monotonic()
    with pytest.raises(NodeCloseTimeout) as info:
        await scenario()
    [(error, seen_at, state)] = seen
    assert error is info.value
    assert (error.node_id, error.phase) == ("hang", "flush")
    assert 1.0 <= seen_at < 1.0 + 0.5
    assert state is SessionState.ERROR
    assert time.monotonic() - start < 1.0 + GRACE + 2.0
    assert await _pids_of_session(session_ids[0]) == []


async def test_close_timeout_blames_the_stuck_worker_not_the_node_blocked_on_its_ring() -> None:
    m = manifest(
        [("src", "PassThrough", {}, "inprocess"), ("hang", "HangNode", {"phase": "process"}, "multiprocess")],
        [("src", "hang")],
        close_timeout_secs=1,
        channel_capacity=2,
    )

    async def feed(session: Any) -> None:
        with contextlib.suppress(SessionError):  # woken with the session's error
            for i in range(20):
                await session.send("src", TextFrame(text=str(i)))

    async def scenario() -> None:
        async with runtime().open_session(m) as session, trio.open_nursery() as nursery:
            nursery.start_soon(feed, session)
            await trio.sleep(0.2)  # src fills the worker's ring and blocks; the client fills src's inbox
            await session.close()
            with contextlib.suppress(NodeCloseTimeout):  # raised again by open_session
                async for _ in session.events():
                    pass

    with pytest.raises(NodeCloseTimeout) as info:
        await scenario()
    assert (info.value.node_ids, info.value.waiting) == (("hang",), ("src",))


async def test_cancel_from_outside_mid_frame_stops_every_worker() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}, "inprocess"),
            ("slow", "SleepNode", {"process_seconds": 5}, "multiprocess"),
            ("w", "PassThrough", {}, "multiprocess"),
        ],
        [("src", "slow"), ("slow", "w")],
    )
    rt = runtime()
    with trio.move_on_after(0.5):
        async with rt.open_session(m) as session:
            await session.send("src", TextFrame(text="x"))
            await trio.sleep_forever()
    assert session.state is SessionState.TERMINATED
    assert await _pids_of_session(session.id) == []


async def test_cooperative_workers_stop_at_once_on_cancel() -> None:
    m = manifest(
        [("a", "PassThrough", {}, "multiprocess"), ("b", "PassThrough", {}, "multiprocess")], [("a", "b")]
    )
    async with runtime().open_session(m) as session:
        start = time.monotonic()
        session.cancel()
        await session.wait()
        assert time.monotonic() - start < GRACE  # asked and gone, no need to wait for the grace period


# -- planning and limits -------------------------------------------------------------------------


async def test_limits_are_checked_before_spawning() -> None:
    m = manifest(
        [(f"w{i}", "PassThrough", {}, "multiprocess") for i in range(3)],
        [("w0", "w1"), ("w1", "w2")],
        max_processes_per_session=2,
    )
    with pytest.raises(
        ResourceLimitError, match="needs 3 worker processes but this session may use at most 2"
    ):
        await runtime().run_pipeline(m, {"w0": TextFrame(text="x")})
    rt = Runtime(RuntimeConfig(nodes=NodesConfig(testing=True), limits=LimitsConfig(max_processes=2)))
    m2 = manifest(
        [(f"w{i}", "PassThrough", {}, "multiprocess") for i in range(3)], [("w0", "w1"), ("w1", "w2")]
    )
    with pytest.raises(ResourceLimitError, match="allows at most 2"):
        await rt.run_pipeline(m2, {"w0": TextFrame(text="x")})


def test_node_classes_that_cannot_run_in_a_worker_are_rejected() -> None:
    from nursery_pipes import Node

    class Local(Node):
        async def process(self, frame: Any) -> Any:
            return frame

    rt = runtime()
    rt.registry.register(Local)
    m = manifest([("x", "Local", {}, "multiprocess")], [])
    with pytest.raises(ManifestError, match="Local is not importable by a worker process"):
        rt.plan(m)


def test_python_executable_must_be_this_interpreter() -> None:
    m = manifest([("x", "PassThrough", {}, "multiprocess")], [], python_executable="/usr/bin/python2")
    with pytest.raises(ManifestError, match="python_executable"):
        runtime().plan(m)
    ok = manifest([("x", "PassThrough", {}, "multiprocess")], [], python_executable="python3")
    runtime().plan(ok)


# -- the warm pool -------------------------------------------------------------------------------


def shared_pool(rt: Runtime) -> Any:
    executor = rt.executors["multiprocess"]
    assert isinstance(executor, MultiprocessExecutor)
    assert executor.shared_pool is not None  # the runtime is entered
    return executor.shared_pool


async def test_warm_pool_workers_serve_one_session_each() -> None:
    rt = runtime(warm_pool=2)
    m = manifest([("w", "PassThrough", {}, "multiprocess")], [])
    async with rt:
        pool = shared_pool(rt)
        await pool.wait_warm()
        assert pool.idle_workers() == 2
        first = await rt.run_pipeline(m, {"w": TextFrame(text="x")})
        second = await rt.run_pipeline(m, {"w": TextFrame(text="y")})
    pids = {first.metrics.nodes["w"].pid, second.metrics.nodes["w"].pid}
    assert len(pids) == 2  # a worker that ran a node is never handed to another session


async def test_warm_pool_refills_after_sessions_take_workers() -> None:
    rt = runtime(warm_pool=2)
    two = manifest(
        [("a", "PassThrough", {}, "multiprocess"), ("b", "PassThrough", {}, "multiprocess")], [("a", "b")]
    )
    one = manifest([("w", "PassThrough", {}, "multiprocess")], [])
    async with rt:
        pool = shared_pool(rt)
        used: list[int | None] = []
        for doc in (one, two, one, two):
            await pool.wait_warm()
            result = await rt.run_pipeline(doc, {"a" if doc is two else "w": TextFrame(text="x")})
            used += [m.pid for m in result.metrics.nodes.values()]
        assert set(used) <= pool.warmed_pids  # every node got a pre-started worker
        assert len(set(used)) == len(used) == 6  # and none served twice


async def test_a_worker_dying_while_it_warms_up_costs_warmth_not_the_runtime(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Warm-up workers that die (here: they exit at once, as an OOM-killed one would vanish)
    are logged and retried; the runtime and its sessions carry on, and the pool fills once
    workers live again."""
    from nursery_pipes.executors import _pool

    healthy = _pool.warm_up
    monkeypatch.setattr(_pool, "warm_up", functools.partial(os._exit, 3))  # runs in the worker
    rt = runtime(warm_pool=1)
    m = manifest([("w", "PassThrough", {}, "multiprocess")], [])
    async with rt:
        pool = shared_pool(rt)
        with trio.fail_after(20):
            while pool.warm_failures < 2:  # noqa: ASYNC110  # retried after the first death
                await trio.sleep(0.01)
        cold = await rt.run_pipeline(m, {"w": TextFrame(text="cold")})  # sessions still run
        monkeypatch.setattr(_pool, "warm_up", healthy)
        with trio.fail_after(20):
            await pool.wait_warm()
        warm = await rt.run_pipeline(m, {"w": TextFrame(text="warm")})
    assert [frame.text for frame in cold.outputs["w"]] == ["cold"]
    assert warm.metrics.nodes["w"].pid in pool.warmed_pids
    assert "warm pool: worker pid " in caplog.text
    assert "exited with code 3 while warming up" in caplog.text


# -- the supervisor itself dies ----------------------------------------------------------------------

SUPERVISOR = textwrap.dedent(
    """
    import multiprocessing.process, os, sys, trio
    # where multiprocessing puts its forkserver's socket (its private default: a pymp-* dir in
    # /tmp, removed at exit — which a SIGKILLed process never reaches)
    multiprocessing.process.current_process()._config["tempdir"] = os.environ["NP_TEST_FORKSERVER_DIR"]
    from nursery_pipes import Runtime, RuntimeConfig, TextFrame
    from nursery_pipes._config import NodesConfig

    MANIFEST = {
        "version": "v1", "metadata": {"name": "orphan", "multiprocess": {"executor_overrides": {
            "a": "multiprocess", "b": "multiprocess"}}},
        "nodes": [{"id": "a", "node_type": "PassThrough"}, {"id": "b", "node_type": "PassThrough"}],
        "connections": [{"from": "a", "to": "b"}],
    }

    async def main():
        async with Runtime(RuntimeConfig(nodes=NodesConfig(testing=True))).open_session(MANIFEST) as s:
            await s.send("a", TextFrame(text="x"))
            print("PIDS", s.metrics().nodes["a"].pid, s.metrics().nodes["b"].pid, flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


def test_sigkill_of_the_supervisor_takes_its_workers_and_the_next_start_sweeps(tmp_path: Path) -> None:
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR)
    # The killed supervisor cannot remove the directory multiprocessing made for its forkserver;
    # it gets one of its own in tmp_path (its FIFO directories stay in /tmp, for the sweep).
    env = {**os.environ, "NP_TEST_FORKSERVER_DIR": str(tmp_path)}
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            _check_orphans_die(proc)
        finally:
            proc.kill()  # on any failure above: never leave (or wait for) a live supervisor
    from nursery_pipes.ipc import sweep_stale

    removed = sweep_stale()
    assert any(f"np.{proc.pid}." in entry for entry in removed)
    assert not [e for e in os.listdir("/dev/shm") if f"np.{proc.pid}." in e]


def _check_orphans_die(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line
    workers = [int(p) for p in line.split()[1:]]
    owned = [e for e in os.listdir("/dev/shm") if f"np.{proc.pid}." in e]
    assert owned  # the session's rings exist
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in workers), "workers outlived their supervisor by > 1 s"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone: it is only waiting for its (dead) parent's reaper.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


MAIN_SCRIPT = textwrap.dedent(
    """
    import os
    print("MAIN-IMPORTED", os.getpid(), flush=True)  # runs again in any child that re-imports us

    if __name__ == "__main__":
        import sys
        import trio
        from nursery_pipes import Runtime, RuntimeConfig, TextFrame
        from nursery_pipes._config import MultiprocessDefaults

        MANIFEST = {
            "version": "v1",
            "metadata": {"name": "main", "multiprocess": {"executor_overrides": {"a": "multiprocess"}}},
            "nodes": [{"id": "a", "node_type": "PassThrough"}],
            "connections": [],
        }
        config = RuntimeConfig(multiprocess=MultiprocessDefaults(worker_type=sys.argv[1]))

        async def main():
            async with Runtime(config) as runtime:
                result = await runtime.run_pipeline(MANIFEST, {"a": TextFrame(text="x")})
                print("PID", result.metrics.nodes["a"].pid, flush=True)

        trio.run(main)
    """
)


@pytest.mark.parametrize("worker_type", ["forkserver", "spawn"])
def test_workers_never_import_the_parents_main(tmp_path: Path, worker_type: str) -> None:
    """multiprocessing makes forkserver/spawn children re-import the parent's __main__; our
    workers skip it (executors/_pool.py patches multiprocessing.spawn and recognises workers
    by trio-parallel's process name: this test is what notices if either changes)."""
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), worker_type], capture_output=True, text=True, timeout=45, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    worker = next(int(line.split()[1]) for line in lines if line.startswith("PID"))
    imported = [int(line.split()[1]) for line in lines if line.startswith("MAIN-IMPORTED")]
    assert worker not in imported
    assert len(imported) == 1, f"__main__ was imported by {len(imported)} processes: {lines}"
