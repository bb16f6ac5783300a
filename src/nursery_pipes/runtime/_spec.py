"""What a supervisor runs: :class:`ChildSpec`, and its constructors for the usual children."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVarTuple, Unpack

import trio

from ._children import worker_run
from ._policy import RestartType

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["ChildSpec", "ParentRun", "current_run"]

Ts = TypeVarTuple("Ts")


class ParentRun(Protocol):
    """The run of a supervisor's child, as a nested supervisor running in it sees it."""

    def report_failure(self, error: BaseException) -> None: ...


current_run: contextvars.ContextVar[ParentRun] = contextvars.ContextVar("nursery_pipes_child_run")
"""The child run whose task this is (set by the supervisor in each child's task)."""


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child: ``run(task_status)`` must call ``task_status.started()``.

    ``restart`` says whether it runs again after it ended (:class:`RestartType`). Three
    constructors cover the usual children: :meth:`task` (an async function),
    :meth:`in_worker` (a sync function in a worker process) and :meth:`supervisor` (a
    nested supervisor).
    """

    name: str
    run: Callable[[trio.TaskStatus[Any]], Awaitable[None]]
    restart: RestartType = RestartType.TRANSIENT

    @classmethod
    def task(
        cls,
        name: str,
        fn: Callable[[Unpack[Ts]], Awaitable[object]],
        *args: *Ts,
        restart: RestartType = RestartType.TRANSIENT,
    ) -> ChildSpec:
        """A trio task running ``await fn(*args)``; started as soon as it runs.

        >>> import trio
        >>> from nursery_pipes.runtime import ChildFailed, SupervisionPolicy, Strategy, Supervisor
        >>> attempts = []
        >>> async def poll(url):
        ...     attempts.append(url)
        ...     if len(attempts) < 3:
        ...         raise ConnectionError(f"{url} went away")
        >>> supervisor = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=3))
        >>> trio.run(supervisor.run, [ChildSpec.task("poller", poll, "http://feed")])
        >>> len(attempts), supervisor.restart_counts["poller"]
        (3, 2)
        >>> [str(record) for record in supervisor.history]
        ['poller failed: restart poller', 'poller failed: restart poller']
        >>> print(supervisor.history[0].reason)
        poller failed: one_for_one restarts poller (restart 1 of at most 3 within 5 s)
        """

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            task_status.started()
            await fn(*args)

        return cls(name, run, restart)

    @classmethod
    def in_worker(
        cls,
        name: str,
        fn: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        restart: RestartType = RestartType.TRANSIENT,
    ) -> ChildSpec:
        """A worker process running ``fn(*args)``: a fresh process for every run.

        ``fn`` and ``args`` are pickled (``fn`` must be importable). An exception from
        ``fn`` fails the run with that exception; a process that exits or is killed fails
        it with :class:`~nursery_pipes.runtime.WorkerCrashed`; stopping the child kills
        the process. The run starts — ``task_status.started(worker)`` with its
        :class:`~nursery_pipes.runtime.WorkerProcess` — once ``fn`` runs in the worker.
        See :mod:`nursery_pipes.runtime._children`.

        >>> import os, trio
        >>> from nursery_pipes.runtime import ChildFailed, SupervisionPolicy, Strategy, Supervisor
        >>> supervisor = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=2))
        >>> try:
        ...     trio.run(supervisor.run, [ChildSpec.in_worker("crasher", os._exit, 3)])
        ... except ChildFailed as failed:
        ...     print(failed)
        ...     print(failed.error.exitcode, failed.restarts)
        crasher failed after 2 restarts within 5 s (max_restarts=2): crasher: worker process ... exited with code 3
        3 2
        """
        return cls(name, worker_run(name, fn, args), restart)

    @classmethod
    def supervisor(
        cls,
        name: str,
        supervisor: Supervisor,
        specs: Sequence[ChildSpec],
        *,
        restart: RestartType = RestartType.TRANSIENT,
    ) -> ChildSpec:
        """A nested supervisor running ``specs``: its escalation is this child's failure.

        The parent learns of the escalation when it is decided (as with
        :meth:`Supervisor.report_failure`), not only once the nested children have
        stopped. Each run starts with a fresh restart-intensity window; the nested
        supervisor's history keeps every run's records.

        >>> import trio
        >>> from nursery_pipes.runtime import ChildFailed, SupervisionPolicy, Strategy, Supervisor
        >>> async def write():
        ...     raise OSError("disk full")
        >>> storage = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1))
        >>> top = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1))
        >>> tree = [ChildSpec.supervisor("storage", storage, [ChildSpec.task("writer", write)])]
        >>> try:
        ...     trio.run(top.run, tree)
        ... except ChildFailed as failed:
        ...     print(failed.child, "<-", failed.error.child, "<-", repr(failed.error.error))
        storage <- writer <- OSError('disk full')
        >>> [str(record) for record in top.history]
        ['storage failed: restart storage', 'storage failed: escalate']
        >>> len(storage.history)  # two runs: restart, escalate; restart, escalate
        4
        """

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            # The supervisor whose child this task is hears of the nested escalation at once.
            await supervisor._run(specs, task_status, parent=current_run.get(None))

        return cls(name, run, restart)
