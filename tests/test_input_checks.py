"""What a session takes from its client (runtime/_plan.py: ``check_input_target`` /
``check_input_kind``), and frames at the edge of what shared memory can carry.

* a frame of a kind the node does not take is a ``FrameKindError`` — a FrameError
  (the gRPC API answers TYPE_VALIDATION) that is still an InputError;
* empty frames (0-sample audio, tensors with a 0 in their shape) travel to and from
  worker processes like any other;
* a frame that could never reach the worker it would flow to (a tensor of more
  than 6 dimensions) is refused by ``Session.send`` with a FrameError naming the
  node, before any node has seen it, and the session goes on;
* an in-process node that *produces* such a frame toward a worker fails with a
  NodeError naming that node.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from nursery_pipes import (
    AudioFrame,
    FrameError,
    FrameKindError,
    InputError,
    JsonFrame,
    Node,
    NodeError,
    Runtime,
    RuntimeConfig,
    TensorFrame,
    TextFrame,
)
from nursery_pipes._config import MultiprocessDefaults, NodesConfig
from nursery_pipes.runtime._plan import check_input_kind, first_worker_from

pytestmark = pytest.mark.timeout(60)


class Unsqueeze(Node):
    """In-process test node: gives every tensor seven leading axes of size 1 (too many for shm)."""

    executor = "inprocess"

    def process(self, frame: Any) -> TensorFrame:
        return TensorFrame(data=frame.data.reshape((1,) * 7 + frame.data.shape))


def runtime() -> Runtime:
    rt = Runtime(
        RuntimeConfig(
            nodes=NodesConfig(testing=True), multiprocess=MultiprocessDefaults(grace_period_secs=0.3)
        )
    )
    rt.registry.register(Unsqueeze)
    return rt


def chain(*nodes: tuple[str, str, str]) -> dict[str, Any]:
    """A chain of (id, type, executor) nodes."""
    return {
        "version": "v1",
        "metadata": {"name": "checks", "multiprocess": {"executor_overrides": {n: e for n, _, e in nodes}}},
        "nodes": [{"id": n, "node_type": t, "params": {}} for n, t, _ in nodes],
        "connections": [{"from": a[0], "to": b[0]} for a, b in pairwise(nodes)],
    }


def seven_dims() -> TensorFrame:
    return TensorFrame(data=np.zeros((1,) * 7, dtype=np.float32))


def empty_audio() -> AudioFrame:
    return AudioFrame(samples=np.zeros((0, 2), dtype=np.float32), sample_rate=16000)


def empty_tensor() -> TensorFrame:
    return TensorFrame(data=np.zeros((3, 0), dtype=np.int32))


# -- sans-I/O: the plan decides -------------------------------------------------------------------


def test_wrong_kind_is_a_frame_kind_error_that_is_still_an_input_error() -> None:
    plan = runtime().plan(chain(("g", "AudioGainNode", "inprocess")))
    with pytest.raises(
        FrameKindError, match=r"node 'g' \(AudioGainNode\) accepts audio frames, not text"
    ) as e:
        check_input_kind(plan, "g", TextFrame(text="x"))
    assert isinstance(e.value, FrameError)
    assert isinstance(e.value, InputError)


def test_a_frame_that_cannot_reach_its_worker_is_refused_naming_both_nodes() -> None:
    rt = runtime()
    to_worker = rt.plan(chain(("src", "PassThrough", "inprocess"), ("w", "PassThrough", "multiprocess")))
    assert first_worker_from(to_worker, "src") == "w"
    with pytest.raises(FrameError, match=r"input for node 'src' \(it flows on to worker node 'w'\): .*7 dim"):
        check_input_kind(to_worker, "src", seven_dims())
    in_worker = rt.plan(
        chain(
            ("w", "PassThrough", "multiprocess"),
        )
    )
    with pytest.raises(FrameError, match=r"input for node 'w': a tensor of 7 dimensions"):
        check_input_kind(in_worker, "w", seven_dims())
    # Nothing leaves the supervisor: any tensor goes.
    supervisor_only = rt.plan(chain(("a", "PassThrough", "inprocess"), ("b", "PassThrough", "inprocess")))
    assert first_worker_from(supervisor_only, "a") is None
    check_input_kind(supervisor_only, "a", seven_dims())
    check_input_kind(to_worker, "src", empty_tensor())


# -- real sessions, real workers --------------------------------------------------------------------


@pytest.mark.parametrize("source", ["inprocess", "multiprocess"])
async def test_empty_frames_travel_through_shared_memory(source: str) -> None:
    doc = chain(("src", "PassThrough", source), ("w", "PassThrough", "multiprocess"))
    after = AudioFrame.from_array(np.full(4, 0.5, dtype=np.float32), 8000)
    frames = [empty_audio(), empty_tensor(), TextFrame(text=""), after]
    result = await runtime().run_pipeline(doc, {"src": frames})
    assert result.outputs["w"] == frames
    assert result.sequences["w"] == [1, 2, 3, 4]
    audio, tensor, *_ = result.outputs["w"]
    assert isinstance(audio, AudioFrame)
    assert audio.samples.shape == (0, 2)
    assert isinstance(tensor, TensorFrame)
    assert tensor.data.shape == (3, 0)


@pytest.mark.parametrize("source", ["inprocess", "multiprocess"])
async def test_a_tensor_too_big_for_shared_memory_is_refused_and_the_session_goes_on(source: str) -> None:
    doc = chain(("src", "PassThrough", source), ("w", "PassThrough", "multiprocess"))
    async with runtime().open_session(doc) as session:
        with pytest.raises(FrameError, match=r"input for node 'src'.*7 dimensions cannot travel"):
            await session.send("src", seven_dims())
        await session.send("src", TextFrame(text="after"))
        await session.close()
        outputs = [o.frame async for o in session.outputs()]
    assert outputs == [TextFrame(text="after")]
    assert session.metrics().nodes["src"].frames_in == 1  # the refused frame never reached a node


async def test_an_in_process_node_that_makes_such_a_frame_is_the_one_named() -> None:
    doc = chain(
        ("src", "PassThrough", "inprocess"),
        ("grow", "Unsqueeze", "inprocess"),
        ("w", "PassThrough", "multiprocess"),
    )
    with pytest.raises(NodeError) as caught:
        await runtime().run_pipeline(doc, {"src": TensorFrame(data=np.zeros(3, dtype=np.float32))})
    assert caught.value.node_id == "grow"
    assert caught.value.phase == "process"
    assert "8 dimensions cannot travel through shared memory" in str(caught.value)


async def test_wrong_kind_through_session_send() -> None:
    async with runtime().open_session(chain(("g", "AudioGainNode", "inprocess"))) as session:
        with pytest.raises(FrameKindError, match="accepts audio frames, not json"):
            await session.send("g", JsonFrame(value={}))
        await session.close()
