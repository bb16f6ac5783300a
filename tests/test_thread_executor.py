"""The ``thread`` executor: a sync node in a thread of its own, inside the supervisor.

Real threads throughout (the leak fixture fails any test whose node thread outlives it).
Where a test must show that a node does not stall the supervisor, the node *waits for the
supervisor to make progress* — it would deadlock (and time out) if it ran on the trio thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from nursery_pipes import (
    Frame,
    FrameKind,
    ManifestError,
    Node,
    NodeError,
    NodeInitTimeout,
    Params,
    ResourceLimitError,
    Runtime,
    RuntimeConfig,
    TextFrame,
)
from nursery_pipes._config import LimitsConfig, MultiprocessDefaults

pytestmark = pytest.mark.timeout(30)

TRIO_THREAD: list[int] = []


class Threads(Node):
    """Records the thread of every hook call."""

    accepts = produces = frozenset({FrameKind.TEXT})

    def initialize(self, progress: Any) -> None:
        self.seen = {threading.get_ident()}
        progress(0.5, "half way")

    def process(self, frame: Frame) -> Frame:
        self.seen.add(threading.get_ident())
        assert isinstance(frame, TextFrame)
        return TextFrame(text=f"{frame.text}@{threading.current_thread().name}")

    def flush(self) -> Iterator[Frame]:
        self.seen.add(threading.get_ident())
        yield TextFrame(text=f"threads={len(self.seen)}")
        yield TextFrame(text=f"trio-thread={TRIO_THREAD[0] in self.seen}")


class WaitParams(Params):
    seconds: float = 5.0


RELEASE = threading.Event()


class WaitsForOthers(Node[WaitParams]):
    """Blocks in process() until the test releases it (or the wait times out)."""

    def process(self, frame: Frame) -> Frame:
        released = RELEASE.wait(self.params.seconds)
        return TextFrame(text=f"released={released}")


class Fails(Node[WaitParams]):
    def initialize(self, progress: Any) -> None:
        if self.params.seconds < 0:
            raise ValueError("bad model file")

    def process(self, frame: Frame) -> Frame:
        raise RuntimeError(f"cannot handle {frame.kind.label}")


class SlowInit(Node[WaitParams]):
    def initialize(self, progress: Any) -> None:
        time.sleep(self.params.seconds)

    def process(self, frame: Frame) -> Frame:
        return frame


class Sleeps(Node[WaitParams]):
    def process(self, frame: Frame) -> Frame:
        time.sleep(self.params.seconds)
        return frame


NODES = (Threads, WaitsForOthers, Fails, SlowInit, Sleeps)


def runtime(**limits: Any) -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            multiprocess=MultiprocessDefaults(grace_period_secs=0.2),
            limits=LimitsConfig(**limits),
        )
    )
    for cls in NODES:
        rt.registry.register(cls)
    return rt


def manifest(*nodes: tuple[str, str, dict[str, Any], str]) -> dict[str, Any]:
    """Nodes (id, type, params, executor) in a chain."""
    return {
        "version": "v1",
        "metadata": {"name": "threads", "multiprocess": {"executor_overrides": {n[0]: n[3] for n in nodes}}},
        "nodes": [{"id": i, "node_type": t, "params": p} for i, t, p, _ in nodes],
        "connections": [{"from": a[0], "to": b[0]} for a, b in itertools.pairwise(nodes)],
    }


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RELEASE.clear()
    TRIO_THREAD[:] = [threading.get_ident()]
    yield
    RELEASE.set()  # never leave a node thread waiting


async def test_every_hook_runs_in_one_thread_of_its_own() -> None:
    rt = runtime()
    result = await rt.run_pipeline(
        manifest(("t", "Threads", {}, "thread")), {"t": [TextFrame(text="a"), TextFrame(text="b")]}
    )
    texts = [f.text for f in result.outputs["t"] if isinstance(f, TextFrame)]
    assert texts == [
        "a@nursery-pipes node t (Threads)",
        "b@nursery-pipes node t (Threads)",
        "threads=1",  # initialize, process and flush all ran in the same thread...
        "trio-thread=False",  # ...which is not the supervisor's
    ]
    assert result.assignments["t"].executor == "thread"
    assert [(p.state, p.progress, p.message) for p in result.progress] == [
        ("starting", 0.0, ""),
        ("loading", 0.5, "half way"),
        ("ready", 1.0, ""),
    ]
    assert result.metrics.nodes["t"].frames_out == 4


async def test_a_blocking_node_does_not_stall_other_sessions() -> None:
    """Session A's node blocks until session B has got its output through the same runtime:
    on the trio thread, B could never run, and A's node would time out (released=False)."""
    rt = runtime()
    a_out: list[str] = []

    async def session_a() -> None:
        result = await rt.run_pipeline(
            manifest(("w", "WaitsForOthers", {}, "thread")), {"w": TextFrame(text="x")}
        )
        a_out.extend(f.text for f in result.outputs["w"] if isinstance(f, TextFrame))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session_a)
        result = await rt.run_pipeline(
            manifest(("t", "Threads", {}, "inprocess")), {"t": TextFrame(text="b")}
        )
        assert len(result.outputs["t"]) == 3
        RELEASE.set()
    assert a_out == ["released=True"]


async def test_the_same_node_in_process_stalls_everything() -> None:
    """The peer comparison's other half: in-process, the blocking node holds the trio thread,
    so nobody else runs until it gives up waiting."""
    rt = runtime()
    result = await rt.run_pipeline(
        manifest(("w", "WaitsForOthers", {"seconds": 0.2}, "inprocess")), {"w": TextFrame(text="x")}
    )
    assert [f.text for f in result.outputs["w"] if isinstance(f, TextFrame)] == ["released=False"]


@pytest.mark.parametrize(
    ("seconds", "phase", "message"),
    [(-1, "initialize", "ValueError: bad model file"), (0, "process", "RuntimeError: cannot handle text")],
)
async def test_a_failing_hook_names_the_node_and_phase_with_its_traceback(
    seconds: float, phase: str, message: str
) -> None:
    with pytest.raises(NodeError) as info:
        await runtime().run_pipeline(
            manifest(("f", "Fails", {"seconds": seconds}, "thread")), {"f": TextFrame(text="x")}
        )
    assert (info.value.node_id, info.value.phase) == ("f", phase)
    assert message in str(info.value)
    assert "Traceback" in (info.value.remote_traceback or "")


async def test_an_initialize_that_overruns_is_reported_at_the_deadline() -> None:
    rt = runtime()
    plan = rt.plan(manifest(("s", "SlowInit", {"seconds": 0.6}, "thread")))
    plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, init_timeout_secs=0.1))
    began = trio.current_time()
    with pytest.raises(NodeInitTimeout) as info:
        async with rt.open_session(plan):
            pytest.fail("the session must not start")
    assert info.value.node_id == "s"
    # At the deadline plus the grace period (0.2 s) in which the thread may still return;
    # the blocked initialize takes 0.6 s, so the thread is abandoned, not waited for.
    assert trio.current_time() - began < 0.55


async def test_cancel_abandons_a_hook_that_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A thread cannot be killed: the session ends on time, the hook is left to finish in its
    daemon thread, and a warning says so."""
    caplog.set_level(logging.WARNING)
    rt = runtime()
    with trio.move_on_after(5):
        async with rt.open_session(manifest(("s", "Sleeps", {"seconds": 0.8}, "thread"))) as session:
            await session.send("s", TextFrame(text="x"))
            await trio.sleep(0.05)  # the hook is running now
            began = trio.current_time()
            session.cancel()
    assert trio.current_time() - began < 0.6  # the grace period (0.2 s), not the hook's 0.8 s
    assert any(
        "threads cannot be killed" in r.getMessage() and "node s" in r.getMessage() for r in caplog.records
    )


async def test_thread_nodes_count_against_max_threads() -> None:
    rt = runtime(max_threads=1)
    two = manifest(("a", "Sleeps", {"seconds": 0}, "thread"), ("b", "Sleeps", {"seconds": 0}, "thread"))
    with pytest.raises(
        ResourceLimitError, match=r"needs 2 threads, 0 are in use .* at most 1 \(limits.max_threads\)"
    ):
        async with rt.open_session(two):
            pass


class AsyncNode(Node):
    async def process(self, frame: Frame) -> Frame:
        return frame


def test_a_thread_cannot_run_async_hooks() -> None:
    rt = runtime()
    rt.registry.register(AsyncNode)
    with pytest.raises(ManifestError, match=r"routes to thread .*\.AsyncNode has async hooks \(process\)"):
        rt.plan(manifest(("a", "AsyncNode", {}, "thread")))
