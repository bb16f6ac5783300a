"""Sessions end to end with in-process nodes: data flow, lifecycle, failures, cancellation."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from nursery_pipes import (
    AudioFrame,
    InputError,
    JsonFrame,
    Node,
    NodeCloseTimeout,
    NodeError,
    NodeInitTimeout,
    NodeProgress,
    Output,
    Params,
    Runtime,
    RuntimeConfig,
    SessionClosedError,
    SessionError,
    SessionState,
    StateChanged,
    TextFrame,
)
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.runtime import NodeState

CLEANED: list[str] = []


class TagParams(Params):
    tag: str = ""


class Tag(Node[TagParams]):
    """Appends its tag to text; records its cleanup."""

    def process(self, frame: Any) -> TextFrame:
        return TextFrame(text=frame.text + self.params.tag)

    def cleanup(self) -> None:
        CLEANED.append(self.context.node_id)


class Merge(Node):
    """Emits everything it receives; on flush, a marker listing how many frames it saw."""

    def initialize(self, progress: Any) -> None:
        self.seen = 0

    def process(self, frame: Any) -> Any:
        self.seen += 1
        return frame

    def flush(self) -> TextFrame:
        return TextFrame(text=f"flush:{self.context.node_id}:{self.seen}")


class AsyncGen(Node):
    """An async-generator node: two outputs per input, with a checkpoint in between."""

    async def process(self, frame: Any) -> Any:
        yield frame
        await trio.lowlevel.checkpoint()
        yield TextFrame(text=frame.text + "'")


class Stuck(Node):
    """Hangs in initialize; its async cleanup overruns too (the grace period cuts it off)."""

    async def initialize(self, progress: Any) -> None:
        await trio.sleep_forever()

    def process(self, frame: Any) -> Any:
        return frame

    async def cleanup(self) -> None:
        await trio.sleep_forever()


class StuckCleanup(Node):
    """Passes frames through; its async cleanup overruns (the grace period cuts it off)."""

    def process(self, frame: Any) -> Any:
        return frame

    async def cleanup(self) -> None:
        await trio.sleep_forever()


CLEANUP_STEPS: list[str] = []


class SlowCleanup(Node):
    """Passes frames through; its async cleanup takes a second, recording where it got to."""

    def process(self, frame: Any) -> Any:
        return frame

    async def cleanup(self) -> None:
        CLEANUP_STEPS.append("began")
        await trio.sleep(1)
        CLEANUP_STEPS.append("finished")


class BlockingInitParams(Params):
    seconds: float = 0.0


class BlockingInit(Node[BlockingInitParams]):
    """A synchronous initialize that blocks its thread, as model loading does."""

    def initialize(self, progress: Any) -> None:
        time.sleep(self.params.seconds)

    def process(self, frame: Any) -> Any:
        return frame


def _runtime(**multiprocess: Any) -> Runtime:
    runtime = Runtime(
        RuntimeConfig(nodes=NodesConfig(testing=True), multiprocess=MultiprocessDefaults(**multiprocess))
    )
    for cls in (Tag, Merge, AsyncGen, Stuck, StuckCleanup, SlowCleanup, BlockingInit):
        runtime.registry.register(cls)
    return runtime


def manifest(
    nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]], **mp: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "v1",
        "metadata": {"name": "test"},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }
    # These tests are about in-process sessions: keep every node in the supervisor.
    mp.setdefault("executor_overrides", {i: "inprocess" for i, _, _ in nodes})
    doc["metadata"]["multiprocess"] = mp
    return doc


def texts(frames: list[Any]) -> list[str]:
    return [f.text for f in frames]


async def failure_of(session: Any) -> tuple[BaseException, float, SessionState]:
    """Read the session's events until they raise: the error, when (trio time), and the state."""
    try:
        async for _ in session.events():
            pass
    except Exception as exc:
        return exc, trio.current_time(), session.state
    raise AssertionError("the session did not fail")


def audio(value: float, n: int = 160) -> AudioFrame:
    return AudioFrame.from_array(np.full(n, value, dtype=np.float32), sample_rate=16000)


async def test_chain_delivers_in_order_with_sequences() -> None:
    m = manifest([("a", "Tag", {"tag": "a"}), ("b", "Tag", {"tag": "b"})], [("a", "b")])
    result = await _runtime().run_pipeline(m, {"a": [TextFrame(text=str(i)) for i in range(50)]})
    assert texts(result.outputs["b"]) == [f"{i}ab" for i in range(50)]
    assert result.sequences["b"] == list(range(1, 51))
    assert result.metrics.nodes["a"].frames_in == 50
    assert result.metrics.frames_in == result.metrics.frames_out == 50


async def test_fan_out_and_fan_in_keep_per_edge_order() -> None:
    m = manifest(
        [
            ("src", "PassThrough", {}),
            ("x", "Tag", {"tag": "x"}),
            ("y", "Tag", {"tag": "y"}),
            ("join", "Merge", {}),
        ],
        [("src", "x"), ("src", "y"), ("x", "join"), ("y", "join")],
    )
    result = await _runtime().run_pipeline(m, {"src": [TextFrame(text=str(i)) for i in range(20)]})
    out = texts(result.outputs["join"])
    assert [t for t in out if t.endswith("x")] == [f"{i}x" for i in range(20)]
    assert [t for t in out if t.endswith("y")] == [f"{i}y" for i in range(20)]
    assert out[-1] == "flush:join:40"  # flushed once, after both inputs ended


async def test_a_join_flushes_only_after_every_input_ended(autojump_clock: trio.testing.MockClock) -> None:
    """src → (fast ×2, slow) → join. The join only emits at flush (one chunk of everything it
    got), so a frame of the slow branch is missing if it flushed on the fast branch's EOS."""
    m = manifest(
        [
            ("src", "PassThrough", {}),
            ("fast", "AudioGainNode", {"gain_db": 6.0206}),
            ("slow", "SleepNode", {"process_seconds": 1}),
            ("join", "AudioChunkerNode", {"chunk_size": 1_000_000}),
        ],
        [("src", "fast"), ("src", "slow"), ("fast", "join"), ("slow", "join")],
    )
    odd = [1, 3, 5, 7, 9]  # the slow branch keeps them odd, the fast one doubles them
    with trio.fail_after(60):  # a join that stopped reading early may leave the slow branch blocked
        result = await _runtime().run_pipeline(m, {"src": [audio(v) for v in odd]})
    (flushed,) = result.outputs["join"]
    runs = [round(v) for v in flushed.samples[::160, 0]]  # one value per 160-sample input frame
    assert [v for v in runs if v % 2] == odd
    assert [v for v in runs if not v % 2] == [2 * v for v in odd]


async def test_close_flushes_in_topological_order() -> None:
    m = manifest(
        [("c1", "AudioChunkerNode", {"chunk_size": 3}), ("c2", "AudioChunkerNode", {"chunk_size": 2})],
        [("c1", "c2")],
    )
    audio = AudioFrame.from_array(np.arange(11, dtype=np.float32), sample_rate=8000)
    result = await _runtime().run_pipeline(m, {"c1": audio})
    sizes = [f.num_samples for f in result.outputs["c2"]]
    joined = np.concatenate([f.samples[:, 0] for f in result.outputs["c2"]])
    assert joined.tolist() == list(range(11))  # c1's remainder reached c2 before c2 flushed
    assert sum(sizes) == 11


async def test_close_flushes_and_cancel_drops() -> None:
    """The chunker holds every sample until flush: close() must flush it out, cancel() must not."""
    m = manifest([("c", "AudioChunkerNode", {"chunk_size": 1000})], [])
    runtime = _runtime()
    outputs: dict[str, list[Any]] = {}
    for ending in ("close", "cancel"):
        async with runtime.open_session(m) as session:
            for value in (1, 2, 3):
                await session.send("c", audio(value))
            await trio.testing.wait_all_tasks_blocked()
            assert session.metrics().nodes["c"].frames_in == 3  # held by the node, nothing out yet
            if ending == "close":
                await session.close()
            else:
                session.cancel()
            outputs[ending] = [o.frame async for o in session.outputs()]
    assert [f.samples[::160, 0].tolist() for f in outputs["close"]] == [[1.0, 2.0, 3.0]]  # one chunk
    assert outputs["cancel"] == []


async def test_async_generator_nodes_stream() -> None:
    m = manifest([("g", "AsyncGen", {})], [])
    result = await _runtime().run_pipeline(m, {"g": [TextFrame(text="a"), TextFrame(text="b")]})
    assert texts(result.outputs["g"]) == ["a", "a'", "b", "b'"]
    assert result.sequences["g"] == [1, 1, 2, 2]


async def test_event_stream_shows_progress_then_states() -> None:
    m = manifest([("p", "ProgressNode", {"steps": 3})], [])
    events: list[Any] = []
    async with _runtime().open_session(m, wait_ready=False) as session:
        await session.send("p", TextFrame(text="x"))
        await session.close()
        events = [e async for e in session.events()]
    progress = [e for e in events if isinstance(e, NodeProgress)]
    assert progress[0].state == "starting"
    assert [round(e.progress, 3) for e in progress if e.state == "loading"] == [0.333, 0.667, 1.0]
    assert progress[-1].state == "ready"
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states == [
        SessionState.READY,
        SessionState.EXECUTING,
        SessionState.TERMINATING,
        SessionState.TERMINATED,
    ]
    ready_at = events.index(StateChanged(SessionState.READY, "all nodes ready"))
    assert all(events.index(p) < ready_at for p in progress)
    assert [e.frame.text for e in events if isinstance(e, Output)] == ["x"]


async def test_process_error_fails_session_naming_node_and_cleans_up() -> None:
    CLEANED.clear()
    m = manifest(
        [
            ("a", "Tag", {"tag": "a"}),
            ("boom", "RaiseNode", {"phase": "process", "after_frames": 2}),
            ("z", "Tag", {}),
        ],
        [("a", "boom"), ("boom", "z")],
    )
    runtime = _runtime()
    with pytest.raises(NodeError) as info:
        await runtime.run_pipeline(m, {"a": [TextFrame(text=str(i)) for i in range(10)]})
    assert info.value.node_id == "boom"
    assert info.value.phase == "process"
    assert "RuntimeError: boom" in str(info.value)
    assert "RuntimeError" in (info.value.remote_traceback or "")
    assert sorted(CLEANED) == ["a", "z"]
    assert runtime.sessions == {}


async def test_a_sender_blocked_by_backpressure_gets_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The feeder waits on a full inbox when a node fails; it must wake up with the session's
    error, not wait forever for a node that is gone."""
    m = manifest(
        [("a", "Tag", {}), ("boom", "RaiseNode", {"phase": "process", "after_frames": 2})],
        [("a", "boom")],
        channel_capacity=2,
    )
    with pytest.raises(NodeError, match="'boom' failed in process"):
        await _runtime().run_pipeline(m, {"a": [TextFrame(text=str(i)) for i in range(100)]})


async def test_cancel_wakes_a_sender_blocked_by_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest([("hang", "HangNode", {"phase": "process"})], [], channel_capacity=1)
    refused: list[BaseException] = []

    async def feed(session: Any) -> None:
        try:
            for i in range(10):
                await session.send("hang", TextFrame(text=str(i)))
        except SessionClosedError as exc:
            refused.append(exc)

    async with _runtime().open_session(m) as session, trio.open_nursery() as nursery:
        nursery.start_soon(feed, session)
        await trio.sleep(1)  # hang holds frame 0, its inbox holds frame 1: the feeder waits
        session.cancel()
    assert len(refused) == 1
    assert session.metrics().frames_in == 2


async def test_init_error_raises_from_open_session() -> None:
    m = manifest(
        [("ok", "Tag", {}), ("bad", "RaiseNode", {"phase": "initialize", "message": "no model"})],
        [("ok", "bad")],
    )
    with pytest.raises(NodeError, match=r"node 'bad' failed in initialize: RuntimeError: no model"):
        async with _runtime().open_session(m):
            pytest.fail("the session must not start")


async def test_init_error_shows_failed_progress_when_not_waiting() -> None:
    m = manifest([("bad", "RaiseNode", {"phase": "initialize"})], [])
    seen: list[Any] = []

    async def watch() -> None:
        async with _runtime().open_session(m, wait_ready=False) as session:
            async for event in session.events():
                seen.append(event)

    with pytest.raises(NodeError):
        await watch()
    failed = [e for e in seen if isinstance(e, NodeProgress) and e.state == "failed"]
    assert failed
    assert failed[0].node_id == "bad"
    assert StateChanged(SessionState.ERROR, "failure") in seen


async def test_init_timeout_names_the_node(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(
        [("fast", "Tag", {}), ("slow", "HangNode", {"phase": "initialize"})],
        [("fast", "slow")],
        init_timeout_secs=7,
    )
    start = trio.current_time()
    with pytest.raises(NodeInitTimeout) as info:
        async with _runtime().open_session(m):
            pass
    assert info.value.node_id == "slow"
    assert "7 s" in str(info.value)
    assert trio.current_time() - start == pytest.approx(7, abs=0.01)


async def test_init_timeout_is_reported_at_the_deadline_and_cleanup_comes_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The session's outcome is known at the deadline: events() raises then, while the nodes'
    cleanups (bounded by the grace period) still run inside the session's nursery."""
    m = manifest(
        [("other", "StuckCleanup", {}), ("stuck", "Stuck", {})], [("other", "stuck")], init_timeout_secs=7
    )
    seen: list[tuple[BaseException, float, SessionState]] = []

    async def scenario() -> None:
        async with _runtime(grace_period_secs=5).open_session(m, wait_ready=False) as session:
            seen.append(await failure_of(session))

    with pytest.raises(NodeInitTimeout) as outer:
        await scenario()
    [(error, at, state)] = seen
    assert isinstance(error, NodeInitTimeout)
    assert error.node_id == "stuck"
    assert at == pytest.approx(7)
    assert state is SessionState.ERROR  # not TERMINATED: cleanup is still going on
    assert outer.value is error
    assert trio.current_time() == pytest.approx(7 + 5)  # both cleanups got their grace period, together


async def test_a_blocking_sync_initialize_that_overruns_times_out() -> None:
    """A sync initialize runs on the trio thread: no deadline can interrupt it, so the timeout
    is judged when it returns. Settings are built directly: manifests cannot go below 1 s."""
    runtime = _runtime()
    plan = runtime.plan(
        manifest([("a", "Tag", {}), ("slow", "BlockingInit", {"seconds": 0.2})], [("a", "slow")])
    )
    plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, init_timeout_secs=0.05))
    with pytest.raises(NodeInitTimeout) as info:
        async with runtime.open_session(plan):
            pytest.fail("the session must not start")
    assert info.value.node_id == "slow"
    assert info.value.timeout == 0.05


async def test_cancel_stops_a_hung_node_promptly(autojump_clock: trio.testing.MockClock) -> None:
    CLEANED.clear()
    m = manifest([("a", "Tag", {}), ("hang", "HangNode", {"phase": "process"})], [("a", "hang")])
    async with _runtime().open_session(m) as session:
        await session.send("a", TextFrame(text="x"))
        await trio.sleep(1)
        session.cancel()
        assert [e async for e in session.outputs()] == []
        assert session.state is SessionState.TERMINATED
    assert CLEANED == ["a"]


async def test_outside_cancellation_ends_everything(autojump_clock: trio.testing.MockClock) -> None:
    CLEANED.clear()
    m = manifest([("a", "Tag", {}), ("hang", "HangNode", {"phase": "process"})], [("a", "hang")])
    runtime = _runtime()
    with trio.move_on_after(5) as scope:
        async with runtime.open_session(m) as session:
            await session.send("a", TextFrame(text="x"))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert session.state is SessionState.TERMINATED
    assert CLEANED == ["a"]
    assert runtime.sessions == {}


@pytest.mark.parametrize("how", ["cancel", "outside"])
async def test_async_cleanup_runs_to_the_end_when_the_session_is_cancelled(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The cleanup awaits (1 s) while the session is being cancelled: it must not be cut short
    at that first await (the grace period, 2 s by default, leaves it time)."""
    CLEANUP_STEPS.clear()
    m = manifest([("a", "Tag", {}), ("c", "SlowCleanup", {})], [("a", "c")])
    began = trio.current_time()
    with trio.move_on_after(5) as outside:
        async with _runtime().open_session(m) as session:
            await session.send("a", TextFrame(text="x"))
            if how == "cancel":
                session.cancel()
            else:
                await trio.sleep_forever()  # until the deadline cancels the block
    assert outside.cancelled_caught == (how == "outside")
    assert session.state is SessionState.TERMINATED
    assert CLEANUP_STEPS == ["began", "finished"]
    cancelled_at = began if how == "cancel" else outside.deadline
    assert trio.current_time() - cancelled_at == pytest.approx(1)  # the session waited for it


async def test_backpressure_blocks_sender_and_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest([("a", "Tag", {}), ("b", "Tag", {})], [("a", "b")], channel_capacity=2)
    sent = 0
    async with _runtime().open_session(m) as session:
        with trio.move_on_after(1):
            while True:
                await session.send("a", TextFrame(text=str(sent)))
                sent += 1
        # Bounded: two inboxes + the output queue (capacity 2 each) + one frame in each node's hands.
        assert 0 < sent <= 8
        got = []

        async def feed_rest() -> None:
            for i in range(sent, sent + 20):
                await session.send("a", TextFrame(text=str(i)))
            await session.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed_rest)
            got = [o.frame.text async for o in session.outputs()]
    assert got == [str(i) for i in range(sent + 20)]


async def test_bad_inputs_are_named() -> None:
    m = manifest([("a", "Tag", {}), ("b", "Tag", {})], [("a", "b")])
    async with _runtime().open_session(m) as session:
        with pytest.raises(InputError, match=r"unknown node 'nope'.*inputs are: a"):
            await session.send("nope", TextFrame(text="x"))
        with pytest.raises(InputError, match=r"node 'b' is not an input.*fed by a"):
            await session.send("b", TextFrame(text="x"))
        with pytest.raises(InputError, match=r"accepts .* not json"):
            await _send_json_to_an_audio_only_node()
        await session.close()
        with pytest.raises(SessionClosedError):
            await session.send("a", TextFrame(text="late"))


async def _send_json_to_an_audio_only_node() -> None:
    # Tag accepts anything; use a node that only takes audio to check the kind check.
    m = manifest([("g", "AudioGainNode", {})], [])
    async with _runtime().open_session(m) as other:
        await other.send("g", JsonFrame(value={}))


async def test_run_pipeline_rejects_input_for_unknown_node_before_starting() -> None:
    m = manifest([("a", "Tag", {})], [])
    runtime = _runtime()
    with pytest.raises(InputError, match="unknown node 'b'"):
        await runtime.run_pipeline(m, {"b": TextFrame(text="x")})
    assert runtime.sessions == {}


async def test_leaving_without_close_cancels_and_after_close_drains() -> None:
    CLEANED.clear()
    m = manifest([("a", "Merge", {}), ("b", "Tag", {})], [("a", "b")])
    runtime = _runtime()
    async with runtime.open_session(m) as session:
        await session.send("a", TextFrame(text="x"))
    assert session.state is SessionState.TERMINATED
    assert session.metrics().nodes["a"].frames_out <= 1  # cancelled: Merge never flushed
    assert CLEANED == ["b"]
    async with runtime.open_session(m) as session:
        for i in range(5):
            await session.send("a", TextFrame(text=str(i)))
        await session.close()
    metrics = session.metrics()
    assert metrics.nodes["b"].frames_out == 6  # drained through flush, though nobody read the outputs
    assert metrics.outputs_discarded == 6


async def test_session_limit_is_a_resource_error() -> None:
    from nursery_pipes import ResourceLimitError
    from nursery_pipes._config import LimitsConfig

    runtime = Runtime(RuntimeConfig(limits=LimitsConfig(max_sessions=1)))
    m = manifest([("a", "PassThrough", {})], [])
    async with runtime.open_session(m):
        with pytest.raises(ResourceLimitError, match="at most 1"):
            async with runtime.open_session(m):
                pass


# -- close() and cancel() before the session is ready --------------------------------------------


async def test_close_before_ready_initialises_every_node_then_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that sends nothing and half-closes at once (grpcurl: StreamInit, then EOF):
    close() while nodes initialise is remembered and takes effect once every node is ready."""
    m = manifest([("slow", "SleepNode", {"init_seconds": 3}), ("m", "Merge", {})], [("slow", "m")])
    async with _runtime().open_session(m, wait_ready=False) as session:
        await session.close()
        assert session.state is SessionState.INITIALIZING
        await session.close()  # idempotent, as after READY
        with pytest.raises(SessionClosedError):
            await session.send("slow", TextFrame(text="after close"))
        events = [e async for e in session.events()]
    assert trio.current_time() == pytest.approx(3)
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states == [
        SessionState.READY,
        SessionState.TERMINATING,
        SessionState.TERMINATED,
    ]
    assert [e.frame.text for e in events if isinstance(e, Output)] == ["flush:m:0"]
    assert session.error is None
    assert (await session.wait()).frames_in == 0


@pytest.mark.parametrize("close_first", [False, True])
async def test_cancel_before_ready_stops_initialising_nodes(
    autojump_clock: trio.testing.MockClock, close_first: bool
) -> None:
    CLEANED.clear()
    m = manifest([("t", "Tag", {}), ("slow", "SleepNode", {"init_seconds": 3})], [("t", "slow")])
    async with _runtime().open_session(m, wait_ready=False) as session:
        await trio.sleep(1)
        if close_first:
            await session.close()
        session.cancel()
        await session.close()  # too late to close: a no-op, not an error
        events = [e async for e in session.events()]
    assert trio.current_time() == pytest.approx(1)
    assert [e.state for e in events if isinstance(e, StateChanged)] == [
        SessionState.TERMINATING,
        SessionState.TERMINATED,
    ]
    assert session.error is None
    assert CLEANED == ["t"]


async def test_cancel_just_as_the_last_node_reports_ready() -> None:
    """The last node's "ready" progress reaches the user while its started() is still on its
    way to the supervisor; a cancel() right then must not make READY illegal."""
    m = manifest([("a", "PassThrough", {})], [])
    runtime = _runtime()
    for _ in range(30):  # trio randomises the order of runnable tasks: try both orders
        async with runtime.open_session(m, wait_ready=False) as session:
            async for event in session.events():
                if isinstance(event, NodeProgress) and event.state == "ready":
                    break
        assert session.state is SessionState.TERMINATED
        assert session.error is None


# -- close timeout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hang",
    [{"phase": "flush"}, {"phase": "process", "after_frames": 1}],
    ids=["in flush", "in queued frames"],
)
async def test_close_timeout_names_the_node_that_does_not_finish(
    autojump_clock: trio.testing.MockClock, hang: dict[str, Any]
) -> None:
    CLEANED.clear()
    m = manifest(
        [("a", "Tag", {}), ("hang", "HangNode", hang), ("z", "Tag", {})],
        [("a", "hang"), ("hang", "z")],
        close_timeout_secs=5,
    )
    seen: list[tuple[BaseException, float, SessionState]] = []

    async def scenario() -> None:
        async with _runtime(grace_period_secs=1).open_session(m) as session:
            for i in range(3):
                await session.send("a", TextFrame(text=str(i)))
            await trio.sleep(2)
            await session.close()
            seen.append(await failure_of(session))

    with pytest.raises(NodeCloseTimeout) as info:
        await scenario()
    [(error, at, state)] = seen
    assert error is info.value
    assert at == pytest.approx(2 + 5)  # close_timeout_secs after close()
    assert state is SessionState.ERROR
    assert (error.node_id, error.phase, error.node_ids, error.waiting) == ("hang", "flush", ("hang",), ("z",))
    assert "not finished 5 s after close (close_timeout_secs)" in str(error)
    assert "'z'" in str(error)
    assert sorted(CLEANED) == ["a", "z"]  # everything stopped and cleaned up


async def test_close_timeout_comes_from_runtime_toml_unless_the_manifest_sets_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def close_and_wait(m: dict[str, Any]) -> None:
        async with _runtime(close_timeout_secs=3).open_session(m) as session:
            await session.close()
            await session.wait()

    for manifest_setting, expected in (({}, 3), ({"close_timeout_secs": 4}, 4)):
        m = manifest([("hang", "HangNode", {"phase": "flush"})], [], **manifest_setting)
        start = trio.current_time()
        with pytest.raises(NodeCloseTimeout, match=f"not finished {expected} s after close"):
            await close_and_wait(m)
        assert trio.current_time() - start == pytest.approx(expected)


async def test_close_timeout_blames_no_node_for_a_client_that_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Outputs waiting unread hold the pipeline up (backpressure); that is the client's doing, so
    the close clock starts again once it reads."""
    m = manifest([("a", "Tag", {}), ("b", "Tag", {})], [("a", "b")], channel_capacity=1, close_timeout_secs=5)
    async with _runtime().open_session(m) as session:
        for i in range(3):
            await session.send("a", TextFrame(text=str(i)))
        await session.close()
        await trio.sleep(60)  # nobody reads
        got = [o.frame.text async for o in session.outputs()]
    assert got == ["0", "1", "2"]
    assert session.error is None


async def test_close_timeout_blames_the_stuck_node_not_the_one_blocked_behind_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With backpressure, 'a' is still running too — blocked sending to 'hang', whose inbox is
    full. The edges tell them apart: 'a' waits for its output, 'hang' has work queued."""
    m = manifest(
        [("a", "Tag", {}), ("hang", "HangNode", {"phase": "process"}), ("z", "Tag", {})],
        [("a", "hang"), ("hang", "z")],
        channel_capacity=2,
        close_timeout_secs=5,
    )

    async def feed(session: Any) -> None:
        with contextlib.suppress(SessionError):  # woken with the session's error
            for i in range(20):
                await session.send("a", TextFrame(text=str(i)))

    seen: list[tuple[BaseException, float, SessionState]] = []

    async def scenario() -> None:
        async with _runtime().open_session(m) as session, trio.open_nursery() as nursery:
            nursery.start_soon(feed, session)
            await trio.sleep(1)
            await session.close()
            seen.append(await failure_of(session))

    with pytest.raises(NodeCloseTimeout) as info:
        await scenario()
    [(error, at, _)] = seen
    assert error is info.value
    assert at == pytest.approx(1 + 5)
    assert (error.node_ids, error.waiting) == (("hang",), ("a", "z"))


# -- what a session shows of itself -------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["inprocess", "thread", "multiprocess"])
async def test_each_nodes_lifecycle_state_is_in_its_metrics(executor: str) -> None:
    """The node state machine is what metrics report: READY while waiting, STOPPED when done,
    ERROR for the node that failed — whatever the executor."""
    rt = _runtime()
    m = manifest(
        [("a", "PassThrough", {}), ("b", "RaiseNode", {"phase": "process", "after_frames": 1})],
        [("a", "b")],
        executor_overrides={"a": executor, "b": executor},
    )
    seen: list[Any] = []

    async def run() -> None:
        async with rt.open_session(m) as session:
            seen.append(session)
            assert {n.state for n in session.metrics().nodes.values()} == {NodeState.READY}
            await session.send("a", TextFrame(text="1"))
            await session.send("a", TextFrame(text="2"))
            async for _ in session.outputs():
                pass

    with pytest.raises(NodeError) as info:
        await run()
    assert info.value.node_id == "b"
    states = {nid: n.state for nid, n in seen[0].metrics().nodes.items()}
    assert states["b"] is NodeState.ERROR
    assert states["a"] in (NodeState.READY, NodeState.STOPPING, NodeState.STOPPED)  # cancelled, not failed


async def test_statistics_show_what_waits_for_the_client() -> None:
    rt = _runtime()
    async with rt.open_session(manifest([("a", "PassThrough", {})], [], channel_capacity=4)) as session:
        before = session.statistics()
        for i in range(3):
            await session.send("a", TextFrame(text=str(i)))
        await trio.testing.wait_all_tasks_blocked()
        after = session.statistics()
        await session.close()
    assert (before.queued_outputs, before.output_capacity, before.sends_in_flight) == (0, 4, 0)
    assert after.queued_outputs == 3  # unread outputs, counting against the capacity
    assert after.queued_events >= 3
    assert session.statistics().outputs_discarded == 3  # left unread after close
