"""The ``threadpool`` executor: synchronous nodes whose hook calls share one bounded pool of threads.

The built-in ``thread`` executor gives every node a thread of its own for its
whole life: a hundred nodes that each block now and then (a database query, a
file read, a small model call) hold a hundred threads. Here each hook *call*
borrows a thread from one pool shared by every node of every session of the
trio run (``trio.to_thread.run_sync`` with one ``trio.CapacityLimiter``), and
gives it back when it returns. At most ``NURSERY_PIPES_THREADPOOL_SIZE`` calls
run at once (default ``min(32, CPUs + 4)``, as ``concurrent.futures`` does);
the others wait for a thread. Frames stay Python objects and a node's edges
stay trio memory channels, exactly as for ``inprocess`` and ``thread``: this
module only changes *where the hooks run* (a :class:`HookRunner` and a
:class:`Pump` of its own), and reuses everything else of
:class:`InProcessExecutor`.

What that costs, compared with ``thread``:

- a node's calls still run one at a time and in order, but each on whichever
  pool thread is free: a node must not keep thread-local state (a library that
  binds a handle to the thread that made it needs ``thread``);
- a call first waits for a free thread. For ``initialize`` that wait counts
  against ``init_timeout_secs``; and a pool whose every thread is blocked holds
  up every other node on it (size the pool for the calls that may block at once).

Shutdown contract, and what the grace period means here. A thread cannot be
killed, so:

- **ask**: the node gets no more frames, and the supervisor stops waiting for
  the hook call that is running (the call is abandoned to its thread; whatever
  it returns goes nowhere);
- **grace**: ``cleanup()`` runs after that call, never beside it — on a free
  pool thread if no call is running, otherwise on the running call's own thread
  as soon as it returns. The supervisor waits at most ``grace_period_secs`` for
  it;
- **kill** — impossible: a call still running after the grace period is
  *abandoned*. Its thread stays busy, and counted in the pool, until the call
  returns; it then runs the node's ``cleanup()`` and goes back to the pool. A
  warning names the node. The session ends on time regardless.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from nursery_pipes import ConfigError, Frame, Node, NodeError, RuntimeConfig
from nursery_pipes.executors import (
    HookRunner,
    InProcessExecutor,
    NodeHost,
    Placement,
    Pump,
    SupervisorPorts,
    check_frame,
    cleanup_failed,
    initializing,
    node_failure,
)

__all__ = ["SIZE_VARIABLE", "PoolStatistics", "ThreadPoolExecutor", "default_pool_size", "pool_size_from_env"]

SIZE_VARIABLE = "NURSERY_PIPES_THREADPOOL_SIZE"
"""The environment variable that sets the pool's size (read when a Runtime is created)."""

_POOL: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("nursery_pipes_threadpool")
# One pool per trio run, never longer: a call abandoned in a run that has ended never gives its
# thread back (trio cannot tell the limiter any more), so a pool kept across runs would shrink.

_DONE = object()


def default_pool_size() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def pool_size_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """The pool size :data:`SIZE_VARIABLE` asks for, or :func:`default_pool_size` if it is unset."""
    raw = environ.get(SIZE_VARIABLE, "").strip()
    if not raw:
        return default_pool_size()
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(f"{SIZE_VARIABLE}={raw!r}: expected a whole number of threads, at least 1")
    return size


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """The shared pool at one moment."""

    size: int
    """How many hook calls may run at once."""
    busy: int
    """Threads running a call now (abandoned calls included: their threads are busy too)."""
    waiting: int
    """Calls waiting for a free thread."""


class ThreadPoolExecutor(InProcessExecutor):
    """Synchronous nodes in the supervisor, their hook calls on one bounded pool of threads."""

    name = "threadpool"
    placement = Placement.SUPERVISOR
    runs_async = False
    # threads_per_node stays 0: the pool's size bounds its threads, however many nodes use it.

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self.pool_size = pool_size_from_env()  # a bad value stops the Runtime from being created

    def limiter(self) -> trio.CapacityLimiter:
        """The pool of the current trio run (made on first use, with this executor's size)."""
        try:
            return _POOL.get()
        except LookupError:
            limiter = trio.CapacityLimiter(self.pool_size)
            _POOL.set(limiter)
            return limiter

    def statistics(self) -> PoolStatistics:
        stats = self.limiter().statistics()
        return PoolStatistics(int(stats.total_tokens), stats.borrowed_tokens, stats.tasks_waiting)

    @asynccontextmanager
    async def hooks(self, host: NodeHost) -> AsyncIterator[HookRunner]:
        yield _PoolHooks(host, NodeCalls(host, self.limiter()))


class NodeCalls:
    """One node's calls on the shared pool: one at a time, in order, each on a free thread.

    Invariant: once :meth:`close` has begun, no call of the node starts, and ``cleanup()``
    runs after the last call that did start, never beside it. ``_lock`` guards the hand-off
    between the trio thread (:meth:`close`) and the pool thread finishing a call
    (``_running``, ``_closed``, ``_after``): whichever takes the lock second sees what the
    other did, so the cleanup is run either by :meth:`close` (no call running) or by the
    call's own thread (one is) — never both, never neither.
    """

    def __init__(self, host: NodeHost, limiter: trio.CapacityLimiter) -> None:
        self.host = host
        self.abandoned = False
        """A call was still running when the node closed: the cleanup waits behind it."""
        self._limiter = limiter
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        self._after: Callable[[], None] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """``fn(*args)`` on a pool thread: its result and the seconds it ran there (the wait for
        a thread not counted), or its exception re-raised here. Cancelling this stops the
        waiting, not the call."""
        return await trio.to_thread.run_sync(
            self._in_thread,
            fn,
            args,
            limiter=self._limiter,
            abandon_on_cancel=True,
            thread_name=f"nursery-pipes threadpool {self.host.node_id}.{getattr(fn, '__name__', 'call')}",
        )

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """From a pool thread: ``fn(*args)`` in the trio thread, unless the node has closed by then
        (an initialize abandoned at its deadline reports no more progress)."""

        def deliver() -> None:
            if not self._closed:
                fn(*args)

        # run_sync_soon is FIFO: what a call reports arrives before the call's own result.
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(deliver)

    async def close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup()`` after the node's last call, on the pool, and wait for it. Cancelling
        the wait abandons it: a cleanup behind a running call still runs when the call returns."""
        done = trio.Event()

        def last() -> None:
            try:
                cleanup()
            finally:
                with suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(done.set)

        with self._lock:
            self._closed = True
            self.abandoned = self._running
            if self.abandoned:
                self._after = last
        if not self.abandoned:
            await trio.to_thread.run_sync(
                last,
                limiter=self._limiter,
                abandon_on_cancel=True,
                thread_name=f"nursery-pipes threadpool {self.host.node_id}.cleanup",
            )
        await done.wait()

    def _in_thread(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
        with self._lock:
            if self._closed:
                # Only a call abandoned before a thread took it up gets here; nobody waits for it.
                raise RuntimeError(f"node {self.host.node_id} is closed: its hooks no longer run")
            self._running = True
        began = time.perf_counter()
        try:
            return fn(*args), time.perf_counter() - began
        finally:
            with self._lock:
                self._running = False
                after, self._after = self._after, None
            if after is not None:
                after()  # this node's cleanup, deferred behind the call that just returned


class _PoolHooks(HookRunner):
    """Runs every hook of one node through its :class:`NodeCalls`."""

    def __init__(self, host: NodeHost, calls: NodeCalls) -> None:
        super().__init__(host)
        self.calls = calls

    async def initialize(self, node: Node[Any]) -> None:
        host, calls = self.host, self.calls

        def report(fraction: float, message: str = "") -> None:  # called in a pool thread
            calls.call_soon(host.progress, "loading", fraction, message)

        # the wait for a free thread counts against the init timeout too
        with initializing(host), trio.fail_after(host.settings.init_timeout_secs):
            await calls.run(node.initialize, report)

    def pump(self, node: Node[Any], ports: SupervisorPorts) -> Pump:
        return _PoolPump(node, self.host, ports, self.calls)

    async def cleanup(self, node: Node[Any]) -> None:
        host = self.host
        grace = host.settings.grace_period_secs
        # Shielded: the cleanup runs even when the session is being cancelled, but the
        # supervisor never waits for it longer than the grace period.
        with trio.CancelScope(shield=True), trio.move_on_after(grace) as scope:
            await self.calls.close(lambda: _cleanup(host, node))
        if not scope.cancelled_caught:
            return
        if self.calls.abandoned:
            host.logger.warning(
                "node %s: a hook was still running on its pool thread %g s (the grace period) after "
                "the node was stopped; threads cannot be killed, so it is abandoned, and cleanup() "
                "runs on that thread when the hook returns",
                host.node_id,
                grace,
            )
        else:
            host.logger.warning(
                "node %s: cleanup() did not finish within the grace period (%g s); it goes on in its "
                "pool thread (or never starts, if no thread was free)",
                host.node_id,
                grace,
            )


def _cleanup(host: NodeHost, node: Node[Any]) -> None:
    """In a pool thread: the node's cleanup(); a failure there is logged, never raised."""
    try:
        node.cleanup()
    except Exception as exc:
        cleanup_failed(host, exc)


class _PoolPump(Pump):
    """The in-process pump, with ``process``/``flush`` — and each step of a generator they
    return — run on the pool; each output goes on as soon as it exists."""

    def __init__(self, node: Node[Any], host: NodeHost, ports: SupervisorPorts, calls: NodeCalls) -> None:
        super().__init__(node, host, ports)
        self.calls = calls

    async def call_hook(self, phase: str, hook: Any, *args: Any) -> None:
        where = f"{self.host.node_type}.{phase}"
        try:
            result = await self._work(hook, *args)
            if result is None or isinstance(result, (Frame, list, tuple)):
                await self.emit_all(result, where)
                return
            steps = _iterate(result, where)
            while (item := await self._work(next, steps, _DONE)) is not _DONE:
                await self.emit(check_frame(item, where))
        except NodeError:
            raise
        except Exception as exc:
            raise node_failure(self.host.node_id, phase, exc) from exc

    async def _work(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A call on the pool; only the time it ran there counts as the node's processing time."""
        result, seconds = await self.calls.run(fn, *args)
        self.host.metrics.processing_s += seconds
        return result


def _iterate(result: Any, where: str) -> Iterator[Any]:
    try:
        return iter(result)
    except TypeError:
        raise TypeError(
            f"{where} returned {type(result).__name__}, expected a Frame, frames or None"
        ) from None
