"""The multiprocess executor: one node per worker process, supervised from trio.

Per node, two tasks in one nursery: the *job* (``WorkerPool.run`` of the
worker-side :func:`~nursery_pipes.worker.run_node`) and the *event follower*
(progress, ready, stats, failure, done from the worker's events ring).

Shutdown contract (see also ``worker/_main.py``)::

    cancelled / failed / init timeout
        └─ ask:   abort the node's rings — a worker blocked in a ring wakes,
                  cleans up and returns
        └─ grace: wait up to grace_period_secs for the job to end
        └─ kill:  cancel the job → trio-parallel SIGKILLs the worker; wait until reaped

The job runs inside a cancel scope shielded from the session's cancellation,
so the ask → grace → kill sequence decides when the worker dies, not the
first cancel that happens to arrive. That sequence itself runs shielded, in a
``finally``: it cannot be skipped.

A crash — exception, non-zero exit, signal, OOM kill — is seen as an event,
never by polling: a failure event from the worker, or trio-parallel noticing
the process exit (``BrokenWorkerError``, via the process sentinel).

A failure is reported (``host.report_failure``) the moment it is known — the
worker's failure event, or the init deadline — before the ask → grace → kill
sequence: the session's outcome is visible at the deadline, not a grace
period later, while the worker is still being stopped inside the session's
nursery.

Fused runs (``fuse_chains``: ``NodeHost.chain``, one worker for a chain a → b → c):

- the **head** (a) runs the worker, once every member has registered: its job names the
  members after it (``WorkerJob.run``), its ports hold a's input rings and c's output rings
  (the wiring made no ring inside the run), and it applies the worker's events to the node
  each one names — progress, counters, signals handled or sent, sampled frames;
- every other **member** (b, c) only mirrors the run: it is ready when the worker is (every
  node of the run initialised, within the head's ``init_timeout_secs``), and finishes when
  the head's job has finished normally;
- a **failure** of any node of the run fails the head — the error names the node that
  raised — so the session's policy restarts (or stops) the run as one, while the members
  wait; the head's ports are the rings the run's worker held, so its repair is the run's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from .._config import RuntimeConfig
from .._errors import NodeCrashed, NodeError, NodeInitTimeout
from .._states import NodeEvent
from ..ipc import EndOfStream, RingAbortedError
from ..nodes._base import Node
from ..nodes._registry import import_ref
from ..nodes._signals import Signal
from ..worker import WorkerJob, WorkerStage
from ..worker._events import decode_event
from ._abc import Executor, NodePorts, NodeRunner, Placement
from ._host import NodeHost
from ._pool import WorkerPool
from ._rings import TrioConsumer
from ._transport import ShmPorts

__all__ = ["MultiprocessExecutor"]


class MultiprocessExecutor(Executor):
    """Each node in its own worker process (trio-parallel), its edges in shared memory.

    Sessions of a runtime entered with ``async with`` share one worker pool (and its warm
    workers, ``[multiprocess] warm_pool``); otherwise each session opens a pool of its own.
    """

    name = "multiprocess"
    placement = Placement.SHARED_MEMORY
    processes_per_node = 1
    fuses_on_request = True

    def __init__(self, config: RuntimeConfig) -> None:
        super().__init__(config)
        self._shared: WorkerPool | None = None

    @property
    def shared_pool(self) -> WorkerPool | None:
        """The pool sessions share while the runtime is entered (``async with``), else None."""
        return self._shared

    def unsupported(self, node_class: type[Node[Any]]) -> str | None:
        if node_class.__module__ == "__main__" or "<locals>" in node_class.__qualname__:
            return (
                f"its class {node_class.__module__}.{node_class.__qualname__} is not importable by a worker "
                "process (define it in a module, not in __main__ or a function)"
            )
        return super().unsupported(node_class)

    def _new_pool(self, *, warm: int = 0) -> WorkerPool:
        mp = self.config.multiprocess
        return WorkerPool(
            worker_type=mp.worker_type, max_processes=self.config.limits.max_processes, warm=warm
        )

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self._new_pool(warm=self.config.multiprocess.warm_pool).open() as pool:
            self._shared = pool
            try:
                yield
            finally:
                self._shared = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[NodeRunner]:
        if self._shared is not None:
            yield _Workers(self._shared)
            return
        async with self._new_pool().open() as pool:
            yield _Workers(pool)


class _Fused:
    """One fused run of a session: its nodes' current instances (a restarted node registers
    anew), and what the head's worker tells the members."""

    def __init__(self, chain: tuple[str, ...]) -> None:
        self.chain = chain
        self._hosts: dict[str, NodeHost] = {}
        self._changed = trio.Event()
        self.ready = trio.Event()
        """Set once the run's worker has initialised every node (the first time)."""
        self.done = trio.Event()
        """Set once the head's job has finished normally: every output of the run has ended."""

    def register(self, host: NodeHost) -> None:
        self._hosts[host.node_id] = host
        self._changed.set()
        self._changed = trio.Event()

    def unregister(self, host: NodeHost) -> None:
        if self._hosts.get(host.node_id) is host:
            del self._hosts[host.node_id]

    async def all_registered(self) -> list[NodeHost]:
        while len(self._hosts) < len(self.chain):
            await self._changed.wait()
        return [self._hosts[node_id] for node_id in self.chain]

    def host(self, stage: int) -> NodeHost | None:
        """The current instance of the run's node ``stage`` (None between two instances)."""
        return self._hosts.get(self.chain[stage])


class _Workers:
    """Runs one session's nodes on a worker pool."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.fused: dict[tuple[str, ...], _Fused] = {}

    async def run_node(self, host: NodeHost, ports: NodePorts, *, task_status: trio.TaskStatus[None]) -> None:
        wiring = ports
        assert isinstance(wiring, ShmPorts), "the planner gives shared-memory nodes ShmPorts"
        if not host.chain:
            await self._run(host, wiring, None, task_status)
            return
        fused = self.fused.setdefault(host.chain, _Fused(host.chain))
        fused.register(host)
        try:
            if host.node_id != host.chain[0]:
                await _run_member(fused, host, task_status)
            else:
                await self._run(host, wiring, fused, task_status)
        finally:
            fused.unregister(host)

    async def _run(
        self, host: NodeHost, wiring: ShmPorts, fused: _Fused | None, task_status: trio.TaskStatus[None]
    ) -> None:
        assert wiring.events is not None
        assert wiring.events_consumer is not None
        members = [host] if fused is None else await fused.all_registered()
        job = self._job(host, wiring, members[1:])
        run = _NodeRun(host, wiring, self.pool, fused)
        host.state.fire(NodeEvent.START)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.job, job)
            try:
                await run.follow(task_status)
            finally:
                await run.stop(host.settings.grace_period_secs)
        run.raise_outcome()
        if fused is not None and run.finished:
            fused.done.set()

    def _job(self, host: NodeHost, wiring: ShmPorts, members: list[NodeHost]) -> WorkerJob:
        cls = host.node_class
        assert wiring.events is not None
        zero_copy = all(getattr(h.node_class, "zero_copy", False) for h in (host, *members))
        return WorkerJob(
            session_id=host.session_id,
            node_id=host.node_id,
            node_type=host.node_type,
            import_ref=import_ref(cls),
            params=msgspec.to_builtins(host.params),
            inputs=tuple(wiring.inputs),
            outputs=tuple(wiring.outputs),
            events=wiring.events,
            control=wiring.control,
            supervisor_pid=os.getpid(),
            parent_is_forkserver=self.pool.parent_is_forkserver,
            copy_inputs=not zero_copy,  # a fused run: its nodes all see the frames the head reads
            log_level=max(logging.DEBUG, logging.getLogger().getEffectiveLevel()),
            trace_threshold=host.trace.threshold,
            share_outputs=wiring.share_outputs,
            run=tuple(
                WorkerStage(h.node_id, h.node_type, import_ref(h.node_class), msgspec.to_builtins(h.params))
                for h in members
            ),
        )


async def _run_member(fused: _Fused, host: NodeHost, task_status: trio.TaskStatus[None]) -> None:
    """A node of a fused run other than its head (see the module docstring): the head's worker
    runs it; the head's events update its state, counters and progress."""
    host.state.fire(NodeEvent.START)
    await fused.ready.wait()  # the head's init deadline covers the whole run's initialisation
    host.state.fire(NodeEvent.INIT_DONE)
    host.progress("ready", 1.0)
    task_status.started()
    await fused.done.wait()
    host.state.fire(NodeEvent.STOP)
    host.state.fire(NodeEvent.FINISHED)


class _NodeRun:
    """One node's worker job (or a fused run's) and the supervisor's view of it."""

    def __init__(
        self, host: NodeHost, wiring: ShmPorts, pool: WorkerPool, fused: _Fused | None = None
    ) -> None:
        self.host = host
        self.wiring = wiring
        self.pool = pool
        self.fused = fused
        self.job_scope = trio.CancelScope(shield=True)
        self.job_done = trio.Event()
        self.follow_scope = trio.CancelScope()
        self.result: dict[str, Any] | None = None
        self.crash: BaseException | None = None
        self.error: NodeError | None = None
        """The node's failure, reported as soon as it was known."""
        self.ready = False

    async def job(self, job: WorkerJob) -> None:
        try:
            with self.job_scope:
                self.result = await self.pool.run(job)
        except Exception as exc:  # trio_parallel.BrokenWorkerError (the process died) included
            self.crash = exc
        finally:
            self.job_done.set()
            self.follow_scope.cancel()

    async def follow(self, task_status: trio.TaskStatus[None]) -> None:
        """Apply the worker's events until its job ends; enforce the init timeout."""
        consumer = self.wiring.events_consumer
        assert consumer is not None
        with self.follow_scope:
            with trio.move_on_after(self.host.settings.init_timeout_secs) as init_scope:
                while not self.ready:
                    self._apply(await _next_event(consumer), task_status)
            if init_scope.cancelled_caught and not self.job_done.is_set():
                self._failed(NodeInitTimeout(self.host.node_id, self.host.settings.init_timeout_secs))
                return
            while True:
                self._apply(await _next_event(consumer), task_status)
        # The job ended: whatever it said last is still in the ring.
        while (event := _try_event(consumer)) is not None:
            self._apply(event, task_status)

    def _apply(self, event: dict[str, Any], task_status: trio.TaskStatus[None]) -> None:
        kind = event["type"]
        stage = event.get("node", 0)
        host = self.host if not stage or self.fused is None else self.fused.host(stage)
        if host is None:  # a member between two instances (restarted with the run)
            if kind == "failed" and self.fused is not None:  # still the run's failure, naming it
                self._failed(NodeError(self.fused.chain[stage], event["phase"], event["message"]))
            return
        if kind == "progress":
            if event["state"] == "starting" and not stage:
                self.pool_taken()
            host.progress(event["state"], event["progress"], event["message"])
        elif kind == "ready":
            host.metrics.pid = event["pid"]
            host.metrics.init_s = event["init_s"]
            host.state.fire(NodeEvent.INIT_DONE)
            host.progress("ready", 1.0)
            self.ready = True
            if self.fused is not None:
                for index in range(1, len(self.fused.chain)):
                    if (member := self.fused.host(index)) is not None:
                        member.metrics.pid = event["pid"]
                self.fused.ready.set()
            task_status.started()
        elif kind == "frame":  # a sampled frame's timing, measured in the worker
            error = event["error"] and str(NodeError(host.node_id, "process", event["error"]))
            host.trace.frame(
                event["seq"], event["start_ns"], event["end_ns"], event["bytes_in"], event["bytes_out"], error
            )
        elif kind in ("stats", "done"):
            _update_metrics(host, event)
        elif kind == "failed":  # a fused run's node: the run (its head) fails, naming that node
            error = NodeError(
                host.node_id, event["phase"], event["message"], remote_traceback=event["traceback"]
            )
            if host is not self.host and not self.ready:
                host.progress("failed", 0.0, str(error))
            self._failed(error)
        elif kind == "log":  # in the node's task: tagged with its session and node ids
            logger = logging.getLogger(event.get("logger") or host.logger.name)
            logger.log(event.get("level", logging.WARNING), "%s", event["message"])
        elif kind == "signal":
            sent = event["signal"]
            signal = Signal(sent["name"], sent.get("payload", {}), sent["origin"], sent["id"])
            host.on_signal_handled(signal, tuple(event["dropped"]), event["aborted"])
        elif kind == "send_signal" and host.send_signal is not None:
            to = event["to"]
            host.send_signal(host.node_id, event["name"], None if to is None else tuple(to), event["payload"])

    def pool_taken(self) -> None:
        self.pool.refill_soon()

    async def stop(self, grace: float) -> None:
        """Stop the worker as its ports' ``stop_mode`` says (ask → grace → kill; keep the
        rings: grace → kill; kill), unless the job already ended. Shielded: always runs."""
        with trio.CancelScope(shield=True):
            if not self.job_done.is_set():
                mode = self.wiring.stop_mode
                if mode == "ask":
                    self.wiring.request_stop()
                if mode != "kill":
                    with trio.move_on_after(grace):
                        await self.job_done.wait()
                self.job_scope.cancel()
                await self.job_done.wait()

    def _failed(self, error: NodeError) -> None:
        """Record and report the node's failure now; the first one is the node's outcome."""
        if self.error is not None:
            return
        self.error = error
        host = self.host
        if host.state.can(NodeEvent.FAIL):
            host.state.fire(NodeEvent.FAIL)
        if not self.ready:
            host.progress("failed", 0.0, str(error))
        host.report_failure(error)

    @property
    def finished(self) -> bool:
        """The job ran the node (or run) to its end: every output has ended."""
        return self.error is None and self.result is not None and self.result.get("status") == "done"

    def raise_outcome(self) -> None:
        host = self.host
        if self.error is None and self.crash is not None:
            self._failed(_crash_error(host.node_id, "process" if self.ready else "initialize", self.crash))
        if self.error is not None:
            raise self.error
        if self.finished:
            host.state.fire(NodeEvent.STOP)
            host.state.fire(NodeEvent.FINISHED)
        # else: stopped on request (the session is ending)


def _crash_error(node_id: str, phase: str, exc: BaseException) -> NodeError:
    proc = exc.args[-1] if exc.args else None
    code = getattr(proc, "exitcode", None)
    if isinstance(code, int):
        if code < 0:
            return NodeCrashed(node_id, phase, signal=-code)
        return NodeCrashed(node_id, phase, exitcode=code)
    return NodeError(node_id, phase, f"worker failed: {type(exc).__name__}: {exc}")


def _update_metrics(host: NodeHost, stats: dict[str, Any]) -> None:
    m = host.metrics
    m.frames_in = stats.get("frames_in", m.frames_in)
    m.frames_out = stats.get("frames_out", m.frames_out)
    m.bytes_in = stats.get("bytes_in", m.bytes_in)
    m.bytes_out = stats.get("bytes_out", m.bytes_out)
    m.processing_s = stats.get("processing_s", m.processing_s)
    m.kinds_out = dict(stats.get("kinds_out", m.kinds_out))
    m.frames_in_place = stats.get("frames_in_place", m.frames_in_place)
    m.frames_forwarded = stats.get("frames_forwarded", m.frames_forwarded)
    m.frames_shared = stats.get("frames_shared", m.frames_shared)
    m.init_s = stats.get("init_s", m.init_s)


async def _next_event(consumer: TrioConsumer) -> dict[str, Any]:
    try:
        received = await consumer.receive()
    except (EndOfStream, RingAbortedError):
        await trio.sleep_forever()  # only the job's end (follow_scope) moves us on now
        raise AssertionError("unreachable") from None
    with received:
        return decode_event(received.meta)


def _try_event(consumer: TrioConsumer) -> dict[str, Any] | None:
    try:
        received = consumer.consumer.try_receive()
    except (EndOfStream, RingAbortedError):
        return None
    if received is None:
        return None
    with received:
        return decode_event(received.meta)
