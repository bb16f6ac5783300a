"""A trio supervisor whose behaviour is data (:mod:`._policy`).

It owns one nursery; every child runs in its own cancel scope inside it, so
the supervisor can stop one child (to restart it) without touching the
others, and nothing a child starts can outlive the supervisor. Children start
concurrently; :meth:`Supervisor.run` reports "started" once all of them have
(``task_status.started()``), and returns when every child is done. When the
policy escalates, every child is cancelled and :class:`ChildFailed` carries
the child's own exception out — never an ExceptionGroup.

Shutdown contract for children: cancellation is the stop request. A child
that must clean up does so in ``finally`` under a shielded cancel scope with
its own deadline (see the executors).

Failures are acted on when they are *known*, not when the child's task ends:
a child that knows it has failed but still has to stop something (a worker
process deaf to the stop request: ask → grace → kill) calls
:meth:`Supervisor.report_failure` first. The policy decides at once; an
escalation is announced through ``on_escalate`` and every child is cancelled
then, so the children's cleanups run together while the failing one is still
being stopped. The supervisor still returns only when every child task has
ended (structured concurrency), and the failed child's own end is not
counted a second time.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ._policy import (
    FAIL_FAST,
    Escalate,
    Forget,
    RestartChildren,
    RestartHistory,
    RestartType,
    SupervisionPolicy,
    decide,
)

__all__ = ["ChildFailed", "ChildSpec", "Supervisor"]


class ChildFailed(Exception):
    """The supervisor gave up: ``child`` failed with ``error`` and the policy escalated."""

    def __init__(self, child: str, error: BaseException, reason: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.child = child
        self.error = error
        self.reason = reason


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child: ``run(task_status)`` must call ``task_status.started()``."""

    name: str
    run: Callable[[trio.TaskStatus[None]], Awaitable[None]]
    restart: RestartType = RestartType.TRANSIENT


@dataclass(eq=False)
class _Child:
    """One run of a child (a restart makes a new one; messages name the run, not the name)."""

    spec: ChildSpec
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    failure_reported: bool = False
    """It reported its failure before ending; the policy has already acted on it."""


@dataclass(frozen=True)
class _Started:
    name: str


@dataclass(frozen=True)
class _Ended:
    child: _Child
    error: BaseException | None
    stopped_by_us: bool
    early: bool = False
    """Sent by report_failure(), while the child's task still runs."""


class _StartedSignal:
    def __init__(self, name: str, send: trio.MemorySendChannel[_Started | _Ended]) -> None:
        self._name = name
        self._send = send
        self._fired = False

    def started(self, value: Any = None) -> None:
        if self._fired:
            raise RuntimeError(f"child {self._name!r} called started() twice")
        self._fired = True
        self._send.send_nowait(_Started(self._name))


class Supervisor:
    """Run children under a :class:`SupervisionPolicy` (default: fail fast)."""

    def __init__(
        self,
        policy: SupervisionPolicy = FAIL_FAST,
        *,
        clock: Callable[[], float] = trio.current_time,
        on_restart: Callable[[tuple[str, ...]], None] | None = None,
        on_escalate: Callable[[ChildFailed], None] | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_restart = on_restart
        self._on_escalate = on_escalate
        self._history = RestartHistory()
        self._children: dict[str, _Child] = {}
        self._order: list[str] = []
        self._send: trio.MemorySendChannel[_Started | _Ended] | None = None
        self.restarts = 0

    def report_failure(self, name: str, error: BaseException) -> None:
        """Child ``name`` has failed with ``error``, but its task is still stopping something.

        Call it from the child's own task. The policy acts on the failure now, as if the child
        had ended; the child's later end is then not counted again.
        """
        child = self._children.get(name)
        if self._send is None or child is None or child.failure_reported:
            return
        child.failure_reported = True
        self._send.send_nowait(_Ended(child, error, stopped_by_us=False, early=True))

    def running(self) -> list[str]:
        """Children whose task has not ended yet, in start order."""
        return [n for n in self._order if n in self._children and not self._children[n].done.is_set()]

    async def run(
        self, specs: Sequence[ChildSpec], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._order = names
        send, recv = trio.open_memory_channel[_Started | _Ended](math.inf)
        self._send = send
        waiting = set(names)
        escalation: ChildFailed | None = None
        async with trio.open_nursery() as nursery:
            for spec in specs:
                self._launch(nursery, spec, send)
            if not waiting:
                task_status.started()
            while self._children:
                msg = await recv.receive()
                if isinstance(msg, _Started):
                    waiting.discard(msg.name)
                    if not waiting:
                        task_status.started()
                        waiting.add("")  # report started only once
                    continue
                child = msg.child
                if self._children.get(child.spec.name) is not child:
                    continue  # a run that was restarted or forgotten meanwhile
                if msg.stopped_by_us or (child.failure_reported and not msg.early):
                    continue  # stopped on purpose, or its failure was handled when reported
                escalation = await self._handle_end(nursery, msg, send)
                if escalation is not None:
                    if self._on_escalate is not None:
                        self._on_escalate(escalation)  # before the children's cleanups, not after
                    nursery.cancel_scope.cancel()
                    break
        if escalation is not None:
            raise escalation

    def _launch(
        self, nursery: trio.Nursery, spec: ChildSpec, send: trio.MemorySendChannel[_Started | _Ended]
    ) -> None:
        child = _Child(spec)
        self._children[spec.name] = child
        nursery.start_soon(self._child_main, child, send, name=f"child:{spec.name}")

    async def _child_main(self, child: _Child, send: trio.MemorySendChannel[_Started | _Ended]) -> None:
        error: BaseException | None = None
        try:
            with child.scope:
                await child.spec.run(_StartedSignal(child.spec.name, send))
        except Exception as exc:
            error = exc
        finally:
            child.done.set()
        send.send_nowait(_Ended(child, error, stopped_by_us=child.scope.cancelled_caught))

    async def _handle_end(
        self, nursery: trio.Nursery, msg: _Ended, send: trio.MemorySendChannel[_Started | _Ended]
    ) -> ChildFailed | None:
        name = msg.child.spec.name
        running = [n for n in self.running() if not self._children[n].failure_reported]
        decision = decide(
            self.policy,
            order=self._order,
            running=running,
            restart_types={n: c.spec.restart for n, c in self._children.items()},
            child=name,
            failed=msg.error is not None,
            history=self._history,
            now=self._clock(),
        )
        if isinstance(decision, Forget):
            del self._children[name]
            return None
        if isinstance(decision, Escalate):
            error = msg.error if msg.error is not None else RuntimeError(f"{name} exited")
            return ChildFailed(name, error, decision.reason)
        assert isinstance(decision, RestartChildren)
        await self._restart(nursery, decision.children, send)
        return None

    async def _restart(
        self, nursery: trio.Nursery, names: tuple[str, ...], send: trio.MemorySendChannel[_Started | _Ended]
    ) -> None:
        for name in reversed(names):  # stop in reverse start order
            child = self._children[name]
            child.scope.cancel()
            await child.done.wait()
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(names)
        for name in names:
            self._launch(nursery, self._children[name].spec, send)
