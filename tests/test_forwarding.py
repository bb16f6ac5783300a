"""Big frames passed on unchanged by zero_copy workers go by reference, not by copy
(ipc/_ownership.py): intact under load and with checksums, counted in the metrics, and a worker
SIGKILLed in the middle of such a handoff is repaired and restarted without a leak."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from nursery_pipes import Frame, Node, NodeError, Runtime, RuntimeConfig, TensorFrame
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.ipc import slot_array
from nursery_pipes.runtime import FramesDropped, NodeRestarted

pytestmark = pytest.mark.timeout(90)

SLOT = 4096  # frames above this go to external segments


class Crop(Node):
    """A zero_copy node that re-wraps part of its input: 8 bytes cut at each end, new metadata."""

    zero_copy = True

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        return TensorFrame(data=frame.data[8:-8], metadata={"cropped": "yes"})


def runtime(**mp: Any) -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True),
            multiprocess=MultiprocessDefaults(grace_period_secs=0.3, slot_size=SLOT, **mp),
        )
    )
    rt.registry.register(Crop)
    return rt


def manifest(
    nodes: list[tuple[str, str, dict[str, Any]]], *, supervision: dict[str, Any] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "forwarding",
        "multiprocess": {"executor_overrides": {n: "multiprocess" for n, _, _ in nodes}},
    }
    if supervision is not None:
        metadata["supervision"] = supervision
    ids = [n for n, _, _ in nodes]
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [{"id": n, "node_type": t, "params": p} for n, t, p in nodes],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


def tensor(i: int) -> TensorFrame:
    """Frame i: distinct bytes; every fourth one small enough for a ring slot."""
    n = 100 + i if i % 4 == 3 else SLOT * (1 + i % 3) + 8 * i + 8
    return TensorFrame(data=np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8))


async def test_big_frames_go_down_a_chain_of_zero_copy_workers_by_reference_and_stay_intact() -> None:
    m = manifest([(f"w{i}", "PassThrough", {}) for i in range(3)])
    count = 60
    async with runtime(checksums=True, slot_count=4).open_session(m) as session:
        got: list[tuple[int, np.ndarray]] = []

        async def feed() -> None:  # as fast as backpressure allows: the rings stay full
            for i in range(count):
                await session.send("w0", tensor(i))
            await session.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async for out in session.outputs():
                got.append((out.seq, np.array(out.frame.data)))
    metrics = session.metrics().nodes  # final: the workers' last counters are in
    assert [seq for seq, _ in got] == list(range(1, count + 1))
    for i, (_, data) in enumerate(got):
        assert np.array_equal(data, tensor(i).data), f"frame {i} changed on the way"
    big = sum(1 for i in range(count) if i % 4 != 3)
    assert {n: m.frames_forwarded for n, m in metrics.items()} == dict.fromkeys(metrics, big)


async def test_big_outputs_are_views_that_nothing_writes_while_they_are_held() -> None:
    """The client gets a big output as a read-only view of the segment it arrived in, taken out
    of the last ring (ipc/_pool.py): 60 outputs held, as they came, while the rings go round
    many times over, then after the session has ended, still hold what was sent — lent ones
    and, once the session has lent as many as it may without any back, copies."""
    m = manifest([("w0", "PassThrough", {}), ("crop", "Crop", {}), ("w2", "PassThrough", {})])
    count = 60
    held: list[Any] = []
    async with runtime(checksums=True, slot_count=2).open_session(m) as session:

        async def feed() -> None:
            for i in range(count):
                await session.send("w0", tensor(i))
            await session.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async for out in session.outputs():
                held.append(out.frame)
    assert len(held) == count
    views = []
    for i, frame in enumerate(held):
        assert isinstance(frame, TensorFrame)
        assert np.array_equal(frame.data, tensor(i).data[8:-8]), f"output {i} was written over"
        assert not frame.data.flags.writeable
        if slot_array(frame) is not None:
            views.append(i)
    # Nothing is ever given back here: the first `spare` (8) big outputs are lent with nothing
    # in exchange for their ring slots, then outputs are copies (ipc/_pool.py)
    assert views == [i for i in range(count) if i % 4 != 3][:8]
    assert session.metrics().frames_lent == session.metrics().frames_lent_held == 8


async def test_a_client_that_lets_go_of_each_output_gets_every_big_one_without_a_copy() -> None:
    m = manifest([(f"w{i}", "PassThrough", {}) for i in range(2)])
    views = 0
    async with runtime(slot_count=2).open_session(m) as session:
        outputs = session.outputs()
        for i in range(40):
            await session.send("w0", tensor(i))
            out = await outputs.__anext__()
            assert isinstance(out.frame, TensorFrame)
            assert np.array_equal(out.frame.data, tensor(i).data), i
            views += slot_array(out.frame) is not None
            del out
        await session.close()
    assert views == sum(1 for i in range(40) if i % 4 != 3)
    assert session.metrics().frames_lent == views
    assert session.metrics().frames_lent_held == 0


async def test_a_slice_of_the_input_with_new_metadata_goes_on_by_reference() -> None:
    m = manifest([("w0", "PassThrough", {}), ("crop", "Crop", {}), ("w2", "PassThrough", {})])
    count = 24
    async with runtime(checksums=True, slot_count=4).open_session(m) as session:
        for i in range(count):
            await session.send("w0", tensor(i))
            out = await session.outputs().__anext__()
            assert isinstance(out.frame, TensorFrame)
            assert np.array_equal(out.frame.data, tensor(i).data[8:-8]), i
            assert out.frame.metadata == {"cropped": "yes"}
        await session.close()
    big = sum(1 for i in range(count) if i % 4 != 3)
    assert session.metrics().nodes["crop"].frames_forwarded == big


async def test_a_zero_copy_node_keeping_a_forwarded_input_is_stopped() -> None:
    """Forwarded or not, a kept view of the input stops the node before its slot goes back."""
    m = manifest([("keep", "KeepInputNode", {"after_frames": 2})])
    delivered: list[int] = []

    async def run() -> None:
        async with runtime().open_session(m) as session:
            for i in range(5):
                await session.send("keep", TensorFrame(data=np.full(4 * SLOT, i, dtype=np.uint8)))
            await session.close()
            async for out in session.outputs():
                assert np.all(out.frame.data == out.seq - 1)  # never overwritten
                delivered.append(out.seq)

    with pytest.raises(NodeError, match="declares zero_copy = True but kept its input frame"):
        await run()
    assert delivered == [1, 2, 3]


@pytest.mark.parametrize(
    "dies",
    [
        ("ForwardKillNode", {"store": 0}),
        ("ForwardKillNode", {"store": 1}),
        ("SignalNode", {"phase": "process", "signal": "SIGKILL"}),
    ],
    ids=["forwarder-before-output-takes-it", "forwarder-before-input-gives-it", "reader"],
)
async def test_a_worker_killed_while_forwarding_is_repaired_and_restarted(
    tmp_path: Path, dies: tuple[str, dict[str, Any]]
) -> None:
    """Killed in the middle of a forward's swap, or a worker reading forwarded frames killed
    while it holds one: repaired, restarted, every later frame intact, nothing leaked."""
    once = str(tmp_path / "fired")
    node_type, params = dies
    m = manifest(
        [
            ("a", "PassThrough", {}),
            ("dies", node_type, {**params, "after_frames": 5, "once": once}),
            ("c", "PassThrough", {}),
        ],
        supervision={"strategy": "one_for_one", "max_restarts": 2},
    )
    count = 40
    outputs: dict[int, np.ndarray] = {}
    events: list[Any] = []
    async with runtime(checksums=True, slot_count=4).open_session(m) as session:

        async def read() -> None:
            async for event in session.events():
                if isinstance(event, (FramesDropped, NodeRestarted)):
                    events.append(event)
                elif hasattr(event, "frame"):
                    outputs[event.seq] = np.array(event.frame.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in range(count):
                await session.send("a", tensor(i))
            await session.close()
    restarted = [e for e in events if isinstance(e, NodeRestarted)]
    dropped = [seq for e in events if isinstance(e, FramesDropped) for seq in e.sequences]
    assert [e.node_id for e in restarted] == ["dies"]
    assert len(dropped) == 1  # the frame it was forwarding
    assert dropped[0] > 5
    assert sorted(outputs) == [s for s in range(1, count + 1) if s not in dropped]
    for seq, data in outputs.items():  # checksums on every ring, and compared here
        assert np.array_equal(data, tensor(seq - 1).data), f"frame {seq} changed on the way"
