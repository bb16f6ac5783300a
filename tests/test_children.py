"""Worker-process children: a sync function in a fresh worker process per run, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from nursery_pipes.runtime import (
    ChildFailed,
    ChildSpec,
    RestartType,
    Strategy,
    SupervisionPolicy,
    Supervisor,
    WorkerCrashed,
    WorkerProcess,
)
from nursery_pipes.testing import SupervisorHarness

FOREVER = 3600.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _escalation(spec: ChildSpec, fault: str | None = None) -> ChildFailed:
    """Run ``spec`` alone under FAIL_FAST (after ``fault``, if any) and return the escalation."""
    harness = SupervisorHarness()
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.run, [spec])
        if fault == "exit":
            await harness.exit_worker(spec.name, 7)
        elif fault == "kill":
            await harness.kill_worker(spec.name)
        elif fault == "raise":
            await harness.fail(spec.name, ValueError("injected"))
    assert harness.escalation is not None
    return harness.escalation


async def test_an_exception_from_the_function_is_the_childs_error() -> None:
    with pytest.raises(ChildFailed) as info:
        await Supervisor().run([ChildSpec.in_worker("parse", int, "not a number")])
    error = info.value.error
    assert isinstance(error, ValueError)  # the worker's own exception, unpickled
    assert "invalid literal for int()" in str(error)


async def test_a_worker_that_exits_fails_with_its_exit_code() -> None:
    with pytest.raises(ChildFailed) as info:
        await Supervisor().run([ChildSpec.in_worker("quitter", os._exit, 3)])
    error = info.value.error
    assert isinstance(error, WorkerCrashed)
    assert (error.child, error.exitcode, error.signal) == ("quitter", 3, None)
    assert str(error) == f"quitter: worker process {error.pid} exited with code 3"


@pytest.mark.parametrize(("fault", "exitcode", "signum"), [("exit", 7, None), ("kill", None, signal.SIGKILL)])
async def test_faults_injected_into_a_running_worker(
    fault: str, exitcode: int | None, signum: int | None
) -> None:
    escalation = await _escalation(ChildSpec.in_worker("crunch", time.sleep, FOREVER), fault)
    error = escalation.error
    assert isinstance(error, WorkerCrashed)
    assert (error.exitcode, error.signal) == (exitcode, signum)
    assert error.pid is not None
    assert not _alive(error.pid)


async def test_an_injected_raise_kills_the_worker_first() -> None:
    harness = SupervisorHarness()
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.run, [ChildSpec.in_worker("crunch", time.sleep, FOREVER)])
        pid = harness.worker("crunch").pid
        record = await harness.fail("crunch", ValueError("injected"))
    assert record.action == "escalate"
    assert isinstance(record.error, ValueError)
    assert not _alive(pid)


async def test_started_means_the_function_runs_in_its_own_process() -> None:
    values: list[Any] = []

    async def spy(task_status: Any) -> None:
        class Relay:
            def started(self, value: Any = None) -> None:
                values.append(value)
                task_status.started(value)

        await ChildSpec.in_worker("w", time.sleep, FOREVER).run(Relay())

    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec("w", spy)])
        [worker] = values
        assert isinstance(worker, WorkerProcess)
        assert worker.pid != os.getpid()
        assert _alive(worker.pid)
        assert worker.alive
        nursery.cancel_scope.cancel()
    assert not worker.alive  # the run has ended: the handle does nothing any more
    worker.kill()
    worker.inject_exit(3)


async def test_a_restart_gets_a_fresh_process() -> None:
    harness = SupervisorHarness(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=3))
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.run, [ChildSpec.in_worker("crunch", time.sleep, FOREVER)])
        pids = [harness.worker("crunch").pid]
        for _ in range(2):
            record = await harness.kill_worker("crunch")
            assert str(record) == "crunch failed: restart crunch"
            pids.append(harness.worker("crunch").pid)
        assert len(set(pids)) == 3
        assert [_alive(pid) for pid in pids] == [False, False, True]
        nursery.cancel_scope.cancel()
    assert not _alive(pids[-1])  # cancelled from outside: killed, and the test's leak check agrees


async def test_more_worker_children_than_cpus_all_run() -> None:
    """Each child's job lasts its whole life: trio-parallel's default limiter (cpu_count jobs)
    would keep the extra ones from ever starting."""
    n = (os.cpu_count() or 1) + 2
    harness = SupervisorHarness()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):  # each starts in well under a second
            await nursery.start(
                harness.run, [ChildSpec.in_worker(f"w{i}", time.sleep, FOREVER) for i in range(n)]
            )
        assert len({harness.worker(f"w{i}").pid for i in range(n)}) == n
        nursery.cancel_scope.cancel()


async def test_an_escalation_kills_every_worker_child() -> None:
    harness = SupervisorHarness()

    async def fails_later(task_status: Any) -> None:
        task_status.started()
        await ready.wait()
        raise RuntimeError("task broke")

    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        specs = [ChildSpec.in_worker(f"w{i}", time.sleep, FOREVER) for i in range(2)]
        await nursery.start(harness.run, [*specs, ChildSpec("task", fails_later)])
        pids = [harness.worker(f"w{i}").pid for i in range(2)]
        ready.set()
    assert harness.escalation is not None
    assert harness.escalation.child == "task"
    assert [_alive(pid) for pid in pids] == [False, False]


async def test_a_transient_worker_child_that_returns_is_done() -> None:
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=3))
    await sup.run([ChildSpec.in_worker("once", time.sleep, 0)])
    assert sup.history == ()


async def test_a_permanent_worker_child_is_restarted_after_it_returns() -> None:
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=2, within_secs=60))
    with pytest.raises(ChildFailed, match=r"^tick exited normally after 2 restarts within 60 s"):
        await sup.run([ChildSpec.in_worker("tick", time.sleep, 0, restart=RestartType.PERMANENT)])
    assert [str(r) for r in sup.history] == ["tick exited: restart tick"] * 2 + ["tick exited: escalate"]


def _readme_blocks() -> list[str]:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Supervising your own tasks", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in section.split("```")[1::2]]


def test_the_readme_example_runs_as_shown(tmp_path: Path) -> None:
    """README "Supervising your own tasks": the script, run as a script (its workers re-import it)."""
    script, output = _readme_blocks()[:2]
    (tmp_path / "supervised.py").write_text(script)
    command, *expected = output.strip().splitlines()
    assert command == "$ python supervised.py /tmp/marker"
    run = subprocess.run(
        [sys.executable, "supervised.py", str(tmp_path / "marker")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.splitlines() == expected


def test_a_function_a_worker_cannot_import_is_refused_when_the_spec_is_made() -> None:
    def local() -> None:
        pass

    with pytest.raises(TypeError, match=r"child 'job': .*local.* cannot be sent to a worker process"):
        ChildSpec.in_worker("job", local)
    with pytest.raises(TypeError, match="define it at the top level of an importable module"):
        ChildSpec.in_worker("job", lambda: None)
