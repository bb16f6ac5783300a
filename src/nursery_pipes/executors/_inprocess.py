"""The in-process executor: a node as a trio task inside the supervisor.

Light nodes live here. Their hooks run on the trio thread (async hooks are
awaited; sync hooks must be quick), so an in-process node is stopped by
cancellation alone — there is no process to kill. ``cleanup()`` still runs
under a shielded scope bounded by the grace period.

The node's life — initialise within the deadline, pump its inbox through
``process()``, flush, end its outputs, clean up — is the same for every
executor placed in the supervisor; only *where the hooks run* differs.
:class:`HookRunner` is that difference: this module's runs them on the trio
thread, the thread executor's in the node's own thread.
"""

from __future__ import annotations

import contextlib
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager
from typing import Any

import trio

from .._errors import NodeError, NodeInitTimeout
from .._states import NodeEvent
from ..frames import Frame
from ..nodes._base import Node
from ..nodes._calls import aiter_outputs, check_frame
from ..nodes._signals import FLUSH, Signal
from ..worker import sampled
from ._abc import Executor, NodePorts, Placement
from ._host import NodeHost
from ._ports import EndOfStream, Envelope, SupervisorPorts, Wake

__all__ = ["HookRunner", "InProcessExecutor", "Pump", "SignalAbort", "node_failure"]


def node_failure(node_id: str, phase: str, exc: BaseException) -> NodeError:
    """Wrap an exception raised by node code, keeping its traceback text."""
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = "".join(traceback.format_exception(exc))
    return NodeError(node_id, phase, message, remote_traceback=tb)


@contextmanager
def initializing(host: NodeHost) -> Iterator[float]:
    """Around a node's ``initialize``, wherever it runs: a ``trio.TooSlowError`` from inside
    is the init timeout (:class:`NodeInitTimeout`), any other exception the node's failure in
    phase ``initialize``; ``metrics.init_s`` is recorded either way. Yields the start time
    (``time.perf_counter``)."""
    started = time.perf_counter()
    try:
        yield started
    except trio.TooSlowError:
        raise NodeInitTimeout(host.node_id, host.settings.init_timeout_secs) from None
    except Exception as exc:
        raise node_failure(host.node_id, "initialize", exc) from exc
    finally:
        host.metrics.init_s = time.perf_counter() - started


class InProcessExecutor(Executor):
    """Light nodes as trio tasks in the supervisor: sync or async hooks, no copies, no process."""

    name = "inprocess"
    placement = Placement.SUPERVISOR
    runs_async = True

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        assert isinstance(ports, SupervisorPorts), "the planner gives supervisor-placed nodes SupervisorPorts"
        host.progress("starting", 0.0)
        host.state.fire(NodeEvent.START)
        node = host.new_node()
        async with self.hooks(host) as hooks:
            try:
                await hooks.initialize(node)
                host.state.fire(NodeEvent.INIT_DONE)
                host.progress("ready", 1.0)
                task_status.started()
                await hooks.pump(node, ports).run()
                host.state.fire(NodeEvent.FINISHED)
            except NodeError as exc:
                host.state.fire(NodeEvent.FAIL)
                if exc.phase == "initialize":
                    host.progress("failed", 0.0, str(exc))
                host.report_failure(exc)  # before cleanup(), which may take the grace period
                raise
            finally:
                await hooks.cleanup(node)

    def hooks(self, host: NodeHost) -> AbstractAsyncContextManager[HookRunner]:
        """Where this executor runs a node's hooks, for the node's lifetime."""
        return _on_the_trio_thread(host)


@asynccontextmanager
async def _on_the_trio_thread(host: NodeHost) -> AsyncIterator[HookRunner]:
    yield HookRunner(host)


class HookRunner:
    """Runs a node's hooks on the trio thread (subclasses run them elsewhere)."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    async def initialize(self, node: Node[Any]) -> None:
        host = self.host
        timeout = host.settings.init_timeout_secs
        deadline = trio.current_time() + timeout  # trio's clock: tests may run it virtually

        def report(fraction: float, message: str = "") -> None:
            host.progress("loading", fraction, message)

        with initializing(host) as started:
            # A synchronous initialize cannot be interrupted anyway: only an awaitable needs
            # the deadline (and its cancel scope) around it.
            result = node.initialize(report)
            if inspect.isawaitable(result):
                with trio.fail_at(deadline):
                    await result
            elif time.perf_counter() - started > timeout:
                raise trio.TooSlowError  # a blocking initialize that overran: same verdict

    def pump(self, node: Node[Any], ports: SupervisorPorts) -> Pump:
        return Pump(node, self.host, ports)

    async def cleanup(self, node: Node[Any]) -> None:
        host = self.host
        try:
            result = node.cleanup()
        except Exception as exc:
            cleanup_failed(host, exc)
            return
        if not inspect.isawaitable(result):
            return
        # Shielded: an async cleanup must run even when the session is being cancelled,
        # but never for longer than the grace period.
        with trio.CancelScope(shield=True), trio.move_on_after(host.settings.grace_period_secs) as scope:
            try:
                await result
            except Exception as exc:
                cleanup_failed(host, exc)
        if scope.cancelled_caught:
            host.logger.warning(
                "node %s: cleanup() did not finish within the grace period (%g s)",
                host.node_id,
                host.settings.grace_period_secs,
            )


class SignalAbort(Exception):
    """A control signal dropped the frame in flight (raised out of emit, caught by the pump)."""


class Pump:
    """Moves frames: inbox → node.process → output ports, then flush and end of stream.

    Control signals (``ports.signals``) are looked at before each frame is taken and before
    each output is sent, so they overtake the frames queued in the inbox."""

    def __init__(self, node: Node[Any], host: NodeHost, ports: SupervisorPorts) -> None:
        self.node = node
        self.host = host
        self.ports = ports
        self.inbox = ports.inbox
        self.last_seq = 0
        self.accepts = type(node).accepts
        self.trace = host.trace

    async def run(self) -> None:
        ports, host = self.ports, self.host
        if ports.open_inputs:  # (a node restarted after its inputs ended goes straight to flush)
            await self._take_all(ports, host)
        host.state.fire(NodeEvent.STOP)
        if ports.outputs_ended:  # restarted after its predecessor had ended every output
            return
        with contextlib.suppress(SignalAbort):  # an interrupt during the final flush drops the rest
            await self.call_hook("flush", self.node.flush)
        for port in ports.outputs:
            await port.end()
        ports.outputs_ended = True

    async def _take_all(self, ports: SupervisorPorts, host: NodeHost) -> None:
        metrics, signals = host.metrics, ports.signals
        while True:
            if signals:  # ahead of every frame still queued
                await self.handle_signals(None)
                if not ports.open_inputs:
                    return
            message = await ports.receive()
            if message is None:
                return
            if isinstance(message, Wake):  # woken for a signal: handled at the top of the loop
                continue
            if isinstance(message, EndOfStream):
                ports.open_inputs -= 1
                if ports.open_inputs == 0:
                    return
                continue
            frame = message.frame
            if frame.kind not in self.accepts:
                raise NodeError(
                    host.node_id,
                    "process",
                    f"{host.node_type} does not accept {frame.kind.label} frames "
                    f"(accepts {', '.join(sorted(k.label for k in self.accepts))}); it came from {message.source}",
                )
            metrics.count_in(frame)
            self.last_seq = message.seq
            host.in_flight = message.seq  # taken: if the node fails now, this frame is lost
            host.state.fire(NodeEvent.FRAME)
            try:
                threshold = self.trace.threshold
                if threshold and sampled(message.seq, threshold):
                    await self._process_traced(frame, message.seq)
                else:
                    await self.call_hook("process", self.node.process, frame)
            except SignalAbort:  # a signal dropped it: reported as such
                pass
            host.state.fire(NodeEvent.FRAME_DONE)
            host.in_flight = None

    async def handle_signals(self, in_flight: int | None) -> bool:
        """Give the node each pending signal (ahead of its queued frames); True if one asked
        to drop: the queued frames are then gone, and the caller aborts the frame in flight."""
        dropping = False
        for signal in self.ports.signals.take():
            drop = await self.signal_hook(signal)
            dropped = self._drop_queued() if drop else ()
            aborted = in_flight if drop and not dropping else None
            self.host.on_signal_handled(signal, dropped, aborted)
            dropping = dropping or drop
            if signal.name == FLUSH and not drop:
                with contextlib.suppress(SignalAbort):
                    await self.call_hook("flush", self.node.flush)
        return dropping

    async def signal_hook(self, signal: Signal) -> bool:
        """``node.on_signal(signal)`` where this executor runs hooks."""
        try:
            return bool(self.node.on_signal(signal))
        except Exception as exc:
            raise node_failure(self.host.node_id, "on_signal", exc) from exc

    def _drop_queued(self) -> tuple[int, ...]:
        """Take every frame queued in the inbox now, keeping count of ends of stream."""
        dropped: list[int] = []
        while True:
            try:
                message = self.inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return tuple(dropped)
            if isinstance(message, EndOfStream):
                self.ports.open_inputs -= 1
            elif isinstance(message, Envelope):
                dropped.append(message.seq)

    async def _process_traced(self, frame: Frame, seq: int) -> None:
        """``process`` of a sampled frame, timed for tracing: from the call to its last output
        handed on (waits for room downstream included), or to the error that fails the node."""
        metrics, started = self.host.metrics, time.time_ns()
        bytes_out = metrics.bytes_out
        try:
            await self.call_hook("process", self.node.process, frame)
        except NodeError as exc:
            self.trace.frame(
                seq, started, time.time_ns(), frame.nbytes, metrics.bytes_out - bytes_out, str(exc)
            )
            raise
        self.trace.frame(seq, started, time.time_ns(), frame.nbytes, metrics.bytes_out - bytes_out)

    async def call_hook(self, phase: str, hook: Any, *args: Any) -> None:
        """Run a hook, forwarding each output as soon as it exists; time only the node's own work."""
        metrics = self.host.metrics
        began = time.perf_counter()
        waiting = 0.0
        where = f"{self.host.node_type}.{phase}"
        try:
            result = hook(*args)
            if result is None or isinstance(result, (Frame, list, tuple)):
                # Fast path for the common plain-return forms: no generator machinery, and the
                # loop of emit_all() inlined (one coroutine less per frame: ~2 % in bench_inprocess).
                metrics.processing_s += time.perf_counter() - began
                for out in () if result is None else (result,) if isinstance(result, Frame) else result:
                    await self.emit(check_frame(out, where))
                return
            async with aclosing(aiter_outputs(result, where)) as outputs:
                async for out in outputs:
                    paused = time.perf_counter()
                    await self.emit(out)
                    waiting += time.perf_counter() - paused
        except (NodeError, trio.Cancelled, SignalAbort):
            raise
        except Exception as exc:
            raise node_failure(self.host.node_id, phase, exc) from exc
        else:
            metrics.processing_s += time.perf_counter() - began - waiting

    async def emit_all(self, result: Frame | list[Any] | tuple[Any, ...] | None, where: str) -> None:
        for out in () if result is None else (result,) if isinstance(result, Frame) else result:
            await self.emit(check_frame(out, where))

    async def emit(self, frame: Frame) -> None:
        if self.ports.signals and await self.handle_signals(self.host.in_flight):
            raise SignalAbort  # the frame in flight is dropped: this output and the rest go nowhere
        self.host.metrics.count_out(frame)
        for port in self.ports.outputs:
            await port.send(self.last_seq, frame)


def cleanup_failed(host: NodeHost, exc: Exception) -> None:
    host.logger.warning(
        "node %s: cleanup() raised %s: %s", host.node_id, type(exc).__name__, exc, exc_info=exc
    )
