"""A trio supervisor whose behaviour is data (:mod:`._policy`).

It owns one nursery; every child runs in its own cancel scope inside it, so
the supervisor can stop one child (to restart it) without touching the
others, and nothing a child starts can outlive the supervisor. Children are
entered in start order and initialise concurrently; :meth:`Supervisor.run`
reports "started" once every child has (``task_status.started()``), and
returns when every child is done. When the policy escalates, every child is
cancelled and :class:`ChildFailed` carries the child's own exception out —
never an ExceptionGroup.

Shutdown contract for children: cancellation is the stop request. A child
that must clean up does so in ``finally`` under a shielded cancel scope with
its own deadline (see the executors). A restart stops the children it
restarts one at a time in reverse start order — each has ended before the
next is asked — then enters them again in start order.

Failures are acted on when they are *known*, not when the child's task ends:
a child that knows it has failed but still has to stop something (a worker
process deaf to the stop request: ask → grace → kill) calls
:meth:`Supervisor.report_failure` first. The policy decides at once; an
escalation is announced through ``on_escalate`` and every child is cancelled
then, so the children's cleanups run together while the failing one is still
being stopped. The supervisor still returns only when every child task has
ended (structured concurrency), and the failed child's own end is not
counted a second time.

What the supervisor tells its owner, in order, for one failure (each hook is
optional; each gets the same :class:`FailureRecord`, also kept in
:attr:`Supervisor.history`)::

    child fails ─▶ policy decides ─▶ on_failure(record)
        restart:  stop the children ─▶ on_restart(record) ─▶ start them
                  ─▶ … every one has called started() ─▶ on_restarted(record)
        forget:   (nothing more)
        escalate: on_escalate(ChildFailed) ─▶ every child is cancelled ─▶ run() raises it

``on_restart`` may be async (it is awaited): the place to repair what the
stopped children shared, before the new ones start. A restart that another
failure interrupts (a child of it fails before it has started again) never
gets its ``on_restarted``; the new failure's record follows instead.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import trio

from .._errors import NurseryPipesError
from ._policy import (
    FAIL_FAST,
    Escalate,
    Forget,
    RestartChildren,
    RestartHistory,
    SupervisionPolicy,
    decide,
)
from ._spec import ChildSpec, ParentRun, current_run

__all__ = ["ChildFailed", "ChildSpec", "FailureRecord", "Supervisor"]


class ChildFailed(NurseryPipesError):
    """The supervisor gave up: ``child`` failed with ``error`` and the policy escalated.

    ``restarts`` is how many restarts the supervisor had made within the policy's window
    when it gave up (0 when the policy allows none); the message says so.
    """

    def __init__(self, child: str, error: BaseException, reason: str, restarts: int = 0) -> None:
        super().__init__(f"{reason}: {error}")
        self.child = child
        self.error = error
        self.reason = reason
        self.restarts = restarts


@dataclass(frozen=True)
class FailureRecord:
    """One entry of :attr:`Supervisor.history`: a child ended unexpectedly and what was done.

    A child *fails* when it raises; a permanent child that returns is restarted too and
    recorded with ``error=None``. A transient or temporary child that returns is simply
    done: not recorded.

    >>> record = FailureRecord(12.5, "b", RuntimeError("broke"), "restart", ("b", "c"), "…", 1)
    >>> str(record)
    'b failed: restart b, c'
    """

    time: float
    """When the policy decided (the supervisor's clock: trio's, virtual under a MockClock)."""
    child: str
    error: BaseException | None
    """The child's exception; None when a permanent child exited normally."""
    action: Literal["restart", "forget", "escalate"]
    restarted: tuple[str, ...]
    """The children restarted, in start order (empty unless ``action == "restart"``)."""
    reason: str
    """The decision, in words: which rule acted."""
    recent_restarts: int
    """Restarts within the policy's window when it decided, this one included."""
    stopped: tuple[str, ...] = ()
    """Temporary siblings the restart stopped for good (one_for_all, rest_for_one)."""

    def __str__(self) -> str:
        ended = "exited" if self.error is None else "failed"
        targets = f" {', '.join(self.restarted)}" if self.restarted else ""
        stopped = f"; stop {', '.join(self.stopped)}" if self.stopped else ""
        return f"{self.child} {ended}: {self.action}{targets}{stopped}"


@dataclass(eq=False)
class _Run:
    """One run of a child (a restart makes a new one; messages name the run, not the name)."""

    supervisor: Supervisor
    spec: ChildSpec
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    started: bool = False
    failure_reported: bool = False
    """It reported its failure before ending; the policy has already acted on it."""

    def report_failure(self, error: BaseException) -> None:
        self.supervisor.report_failure(self.spec.name, error)


@dataclass(frozen=True)
class _Started:
    run: _Run


@dataclass(frozen=True)
class _Ended:
    run: _Run
    error: BaseException | None
    early: bool = False
    """Sent by report_failure(), while the child's task still runs."""


@dataclass(eq=False)
class _PendingRestart:
    index: int
    record: FailureRecord
    waiting: set[str]


class _StartedSignal:
    def __init__(self, run: _Run, send: trio.MemorySendChannel[_Started | _Ended]) -> None:
        self._run = run
        self._send = send
        self._fired = False

    def started(self, value: Any = None) -> None:
        if self._fired:
            raise RuntimeError(f"child {self._run.spec.name!r} called started() twice")
        self._fired = True
        self._send.send_nowait(_Started(self._run))


class Supervisor:
    """Run children under a :class:`SupervisionPolicy` (default: fail fast).

    Hooks (see the module docstring for when each fires): ``on_failure(record)`` once the
    policy has decided, before anything is stopped; ``on_restart(record)`` once the
    children to restart have stopped, before they start (may be async);
    ``on_restarted(record)`` once every restarted child has called ``started()``;
    ``on_escalate(failed)`` when the supervisor gives up, before it cancels its children.
    An exception from a hook ends :meth:`run` with it (the children are cancelled).

    A supervisor runs one :meth:`run` at a time; each run starts with a fresh
    restart-intensity window, while :attr:`history`, :attr:`restarts` and
    :attr:`restart_counts` add up over every run.
    """

    def __init__(
        self,
        policy: SupervisionPolicy = FAIL_FAST,
        *,
        clock: Callable[[], float] = trio.current_time,
        on_failure: Callable[[FailureRecord], None] | None = None,
        on_restart: Callable[[FailureRecord], Awaitable[None] | None] | None = None,
        on_restarted: Callable[[FailureRecord], None] | None = None,
        on_escalate: Callable[[ChildFailed], None] | None = None,
        dependents: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.policy = policy
        self._dependents = dependents
        """For rest_for_one: which children depend on each child (see :func:`decide`)."""
        self._clock = clock
        self._on_failure = on_failure
        self._on_restart = on_restart
        self._on_restarted = on_restarted
        self._on_escalate = on_escalate
        self.restarts = 0
        """Restarts carried out (one per restart decision, however many children it restarted)."""
        self._history: list[FailureRecord] = []
        self._settled: list[bool] = []
        self._restart_counts: dict[str, int] = {}
        self._changed = trio.lowlevel.ParkingLot()
        self._active = False
        self._reset()

    def _reset(self) -> None:
        self._window = RestartHistory()
        self._runs: dict[str, _Run] = {}
        self._order: list[str] = []
        self._send: trio.MemorySendChannel[_Started | _Ended] | None = None
        self._unstarted: set[str] = set()
        self._ready: trio.TaskStatus[None] | None = None
        self._pending: list[_PendingRestart] = []

    # -- what the owner can ask ------------------------------------------------------------

    @property
    def history(self) -> tuple[FailureRecord, ...]:
        """Every failure handled so far (every run), oldest first."""
        return tuple(self._history)

    @property
    def restart_counts(self) -> Mapping[str, int]:
        """How many times each child was restarted — also as a sibling of a failed child."""
        return MappingProxyType(self._restart_counts)

    def running(self) -> list[str]:
        """Children whose task has not ended yet, in start order."""
        return [n for n in self._order if n in self._runs and not self._runs[n].done.is_set()]

    async def wait_handled(self, count: int) -> FailureRecord:
        """Wait until the ``count``-th failure (1-based, over every run) has been handled, and
        return its record. Handled: forgotten; restarted and every restarted child has
        started again (or a newer failure interrupted the restart); escalated and every
        child has stopped. Raises :class:`RuntimeError` if the supervisor stops running
        before there are ``count`` failures."""
        if count < 1:
            raise ValueError(f"count is 1-based, got {count}")
        while not (len(self._history) >= count and self._settled[count - 1]):
            if not self._active:
                raise RuntimeError(
                    f"the supervisor is not running and has handled {len(self._history)} failure(s),"
                    f" not {count}"
                )
            await self._changed.park()
        await trio.lowlevel.checkpoint()
        return self._history[count - 1]

    def report_failure(self, name: str, error: BaseException) -> None:
        """Child ``name`` has failed with ``error``, but its task is still stopping something.

        Call it from the child's own task. The policy acts on the failure now, as if the child
        had ended; the child's later end is then not counted again.
        """
        run = self._runs.get(name)
        if self._send is None or run is None or run.failure_reported or run.done.is_set():
            return
        run.failure_reported = True
        self._send.send_nowait(_Ended(run, error, early=True))

    # -- running ---------------------------------------------------------------------------

    async def run(
        self, specs: Sequence[ChildSpec], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``specs`` until every child is done; raise :class:`ChildFailed` on escalation."""
        await self._run(specs, task_status, parent=None)

    async def _run(
        self, specs: Sequence[ChildSpec], task_status: trio.TaskStatus[None], *, parent: ParentRun | None
    ) -> None:
        """:meth:`run`, as the child ``parent`` of another supervisor (``ChildSpec.supervisor``)."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        if self._active:
            raise RuntimeError("this Supervisor is already running")
        self._reset()
        self._active = True
        self._order = names
        self._unstarted = set(names)
        self._ready = task_status
        send, recv = trio.open_memory_channel[_Started | _Ended](math.inf)
        self._send = send
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    for spec in specs:
                        await self._launch(nursery, spec)
                    self._maybe_ready()
                    await self._supervise(nursery, recv, parent)
                except Exception as exc:  # an escalation, or a hook's own error
                    failure = exc
                    nursery.cancel_scope.cancel()
        finally:
            self._active = False
            self._send = None
            self._settled = [True] * len(self._history)
            self._changed.unpark_all()
        if failure is not None:
            raise failure

    async def _supervise(
        self,
        nursery: trio.Nursery,
        recv: trio.MemoryReceiveChannel[_Started | _Ended],
        parent: ParentRun | None,
    ) -> None:
        while self._runs:
            msg = await recv.receive()
            run = msg.run
            if self._runs.get(run.spec.name) is not run:
                continue  # a run that was restarted or forgotten meanwhile
            if isinstance(msg, _Started):
                self._started(run)
                continue
            if run.failure_reported and not msg.early:
                continue  # its failure was handled when reported
            escalation = await self._handle_end(nursery, msg)
            if escalation is not None:
                if self._on_escalate is not None:
                    self._on_escalate(escalation)  # before the children's cleanups, not after
                if parent is not None:
                    parent.report_failure(escalation)  # the parent acts now, not once we have stopped
                raise escalation

    async def _launch(self, nursery: trio.Nursery, spec: ChildSpec) -> None:
        """Enter the child's run before the next child is launched (start order); its
        initialisation goes on concurrently."""
        run = _Run(self, spec)
        self._runs[spec.name] = run
        await nursery.start(self._child_main, run, name=f"child:{spec.name}")

    async def _child_main(self, run: _Run, task_status: trio.TaskStatus[None]) -> None:
        send = self._send
        assert send is not None
        current_run.set(run)
        error: BaseException | None = None
        task_status.started()
        try:
            with run.scope:
                await run.spec.run(_StartedSignal(run, send))
        except Exception as exc:
            error = exc
        finally:
            run.done.set()
        send.send_nowait(_Ended(run, error))

    def _started(self, run: _Run) -> None:
        name = run.spec.name
        run.started = True
        self._unstarted.discard(name)
        self._maybe_ready()
        for pending in list(self._pending):
            pending.waiting.discard(name)
            if not pending.waiting:
                self._pending.remove(pending)
                if self._on_restarted is not None:
                    self._on_restarted(pending.record)
                self._settle(pending.index)

    def _maybe_ready(self) -> None:
        if self._ready is not None and not self._unstarted:
            ready, self._ready = self._ready, None
            ready.started()

    async def _handle_end(self, nursery: trio.Nursery, msg: _Ended) -> ChildFailed | None:
        name = msg.run.spec.name
        failed = msg.error is not None
        now = self._clock()
        decision = decide(
            self.policy,
            order=self._order,
            running=[n for n in self.running() if not self._runs[n].failure_reported],
            restart_types={n: r.spec.restart for n, r in self._runs.items()},
            child=name,
            failed=failed,
            history=self._window,
            now=now,
            dependents=self._dependents,
        )
        if isinstance(decision, Forget):
            del self._runs[name]
            self._unstarted.discard(name)
            self._abandon_restarts({name})
            if failed:
                self._settle(self._record(now, msg.error, "forget", (), decision.reason, name))
            self._maybe_ready()
            return None
        if isinstance(decision, Escalate):
            self._record(now, msg.error, "escalate", (), decision.reason, name)
            error = msg.error if msg.error is not None else RuntimeError(f"{name} exited")
            return ChildFailed(name, error, decision.reason, restarts=decision.restarts)
        assert isinstance(decision, RestartChildren)
        index = self._record(
            now, msg.error, "restart", decision.children, decision.reason, name, stopped=decision.stopped
        )
        await self._restart(nursery, index)
        return None

    def _record(
        self,
        now: float,
        error: BaseException | None,
        action: Literal["restart", "forget", "escalate"],
        restarted: tuple[str, ...],
        reason: str,
        child: str,
        *,
        stopped: tuple[str, ...] = (),
    ) -> int:
        self._abandon_restarts({child, *restarted, *stopped})
        recent = self._window.recent(self.policy, now)
        record = FailureRecord(now, child, error, action, restarted, reason, recent, stopped)
        self._history.append(record)
        self._settled.append(False)
        if self._on_failure is not None:
            self._on_failure(record)
        return len(self._history) - 1

    async def _restart(self, nursery: trio.Nursery, index: int) -> None:
        record = self._history[index]
        stopping = set(record.restarted) | set(record.stopped)
        for name in reversed(self._order):  # stop in reverse start order, one at a time
            if name in stopping:
                run = self._runs[name]
                run.scope.cancel()
                await run.done.wait()
        for name in record.stopped:  # temporary: never started again
            del self._runs[name]
            self._unstarted.discard(name)
        self.restarts += 1
        for name in record.restarted:
            self._restart_counts[name] = self._restart_counts.get(name, 0) + 1
        if self._on_restart is not None:
            result = self._on_restart(record)
            if result is not None:
                await result
        self._unstarted.update(record.restarted)
        self._pending.append(_PendingRestart(index, record, set(record.restarted)))
        for name in record.restarted:  # start in start order
            await self._launch(nursery, self._runs[name].spec)

    def _abandon_restarts(self, names: set[str]) -> None:
        """A newer failure involves these children: restarts still waiting for them are over."""
        for pending in list(self._pending):
            if names & pending.waiting:
                self._pending.remove(pending)
                self._settle(pending.index)

    def _settle(self, index: int) -> None:
        self._settled[index] = True
        self._changed.unpark_all()
