"""Big frames passed on unchanged by zero_copy workers go by reference, not by copy
(ipc/_ownership.py): intact under load and with checksums, counted in the metrics, and a worker
SIGKILLed in the middle of such a handoff is repaired and restarted without a leak."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from nursery_pipes import Frame, Node, NodeError, Params, Runtime, RuntimeConfig, TensorFrame
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.ipc import slot_array
from nursery_pipes.runtime import FramesDropped, NodeRestarted, Output, Session

pytestmark = pytest.mark.timeout(90)

SLOT = 4096  # frames above this go to external segments


class Crop(Node):
    """A zero_copy node that re-wraps part of its input: 8 bytes cut at each end, new metadata."""

    zero_copy = True

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        return TensorFrame(data=frame.data[8:-8], metadata={"cropped": "yes"})


class Copy(Node):
    """An ordinary node (not zero_copy: its worker copies every input out of the ring)."""

    def process(self, frame: Frame) -> Frame:
        return frame


class SlowCheck(Node):
    """A zero_copy node that reads its input in place, slowly, and fails if it changes under it
    (frames of ``constant(i)``: every byte the same)."""

    zero_copy = True

    def process(self, frame: Frame) -> Frame:
        assert isinstance(frame, TensorFrame)
        first = int(frame.data[0])
        time.sleep(0.3 if first == 4 else 0.002)  # meanwhile the rings upstream go round
        if not np.all(frame.data == first):
            raise AssertionError(f"a shared frame changed while it was read ({first})")
        return TensorFrame(data=np.array([first], dtype=np.uint8))


class KillOnceParams(Params):
    marker: str


class KillOnce(Node[KillOnceParams]):
    """A zero_copy pass-through whose process SIGKILLs itself at its 6th frame, once (it
    creates the file ``marker`` first)."""

    zero_copy = True

    def __init__(self, params: KillOnceParams, context: Any) -> None:
        super().__init__(params, context)
        self.frames = 0

    def process(self, frame: Frame) -> Frame:
        self.frames += 1
        marker = Path(self.params.marker)
        if self.frames == 6 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return frame


async def flood(
    session: Session,
    into: str,
    frames: Iterable[Frame],
    take: Callable[[Output], None],
    outputs: AsyncIterator[Output] | None = None,
) -> None:
    """Send ``frames`` to node ``into`` as fast as backpressure allows (the rings stay full), then
    close the session, while ``take`` gets every output until the end."""

    async def feed() -> None:
        for frame in frames:
            await session.send(into, frame)
        await session.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        async for out in session.outputs() if outputs is None else outputs:
            take(out)


def runtime(**mp: Any) -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True),
            multiprocess=MultiprocessDefaults(grace_period_secs=0.3, slot_size=SLOT, **mp),
        )
    )
    for cls in (Crop, Copy, SlowCheck, KillOnce):
        rt.registry.register(cls)
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

        def take(out: Output) -> None:
            got.append((out.seq, np.array(out.frame.data)))

        await flood(session, "w0", (tensor(i) for i in range(count)), take)  # rings kept full
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

        def take(out: Output) -> None:
            held.append(out.frame)

        await flood(session, "w0", (tensor(i) for i in range(count)), take)
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
    got, restarted, dropped, _ = await supervised_stream(m, "a", [tensor(i) for i in range(count)])
    outputs = got["c"]
    assert restarted == ["dies"]
    assert len(dropped) == 1  # the frame it was forwarding
    assert dropped[0] > 5
    assert sorted(outputs) == [s for s in range(1, count + 1) if s not in dropped]
    for seq, data in outputs.items():  # checksums on every ring, and compared here
        assert np.array_equal(data, tensor(seq - 1).data), f"frame {seq} changed on the way"


def constant(i: int) -> TensorFrame:
    """Frame i: every byte ``i % 251``; every fourth one small enough for a ring slot."""
    n = 100 if i % 4 == 3 else SLOT * (1 + i % 3) + 8 * i + 8
    return TensorFrame(data=np.full(n, i % 251, dtype=np.uint8))


def fan_out(
    fan: str,
    readers: list[tuple[str, str]],
    *,
    upstream: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    **supervision: Any,
) -> dict[str, Any]:
    """Node "fan" (type ``fan``) feeding every reader; fed by an ``upstream`` node "up" if given."""
    nodes = [*([("up", upstream)] if upstream else []), ("fan", fan), *readers]
    metadata: dict[str, Any] = {
        "name": "fan-out",
        "multiprocess": {"executor_overrides": {n: "multiprocess" for n, _ in nodes}},
    }
    if supervision:
        metadata["supervision"] = supervision
    return {
        "version": "v1",
        "metadata": metadata,
        "nodes": [{"id": n, "node_type": t, "params": (params or {}).get(n, {})} for n, t in nodes],
        "connections": [
            *([{"from": "up", "to": "fan"}] if upstream else []),
            *({"from": "fan", "to": n} for n, _ in readers),
        ],
    }


async def supervised_stream(
    m: dict[str, Any], into: str, frames: list[TensorFrame]
) -> tuple[dict[str, dict[int, np.ndarray]], list[str], list[int], Session]:
    """Send ``frames`` to node ``into`` of a session of ``m`` (checksums, 4 slots) and close
    it; returns every output (node → seq → a copy of its data), the nodes restarted, the
    sequences reported dropped, and the session."""
    got: dict[str, dict[int, np.ndarray]] = {}
    events: list[Any] = []
    async with runtime(checksums=True, slot_count=4).open_session(m) as session:

        async def read() -> None:
            async for event in session.events():
                if isinstance(event, (FramesDropped, NodeRestarted)):
                    events.append(event)
                elif isinstance(event, Output):
                    got.setdefault(event.node_id, {})[event.seq] = np.array(event.frame.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for frame in frames:
                await session.send(into, frame)
            await session.close()
    restarted = [e.node_id for e in events if isinstance(e, NodeRestarted)]
    dropped = [seq for e in events if isinstance(e, FramesDropped) for seq in e.sequences]
    return got, restarted, dropped, session


@pytest.mark.parametrize("fan_in", ["worker", "supervisor"])
async def test_a_fan_out_to_ordinary_nodes_shares_one_payload_that_nothing_writes_while_read(
    fan_in: str,
) -> None:
    """A node fanning a big frame out to nodes that copy their input anyway sends every ring a
    reference to one copy (ipc/_ownership.py, fan-out): a zero_copy worker its input's segment,
    keeping its input slot until every reader is done; a node in the supervisor a segment of
    its pool, reused only once every ring's consumer returned it — here one reader reads in
    place, slowly, while the client keeps the rings full."""
    m = fan_out("PassThrough", [("r1", "Copy"), ("r2", "Copy"), ("check", "SlowCheck")])
    if fan_in == "supervisor":
        m["metadata"]["multiprocess"]["executor_overrides"]["fan"] = "inprocess"
    count = 48
    got: dict[str, list[tuple[int, np.ndarray]]] = {"r1": [], "r2": [], "check": []}
    async with runtime(checksums=True, slot_count=2).open_session(m) as session:

        def take(out: Output) -> None:
            got[out.node_id].append((out.seq, np.array(out.frame.data)))

        await flood(session, "fan", (constant(i) for i in range(count)), take)
    for node in ("r1", "r2"):
        assert [seq for seq, _ in got[node]] == list(range(1, count + 1))
        for seq, data in got[node]:
            assert np.array_equal(data, constant(seq - 1).data), f"{node}: frame {seq} changed"
    assert [int(data[0]) for _, data in got["check"]] == [i % 251 for i in range(count)]
    big = sum(1 for i in range(count) if i % 4 != 3)
    if fan_in == "supervisor":  # one pool copy per frame, for all three rings
        assert session.metrics().frames_shared == big
        return
    # Shared, unless the one input slot it may keep (2 slots) still waited for the slow reader:
    # then forwarded to the first output and copied to the others, as without sharing.
    fan = session.metrics().nodes["fan"]
    assert fan.frames_shared > big // 3
    assert fan.frames_shared + fan.frames_forwarded == big


async def test_a_shared_frame_read_by_the_supervisor_is_copied_out_not_lent() -> None:
    """One reader of the shared frame runs in the supervisor (its ring's pump reads it): the
    pump copies it instead of lending the segment (the fan's input slot owns it) — one frame
    in flight, every one shared — and with the client keeping the rings full every reader
    gets every frame intact."""
    m = fan_out("PassThrough", [("r1", "Copy"), ("r2", "Copy"), ("sup", "Copy")])
    m["metadata"]["multiprocess"]["executor_overrides"]["sup"] = "inprocess"
    count = 40
    got: dict[str, list[tuple[int, np.ndarray]]] = {"r1": [], "r2": [], "sup": []}
    async with runtime(checksums=True, slot_count=2).open_session(m) as session:
        outputs = session.outputs()
        for i in range(8):
            await session.send("fan", constant(4 * i))  # all big
            for _ in range(3):
                out = await outputs.__anext__()
                got[out.node_id].append((out.seq, out.frame.data))
                if out.node_id == "sup":
                    assert slot_array(out.frame) is None, "a shared frame was lent"
        assert session.metrics().nodes["fan"].frames_forwarded == 0

        def take(out: Output) -> None:
            got[out.node_id].append((out.seq, out.frame.data))  # held, views or not

        await flood(session, "fan", (constant(i) for i in range(8, count)), take, outputs)
    for node, received in got.items():
        assert [seq for seq, _ in received] == list(range(1, count + 1)), node
        for seq, data in received:
            want = constant(4 * (seq - 1) if seq <= 8 else seq - 1).data
            assert np.array_equal(data, want), f"{node}: frame {seq} changed"
    assert session.metrics().nodes["fan"].frames_shared > 8


async def test_a_shared_frame_kept_by_an_idle_sharer_is_not_counted_as_queued() -> None:
    """The sharer keeps its input slot after the frame is done (until the next frame comes):
    ``queued_inputs`` counts frames waiting or in process, not those (``finished``)."""
    m = fan_out("PassThrough", [("r1", "Copy"), ("r2", "Copy")])
    async with runtime(slot_count=4).open_session(m) as session:
        outputs = session.outputs()
        for i in range(3):
            await session.send("fan", constant(i * 4))  # all big
            for _ in range(2):
                await outputs.__anext__()
            assert session.queued_inputs()["fan"] == 0
        await session.close()
    assert session.metrics().nodes["fan"].frames_shared == 3


@pytest.mark.parametrize("readers", [["Copy", "PassThrough"], ["Copy", "Copy"]], ids=["one-copies", "off"])
async def test_a_fan_out_that_would_not_save_a_copy_or_with_sharing_off_forwards_and_copies(
    readers: list[str],
) -> None:
    """Sharing would not save a copy when fewer than two readers copy anyway, and
    ``share_fan_out = false`` turns it off: the first output takes the segment over, the other
    gets a copy."""
    m = fan_out("PassThrough", [("r1", readers[0]), ("r2", readers[1])])
    async with runtime(slot_count=2, share_fan_out=readers[1] != "Copy").open_session(m) as session:
        for i in range(8):
            await session.send("fan", constant(i))
        await session.close()
        outputs = [out async for out in session.outputs()]
    assert len(outputs) == 16
    fan = session.metrics().nodes["fan"]
    assert (fan.frames_shared, fan.frames_forwarded) == (0, 6)


async def test_a_sharer_killed_while_its_shares_are_read_is_repaired_and_nothing_is_written_under_them(
    tmp_path: Path,
) -> None:
    """SIGKILLed at frame 6 with frame 5 shared and kept, and a slow reader still in it for
    0.3 s: the repair takes that segment away from the input slot (ipc/_repair.py) — the node
    upstream writes every new frame into the segment its slot owns — only the frame in process
    is reported dropped, and the reader never sees its frame change."""
    m = fan_out(
        "KillOnce",
        [("r1", "Copy"), ("r2", "Copy"), ("check", "SlowCheck")],
        upstream="Copy",
        params={"fan": {"marker": str(tmp_path / "fired")}},
        strategy="one_for_one",
        max_restarts=2,
    )
    count = 40
    got, restarted, dropped, session = await supervised_stream(m, "up", [constant(i) for i in range(count)])
    assert restarted == ["fan"]
    assert dropped == [6]  # the frame in process; the shared ones kept were finished
    for node in ("r1", "r2"):
        assert sorted(got[node]) == [s for s in range(1, count + 1) if s != 6]
        for seq, data in got[node].items():
            assert np.array_equal(data, constant(seq - 1).data), f"{node}: frame {seq} changed"
    assert {seq: int(d[0]) for seq, d in got["check"].items()} == {
        s: (s - 1) % 251 for s in range(1, count + 1) if s != 6
    }
    assert session.metrics().nodes["fan"].frames_shared > 0


@pytest.mark.parametrize("fan_in", ["worker", "supervisor"])
async def test_a_reader_of_shared_frames_killed_is_repaired_and_the_sharer_goes_on(
    tmp_path: Path, fan_in: str
) -> None:
    """A reader SIGKILLed holding a shared frame: its repair returns the slot; a sharing worker
    sees it returned and returns its input slot, a sharing supervisor's pool takes the segment
    back once the other rings have too; every other frame arrives intact everywhere, and
    nothing is left behind."""
    m = fan_out(
        "PassThrough",
        [("r1", "SignalNode"), ("r2", "Copy"), ("check", "SlowCheck")],
        params={
            "r1": {
                "phase": "process",
                "signal": "SIGKILL",
                "after_frames": 5,
                "once": str(tmp_path / "fired"),
            }
        },
        strategy="one_for_one",
        max_restarts=2,
    )
    if fan_in == "supervisor":
        m["metadata"]["multiprocess"]["executor_overrides"]["fan"] = "inprocess"
    count = 30
    got, restarted, dropped, session = await supervised_stream(m, "fan", [constant(i) for i in range(count)])
    assert restarted == ["r1"]
    assert len(dropped) == 1
    assert sorted(got["r1"]) == [s for s in range(1, count + 1) if s not in dropped]
    for node in ("r1", "r2"):
        for seq, data in got[node].items():
            assert np.array_equal(data, constant(seq - 1).data), f"{node}: frame {seq} changed"
    assert sorted(got["r2"]) == sorted(got["check"]) == list(range(1, count + 1))
    if fan_in == "supervisor":  # one pool copy per big frame
        assert session.metrics().frames_shared == sum(1 for i in range(count) if i % 4 != 3)
    else:  # more than the 3 input slots it may keep at once (4 slots): it returned them as the
        # readers went, the restarted one included
        assert session.metrics().nodes["fan"].frames_shared > 3
