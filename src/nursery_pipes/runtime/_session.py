"""A session: one pipeline run, supervised, inside its own trio nursery.

Life of a session (see ``_states.SESSION_TRANSITIONS``)::

    INITIALIZING ──all nodes ready──▶ READY ──input──▶ EXECUTING
         │                              │                  │
         │                            close / cancel     close / cancel
         ▼                              ▼                  ▼
       ERROR ◀──────── failure ──── TERMINATING ◀──────────┘
         │                              │
         └──────── everything stopped ──┴──▶ TERMINATED

- All nodes initialise in parallel under a :class:`Supervisor` whose policy
  is fail-fast (one-for-all, no restarts): a node that fails — at init, while
  processing, while flushing — fails the session with a
  :class:`~nursery_pipes.NodeError` naming it, and every other node is
  cancelled and cleaned up.
- ``close()`` ends the input: each source gets an end-of-stream marker, every
  node flushes once all its inputs have ended, so nodes flush in topological
  order, and the session terminates when the last sink has ended. A close
  requested while nodes still initialise takes effect when the session is
  READY (the input is then empty).
- After ``close()`` the nodes get ``close_timeout_secs`` to process what is
  queued and flush; nodes still running then fail the session with
  :class:`~nursery_pipes.NodeCloseTimeout` naming them, and everything is
  stopped (ask → grace → kill). Time the client spends not reading outputs
  is not counted against the nodes.
- ``cancel()`` (or cancellation from outside) stops everything promptly;
  in-flight frames are dropped.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from .._config import RuntimeConfig
from .._errors import InputError, NodeCloseTimeout, NodeError, SessionClosedError, SessionError
from .._logging import NODE_ID, SESSION_ID
from .._states import SESSION_TRANSITIONS, SessionEvent, SessionState, StateMachine
from ..executors import (
    Executor,
    NodeHost,
    NodeMetrics,
    NodePorts,
    NodeRunner,
    OutPort,
    RingGeometry,
    ShmPorts,
    ShmTransport,
)
from ..frames import Frame
from ..nodes._routing import Assignment
from ._events import (
    Event,
    EventQueue,
    FramesDropped,
    NodeFailed,
    NodeProgress,
    NodeRestarted,
    Output,
    StateChanged,
)
from ._holdup import holdups
from ._plan import CLIENT, SessionPlan, check_input_kind, check_input_target
from ._policy import RestartType
from ._recovery import NodeRecovery
from ._signaling import SignalRouter
from ._stats import session_outcome
from ._supervisor import ChildFailed, ChildSpec, Supervisor
from ._trace import NO_TRACER, InitTrace, Tracer
from ._wiring import wire

__all__ = ["Session", "SessionMetrics", "SessionStatistics", "run_session"]


@dataclass(frozen=True)
class SessionMetrics:
    """Counters of one session (a snapshot)."""

    session_id: str
    wall_time_s: float
    cpu_time_s: float
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    nodes: Mapping[str, NodeMetrics]
    data_type_breakdown: Mapping[str, int] = field(default_factory=dict)
    outputs_discarded: int = 0
    frames_lent: int = 0
    """Big frames (bigger than a ring slot) that left worker processes without a copy: handed
    on as read-only views of the shared memory they arrived in (``ipc/_pool.py``)."""
    frames_lent_held: int = 0
    """Of those, the ones some view still holds now (their memory is not reused until then)."""
    frames_shared: int = 0
    """Big frames a node in the supervisor sent to several workers (which copy what they read)
    from one copy in shared memory that all their rings refer to, instead of one per ring."""


@dataclass(frozen=True)
class SessionStatistics:
    """What is waiting inside a session right now (cheap; for metrics and monitoring)."""

    queued_events: int
    """Events (outputs, progress, state changes) not yet read by the client."""
    queued_outputs: int
    """Outputs among them; they count against ``output_capacity``."""
    output_capacity: float
    """How many unread outputs the session holds before it stops the pipeline (backpressure)."""
    outputs_discarded: int
    """Outputs nobody will read (the client left after close)."""
    sends_in_flight: int
    """``send()`` calls waiting for room."""


class Session:
    """A running pipeline. Get one from :func:`nursery_pipes.open_session`."""

    def __init__(
        self,
        plan: SessionPlan,
        executors: Mapping[str, Executor],
        *,
        config: RuntimeConfig | None = None,
        session_id: str | None = None,
        tracer: Tracer = NO_TRACER,
        trace_context: Mapping[str, str] | None = None,
    ) -> None:
        self.id = session_id or secrets.token_hex(8)
        self.plan = plan
        self._trace = tracer.session(self.id, plan.manifest.name, len(plan.nodes), trace_context or {})
        self._executors = executors
        self._config = config or RuntimeConfig()
        self._runners: dict[str, NodeRunner] = {}
        self._transport: ShmTransport | None = None
        self._sm: StateMachine[SessionState, SessionEvent] = StateMachine(
            f"session {self.id}", SessionState.INITIALIZING, SESSION_TRANSITIONS, on_change=self._on_state
        )
        settings = plan.settings
        capacity = settings.channel_capacity if settings.enable_backpressure else math.inf
        self._capacity = capacity
        self._events = EventQueue(capacity)
        self._metrics = {nid: NodeMetrics(nid, n.executor) for nid, n in plan.nodes.items()}
        self._ingress: dict[str, OutPort] = {}
        self._ports: dict[str, NodePorts] = {}
        self.cancelled = False
        """Ended by :meth:`cancel` (a client's CANCEL, a stream that went away), not by close."""
        self._scope = trio.CancelScope()
        self._ready = trio.Event()
        self._finished = trio.Event()
        self._error: SessionError | None = None
        self._signals = SignalRouter(plan.order, self._events)
        self._recovery = NodeRecovery(
            self._events,
            self._metrics,
            lambda: self._supervisor.restart_counts,
            self._start_task,
            observe=self._trace.event,
        )
        self._supervisor = Supervisor(
            plan.supervision,
            on_failure=self._recovery.on_failure,
            on_restart=self._recovery.on_restart,
            on_escalate=self._escalated,
            dependents=plan.downstream,
        )
        self._nursery: trio.Nursery | None = None
        self._seq = 0
        self._inflight = 0
        self._sending: set[trio.CancelScope] = set()
        """One scope per send() under way: cancelled when the session stops taking input."""
        self._idle = trio.Event()
        self._idle.set()
        self._closing = False
        self._close_pending = False
        """close() came while INITIALIZING; carried out by :meth:`started`."""
        self._client = NodeMetrics(CLIENT, "client")
        self.progress_log: list[NodeProgress] = []
        self._t0 = 0.0
        self._t_end: float | None = None
        self._cpu0 = 0.0
        self._cpu_end: float | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._sm.state

    @property
    def assignments(self) -> dict[str, Assignment]:
        """Each node's executor and why it was chosen."""
        return self.plan.assignments

    @property
    def error(self) -> SessionError | None:
        return self._error

    @property
    def supervision_log(self) -> list[NodeFailed | NodeRestarted | FramesDropped]:
        """Every supervision event so far (node failures, restarts, dropped frames), in order."""
        return list(self._recovery.log)

    async def send(self, node_id: str, frame: Frame, *, seq: int | None = None) -> int:
        """Feed ``frame`` to source node ``node_id``; returns its sequence number.

        Waits while the pipeline is full (backpressure). Raises the session's
        error if it failed, :class:`SessionClosedError` after close/cancel.
        """
        if not self._ready.is_set():
            await self._ready.wait()
        port = self._check_input(node_id, frame)
        if seq is None:
            self._seq += 1
            seq = self._seq
        else:
            self._seq = max(self._seq, seq)
        if self._sm.state is SessionState.READY:
            self._sm.fire(SessionEvent.INPUT)
        self._inflight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        # A send blocked by backpressure waits on a node that may fail or be stopped; nothing
        # would ever take the frame then. The scope lets the session wake it (_stop_senders).
        scope = trio.CancelScope()
        self._sending.add(scope)
        refused = False
        try:
            with scope:
                await port.send(seq, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            refused = True
        finally:
            self._sending.discard(scope)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        if refused or scope.cancelled_caught:  # (a send that completed anyway took the frame)
            raise self._error or SessionClosedError(
                f"session {self.id} stopped before it could take the frame"
            )
        self._client.count_out(frame)
        return seq

    async def close(self) -> None:
        """End of input: sources get end-of-stream, nodes flush, the session drains and ends.

        Returns at once; keep reading :meth:`events`/:meth:`outputs` until they end. Called
        before the session is READY, it is carried out once every node is ready: input is
        refused from now on (a :meth:`send` still waiting for READY included), the nodes
        finish initialising, then flush and the session ends normally.
        """
        await trio.lowlevel.checkpoint()
        if (
            self._closing
            or self._finished.is_set()
            or self._sm.state in (SessionState.ERROR, SessionState.TERMINATING)
        ):
            return
        self._closing = True
        self._sm.fire(SessionEvent.CLOSE)
        if self._sm.state is SessionState.INITIALIZING:
            self._close_pending = True  # see started()
        else:
            self._end_input_soon()

    def signal(
        self, name: str, *, to: Iterable[str] | None = None, payload: Mapping[str, Any] | None = None
    ) -> int:
        """Send control signal ``name`` to the nodes ``to`` (None: every node), ahead of the
        frames queued for them; returns its number. Never blocks.

        Each target's ``on_signal`` hook decides what it means (``interrupt`` and
        ``cancel_turn`` drop the target's queued frames and abort the one in flight unless
        the node says otherwise); :meth:`events` then yields a ``SignalHandled`` per target,
        and ``FramesDropped`` for what it dropped. An unknown target or a bad name is an
        :class:`InputError` naming it.

        >>> import trio
        >>> from nursery_pipes import Runtime, TextFrame
        >>> from nursery_pipes.runtime import SignalHandled
        >>> manifest = {"version": "v1", "metadata": {"name": "hush"}, "connections": [],
        ...             "nodes": [{"id": "up", "node_type": "TextTransformNode"}]}
        >>> async def main():
        ...     async with Runtime() as runtime, runtime.open_session(manifest) as session:
        ...         session.signal("interrupt", to=["up"])
        ...         async for event in session.events():
        ...             if isinstance(event, SignalHandled):
        ...                 return event.node_id, event.name, event.dropped
        >>> trio.run(main)
        ('up', 'interrupt', ())
        """
        if self._error is not None:
            raise self._error
        return self._signals.send(name, to, payload).id

    def cancel(self) -> None:
        """Stop everything now; in-flight frames are dropped. Idempotent."""
        if self._sm.can(SessionEvent.CANCEL) and not self._finished.is_set():
            self._sm.fire(SessionEvent.CANCEL)
            self.cancelled = True
        self._closing = True
        self._stop_senders()
        self._ending()
        self._scope.cancel()

    def _ending(self) -> None:
        """Nothing will run again: workers may now be stopped the usual way (ask → grace → kill,
        aborting their rings), even where a supervision policy kept rings for restarts."""
        for ports in self._ports.values():
            if isinstance(ports, ShmPorts):
                ports.stop_mode = "ask"

    async def wait(self) -> SessionMetrics:
        """Wait until the session has terminated; raise its error if it failed."""
        await self._finished.wait()
        if self._error is not None:
            raise self._error
        return self.metrics()

    def events(self) -> AsyncIterator[Event]:
        """Every event in order: progress, outputs, state changes. Ends when the session ends;
        raises the session's error (after the events that came before it) if it failed."""
        return _EventIterator(self._events, outputs_only=False)

    def outputs(self) -> AsyncIterator[Output]:
        """Only the outputs of sink nodes (see :meth:`events`)."""
        return _EventIterator(self._events, outputs_only=True)  # type: ignore[return-value]

    def queued_inputs(self) -> dict[str, int]:
        """Frames waiting on each running node's inputs right now (racy: workers run on)."""
        return {node_id: ports.flow().queued_in for node_id, ports in self._ports.items()}

    def statistics(self) -> SessionStatistics:
        queue = self._events.statistics()
        return SessionStatistics(
            queued_events=int(queue["queued"]),
            queued_outputs=int(queue["outputs"]),
            output_capacity=queue["capacity"],
            outputs_discarded=int(queue["discarded"]),
            sends_in_flight=self._inflight,
        )

    def metrics(self) -> SessionMetrics:
        now = self._t_end if self._t_end is not None else trio.current_time()
        cpu = self._cpu_end if self._cpu_end is not None else time.process_time()
        breakdown: dict[str, int] = {}
        for nid in self.plan.sinks:
            for kind, count in self._metrics[nid].kinds_out.items():
                breakdown[kind] = breakdown.get(kind, 0) + count
        return SessionMetrics(
            session_id=self.id,
            wall_time_s=max(0.0, now - self._t0) if self._t0 else 0.0,
            cpu_time_s=max(0.0, cpu - self._cpu0),
            frames_in=self._client.frames_out,
            frames_out=sum(self._metrics[n].frames_out for n in self.plan.sinks),
            bytes_in=self._client.bytes_out,
            bytes_out=sum(self._metrics[n].bytes_out for n in self.plan.sinks),
            nodes=dict(self._metrics),
            data_type_breakdown=breakdown,
            outputs_discarded=self._events.discarded,
            frames_lent=self._transport.pool.lent_total if self._transport is not None else 0,
            frames_lent_held=self._transport.pool.lent if self._transport is not None else 0,
            frames_shared=self._transport.pool.shared_total if self._transport is not None else 0,
        )

    # -- inside ----------------------------------------------------------------------------

    def _check_input(self, node_id: str, frame: Frame) -> OutPort:
        if self._error is not None:
            raise self._error
        check_input_target(self.plan, node_id)
        port = self._ingress[node_id]
        if not isinstance(frame, Frame):
            raise InputError(f"input for node {node_id!r} must be a Frame, got {type(frame).__name__}")
        check_input_kind(self.plan, node_id, frame)
        if self._closing or self._sm.state not in (SessionState.READY, SessionState.EXECUTING):
            raise SessionClosedError(f"session {self.id} is {self._sm.state.value} and takes no more input")
        return port

    def _on_state(self, old: SessionState, new: SessionState, event: SessionEvent) -> None:
        self._events.put_control(StateChanged(new, event.value))

    def _on_progress(self, progress: NodeProgress) -> None:
        self.progress_log.append(progress)
        self._events.put_control(progress)

    def _all_ready(self) -> None:
        """Every node is ready (the supervisor says so through :class:`_Ready`)."""
        if self._sm.fire(SessionEvent.ALL_READY) is not SessionState.READY:
            return  # cancelled or failed while the last node's "ready" was on its way
        self._ready.set()
        if self._close_pending:  # close() came while the nodes initialised: carry it out now
            self._close_pending = False
            self._sm.fire(SessionEvent.CLOSE)
            self._end_input_soon()

    async def _main(self) -> None:
        SESSION_ID.set(self.id)  # this task's context: every task of the session inherits it
        self._t0 = trio.current_time()
        self._cpu0 = time.process_time()
        try:
            with self._scope:
                async with AsyncExitStack() as stack:
                    transport = await self._open_executors(stack)
                    wiring = wire(self.plan, self._events, self._capacity, transport)
                    self._ingress = wiring.ingress
                    self._ports = wiring.ports
                    self._recovery.ports = wiring.ports
                    self._recovery.transport = transport
                    self._transport = transport
                    self._signals.attach(wiring.ports, transport)
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        pumps = _Countdown(len(wiring.pumps))
                        for pump in wiring.pumps:
                            nursery.start_soon(pumps.run, pump, self._pump_failed)
                        await self._supervise(wiring.ports)
                        if self._error is None:
                            await self._recovery.wait_takeovers()  # nodes stopped for good drain
                            await pumps.wait()  # the nodes are done; their last frames may still be in rings
                        nursery.cancel_scope.cancel()
        finally:
            self._finish()

    async def _open_executors(self, stack: AsyncExitStack) -> ShmTransport | None:
        """What runs this session's nodes (each executor it uses, for the session's lifetime),
        and the shared-memory transport if some edge needs one. Closed by ``stack`` in reverse:
        the rings are unlinked after every runner, and with it every worker, is gone."""
        transport = None
        if any(edge.transport == "shm" for edge in self.plan.edges):
            mp = self._config.multiprocess
            geometry = RingGeometry.for_session(
                self.plan.settings.channel_capacity, mp.slot_count, mp.slot_size, mp.checksums
            )
            transport = ShmTransport(geometry, share_fan_out=mp.share_fan_out)
            stack.callback(transport.close)  # unlinks the session's namespace on every exit path
        for name in sorted(self.plan.executors):
            self._runners[name] = await stack.enter_async_context(self._executors[name].session())
        return transport

    def _pump_failed(self, error: BaseException) -> None:
        self._fail(error)
        self._scope.cancel()

    async def _supervise(self, ports: dict[str, NodePorts]) -> None:
        specs = [
            # Permanent is transient in a pipeline: a node only ends normally when its inputs
            # have ended, and a fresh one would find nothing to do (docs/design.md §4).
            ChildSpec(
                nid, partial(self._run_node, nid, ports[nid]), restart=_restart(self.plan.nodes[nid].restart)
            )
            for nid in self.plan.order
        ]
        try:
            await self._supervisor.run(specs, task_status=_Ready(self._all_ready))
        except ChildFailed as exc:
            self._fail(exc.error)

    async def _run_node(self, node_id: str, ports: NodePorts, task_status: trio.TaskStatus[None]) -> None:
        NODE_ID.set(node_id)  # log lines of this node's task (and what it starts) name the node
        plan = self.plan.nodes[node_id]
        metrics = self._metrics[node_id]
        init = self._trace.node_init(node_id, plan.node_type, plan.executor, metrics.restarts)

        def failed(error: NodeError) -> None:  # the moment it is known (before any grace period)
            init.failed(error)
            self._supervisor.report_failure(node_id, error)

        host = NodeHost(
            node_id=node_id,
            node_type=plan.node_type,
            node_class=plan.node_class,
            params=plan.params,
            executor=plan.executor,
            session_id=self.id,
            settings=self.plan.settings,
            metrics=metrics,
            emit_progress=self._on_progress,
            on_failure=failed,
            spec=plan.spec,
            chain=plan.chain,
            on_signal_handled=partial(self._signals.handled, node_id),
            send_signal=self._signals.from_node,
            trace=self._trace.frames(node_id),
        )
        self._recovery.hosts[node_id] = host
        ended = self._recovery.ended[node_id] = trio.Event()
        try:
            await self._runners[plan.executor].run_node(
                host, ports, task_status=_InitDone(task_status, init, metrics)
            )
        except BaseException as exc:
            init.failed(exc)  # (ignored once the node was ready)
            raise
        finally:
            ended.set()

    def _start_task(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        assert self._nursery is not None, "only while the session runs"
        self._nursery.start_soon(fn, name=f"session {self.id}: {name}")

    def _escalated(self, failed: ChildFailed) -> None:
        """The supervisor gave up on a node: the session has failed, whatever is still stopping."""
        error = failed.error
        if isinstance(error, NodeError) and failed.restarts:
            policy = self.plan.supervision
            error.restarts = failed.restarts
            error.gave_up = (
                f"the supervision policy gave up after {failed.restarts} restart"
                f"{'s' * (failed.restarts != 1)} within {policy.within_secs:g} s "
                f"(max_restarts={policy.max_restarts})"
            )
        self._fail(error, outputs_first=True)

    def _fail(self, error: BaseException, *, outputs_first: bool = False) -> None:
        """Record the session's failure and publish it now: the event stream ends with it and
        waiting senders wake up, though nodes may still be stopping (the nursery waits for them).
        ``outputs_first``: a node's failure — what workers wrote before it goes out first."""
        if self._error is not None:
            return  # the first failure explains the session; the rest followed from it
        if isinstance(error, SessionError):
            self._error = error
        else:
            node = getattr(error, "node_id", None)
            self._error = SessionError(
                f"internal error while running the session: {type(error).__name__}: {error}", node_id=node
            )
            self._error.__cause__ = error
        if self._sm.can(SessionEvent.FAIL):
            self._sm.fire(SessionEvent.FAIL)
        self._ending()
        if outputs_first:
            self._publish_failure(self._error)
        else:
            self._events.close(self._error)
        self._stop_senders()
        self._ready.set()

    def _publish_failure(self, error: SessionError) -> None:
        """End the event stream with ``error`` — once the outputs workers wrote before it have
        been moved on. A worker writes its outputs, then reports its failure; the supervisor reads
        the two from different rings, in either order, so without this wait an output the node
        produced before failing could be lost behind the error. Bounded (a client that does not
        read holds the pumps up): after :data:`_OUTPUTS_FIRST_SECS` the error goes out anyway."""
        if self._transport is None or self._nursery is None:
            self._events.close(error)
            return
        watch, snapshot = self._transport.pumps, self._transport.pumps.snapshot()

        async def publish() -> None:
            with trio.move_on_after(_OUTPUTS_FIRST_SECS):
                await watch.wait_emptied_since(snapshot)
            self._events.close(error)

        self._nursery.start_soon(publish, name=f"session {self.id}: publish failure")

    def _stop_senders(self) -> None:
        """No frame will be taken any more: wake every send() still waiting for room."""
        for scope in self._sending:
            scope.cancel()

    def _finish(self) -> None:
        self._t_end = trio.current_time()
        self._cpu_end = time.process_time()
        if self._sm.state is SessionState.READY or self._sm.state is SessionState.EXECUTING:
            self._sm.fire(SessionEvent.CANCEL)  # cancelled from outside
        elif self._sm.state is SessionState.INITIALIZING:
            self._sm.fire(SessionEvent.FAIL if self._error else SessionEvent.CANCEL)
        self._sm.fire(SessionEvent.STOPPED)
        self._closing = True
        self._stop_senders()
        self._events.close(self._error)
        self._ready.set()
        self._finished.set()
        self._trace.end(session_outcome(self), self._error)

    def _end_input_soon(self) -> None:
        # The supervisor only reports READY from inside the session's nursery, and close() can
        # only get here once READY: the nursery exists. Both tasks end with that nursery, which
        # _main cancels once every node and pump is done.
        assert self._nursery is not None
        self._nursery.start_soon(self._end_input, name=f"session {self.id}: end input")
        self._nursery.start_soon(self._close_deadline, name=f"session {self.id}: close deadline")

    async def _close_deadline(self) -> None:
        """Fail the session, naming the nodes that hold it up, if it has not ended
        ``close_timeout_secs`` after close(). A client that leaves outputs unread holds the
        pipeline up by backpressure: that time is not the nodes' fault, so the clock restarts
        once it reads."""
        timeout = self.plan.settings.close_timeout_secs
        while True:
            await trio.sleep(timeout)
            if not self._events.outputs_full:
                break
            await self._events.wait_output_room()
        running = self._supervisor.running()
        if not running or self._error is not None:
            return  # every node has returned (the last frames are on their way out), or failed
        culprits, waiting = holdups(self.plan, {n: self._ports[n].flow() for n in running})
        self._fail(NodeCloseTimeout(culprits, timeout, waiting=waiting))
        self._scope.cancel()  # stop every node: ask → grace → kill, each under its executor

    async def _leave(self) -> None:
        """The user's block ended: drain a closed session, cancel one that was not closed."""
        if self._closing and self._error is None:  # (a session in ERROR always has its error)
            self._events.discard_outputs()
            await self._finished.wait()
        else:
            self.cancel()

    async def _end_input(self) -> None:
        await self._idle.wait()  # frames already being sent go before the end-of-stream
        try:
            for port in self._ingress.values():
                await port.end()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a node stopped meanwhile: the session is failing or ending anyway


_OUTPUTS_FIRST_SECS = 0.5
"""How long a failing session waits for outputs already written to reach the client."""


def _restart(kind: RestartType) -> RestartType:
    return RestartType.TRANSIENT if kind is RestartType.PERMANENT else kind


class _Ready:
    """The supervisor's ``task_status``: every node has called ``started()``."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: None = None) -> None:
        self._callback()


@asynccontextmanager
async def run_session(session: Session, *, wait_ready: bool = True) -> AsyncIterator[Session]:
    """Run ``session`` for the block, in a nursery of its own.

    Yields once every node is ready (``wait_ready``), or at once. Leaving the block after
    :meth:`Session.close` lets the pipeline drain (unread outputs are discarded); leaving it
    without closing, or with an exception, cancels. Errors come out unwrapped (the session's
    :class:`SessionError`, or the block's own exception), never an ExceptionGroup.
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session._main, name=f"session {session.id}")
        if wait_ready:
            await session._ready.wait()
        if session.error is None and session.state is not SessionState.TERMINATED:
            try:
                yield session
            except BaseException as exc:
                body_error = exc
                session.cancel()
            else:
                await session._leave()
    if body_error is not None:
        raise body_error
    if session.error is not None:
        raise session.error


class _InitDone:
    """A node's ``task_status``: its ``started()`` (the node is ready) also ends its init trace."""

    def __init__(self, task_status: trio.TaskStatus[None], init: InitTrace, metrics: NodeMetrics) -> None:
        self._task_status = task_status
        self._init = init
        self._metrics = metrics

    def started(self, value: None = None) -> None:
        self._init.ready(self._metrics.pid)
        self._task_status.started()


class _Countdown:
    """Runs tasks and lets you wait until all of them have returned."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._done = trio.Event()
        if count == 0:
            self._done.set()

    async def run(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        finally:
            self._left -= 1
            if self._left == 0:
                self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


class _EventIterator:
    def __init__(self, queue: EventQueue, *, outputs_only: bool) -> None:
        self._queue = queue
        self._outputs_only = outputs_only

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = await self._queue.get()
            if event is None:
                raise StopAsyncIteration
            if not self._outputs_only or isinstance(event, Output):
                return event
