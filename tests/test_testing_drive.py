"""The hand drivers of nursery_pipes.testing: run_node_sync and the async run_node.

Both keep the node contract (cleanup once initialize was called, whatever happened) and
flatten outputs with the same helpers as the executors.
"""

from __future__ import annotations

from typing import Any

import pytest

from nursery_pipes import FrameKind, FrameKindError, TextFrame
from nursery_pipes.frames import Frame
from nursery_pipes.nodes import Node, Params
from nursery_pipes.nodes.builtin import TextTransformNode
from nursery_pipes.testing import run_node_sync

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
