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
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Started(Protocol):
    def started(self, value: Any = None) -> None: ...


class _Ignored:
    def started(self, value: Any = None) -> None:
        pass


_IGNORED = _Ignored()


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
    run: Callable[[Started], Awaitable[None]]
    restart: RestartType = RestartType.TRANSIENT


@dataclass
class _Child:
    spec: ChildSpec
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True)
class _Started:
    name: str


@dataclass(frozen=True)
class _Ended:
    name: str
    error: BaseException | None
    stopped_by_us: bool


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
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_restart = on_restart
        self._history = RestartHistory()
        self._children: dict[str, _Child] = {}
        self._order: list[str] = []
        self.restarts = 0

    async def run(self, specs: Sequence[ChildSpec], *, task_status: Started = _IGNORED) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._order = names
        send, recv = trio.open_memory_channel[_Started | _Ended](math.inf)
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
                if msg.stopped_by_us or msg.name not in self._children:
                    continue
                escalation = await self._handle_end(nursery, msg, send)
                if escalation is not None:
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
        send.send_nowait(_Ended(child.spec.name, error, stopped_by_us=child.scope.cancelled_caught))

    async def _handle_end(
        self, nursery: trio.Nursery, msg: _Ended, send: trio.MemorySendChannel[_Started | _Ended]
    ) -> ChildFailed | None:
        running = [n for n in self._order if n in self._children and not self._children[n].done.is_set()]
        decision = decide(
            self.policy,
            order=self._order,
            running=running,
            restart_types={n: c.spec.restart for n, c in self._children.items()},
            child=msg.name,
            failed=msg.error is not None,
            history=self._history,
            now=self._clock(),
        )
        if isinstance(decision, Forget):
            del self._children[msg.name]
            return None
        if isinstance(decision, Escalate):
            error = msg.error if msg.error is not None else RuntimeError(f"{msg.name} exited")
            return ChildFailed(msg.name, error, decision.reason)
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
