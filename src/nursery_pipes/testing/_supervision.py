"""Testing a supervision tree: faults on demand, waiting for the supervisor, asserting its history.

A :class:`SupervisorHarness` runs a :class:`~nursery_pipes.Supervisor` whose
children it has wrapped, so a test can make any child fail *now*:

- :meth:`~SupervisorHarness.fail` — the child's run raises (an
  :class:`InjectedFault`, or the error given) wherever it is: its body is
  cancelled, its cleanup runs, then the error is raised from its task — for
  a worker child that means its process is killed first;
- :meth:`~SupervisorHarness.exit_worker` — a worker child's process calls
  ``os._exit(code)``;
- :meth:`~SupervisorHarness.kill_worker` — a worker child's process gets
  SIGKILL (or another signal).

Each returns once the supervisor has *handled* the failure
(:meth:`Supervisor.wait_handled <nursery_pipes.Supervisor.wait_handled>`):
the children restarted and started again, or the failure forgotten, or the
escalation done — with its :class:`~nursery_pipes.FailureRecord`. Restart
intensity windows are tested in virtual time: request the ``autojump_clock``
fixture and ``await trio.sleep(...)`` between faults (the supervisor's clock
is trio's). :func:`assert_history` compares the whole history with one line
per failure.

The ``start_supervisor`` fixture (:mod:`nursery_pipes.testing.pytest_plugin`)
starts a harness in the background of the test and stops it after. Without
pytest: ``await nursery.start(harness.run, specs)``.

Example::

    import time

    import trio
    from nursery_pipes import ChildSpec, Strategy, SupervisionPolicy
    from nursery_pipes.testing import assert_history

    POLICY = SupervisionPolicy(Strategy.REST_FOR_ONE, max_restarts=2, within_secs=10)


    async def forward(log):
        log.append("forward up")
        await trio.sleep_forever()


    async def test_a_killed_worker_restarts_with_what_follows_it(start_supervisor):
        log = []
        harness = await start_supervisor(
            [ChildSpec.in_worker("crunch", time.sleep, 3600), ChildSpec.task("forward", forward, log)],
            POLICY,
        )
        first_pid = harness.worker("crunch").pid
        record = await harness.kill_worker("crunch")
        assert record.restarted == ("crunch", "forward")
        assert harness.worker("crunch").pid != first_pid
        assert log == ["forward up", "forward up"]


    async def test_a_restart_storm_escalates(start_supervisor, autojump_clock):
        harness = await start_supervisor([ChildSpec.task("forward", forward, [])], POLICY)
        await harness.fail("forward")
        await trio.sleep(11)  # virtual time: that restart leaves the 10 s window
        await harness.fail("forward")
        await harness.fail("forward")
        await harness.fail("forward")  # the third restart within 10 s: too many
        assert_history(harness.supervisor, [
            "forward failed: restart forward",
            "forward failed: restart forward",
            "forward failed: restart forward",
            "forward failed: escalate",
        ])
        assert "after 2 restarts within 10 s" in str(harness.escalation)
"""

from __future__ import annotations

import dataclasses
import signal as _signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..runtime import (
    FAIL_FAST,
    ChildFailed,
    ChildSpec,
    FailureRecord,
    SupervisionPolicy,
    Supervisor,
    WorkerProcess,
)

__all__ = ["InjectedFault", "SupervisorHarness", "SupervisorStarter", "assert_history"]


class InjectedFault(Exception):
    """The error :meth:`SupervisorHarness.fail` makes a child raise when given none."""


class SupervisorStarter(Protocol):
    """The type of the ``start_supervisor`` fixture, for annotations."""

    def __call__(
        self, specs: Sequence[ChildSpec], policy: SupervisionPolicy | Supervisor = ...
    ) -> Awaitable[SupervisorHarness]: ...


def assert_history(supervisor: Supervisor, expected: Sequence[str]) -> None:
    """Assert the supervisor's whole history, one ``str(record)`` per failure, e.g.
    ``"b failed: restart b, c"``, ``"t failed: forget"``, ``"a failed: escalate"``."""
    actual = [str(record) for record in supervisor.history]
    assert actual == list(expected), f"supervisor history: {actual}, expected {list(expected)}"


@dataclass(eq=False)
class _Target:
    """One run of a wrapped child: how to make it fail, and what it started with."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    error: Exception | None = None
    value: Any = None


class _Relay:
    """The task_status a wrapped child gets: remembers the started value, passes it on."""

    def __init__(self, task_status: trio.TaskStatus[Any], target: _Target) -> None:
        self._task_status = task_status
        self._target = target

    def started(self, value: Any = None) -> None:
        self._target.value = value
        self._task_status.started(value)


class SupervisorHarness:
    """A supervisor under test, with fault injection into its (wrapped) children.

    ``supervisor`` is the one to run, or a policy for a new one. For a nested supervisor,
    give it a harness of its own and build its spec from that harness's :meth:`wrap`.
    """

    def __init__(self, supervisor: Supervisor | SupervisionPolicy = FAIL_FAST) -> None:
        self.supervisor = supervisor if isinstance(supervisor, Supervisor) else Supervisor(supervisor)
        self.escalation: ChildFailed | None = None
        """What :meth:`run` ended with, if the supervisor gave up after it had started."""
        self._targets: dict[str, _Target] = {}

    def wrap(self, specs: Sequence[ChildSpec]) -> list[ChildSpec]:
        """``specs``, each made able to fail on demand (same names, restart types and runs)."""
        return [dataclasses.replace(spec, run=self._wrapped(spec)) for spec in specs]

    async def run(
        self, specs: Sequence[ChildSpec], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the supervisor on the wrapped ``specs``. An escalation before every child has
        started is raised; after, it is kept in :attr:`escalation` (the test asserts it)."""
        ready = trio.Event()

        class _Ready:
            def started(self, value: None = None) -> None:
                ready.set()
                task_status.started()

        try:
            await self.supervisor.run(self.wrap(specs), task_status=_Ready())
        except ChildFailed as exc:
            if not ready.is_set():
                raise
            self.escalation = exc

    def worker(self, name: str) -> WorkerProcess:
        """The worker process of child ``name``'s current run (a worker child that has started)."""
        value = self._target(name).value
        if not isinstance(value, WorkerProcess):
            raise TypeError(
                f"child {name!r} is not a worker child that has started (it started with {value!r})"
            )
        return value

    async def fail(self, name: str, error: Exception | None = None) -> FailureRecord:
        """Make child ``name`` fail with ``error`` (default: :class:`InjectedFault`) now."""
        target = self._target(name)
        count = len(self.supervisor.history)
        target.error = error if error is not None else InjectedFault(f"fault injected into {name}")
        target.scope.cancel()
        return await self.supervisor.wait_handled(count + 1)

    async def exit_worker(self, name: str, code: int = 1) -> FailureRecord:
        """Make worker child ``name``'s process exit at once with ``code``."""
        worker = self.worker(name)
        count = len(self.supervisor.history)
        worker.inject_exit(code)
        return await self.supervisor.wait_handled(count + 1)

    async def kill_worker(self, name: str, signum: int = _signal.SIGKILL) -> FailureRecord:
        """Send ``signum`` (default SIGKILL) to worker child ``name``'s process."""
        worker = self.worker(name)
        count = len(self.supervisor.history)
        worker.kill(signum)
        return await self.supervisor.wait_handled(count + 1)

    def _target(self, name: str) -> _Target:
        target = self._targets.get(name)
        if target is None:
            raise LookupError(f"child {name!r} is not running (running: {self.supervisor.running()})")
        return target

    def _wrapped(self, spec: ChildSpec) -> Callable[[trio.TaskStatus[Any]], Awaitable[None]]:
        async def run(task_status: trio.TaskStatus[Any]) -> None:
            target = _Target()
            self._targets[spec.name] = target
            try:
                with target.scope:
                    await spec.run(_Relay(task_status, target))
            finally:
                if self._targets.get(spec.name) is target:
                    del self._targets[spec.name]
            if target.error is not None:
                raise target.error

        return run
