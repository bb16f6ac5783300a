"""``NodeContext.output_array``: a node builds its output frame in the shared memory it is sent
through (issue 11, loaned output buffers), wherever it runs — and a worker holds nodes to the
rules that make that safe (docs/design.md §6, "Copies").

The nodes are defined at the top level so worker processes can import them.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest
import trio

from nursery_pipes import (
    AudioFrame,
    Frame,
    FrameKind,
    Node,
    NodeError,
    Params,
    Runtime,
    RuntimeConfig,
    TensorFrame,
)
from nursery_pipes._config import MultiprocessDefaults
from nursery_pipes.runtime import FramesDropped

pytestmark = pytest.mark.timeout(30)

EXECUTORS = ["multiprocess", "inprocess", "thread"]


class RampParams(Params):
    samples: int = 100_000  # 400 KB of float32: more than a slot, so an external segment
    how: str = "whole"  # whole | slice | other-first | keep | unused | twice | meta
    hold_secs: float = 0.0  # sleep with the array lent (a window to kill the worker in)


class Ramp(Node[RampParams]):
    """Per input frame, an output built in output_array(): sample i = input value + i."""

    accepts = frozenset({FrameKind.AUDIO})
    kept: list[Any] = []  # noqa: RUF012  # a class attribute on purpose: what "keep" holds on to

    def process(self, frame: Frame) -> Any:
        assert isinstance(frame, AudioFrame)
        start = float(frame.samples[0, 0])
        n, how = self.params.samples, self.params.how
        if how == "twice":
            self.context.output_array(n, np.float32)
            self.context.output_array(n, np.float32)
        out = self.context.output_array(n, np.float32)
        np.add(np.arange(n, dtype=np.float32), start, out=out)
        if self.params.hold_secs and start < 0:
            time.sleep(self.params.hold_secs)
        if how == "unused":
            return frame
        if how == "other-first":
            return [frame, AudioFrame.from_array(out, sample_rate=frame.sample_rate)]
        if how == "keep":
            Ramp.kept.append(out)
        if how == "slice":
            return AudioFrame.from_array(out[: n // 2], sample_rate=frame.sample_rate)
        metadata = {"note": "x" * 400} if how == "meta" else {"start": str(int(start))}
        return AudioFrame.from_array(out, sample_rate=frame.sample_rate, metadata=metadata)


class Tensorize(Node):
    """Audio in, a 2-D int32 tensor built in output_array() out."""

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, AudioFrame)
        out = self.context.output_array((256, 1024), "int32")
        out[...] = int(frame.samples[0, 0])
        return TensorFrame(data=out, layout="HW")


def runtime(*, checksums: bool = False) -> Runtime:
    rt = Runtime(RuntimeConfig(multiprocess=MultiprocessDefaults(grace_period_secs=0.2, checksums=checksums)))
    rt.registry.register(Ramp)
    rt.registry.register(Tensorize)
    return rt


def manifest(executor: str, params: dict[str, Any], *, fan_out: bool = False) -> dict[str, Any]:
    nodes = [{"id": "ramp", "node_type": "Ramp", "params": params}]
    connections = []
    overrides = {"ramp": executor}
    if fan_out:  # two consumers of the ramp, each in a worker: the frame goes to both rings
        for sink in ("a", "b"):
            nodes.append({"id": sink, "node_type": "PassThrough", "params": {}})
            connections.append({"from": "ramp", "to": sink})
            overrides[sink] = "multiprocess"
    return {
        "version": "v1",
        "metadata": {"name": "loan", "multiprocess": {"executor_overrides": overrides}},
        "nodes": nodes,
        "connections": connections,
    }


def starts(*values: float) -> list[AudioFrame]:
    return [AudioFrame.from_array(np.full(4, v, dtype=np.float32), sample_rate=16000) for v in values]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("how", ["whole", "slice", "unused", "meta"])
async def test_frames_built_in_output_arrays_arrive_intact(executor: str, how: str) -> None:
    n = 100_000
    result = await runtime().run_pipeline(
        manifest(executor, {"samples": n, "how": how}), {"ramp": starts(1, 7, 3)}
    )
    frames = result.outputs["ramp"]
    if how == "unused":  # the input went out; the array was given back, nothing else lost
        assert [float(f.samples[0, 0]) for f in frames] == [1, 7, 3]
        return
    expected_len = n // 2 if how == "slice" else n
    assert [f.num_samples for f in frames] == [expected_len] * 3
    for frame, start in zip(frames, (1, 7, 3), strict=True):
        assert np.array_equal(frame.samples[:, 0], np.arange(expected_len, dtype=np.float32) + start)
    # sent without a copy exactly when a worker could: a frame over the whole array
    in_place = 3 if executor == "multiprocess" and how == "whole" else 0
    assert result.metrics.nodes["ramp"].frames_in_place == in_place
    if how == "whole":
        assert [f.metadata["start"] for f in frames] == ["1", "7", "3"]
    if how == "meta":
        assert all(f.metadata["note"] == "x" * 400 for f in frames)


async def test_an_output_array_fans_out_to_every_consumer() -> None:
    result = await runtime().run_pipeline(
        manifest("multiprocess", {"samples": 100_000}, fan_out=True), {"ramp": starts(2, 5)}
    )
    assert result.metrics.nodes["ramp"].frames_in_place == 2
    for sink in ("a", "b"):
        assert [float(f.samples[0, 0]) for f in result.outputs[sink]] == [2, 5]
        assert all(float(f.samples[-1, 0]) == 99_999 + float(f.samples[0, 0]) for f in result.outputs[sink])


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_tensor_built_in_an_output_array(executor: str) -> None:
    doc = manifest(executor, {})
    doc["nodes"][0]["node_type"] = "Tensorize"
    result = await runtime().run_pipeline(doc, {"ramp": starts(9, 4)})
    assert [
        (f.data.shape, f.data.dtype.name, f.layout, int(f.data[-1, -1])) for f in result.outputs["ramp"]
    ] == [
        ((256, 1024), "int32", "HW", 9),
        ((256, 1024), "int32", "HW", 4),
    ]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("other-first", "Ramp emitted the frame built on output_array() after another output"),
        ("keep", "Ramp kept an array from output_array() after the call returned"),
        ("twice", "Ramp asked output_array() again before emitting the frame built on the previous one"),
    ],
)
async def test_a_worker_refuses_what_would_let_a_node_see_reused_memory(how: str, message: str) -> None:
    Ramp.kept.clear()
    with pytest.raises(NodeError, match="failed in process") as info:
        await runtime().run_pipeline(manifest("multiprocess", {"how": how}), {"ramp": starts(1, 2, 3)})
    assert info.value.node_id == "ramp"
    assert message in str(info.value)


def test_the_readme_example_runs() -> None:
    """README "Big frames in worker processes, without copies": the example node, driven
    in-process (output_array is np.empty there; the worker path is tested above)."""
    from pathlib import Path

    from nursery_pipes.testing import run_node_sync

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("**Big frames in worker processes, without copies.**", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    (out,) = run_node_sync(namespace["Brightest"], [TensorFrame(data=image)])
    assert out.data.tolist() == [[2, 5, 8], [11, 14, 17]]


async def test_checksums_cover_frames_built_in_place() -> None:
    result = await runtime(checksums=True).run_pipeline(
        manifest("multiprocess", {"samples": 100_000}, fan_out=True), {"ramp": starts(2, 5)}
    )
    assert result.metrics.nodes["ramp"].frames_in_place == 2
    assert [float(f.samples[-1, 0]) for f in result.outputs["a"]] == [99_999 + 2, 99_999 + 5]


async def test_a_worker_killed_with_an_array_lent_is_replaced_and_nothing_leaks() -> None:
    """SIGKILL while the node holds an output_array() loan (a producer dead mid-loan): the ring
    is repaired, a fresh worker takes over, the frame in hand is reported dropped, the next
    frames are built in place again; the leak check (conftest) sees no segment left."""
    doc = manifest("multiprocess", {"samples": 100_000, "hold_secs": 30}, fan_out=True)
    doc["metadata"]["supervision"] = {"strategy": "one_for_one", "max_restarts": 2}
    rt = runtime()
    outputs: list[tuple[str, int, float]] = []
    two_out = trio.Event()

    async def read(session: Any) -> None:
        async for o in session.outputs():
            outputs.append((o.node_id, o.seq, float(o.frame.samples[0, 0])))
            if len(outputs) == 2:
                two_out.set()

    async with rt.open_session(doc) as session, trio.open_nursery() as nursery:
        nursery.start_soon(read, session)
        await session.send("ramp", starts(1)[0])
        await session.send("ramp", starts(-1)[0])  # the node holds its loan for 30 s on this one
        with trio.fail_after(10):
            await two_out.wait()  # frame 1 is out at both sinks: frame 2 is in the node's hands
        await trio.sleep(0.2)
        os.kill(session.metrics().nodes["ramp"].pid, signal.SIGKILL)
        with trio.fail_after(10):
            while session.metrics().nodes["ramp"].restarts < 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await session.send("ramp", starts(3)[0])
        await session.close()
    log = session.supervision_log
    assert session.metrics().nodes["ramp"].frames_in_place >= 1  # the fresh worker, in place again
    assert sorted(outputs) == [("a", 1, 1.0), ("a", 3, 3.0), ("b", 1, 1.0), ("b", 3, 3.0)]
    dropped = [e for e in log if isinstance(e, FramesDropped)]
    assert [(e.node_id, e.sequences) for e in dropped] == [("ramp", (2,))]
