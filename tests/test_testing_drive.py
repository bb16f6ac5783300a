"""The hand drivers of nursery_pipes.testing: run_node_sync and the async run_node.

Both keep the node contract (cleanup once initialize was called, whatever happened) and
flatten outputs with the same helpers as the executors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from nursery_pipes import AudioFrame, FrameKind, FrameKindError, TextFrame
from nursery_pipes.frames import Frame
from nursery_pipes.nodes import Node, Params
from nursery_pipes.nodes.builtin import TextTransformNode
from nursery_pipes.testing import NodeRun, run_node, run_node_sync

FRAMES = [TextFrame(text="a"), TextFrame(text="b")]


class Calls(Params, kw_only=True):
    fail_in: str = ""
    cleanup_fails: bool = False


class Recorder(Node[Calls]):
    """Records the hooks called, in order, in the class-level ``log``; fails where told."""

    executor = "inprocess"
    accepts = produces = frozenset({FrameKind.TEXT})
    log: list[str] = []  # noqa: RUF012 — reset by the fixture below

    def _hook(self, name: str) -> None:
        self.log.append(name)
        if self.params.fail_in == name:
            raise ValueError(f"{name} failed")

    def initialize(self, progress: Any) -> None:
        self._hook("initialize")

    def process(self, frame: Frame) -> Frame:
        self._hook("process")
        return frame

    def flush(self) -> None:
        self._hook("flush")

    def cleanup(self) -> None:
        self.log.append("cleanup")
        if self.params.cleanup_fails:
            raise OSError("cleanup failed")


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    Recorder.log = []


def texts(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, TextFrame)]


# --- run_node_sync --------------------------------------------------------------------------


def test_sync_runs_every_hook_once_in_order() -> None:
    assert texts(run_node_sync(Recorder, FRAMES)) == ["a", "b"]
    assert Recorder.log == ["initialize", "process", "process", "flush", "cleanup"]


def test_sync_cleans_up_when_initialize_raises() -> None:
    with pytest.raises(ValueError, match="initialize failed"):
        run_node_sync(Recorder, FRAMES, {"fail_in": "initialize"})
    assert Recorder.log == ["initialize", "cleanup"]


@pytest.mark.parametrize("phase", ["process", "flush"])
def test_sync_cleans_up_when_a_later_hook_raises(phase: str) -> None:
    with pytest.raises(ValueError, match=f"{phase} failed"):
        run_node_sync(Recorder, FRAMES, {"fail_in": phase})
    assert Recorder.log[-1] == "cleanup"
    assert Recorder.log.count("cleanup") == 1


def test_sync_a_failing_cleanup_does_not_hide_the_first_error() -> None:
    with pytest.raises(ValueError, match="initialize failed") as info:
        run_node_sync(Recorder, FRAMES, {"fail_in": "initialize", "cleanup_fails": True})
    assert info.value.__notes__ == ["Recorder.cleanup() also failed: OSError: cleanup failed"]
    with pytest.raises(OSError, match="cleanup failed"):  # alone, it is the error
        run_node_sync(Recorder, FRAMES, {"cleanup_fails": True})


def test_sync_bad_params_never_initialize() -> None:
    with pytest.raises(Exception, match="fail_in"):
        run_node_sync(Recorder, FRAMES, {"fail_in": 3})
    assert Recorder.log == []


def test_sync_refuses_async_nodes_and_still_cleans_up() -> None:
    class AsyncInit(Recorder):
        async def initialize(self, progress: Any) -> None:  # type: ignore[override]
            self.log.append("never")

    with pytest.raises(TypeError, match=r"AsyncInit.initialize is asynchronous; use `await .*run_node"):
        run_node_sync(AsyncInit, FRAMES)
    assert Recorder.log == ["cleanup"]  # the coroutine was closed unawaited, without a warning


def test_sync_refuses_a_frame_kind_the_node_does_not_take() -> None:
    audio_only = type("AudioOnly", (Recorder,), {"accepts": frozenset({FrameKind.AUDIO})})
    with pytest.raises(
        FrameKindError, match=r"node 'AudioOnly' \(AudioOnly\) accepts audio frames, not text"
    ):
        run_node_sync(audio_only, FRAMES)
    assert Recorder.log == ["initialize", "cleanup"]


def test_sync_builtin_node() -> None:
    out = run_node_sync(TextTransformNode, FRAMES, {"operation": "upper"})
    assert texts(out) == ["A", "B"]


# --- run_node (async) -----------------------------------------------------------------------


class AsyncRecorder(Node[Calls]):
    """Every hook async; process is an async generator (streams two frames per input)."""

    executor = "inprocess"
    log: list[str] = []  # noqa: RUF012 — reset by the fixture below

    async def initialize(self, progress: Any) -> None:
        self.log.append("initialize")
        progress(0.25, "quarter")
        await trio.sleep(1)
        progress(1.0)
        if self.params.fail_in == "initialize":
            raise ValueError("initialize failed")

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        self.log.append("process")
        assert isinstance(frame, TextFrame)
        yield frame
        await trio.sleep(1)
        if self.params.fail_in == "process":
            raise ValueError("process failed")
        yield TextFrame(text=frame.text * 2)

    async def flush(self) -> list[Frame]:
        self.log.append("flush")
        return [TextFrame(text="end")]

    async def cleanup(self) -> None:
        await trio.sleep(1)  # takes time: must still finish when the run is cancelled
        self.log.append("cleanup")
        if self.params.cleanup_fails:
            raise OSError("cleanup failed")


@pytest.fixture(autouse=True)
def _fresh_async_log() -> None:
    AsyncRecorder.log = []


async def test_async_hooks_generators_and_progress(autojump_clock: trio.testing.MockClock) -> None:
    run = await run_node(AsyncRecorder, FRAMES)
    assert isinstance(run, NodeRun)
    assert texts(run.outputs) == ["a", "aa", "b", "bb", "end"]
    assert run.progress == [(0.25, "quarter"), (1.0, "")]
    assert AsyncRecorder.log == ["initialize", "process", "process", "flush", "cleanup"]


async def test_async_flush_false_skips_flush(autojump_clock: trio.testing.MockClock) -> None:
    run = await run_node(AsyncRecorder, FRAMES[:1], flush=False)
    assert texts(run.outputs) == ["a", "aa"]
    assert "flush" not in AsyncRecorder.log


async def test_async_takes_async_iterables() -> None:
    async def frames() -> AsyncIterator[Frame]:
        for frame in FRAMES:
            yield frame

    run = await run_node(TextTransformNode, frames(), {"operation": "upper"})
    assert texts(run.outputs) == ["A", "B"]


async def test_async_runs_sync_nodes_like_the_sync_driver() -> None:
    run = await run_node(Recorder, FRAMES)
    assert texts(run.outputs) == texts(run_node_sync(Recorder, FRAMES))
    assert run.progress == []
    assert Recorder.log == ["initialize", "process", "process", "flush", "cleanup"] * 2


@pytest.mark.parametrize("phase", ["initialize", "process"])
async def test_async_cleans_up_after_a_failure(phase: str, autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match=f"^{phase} failed\n") as info:  # then the note
        await run_node(AsyncRecorder, FRAMES, {"fail_in": phase, "cleanup_fails": True})
    assert AsyncRecorder.log[-1] == "cleanup"
    assert AsyncRecorder.log.count("cleanup") == 1
    assert info.value.__notes__ == ["AsyncRecorder.cleanup() also failed: OSError: cleanup failed"]


async def test_async_cleanup_runs_shielded_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1.5) as scope:  # inside the first process(): 1 s init + 0.5 s
        await run_node(AsyncRecorder, FRAMES)
    assert scope.cancelled_caught
    assert AsyncRecorder.log == ["initialize", "process", "cleanup"]  # its 1 s sleep finished


async def test_async_cleanup_that_overruns_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    class Stuck(Recorder):
        async def cleanup(self) -> None:  # type: ignore[override]
            await trio.sleep_forever()

    began = trio.current_time()
    with pytest.raises(trio.TooSlowError, match=r"^Stuck.cleanup\(\) did not finish within 0.5 s$"):
        await run_node(Stuck, FRAMES, cleanup_timeout=0.5)
    assert trio.current_time() - began == pytest.approx(0.5)


async def test_async_refuses_what_the_executor_refuses() -> None:
    class Wrong(Recorder):
        def process(self, frame: Frame) -> Any:
            return ["not a frame"]

    with pytest.raises(TypeError, match=r"^Wrong.process produced str, expected a Frame$"):
        await run_node(Wrong, FRAMES)
    with pytest.raises(FrameKindError, match="accepts text frames, not audio"):
        await run_node(Recorder, [AudioFrame.from_array(np.zeros(4, dtype=np.float32), sample_rate=8000)])
    assert Recorder.log == ["initialize", "cleanup", "initialize", "cleanup"]
