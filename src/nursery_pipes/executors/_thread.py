"""The thread executor: a synchronous node in a thread of its own, inside the supervisor.

A node that blocks — a model call, a resampler, file I/O — stalls every
session of an in-process runtime, since all of them share one trio thread. A
worker process fixes that at the cost of copying every frame into shared
memory and back. A thread fixes it for free whenever the node's work releases
the GIL (numpy, onnxruntime, soxr, I/O, ``time.sleep``): frames stay Python
objects, the node's edges stay trio memory channels, and only the node's
hooks move to its thread (:class:`NodeThread`), one call at a time, always
the same thread (libraries that keep thread-local state are safe).

Work that holds the GIL (pure-Python loops) gains nothing here: use
``multiprocess`` for it.

Shutdown contract, and what the grace period means for a thread. A thread
cannot be killed, so:

- **ask**: the node gets no more frames, and the supervisor stops waiting for
  the hook that is running (a cancelled session does not wait for it);
- **grace**: ``cleanup()`` is queued behind that hook; both get
  ``grace_period_secs`` to finish, then the thread is told to exit;
- **kill** — impossible: a hook still running after the grace period is
  *abandoned*. Its thread is a daemon, runs on until the hook returns, then
  exits; its results go nowhere; a warning names the node. The session ends
  on time regardless.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from .._errors import NodeError
from ..frames import Frame
from ..nodes._base import Node, cancels_work
from ..nodes._calls import check_frame
from ..nodes._signals import Signal
from ._abc import Placement
from ._host import NodeHost
from ._inprocess import (
    HookRunner,
    InProcessExecutor,
    Pump,
    SignalAbort,
    cleanup_failed,
    initializing,
    node_failure,
)
from ._ports import SupervisorPorts

__all__ = ["NodeThread", "ThreadExecutor"]

_DONE = object()

logger = logging.getLogger("nursery_pipes.executors.thread")


class ThreadExecutor(InProcessExecutor):
    """Synchronous nodes, each in a dedicated thread of the supervisor process."""

    name = "thread"
    placement = Placement.SUPERVISOR
    runs_async = False
    threads_per_node = 1

    @asynccontextmanager
    async def hooks(self, host: NodeHost) -> AsyncIterator[HookRunner]:
        thread = NodeThread(f"nursery-pipes node {host.node_id} ({host.node_type})")
        try:
            yield _ThreadHooks(host, thread)
        finally:
            with trio.CancelScope(shield=True):
                if not await thread.stop(host.settings.grace_period_secs):
                    host.logger.warning(
                        "node %s: its thread was still running a hook %g s (the grace period) after the "
                        "node was stopped; threads cannot be killed, so it is abandoned and exits when "
                        "the hook returns",
                        host.node_id,
                        host.settings.grace_period_secs,
                    )


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    waiter: trio.lowlevel.Task | None


class NodeThread:
    """One dedicated thread that runs a node's calls, one at a time, in order.

    :meth:`run` hands a call over and sleeps in trio until the thread reports the
    outcome through ``run_sync_soon``; no trio thread cache, no polling. Cancelling
    :meth:`run` stops the *waiting*, never the call.
    """

    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()
        self._exited = trio.Event()
        # The thread runs in a copy of this task's context: the node's log lines carry its
        # session and node ids (nursery_pipes._logging) like an in-process node's.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._main,), name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread; its result, or its exception re-raised here."""
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(fn, args, trio.lowlevel.current_task())
        self._submit(job)

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.waiter = None  # the call goes on; nobody waits for its result any more
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # the call's outcome, unwrapped

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` without waiting for it (from the thread's own calls: progress)."""
        self._token.run_sync_soon(fn, *args)

    async def stop(self, grace: float) -> bool:
        """Let queued calls finish within ``grace`` seconds, then let the thread exit.
        False if a call was still running: the thread is abandoned (see the module docstring)."""
        with trio.move_on_after(grace):
            await self._idle.wait()
        self._jobs.put(None)
        if not self._idle.is_set():
            return False
        await self._exited.wait()  # the thread took the stop marker and is returning
        return True

    def _submit(self, job: _Job) -> None:
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        self._jobs.put(job)

    def _finished(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        """In the trio thread: one call is over."""
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
        if job.waiter is not None:
            trio.lowlevel.reschedule(job.waiter, result)

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            result = outcome.capture(job.fn, *job.args)
            try:
                self._token.run_sync_soon(self._finished, job, result)
            except trio.RunFinishedError:
                return  # trio is gone: nobody is left to tell
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._exited.set)


class _ThreadHooks(HookRunner):
    """Runs every hook of one node in its :class:`NodeThread`."""

    def __init__(self, host: NodeHost, thread: NodeThread) -> None:
        super().__init__(host)
        self.thread = thread

    async def initialize(self, node: Node[Any]) -> None:
        host, thread = self.host, self.thread

        def report(fraction: float, message: str = "") -> None:  # called in the node's thread
            thread.call_soon(host.progress, "loading", fraction, message)

        with initializing(host), trio.fail_after(host.settings.init_timeout_secs):
            await thread.run(node.initialize, report)

    def pump(self, node: Node[Any], ports: SupervisorPorts) -> Pump:
        return _ThreadPump(node, self.host, ports, self.thread)

    async def cleanup(self, node: Node[Any]) -> None:
        host = self.host
        with trio.CancelScope(shield=True), trio.move_on_after(host.settings.grace_period_secs) as scope:
            try:
                await self.thread.run(node.cleanup)
            except Exception as exc:
                cleanup_failed(host, exc)
        if scope.cancelled_caught:
            host.logger.warning(
                "node %s: cleanup() did not finish within the grace period (%g s)",
                host.node_id,
                host.settings.grace_period_secs,
            )


class _ThreadPump(Pump):
    """The in-process pump, with ``process``/``flush`` (and each step of a generator they
    return) run in the node's thread; outputs go on as soon as each one exists."""

    def __init__(self, node: Node[Any], host: NodeHost, ports: SupervisorPorts, thread: NodeThread) -> None:
        super().__init__(node, host, ports)
        self.thread = thread
        self._cancels = cancels_work(node)

    async def _run(self, in_flight: int | None, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the node's thread. For a node that can cancel its work, a signal that
        arrives meanwhile goes to its ``cancel_work`` at once (from this, the trio thread); if
        the code then raises, the signals are delivered first, and one that drops makes the
        error part of the abort."""
        if not self._cancels:
            return await self.thread.run(fn, *args)
        mailbox, told = self.ports.signals, []

        def tell(signal: Signal) -> None:
            told.append(signal)
            try:
                self.node.cancel_work(signal)
            except Exception:  # the signal still reaches on_signal once the code returns
                logger.exception(
                    "node %r: %s.cancel_work failed for signal %r; it is delivered when the hook returns",
                    self.host.node_id,
                    self.host.node_type,
                    signal.name,
                )

        mailbox.busy_with = tell
        try:
            return await self.thread.run(fn, *args)
        except Exception:
            mailbox.busy_with = None
            if told and await self.handle_signals(in_flight):
                raise SignalAbort from None
            raise
        finally:
            mailbox.busy_with = None

    async def signal_hook(self, signal: Signal) -> bool:
        try:
            return bool(await self.thread.run(self.node.on_signal, signal))
        except Exception as exc:
            raise node_failure(self.host.node_id, "on_signal", exc) from exc

    async def call_hook(self, phase: str, hook: Any, *args: Any) -> None:
        metrics = self.host.metrics
        where = f"{self.host.node_type}.{phase}"
        try:
            in_flight = self.last_seq if phase == "process" else None
            began = time.perf_counter()
            result = await self._run(in_flight, hook, *args)
            metrics.processing_s += time.perf_counter() - began
            if result is None or isinstance(result, (Frame, list, tuple)):
                await self.emit_all(result, where)
                return
            try:
                iterator = iter(result)
            except TypeError:
                raise TypeError(
                    f"{where} returned {type(result).__name__}, expected a Frame, frames or None"
                ) from None
            while True:
                began = time.perf_counter()
                item = await self._run(in_flight, next, iterator, _DONE)
                metrics.processing_s += time.perf_counter() - began
                if item is _DONE:
                    return
                try:
                    await self.emit(check_frame(item, where))
                except SignalAbort:
                    if hasattr(iterator, "close"):  # a generator: stop it at its yield
                        await self.thread.run(iterator.close)
                    raise
        except (NodeError, trio.Cancelled, SignalAbort):
            raise
        except Exception as exc:
            raise node_failure(self.host.node_id, phase, exc) from exc
