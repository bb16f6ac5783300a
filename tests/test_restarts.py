"""Restarting nodes inside a live session: what each strategy restarts, what happens to the
frames, what the session tells its user (docs/design.md §4, "Restarting nodes").

In-process and thread nodes here; worker processes (crashes, signals, ring repair) are in
tests/test_restarts_multiprocess.py.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
import trio

from nursery_pipes import (
    Frame,
    FrameKind,
    Node,
    NodeError,
    Params,
    Runtime,
    RuntimeConfig,
    SessionError,
    TextFrame,
)
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.runtime import FramesDropped, NodeFailed, NodeProgress, NodeRestarted

pytestmark = pytest.mark.timeout(30)

INSTANCES: list[str] = []


class FlakyParams(Params):
    fail_on: str = "boom"


class Flaky(Node[FlakyParams]):
    """Passes text through; fails on a frame whose text is ``fail_on``."""

    accepts = produces = frozenset({FrameKind.TEXT})

    def initialize(self, progress: Any) -> None:
        INSTANCES.append(self.context.node_id)

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TextFrame)
        if frame.text.split(".")[0] == self.params.fail_on:  # the text as the client sent it
            raise RuntimeError(f"cannot handle {self.params.fail_on!r}")
        return TextFrame(text=f"{frame.text}.{self.context.node_id}")


def runtime() -> Runtime:
    rt = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.2)))
    rt.registry.register(Flaky)
    return rt


def manifest(
    nodes: list[tuple[str, dict[str, Any]]],
    edges: list[tuple[str, str]],
    *,
    executor: str = "inprocess",
    supervision: dict[str, Any] | None = None,
    restart: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "restarts",
        "multiprocess": {"executor_overrides": {n: executor for n, _ in nodes}},
    }
    if supervision is not None:
        metadata["supervision"] = supervision
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [
            {
                "id": n,
                "node_type": "Flaky",
                "params": p,
                **({"restart": restart[n]} if restart and n in restart else {}),
            }
            for n, p in nodes
        ],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }


async def run(rt: Runtime, doc: dict[str, Any], texts: list[str]) -> tuple[list[Any], list[Any]]:
    """Feed ``texts``, close, and return (outputs as (seq, text), events). A session that
    fails raises its error from here, unwrapped (as open_session does)."""
    outputs: list[tuple[int, str]] = []
    events: list[Any] = []
    async with rt.open_session(doc) as session, trio.open_nursery() as nursery:

        async def read() -> None:
            with contextlib.suppress(SessionError):  # open_session raises it, unwrapped
                async for event in session.events():
                    if isinstance(event, (NodeFailed, NodeRestarted, FramesDropped, NodeProgress)):
                        events.append(event)
                    elif hasattr(event, "frame"):
                        outputs.append((event.seq, event.frame.text))

        nursery.start_soon(read)
        with contextlib.suppress(SessionError):
            for text in texts:
                await session.send(session.plan.sources[0], TextFrame(text=text))
            await session.close()
    return outputs, events


def supervision_events(events: list[Any]) -> list[Any]:
    return [e for e in events if not isinstance(e, NodeProgress)]


@pytest.mark.parametrize("executor", ["inprocess", "thread"])
async def test_one_for_one_replaces_the_failed_node_and_drops_only_its_frame(executor: str) -> None:
    INSTANCES.clear()
    rt = runtime()
    doc = manifest(
        [("src", {"fail_on": "-"}), ("f", {}), ("sink", {"fail_on": "-"})],
        [("src", "f"), ("f", "sink")],
        executor=executor,
        supervision={"strategy": "one_for_one", "max_restarts": 3},
    )
    outputs, events = await run(rt, doc, ["a", "boom", "b", "c"])
    assert outputs == [(1, "a.src.f.sink"), (3, "b.src.f.sink"), (4, "c.src.f.sink")]
    failed, dropped, restarted = supervision_events(events)
    assert isinstance(failed, NodeFailed)
    assert (failed.node_id, failed.action, failed.restarting) == ("f", "restart", ("f",))
    assert "cannot handle 'boom'" in str(failed.error)
    assert dropped == FramesDropped("f", (2,), "the frame f was processing is lost: it failed")
    assert restarted == NodeRestarted("f", 1, "f")
    assert INSTANCES.count("f") == 2  # a fresh instance, initialised again...
    assert [p.state for p in events if isinstance(p, NodeProgress) and p.node_id == "f"][-2:] == [
        "starting",
        "ready",
    ]
    assert rt.sessions == {}


async def test_rest_for_one_restarts_what_is_downstream_of_the_failed_node() -> None:
    """src → (a, b) → join: a fails; a and join are restarted, b (a parallel branch) is not."""
    INSTANCES.clear()
    doc = manifest(
        [("src", {"fail_on": "-"}), ("a", {}), ("b", {"fail_on": "-"}), ("join", {"fail_on": "-"})],
        [("src", "a"), ("src", "b"), ("a", "join"), ("b", "join")],
        supervision={"strategy": "rest_for_one", "max_restarts": 3},
    )
    outputs, events = await run(runtime(), doc, ["x", "boom", "y"])
    restarted = [e.node_id for e in events if isinstance(e, NodeRestarted)]
    assert sorted(restarted) == ["a", "join"]
    assert all(e.cause == "a" for e in events if isinstance(e, NodeRestarted))
    assert sorted(INSTANCES) == ["a", "a", "b", "join", "join", "src"]
    texts = [t for _, t in outputs]
    dropped = {(e.node_id, s) for e in events if isinstance(e, FramesDropped) for s in e.sequences}
    # b saw everything (not restarted); a lost "boom" (sequence 2); join passed on all it was
    # given, except a frame it had in hand when the strategy restarted it — dropped, reported
    assert ("a", 2) in dropped
    assert {node for node, _ in dropped} <= {"a", "join"}
    expected = ["x.src.a.join", "x.src.b.join", "boom.src.b.join", "y.src.a.join", "y.src.b.join"]
    sequence = {"x": 1, "boom": 2, "y": 3}
    assert len(texts) == len(set(texts))
    assert set(texts) <= set(expected)
    for text in expected:
        assert text in texts or ("join", sequence[text.split(".")[0]]) in dropped, (text, dropped)


async def test_one_for_all_restarts_every_node() -> None:
    INSTANCES.clear()
    doc = manifest(
        [("src", {"fail_on": "-"}), ("f", {}), ("sink", {"fail_on": "-"})],
        [("src", "f"), ("f", "sink")],
        supervision={"strategy": "one_for_all", "max_restarts": 3},
    )
    outputs, events = await run(runtime(), doc, ["a", "boom", "b"])
    assert sorted(e.node_id for e in events if isinstance(e, NodeRestarted)) == ["f", "sink", "src"]
    assert [t for _, t in outputs] == ["a.src.f.sink", "b.src.f.sink"]


async def test_more_restarts_than_the_policy_allows_fails_the_session_with_the_count() -> None:
    doc = manifest(
        [("src", {"fail_on": "-"}), ("f", {})],
        [("src", "f")],
        supervision={"strategy": "one_for_one", "max_restarts": 2, "within_secs": 60},
    )
    with pytest.raises(NodeError) as info:
        await run(runtime(), doc, ["boom", "ok", "boom", "boom", "never"])
    error = info.value
    assert (error.node_id, error.phase, error.restarts) == ("f", "process", 2)
    assert str(error).startswith("node 'f' failed in process: RuntimeError: cannot handle 'boom'")
    assert str(error).endswith("the supervision policy gave up after 2 restarts within 60 s (max_restarts=2)")


async def test_a_temporary_node_that_fails_ends_its_outputs_and_the_session_goes_on() -> None:
    doc = manifest(
        [("src", {"fail_on": "-"}), ("f", {}), ("g", {"fail_on": "-"}), ("join", {"fail_on": "-"})],
        [("src", "f"), ("src", "g"), ("f", "join"), ("g", "join")],
        restart={"f": "temporary"},
    )  # no policy: the server's default, fail-fast — which a temporary node never triggers
    outputs, events = await run(runtime(), doc, ["a", "boom", "b", "c"])
    texts = [t for _, t in outputs]
    assert sorted(texts) == sorted(
        ["a.src.f.join", "a.src.g.join", "boom.src.g.join", "b.src.g.join", "c.src.g.join"]
    )
    kinds = supervision_events(events)
    assert isinstance(kinds[0], NodeFailed)
    assert kinds[0].action == "stop"
    dropped = [s for e in kinds if isinstance(e, FramesDropped) for s in e.sequences]
    assert dropped == [2, 3, 4]  # the frame in process, then what was still sent to f
    assert not [e for e in kinds if isinstance(e, NodeRestarted)]


async def test_without_a_policy_a_failure_still_fails_the_session_at_once() -> None:
    doc = manifest([("src", {"fail_on": "-"}), ("f", {})], [("src", "f")])
    with pytest.raises(NodeError, match="cannot handle 'boom'") as info:
        await run(runtime(), doc, ["a", "boom", "b"])
    assert info.value.restarts == 0
    assert " — " not in str(info.value)


async def test_restarts_show_in_metrics_and_the_pipeline_result() -> None:
    doc = manifest(
        [("src", {"fail_on": "-"}), ("f", {})],
        [("src", "f")],
        supervision={"strategy": "one_for_one", "max_restarts": 5},
    )
    result = await runtime().run_pipeline(
        doc, {"src": [TextFrame(text=t) for t in ["boom", "a", "boom", "b"]]}
    )
    assert [f.text for f in result.outputs["f"] if isinstance(f, TextFrame)] == ["a.src.f", "b.src.f"]
    assert result.metrics.nodes["f"].restarts == 2
    assert [type(e).__name__ for e in result.supervision] == list(
        itertools.chain.from_iterable(["NodeFailed", "FramesDropped", "NodeRestarted"] for _ in range(2))
    )


async def test_one_sessions_crashes_and_restarts_never_touch_another() -> None:
    """Session A's worker crashes on every frame and is restarted until its policy gives up;
    session B, in the same runtime and with workers of its own, runs through untouched."""
    rt = Runtime(
        RuntimeConfig(
            multiprocess=MultiprocessDefaults(grace_period_secs=0.2), nodes=NodesConfig(testing=True)
        )
    )
    crashing = {
        "version": "v1",
        "metadata": {
            "name": "a",
            "supervision": {"strategy": "one_for_one", "max_restarts": 2, "within_secs": 60},
            "multiprocess": {"executor_overrides": {"k": "multiprocess"}},
        },
        "nodes": [
            {"id": "k", "node_type": "SignalNode", "params": {"phase": "process", "signal": "SIGKILL"}}
        ],
        "connections": [],
    }
    steady = {
        "version": "v1",
        "metadata": {"name": "b", "multiprocess": {"executor_overrides": {"p": "multiprocess"}}},
        "nodes": [{"id": "p", "node_type": "PassThrough"}],
        "connections": [],
    }
    a_error: list[BaseException] = []
    b_result: list[Any] = []

    async def session_a() -> None:
        try:
            await rt.run_pipeline(crashing, {"k": [TextFrame(text=str(i)) for i in range(5)]})
        except NodeError as exc:
            a_error.append(exc)

    async def session_b() -> None:
        frames = []
        for i in range(40):
            frames.append(TextFrame(text=str(i)))
        b_result.append(await rt.run_pipeline(steady, {"p": frames}))

    async with rt, trio.open_nursery() as nursery:
        nursery.start_soon(session_a)
        nursery.start_soon(session_b)
    (error,) = a_error
    assert (error.node_id, error.restarts) == ("k", 2)
    assert "killed by SIGKILL" in str(error)
    (result,) = b_result
    assert [f.text for f in result.outputs["p"] if isinstance(f, TextFrame)] == [str(i) for i in range(40)]
    assert result.supervision == []
    assert result.metrics.nodes["p"].restarts == 0
