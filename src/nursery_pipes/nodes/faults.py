"""Fault-injection nodes: misbehaving on purpose, to test how a runtime handles failure,
slowness and progress.

None of these is registered by default: a runtime gets them with runtime.toml
``[nodes] testing = true`` (``nursery-pipes serve --testing-nodes``), and code
with :func:`register_testing_nodes`. ``nursery-pipes nodes --testing`` lists
them. They live in the nodes layer, not in :mod:`nursery_pipes.testing` (which
re-exports them), because the runtime and worker processes import them by
their import path and must never import the testing package.

They all have ``executor = None`` so routing rules decide where they run, and
they behave like real code in each place:

- **on the supervisor's trio thread** (``inprocess``): waiting is done with
  ``trio.sleep`` inside a coroutine returned from the hook, so the runtime can
  cancel it;
- **anywhere else** (a thread of its own, a worker process): waiting blocks the
  thread with ``time.sleep`` as heavy native code would; :class:`HangNode`
  never returns (in a ``thread`` node that thread is abandoned; in a worker
  it even ignores SIGTERM);
- nodes that would kill their process (:class:`ExitNode`, :class:`SignalNode`)
  do so only in a worker process of their own
  (``context.in_worker_process``), and raise ``RuntimeError`` anywhere else.

This module is imported by worker processes, which must stay light: it does not
import trio at import time (only inside the in-process coroutines).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal as _signal
import sys
import threading
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np

from ..frames import Frame
from ._base import Node, NodeContext, Params, ProcessResult, ProgressReporter
from ._signals import Signal

if TYPE_CHECKING:
    from ._registry import NodeRegistry

__all__ = [
    "TESTING_NODES",
    "CpuBurnNode",
    "ExitNode",
    "ForwardKillNode",
    "HangNode",
    "KeepInputNode",
    "LogNode",
    "ProgressNode",
    "RaiseNode",
    "SignalNode",
    "SleepNode",
    "register_testing_nodes",
]

T = TypeVar("T")

Phase = Literal["initialize", "process", "flush", "cleanup"]
HangPhase = Literal["initialize", "process", "flush"]
Seconds = Annotated[float, msgspec.Meta(ge=0.0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


async def _sleep_then(seconds: float, result: T) -> T:
    import trio  # lazily: workers never get here

    await trio.sleep(seconds)
    return result


async def _sleep_forever() -> None:
    import trio

    await trio.sleep_forever()


def _on_the_trio_thread() -> bool:
    """The hook runs in the supervisor's trio loop (in-process): it may hand back a coroutine.
    (Without trio imported at all, this is a worker process.)"""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _delayed(node: Node[Any], seconds: float, result: T) -> T | Awaitable[T]:
    """``result`` after ``seconds``: a cancellable coroutine in-process, else a blocking sleep."""
    if seconds <= 0:
        return result
    if _on_the_trio_thread():
        return _sleep_then(seconds, result)
    time.sleep(seconds)
    return result


class _FaultParams(Params, kw_only=True):
    """Where a fault fires: in ``phase``; for ``process``, after ``after_frames`` frames."""

    phase: str
    after_frames: Count = 0
    once: str = ""
    """A file path: the fault fires only while the file does not exist, and creates it first —
    so a node restarted after the fault (in this or another process) runs normally."""


FP = TypeVar("FP", bound=_FaultParams)


class _FaultNode(Node[FP]):
    """Shared plumbing: count frames and fire ``_fault()`` in the configured phase."""

    abstract = True  # not a node type of its own (see NodeRegistry.load_module)

    def __init__(self, params: FP, context: NodeContext) -> None:
        super().__init__(params, context)
        self._frames = 0

    def _fault(self) -> Any:
        raise NotImplementedError

    def _fires(self, phase: str) -> bool:
        if self.params.phase != phase:
            return False
        if not self.params.once:
            return True
        try:  # O_EXCL: exactly one instance, in any process, ever gets to fire
            os.close(os.open(self.params.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    def initialize(self, progress: ProgressReporter) -> Awaitable[None] | None:
        return self._fault() if self._fires("initialize") else None

    def process(self, frame: Frame) -> ProcessResult:
        self._frames += 1
        if self._frames > self.params.after_frames and self._fires("process"):
            fault = self._fault()
            if fault is not None:  # a coroutine that hangs; None if a signal was survived
                return fault  # type: ignore[no-any-return]
        return frame

    def flush(self) -> ProcessResult:
        return self._fault() if self._fires("flush") else None

    def cleanup(self) -> Awaitable[None] | None:
        return self._fault() if self._fires("cleanup") else None


# ---------------------------------------------------------------------------------------------


class SleepParams(Params, kw_only=True):
    init_seconds: Seconds = 0.0
    process_seconds: Seconds = 0.0
    """Per frame."""


class SleepNode(Node[SleepParams]):
    """Test node: pass frames through after sleeping in initialize and per frame."""

    def initialize(self, progress: ProgressReporter) -> Awaitable[None] | None:
        return _delayed(self, self.params.init_seconds, None)

    def process(self, frame: Frame) -> ProcessResult:
        return _delayed(self, self.params.process_seconds, frame)


class RaiseParams(_FaultParams, kw_only=True):
    phase: Phase
    after_frames: Count = 0
    """With phase ``process``: pass this many frames through, raise on the next."""
    message: str = "boom"


class RaiseNode(_FaultNode[RaiseParams]):
    """Test node: raise RuntimeError(message) in the chosen phase; passes frames through."""

    def _fault(self) -> Any:
        raise RuntimeError(self.params.message)


class HangParams(_FaultParams, kw_only=True):
    phase: HangPhase
    after_frames: Count = 0


class HangNode(_FaultNode[HangParams]):
    """Test node: hang forever in the chosen phase (in a worker, also ignoring SIGTERM)."""

    def _fault(self) -> Any:
        if _on_the_trio_thread():
            return _sleep_forever()
        # Like native code stuck in a C call: deaf to polite stop requests.
        if threading.current_thread() is threading.main_thread():
            _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
        while True:
            time.sleep(1)


class ExitParams(_FaultParams, kw_only=True):
    code: Annotated[int, msgspec.Meta(ge=0, le=255)] = 3
    phase: Phase
    after_frames: Count = 0


class ExitNode(_FaultNode[ExitParams]):
    """Test node: os._exit(code) in the chosen phase (worker processes only)."""

    def _fault(self) -> Any:
        if not self.context.in_worker_process:
            raise RuntimeError("ExitNode refuses to exit the supervisor process")
        os._exit(self.params.code)


class SignalParams(_FaultParams, kw_only=True):
    signal: str = "SIGKILL"
    """Signal name; ``SIGSEGV`` is a real segfault (reading address 0), others use kill()."""
    phase: Phase
    after_frames: Count = 0

    def __post_init__(self) -> None:
        if self.signal not in _signal.Signals.__members__:
            raise ValueError(f"signal: unknown signal name {self.signal!r} (e.g. 'SIGKILL')")


class SignalNode(_FaultNode[SignalParams]):
    """Test node: kill its own process with a signal in the chosen phase (worker processes only).

    If the process survives the signal (it is handled or ignored), frames keep passing.
    """

    def _fault(self) -> Any:
        if not self.context.in_worker_process:
            raise RuntimeError("SignalNode refuses to signal the supervisor process")
        if self.params.signal == "SIGSEGV":
            ctypes.string_at(0)  # a genuine invalid read, not a simulated one
        os.kill(os.getpid(), _signal.Signals[self.params.signal])
        return None


class ProgressParams(Params, kw_only=True):
    steps: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 4
    step_seconds: Seconds = 0.0


class ProgressNode(Node[ProgressParams]):
    """Test node: report initialize progress in steps ("step k/steps"); passes frames through.

    Each of the ``steps`` steps takes ``step_seconds`` and then reports ``k/steps``.
    """

    def initialize(self, progress: ProgressReporter) -> Awaitable[None] | None:
        steps, pause = self.params.steps, self.params.step_seconds
        if pause > 0 and _on_the_trio_thread():
            return self._report_async(progress)
        for k in range(1, steps + 1):
            if pause > 0:
                time.sleep(pause)
            progress(k / steps, f"step {k}/{steps}")
        return None

    async def _report_async(self, progress: ProgressReporter) -> None:
        import trio

        steps = self.params.steps
        for k in range(1, steps + 1):
            await trio.sleep(self.params.step_seconds)
            progress(k / steps, f"step {k}/{steps}")

    def process(self, frame: Frame) -> Frame:
        return frame


class CpuBurnParams(Params, kw_only=True):
    milliseconds: Annotated[float, msgspec.Meta(ge=0.0, le=60_000.0)] = 20.0
    """CPU time to spend per frame (single-threaded numpy FFTs)."""


class CpuBurnNode(Node[CpuBurnParams]):
    """Test node: burn about `milliseconds` of real CPU per frame, then pass the frame through.

    The amount of work per frame (single-threaded FFTs) is calibrated once in
    ``initialize`` against CPU time and then fixed, so under CPU contention a frame
    takes longer in wall time, like real compute.
    """

    _CALIBRATE_SECONDS = 0.01

    def __init__(self, params: CpuBurnParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._data = np.random.default_rng(0).standard_normal(1024)
        self.units_per_frame = 0

    def initialize(self, progress: ProgressReporter) -> None:
        if self.params.milliseconds <= 0:
            return
        self._burn(3)  # warm up caches and pocketfft plans before timing
        # Calibrate on this thread's CPU time, not wall time: workers started together
        # compete for cores, and preemption must not shrink the work per frame.
        units, began = 0, time.thread_time()
        while (elapsed := time.thread_time() - began) < self._CALIBRATE_SECONDS:
            self._burn(8)
            units += 8
        self.units_per_frame = max(1, round(units * self.params.milliseconds / 1000 / elapsed))

    def process(self, frame: Frame) -> Frame:
        self._burn(self.units_per_frame)
        return frame

    def _burn(self, units: int) -> None:
        data = self._data
        for _ in range(units):
            # A round trip keeps the values bounded, so no overflow warning ever fires.
            data = np.fft.irfft(np.fft.rfft(data), n=len(data))
        self._data = data


class KeepInputParams(Params, kw_only=True):
    after_frames: Count = 0
    """Pass this many frames through (keeping nothing), then keep a view of the next input."""


class KeepInputNode(Node[KeepInputParams]):
    """Test node: declares ``zero_copy = True`` (it reads its inputs in place in a worker) and
    then breaks that promise, keeping a slice of an input frame's array after ``process()``
    returns — the mistake a zero-copy node can make. Passes frames through."""

    zero_copy = True

    def __init__(self, params: KeepInputParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self.frames = 0
        self.kept: list[Any] = []

    def process(self, frame: Frame) -> Frame:
        self.frames += 1
        if self.frames > self.params.after_frames:
            data = getattr(frame, "samples", None)
            if data is None:
                data = getattr(frame, "data", None)
            if isinstance(data, np.ndarray):
                self.kept.append(data[:1])
        return frame


class ForwardKillParams(_FaultParams, kw_only=True):
    phase: Literal["process"] = "process"
    after_frames: Count = 0
    store: Annotated[int, msgspec.Meta(ge=0, le=1)] = 1
    """Which store of the ownership swap the process dies before: 0, the output slot taking the
    input's segment; 1, the input slot taking the output slot's (ipc/_ownership.py)."""


class ForwardKillNode(_FaultNode[ForwardKillParams]):
    """Test node: a ``zero_copy`` pass-through whose worker process SIGKILLs itself in the
    middle of passing a frame on by reference — between two stores of the ownership swap of
    the frame's external segment (ipc/_ownership.py), the one window a repair must mend. Fires
    on the first frame after ``after_frames``; a frame that fits a ring slot is copied, not
    forwarded, so the process dies at the next one that is forwarded. Worker processes only."""

    zero_copy = True

    def _fault(self) -> Any:
        if not self.context.in_worker_process:
            raise RuntimeError("ForwardKillNode refuses to kill the supervisor process")
        # The worker's transport is loaded (the nodes layer may not import it): wrap its store seam.
        producer = sys.modules["nursery_pipes.ipc._producer"]
        real, at, done = getattr(producer, "_store"), self.params.store, 0  # noqa: B009

        def store(words: Any, index: int, value: int) -> None:
            nonlocal done
            if done == at:
                os.kill(os.getpid(), _signal.SIGKILL)
            done += 1
            real(words, index, value)

        producer._store = store  # type: ignore[attr-defined]
        return None


class LogParams(Params, kw_only=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    message: str = "frame {n}"
    """Logged once per frame; ``{n}`` is the frame's number (1, 2, ...) at this node."""


class LogNode(Node[LogParams]):
    """Test node: log ``message`` at ``level`` through its logger for every frame, passing
    frames through — to see where a node's log lines go and what they carry."""

    def __init__(self, params: LogParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self.frames = 0

    def process(self, frame: Frame) -> Frame:
        self.frames += 1
        self.log.log(getattr(logging, self.params.level), self.params.message.format(n=self.frames))
        return frame


class SendSignalParams(Params, kw_only=True):
    when_text: str = "stop"
    """Send the signal when a text frame with exactly this text comes by."""
    name: str = "interrupt"
    to: list[str] = msgspec.field(default_factory=list)
    """The target node ids; empty: every other node of the session."""


class SendSignalNode(Node[SendSignalParams]):
    """Test node: pass frames through; send control signal ``name`` to ``to`` when the text
    ``when_text`` comes by — from wherever it runs (a worker process included)."""

    def process(self, frame: Frame) -> Frame:
        if getattr(frame, "text", None) == self.params.when_text:
            self.context.signal(self.params.name, to=self.params.to or None)
        return frame


class BlockingCallParams(Params, kw_only=True):
    call_seconds: Seconds = 30.0
    """How long the blocking call of each frame lasts unless cancelled."""
    stops_for: list[str] = msgspec.field(default_factory=lambda: ["interrupt", "cancel_turn"])
    """The signals that cancel the call (``cancel_work``)."""


class BlockingCallNode(Node[BlockingCallParams]):
    """Test node: pass each frame through after a blocking call (like a model run in C: no
    Python between its start and its end) that ``cancel_work`` ends early — the call then
    raises, as onnxruntime does when its terminate flag is set."""

    def __init__(self, params: BlockingCallParams, context: NodeContext) -> None:
        super().__init__(params, context)
        self._stop = threading.Event()
        self.cancelled: list[str] = []

    def process(self, frame: Frame) -> Frame:
        if self._stop.wait(self.params.call_seconds):
            raise RuntimeError("the call was cancelled")
        return frame

    def cancel_work(self, signal: Signal) -> None:
        if signal.name in self.params.stops_for:
            self._stop.set()

    def on_signal(self, signal: Signal) -> bool:
        self._stop.clear()  # delivered: the next call runs (a flag reset here is never stale)
        return super().on_signal(signal)


TESTING_NODES: tuple[type[Node[Any]], ...] = (
    BlockingCallNode,
    SleepNode,
    RaiseNode,
    HangNode,
    ExitNode,
    KeepInputNode,
    ForwardKillNode,
    LogNode,
    SendSignalNode,
    SignalNode,
    ProgressNode,
    CpuBurnNode,
)


def register_testing_nodes(registry: NodeRegistry) -> None:
    """Add the testing nodes to ``registry`` (origin ``nursery_pipes.testing``)."""
    for cls in TESTING_NODES:
        registry.register(cls, origin="nursery_pipes.testing")
