"""Fused runs (``fuse_chains``): consecutive multiprocess nodes in one worker process.

Real worker processes. What must hold: the session looks the same as without fusing — every
node has its own state, counters, signals and failures, outputs come from the run's last node
in order — while the run takes one process, and a failure anywhere in it restarts the run as
one, naming the node that failed.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from nursery_pipes import (
    Frame,
    FrameKind,
    Node,
    NodeCloseTimeout,
    NodeError,
    Params,
    Runtime,
    RuntimeConfig,
    SessionError,
    TensorFrame,
    TextFrame,
)
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.nodes._signals import Signal
from nursery_pipes.runtime import FramesDropped, NodeFailed, NodeRestarted, Output, SignalHandled

pytestmark = pytest.mark.timeout(60)


class StepParams(Params):
    fail_on: str = ""
    """Raise on an input whose text, as the client sent it, is this."""
    flush_output: bool = False
    """Emit ``flush.<id>`` from flush()."""
    slow_on: str = ""
    """Sleep 1 s on an input whose text, as the client sent it, is this."""


class Step(Node[StepParams]):
    """Text in, text out with ``.<its id>`` appended; drops its frame on signal ``drop``."""

    accepts = produces = frozenset({FrameKind.TEXT})

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TextFrame)
        sent = frame.text.split(".")[0]
        if sent == self.params.fail_on:
            raise RuntimeError(f"cannot handle {sent!r}")
        if sent == self.params.slow_on:
            time.sleep(1.0)
        return TextFrame(text=f"{frame.text}.{self.context.node_id}")

    def flush(self) -> Frame | None:
        return TextFrame(text=f"flush.{self.context.node_id}") if self.params.flush_output else None

    def on_signal(self, signal: Signal) -> bool:
        return signal.name == "drop"


class Split(Node):
    """Text in, three texts out (``<text>/1`` … ``/3``), one at a time."""

    accepts = produces = frozenset({FrameKind.TEXT})

    def process(self, frame: Frame) -> Any:
        assert isinstance(frame, TextFrame)
        for part in (1, 2, 3):
            yield TextFrame(text=f"{frame.text}/{part}")


class Tensors(Node):
    """Refuses text: a run's member whose input kind is wrong."""

    accepts = produces = frozenset({FrameKind.TENSOR})

    def process(self, frame: Frame) -> Frame:
        return frame


class Keeper(Node):
    """An ordinary node (not zero_copy) that keeps every input array: its frames are its own."""

    accepts = produces = frozenset({FrameKind.TENSOR})

    def __init__(self, params: Any, context: Any) -> None:
        super().__init__(params, context)
        self.kept: list[np.ndarray] = []

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        self.kept.append(frame.data)
        for i, data in enumerate(self.kept):  # written over if they were views of ring slots
            if data[0] != data[-1] or data.nbytes != 20_000 + i:
                raise AssertionError(f"kept frame {i} changed")
        return frame


class Fill(Node):
    """Tensor in, a tensor of the same size built in ``output_array()`` out (bytes + 1)."""

    accepts = produces = frozenset({FrameKind.TENSOR})

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        out = self.context.output_array(frame.data.shape, np.uint8)
        np.add(frame.data, 1, out=out)
        return TensorFrame(data=out)


def runtime(**mp: Any) -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True),
            multiprocess=MultiprocessDefaults(grace_period_secs=0.3, slot_size=4096, **mp),
        )
    )
    for cls in (Step, Split, Tensors, Fill, Keeper):
        rt.registry.register(cls)
    return rt


def chain(
    nodes: list[tuple[str, str, dict[str, Any]]], *, fuse: bool | None = True, **supervision: Any
) -> dict[str, Any]:
    multiprocess: dict[str, Any] = {"executor_overrides": {n: "multiprocess" for n, _, _ in nodes}}
    if fuse is not None:
        multiprocess["fuse_chains"] = fuse
    metadata: dict[str, Any] = {"name": "fused", "multiprocess": multiprocess}
    if supervision:
        metadata["supervision"] = supervision
    ids = [n for n, _, _ in nodes]
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [{"id": n, "node_type": t, "params": p} for n, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


def steps(**params: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(n, "Step", params.get(n, {})) for n in ("a", "b", "c")]


async def run_texts(m: dict[str, Any], texts: list[str], **mp: Any) -> tuple[list[Any], Any]:
    return await run_frames(m, [TextFrame(text=text) for text in texts], **mp)


async def run_frames(m: dict[str, Any], frames: list[Any], **mp: Any) -> tuple[list[Any], Any]:
    """Send ``frames`` to node a, close; every event of the session, and the session. The
    session's failure, if any, is raised (as itself)."""
    events: list[Any] = []
    failure: list[SessionError] = []
    async with runtime(**mp).open_session(m) as session:

        async def read() -> None:
            try:
                async for event in session.events():
                    events.append(event)
            except SessionError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                for frame in frames:
                    await session.send("a", frame)
                await session.close()
            except SessionError:
                pass  # the same failure ends the events
    if failure:
        raise failure[0]
    return events, session


def texts_out(events: list[Any]) -> list[str]:
    return [e.frame.text for e in events if isinstance(e, Output)]


async def test_a_fused_run_is_one_worker_and_each_node_keeps_its_own_state_and_counters() -> None:
    m = chain([(n, "Step", {"flush_output": True}) for n in ("a", "b", "c")])
    events, session = await run_texts(m, [f"t{i}" for i in range(20)])
    # Each node's flush output goes through the nodes after it, in order, after the frames.
    assert texts_out(events) == [f"t{i}.a.b.c" for i in range(20)] + ["flush.a.b.c", "flush.b.c", "flush.c"]
    assert {e.node_id for e in events if isinstance(e, Output)} == {"c"}
    metrics = session.metrics().nodes
    assert len({metrics[n].pid for n in "abc"}) == 1
    assert metrics["a"].pid
    assert [(metrics[n].frames_in, metrics[n].frames_out) for n in "abc"] == [(20, 21), (21, 22), (22, 23)]
    assert all(metrics[n].state.name == "STOPPED" for n in "abc")
    assert session.plan.process_count == 1
    assert [session.plan.nodes[n].chain for n in "abc"] == [("a", "b", "c")] * 3


async def test_without_fuse_chains_each_node_has_its_own_worker() -> None:
    events, session = await run_texts(chain(steps(), fuse=None), ["x"])
    assert texts_out(events) == ["x.a.b.c"]
    assert len({session.metrics().nodes[n].pid for n in "abc"}) == 3
    assert session.plan.process_count == 3


async def test_a_node_failing_in_a_fused_run_fails_the_session_naming_it() -> None:
    with pytest.raises(SessionError) as caught:
        await run_texts(chain(steps(b={"fail_on": "boom"})), ["ok", "boom", "never"])
    error = caught.value
    assert isinstance(error, NodeError)
    assert (error.node_id, error.phase) == ("b", "process")
    assert "cannot handle 'boom'" in str(error)
    assert error.remote_traceback
    assert "test_fused.py" in error.remote_traceback


@pytest.mark.parametrize(
    ("nodes", "failing", "phase", "message"),
    [
        ([("b", "RaiseNode", {"phase": "initialize"})], "b", "initialize", "RuntimeError: boom"),
        ([("b", "Tensors", {})], "b", "process", "Tensors does not accept text frames (accepts tensor)"),
        ([("c", "RaiseNode", {"phase": "flush"})], "c", "flush", "RuntimeError: boom"),
    ],
    ids=["initialize", "refused-kind", "flush"],
)
async def test_a_fused_node_failing_in_any_phase_is_the_one_named(
    nodes: list[tuple[str, str, dict[str, Any]]], failing: str, phase: str, message: str
) -> None:
    replaced = dict((n[0], n) for n in nodes)
    run = [replaced.get(n, (n, "PassThrough", {})) for n in ("a", "b", "c")]
    with pytest.raises(NodeError) as caught:
        await run_texts(chain(run), ["x"])
    assert (caught.value.node_id, caught.value.phase) == (failing, phase)
    assert message in str(caught.value)


async def test_a_failure_in_a_fused_run_restarts_the_run_and_drops_only_its_frame() -> None:
    m = chain(steps(c={"fail_on": "boom"}), strategy="one_for_one", max_restarts=3)
    events, session = await run_texts(m, ["t0", "t1", "boom", "t3", "t4"])
    assert texts_out(events) == ["t0.a.b.c", "t1.a.b.c", "t3.a.b.c", "t4.a.b.c"]
    [failed] = [e for e in events if isinstance(e, NodeFailed)]
    assert failed.node_id == "a"  # the run's head: what the policy restarts
    assert failed.error.node_id == "c"  # the node that raised
    # the run restarts as one: its head (the policy's), and the members rebuilt with it
    restarted = [(e.node_id, e.restarts, e.cause) for e in events if isinstance(e, NodeRestarted)]
    assert restarted == [("a", 1, "a"), ("b", 1, "a"), ("c", 1, "a")]
    assert [seq for e in events if isinstance(e, FramesDropped) for seq in e.sequences] == [3]
    metrics = session.metrics().nodes
    assert len({metrics[n].pid for n in "abc"}) == 1  # the fresh worker runs the whole run
    assert [metrics[n].restarts for n in "abc"] == [1, 1, 1]


async def test_a_fused_worker_killed_is_repaired_and_the_run_restarted(tmp_path: Path) -> None:
    once = str(tmp_path / "fired")
    nodes = [
        ("a", "Step", {}),
        ("b", "SignalNode", {"phase": "process", "signal": "SIGKILL", "after_frames": 3, "once": once}),
        ("c", "Step", {}),
    ]
    events, _ = await run_texts(
        chain(nodes, strategy="one_for_one", max_restarts=2), [f"t{i}" for i in range(8)]
    )
    assert [e.node_id for e in events if isinstance(e, NodeRestarted)] == ["a", "b", "c"]
    dropped = [seq for e in events if isinstance(e, FramesDropped) for seq in e.sequences]
    assert dropped == [4]
    assert texts_out(events) == [f"t{i}.a.c" for i in range(8) if i != 3]


async def test_signals_reach_the_fused_node_they_name() -> None:
    m = chain(steps(b={"flush_output": True}))
    seen: list[Any] = []
    async with runtime().open_session(m) as session:
        await session.send("a", TextFrame(text="x"))
        with trio.fail_after(10):
            async for event in session.events():
                seen.append(event)
                if isinstance(event, Output) and event.frame.text == "x.a.b.c":
                    session.signal("mark", to=["b"])
                    session.signal("flush", to=["b"])  # b flushes: its output goes through c
                if sum(isinstance(e, SignalHandled) for e in seen) == 2 and len(texts_out(seen)) == 2:
                    break
    assert texts_out(seen) == ["x.a.b.c", "flush.b.c"]
    handled = [e for e in seen if isinstance(e, SignalHandled)]
    assert [(h.node_id, h.name, h.dropped, h.aborted) for h in handled] == [
        ("b", "mark", (), None),
        ("b", "flush", (), None),
    ]


async def test_a_drop_signal_aborts_only_the_frame_its_fused_node_is_at_work_on() -> None:
    """b (after a splitter) is 0.4 s into its 1 s on part 1 of frame 1 when it is told to drop: part 1 is
    given up; parts 2 and 3, which the splitter makes afterwards, go through as usual (nothing
    was queued for b); the splitter's work is not touched."""
    nodes = [("a", "Split", {}), ("b", "Step", {"slow_on": "x/1"}), ("c", "Step", {})]
    async with runtime().open_session(chain(nodes)) as session:
        events: list[Any] = []
        await session.send("a", TextFrame(text="x"))
        await trio.sleep(0.4)
        session.signal("drop", to=["b"])
        await session.close()
        async for event in session.events():
            events.append(event)
    assert texts_out(events) == ["x/2.b.c", "x/3.b.c"]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.dropped, handled.aborted) == ("b", (), 1)
    assert [(e.node_id, e.sequences) for e in events if isinstance(e, FramesDropped)] == [("b", (1,))]


async def test_big_frames_cross_a_fused_run_of_zero_copy_nodes_by_reference() -> None:
    """PassThrough is zero_copy: the run's nodes all read the frame in its ring, and the last
    one passes it on by reference; with an ordinary node in the run, the head copies it out."""
    frames = [
        TensorFrame(data=np.random.default_rng(i).integers(0, 256, 20_000 + i, dtype=np.uint8))
        for i in range(12)
    ]
    for middle, forwarded in (("PassThrough", 12), ("Tensors", 0)):
        nodes = [("a", "PassThrough", {}), ("b", middle, {}), ("c", "PassThrough", {})]
        events, session = await run_frames(chain(nodes), frames, checksums=True)
        got = [e.frame.data for e in events if isinstance(e, Output)]
        assert all(np.array_equal(g, f.data) for g, f in zip(got, frames, strict=True))
        assert session.metrics().nodes["c"].frames_forwarded == forwarded


async def test_only_the_last_node_of_a_fused_run_builds_its_output_in_a_ring() -> None:
    nodes = [("a", "Fill", {}), ("b", "Fill", {}), ("c", "Fill", {})]
    frames = [TensorFrame(data=np.full(10_000, i, dtype=np.uint8)) for i in range(6)]
    async with runtime().open_session(chain(nodes)) as session:
        outputs = session.outputs()
        for frame in frames:
            await session.send("a", frame)
            out = await outputs.__anext__()
            assert np.array_equal(out.frame.data, frame.data + 3)
            del out
        await trio.sleep(0.7)  # the counters arrive every 0.5 s
        metrics = session.metrics().nodes
    assert [metrics[n].frames_in_place for n in "abc"] == [0, 0, 6]


def keep_frames() -> list[TensorFrame]:
    return [TensorFrame(data=np.full(20_000 + i, i, dtype=np.uint8)) for i in range(20)]


async def test_an_ordinary_node_fused_after_a_zero_copy_one_gets_frames_of_its_own() -> None:
    """The run's worker reads its input in place only if every node of the run is zero_copy:
    an ordinary node may keep its inputs, so with one in the run the head copies them out."""
    nodes = [("a", "PassThrough", {}), ("b", "Keeper", {}), ("c", "PassThrough", {})]
    events, _ = await run_frames(chain(nodes), keep_frames(), slot_count=2)
    got = [int(e.frame.data[0]) for e in events if isinstance(e, Output)]
    assert got == list(range(20))


async def test_a_zero_copy_node_of_a_fused_run_keeping_its_input_stops_the_run_naming_them() -> None:
    nodes = [("a", "PassThrough", {}), ("b", "KeepInputNode", {"after_frames": 2}), ("c", "PassThrough", {})]
    with pytest.raises(NodeError) as caught:
        await run_frames(chain(nodes), keep_frames(), slot_count=2)
    assert caught.value.node_id == "a"  # the run (its head): the worker cannot tell which kept it
    assert "PassThrough and the nodes fused after it (KeepInputNode, PassThrough)" in str(caught.value)


@pytest.mark.parametrize(
    ("head", "outputs", "aborted"),
    [("Split", ["x/1.b.c"], 1), ("Step", ["x.a.b.c"], None)],
    ids=["it-had-more-outputs", "it-had-none-left"],
)
async def test_a_drop_signal_to_a_fused_node_waiting_on_the_nodes_after_it(
    head: str, outputs: list[str], aborted: int | None
) -> None:
    """a is told to drop while b works on a's output: a gives up its frame only if it has
    another output to make (the splitter's parts 2 and 3 go nowhere); a node with none left has
    nothing to give up — as if it had been a worker of its own, done with the frame."""
    nodes = [
        ("a", head, {}),
        ("b", "Step", {"slow_on": "x/1" if head == "Split" else "x"}),
        ("c", "Step", {}),
    ]
    async with runtime().open_session(chain(nodes)) as session:
        await session.send("a", TextFrame(text="x"))
        await trio.sleep(0.4)
        session.signal("interrupt" if head == "Split" else "drop", to=["a"])  # each drops for it
        await session.close()
        events = [event async for event in session.events()]
    assert texts_out(events) == outputs
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.dropped, handled.aborted) == ("a", (), aborted)
    dropped = [(e.node_id, e.sequences) for e in events if isinstance(e, FramesDropped)]
    assert dropped == ([("a", (1,))] if aborted else [])


async def test_a_fused_node_that_can_cancel_its_work_stops_its_call_for_a_signal() -> None:
    """b's blocking call (30 s) gives way to an interrupt at once: cancel_work reaches the
    node of the run whose code runs, its call raises, and that is the abort, not a failure."""
    nodes = [("a", "Step", {}), ("b", "BlockingCallNode", {"call_seconds": 30.0}), ("c", "Step", {})]
    async with runtime().open_session(chain(nodes)) as session:
        await session.send("a", TextFrame(text="f1"))
        await trio.sleep(0.5)
        session.signal("interrupt", to=["b"])
        with trio.fail_after(5):
            await session.close()
            events = [event async for event in session.events()]
    [handled] = [e for e in events if isinstance(e, SignalHandled)]
    assert (handled.node_id, handled.aborted) == ("b", 1)
    assert texts_out(events) == []
    assert session.state.name == "TERMINATED"


async def test_nodes_of_a_fused_run_restarted_with_the_others_register_anew(tmp_path: Path) -> None:
    """one_for_all: a node after the run fails, every node restarts — the run's members too,
    whose new instances the head's next worker serves (counters, pid)."""
    nodes = [
        *steps(),
        ("d", "RaiseNode", {"phase": "process", "after_frames": 2, "once": str(tmp_path / "fired")}),
    ]
    m = chain(nodes, strategy="one_for_all", max_restarts=2)
    m["metadata"]["multiprocess"]["executor_overrides"]["d"] = "inprocess"
    events: list[Any] = []
    async with runtime().open_session(m) as session:
        first = session.metrics().nodes["a"].pid
        for i in range(3):
            await session.send("a", TextFrame(text=f"t{i}"))
        with trio.fail_after(10):
            async for event in session.events():
                events.append(event)
                if sum(isinstance(e, NodeRestarted) for e in events) == 4:
                    break
        for i in range(3, 6):  # through the fresh worker
            await session.send("a", TextFrame(text=f"t{i}"))
        await session.close()
        events += [event async for event in session.events()]
    assert sorted(e.node_id for e in events if isinstance(e, NodeRestarted)) == ["a", "b", "c", "d"]
    assert texts_out(events) == ["t0.a.b.c", "t1.a.b.c", "t3.a.b.c", "t4.a.b.c", "t5.a.b.c"]
    metrics = session.metrics().nodes
    assert len({metrics[n].pid for n in "abc"}) == 1
    assert metrics["a"].pid != first
    assert [(metrics[n].frames_in, metrics[n].restarts) for n in "abc"] == [(3, 1)] * 3


async def test_a_fused_run_fanning_big_frames_out_to_ordinary_nodes_shares_them() -> None:
    """The run's last node fans out to two ordinary workers (which copy what they read): every
    ring gets a reference to the frame the run's head read in place (fan-out by reference)."""
    m = {
        "version": "v1",
        "metadata": {
            "name": "fused-fan",
            "multiprocess": {
                "executor_overrides": dict.fromkeys("abcd", "multiprocess"),
                "fuse_chains": True,
            },
        },
        "nodes": [
            {"id": "a", "node_type": "PassThrough"},
            {"id": "b", "node_type": "PassThrough"},
            {"id": "c", "node_type": "Tensors"},
            {"id": "d", "node_type": "Tensors"},
        ],
        "connections": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "b", "to": "d"}],
    }
    frames = keep_frames()
    events, session = await run_frames(m, frames, checksums=True)
    assert session.plan.nodes["b"].chain == ("a", "b")
    got: dict[str, list[np.ndarray]] = {"c": [], "d": []}
    for e in events:
        if isinstance(e, Output):
            got[e.node_id].append(e.frame.data)
    for node in "cd":
        assert all(np.array_equal(g, f.data) for g, f in zip(got[node], frames, strict=True)), node
    metrics = session.metrics().nodes
    # by reference, shared with both rings — or, past the input slots it may keep, forwarded
    # to one and copied to the other (ipc/_ownership.py)
    assert metrics["b"].frames_shared + metrics["b"].frames_forwarded == len(frames)
    assert metrics["b"].frames_shared >= len(frames) // 2
    assert metrics["a"].frames_shared == metrics["a"].frames_forwarded == 0


async def test_a_fused_run_stuck_in_flush_at_close_is_named_whole_and_its_worker_stopped() -> None:
    """c hangs in flush (deaf to stop requests): at the close deadline the session fails naming
    the run's nodes — one worker holds them all up — and the worker is killed after the grace
    period (the leak check of every test sees no process left)."""
    nodes = [("a", "Step", {}), ("b", "Step", {}), ("c", "HangNode", {"phase": "flush"})]
    m = chain(nodes)
    m["metadata"]["multiprocess"]["close_timeout_secs"] = 1
    with trio.fail_after(10), pytest.raises(NodeCloseTimeout) as caught:
        await run_texts(m, ["x"])
    assert caught.value.node_ids == ("a", "b", "c")
