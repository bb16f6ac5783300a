"""The supervision harness for users: faults on demand, waiting for the supervisor, history assertions."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nursery_pipes.runtime import (
    ChildFailed,
    ChildSpec,
    RestartType,
    Strategy,
    SupervisionPolicy,
    WorkerCrashed,
)
from nursery_pipes.testing import (
    InjectedFault,
    SupervisorHarness,
    SupervisorStarter,
    _supervision,
    assert_history,
)

pytest_plugins = ["pytester"]


def _docstring_example() -> str:
    doc = _supervision.__doc__
    assert doc is not None
    return textwrap.dedent(doc.split("Example::", 1)[1])


def test_the_documented_example_passes_in_a_users_project(pytester: pytest.Pytester) -> None:
    """What the harness's docstring shows, run as a user's test suite would run it."""
    pytester.makeconftest('pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]\n')
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_user=_docstring_example())
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_readme_test_example_passes(pytester: pytest.Pytester) -> None:
    """README "Supervising your own tasks", its test (with the imports it leaves out)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Supervising your own tasks", 1)[1].split("\n## ", 1)[0]
    example = section.split("```python\n")[-1].split("```")[0]
    imports = (
        "import time\n"
        "from nursery_pipes import ChildSpec, Strategy, SupervisionPolicy\n"
        "from nursery_pipes.testing import assert_history\n\n"
    )
    pytester.makeconftest('pytest_plugins = ["nursery_pipes.testing.pytest_plugin"]\n')
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_readme=imports + example)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# -- the harness in this suite (the plugin is loaded by conftest.py) ----------------------------


async def forever() -> None:
    await trio.sleep_forever()


POLICY = SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=3, within_secs=10)


async def test_fail_raises_the_given_error_and_waits_until_handled(
    start_supervisor: SupervisorStarter, autojump_clock: trio.testing.MockClock
) -> None:
    started: list[str] = []

    async def slow_start(task_status: Any) -> None:
        await trio.sleep(2)
        started.append("slow")
        task_status.started()
        await trio.sleep_forever()

    harness = await start_supervisor(
        [ChildSpec("slow", slow_start), ChildSpec.task("other", forever)], POLICY
    )
    error = OSError("disk full")
    record = await harness.fail("slow", error)
    assert record.error is error
    assert str(record) == "slow failed: restart slow"
    assert started == ["slow", "slow"]  # returned once the new run had started (2 s later)
    assert trio.current_time() == pytest.approx(4)
    assert isinstance((await harness.fail("other")).error, InjectedFault)
    assert_history(harness.supervisor, ["slow failed: restart slow", "other failed: restart other"])


async def test_a_temporary_childs_fault_is_forgotten(start_supervisor: SupervisorStarter) -> None:
    harness = await start_supervisor([ChildSpec.task("t", forever, restart=RestartType.TEMPORARY)], POLICY)
    record = await harness.fail("t")
    assert record.action == "forget"
    assert harness.supervisor.running() == []
    with pytest.raises(LookupError, match=r"child 't' is not running \(running: \[\]\)"):
        await harness.fail("t")


async def test_an_escalation_before_ready_fails_the_start(start_supervisor: SupervisorStarter) -> None:
    async def broken() -> None:
        raise RuntimeError("cannot start")

    async def never_ready(task_status: Any) -> None:
        await trio.sleep_forever()

    with pytest.raises(ChildFailed, match="cannot start"):
        await start_supervisor([ChildSpec("slow", never_ready), ChildSpec.task("b", broken)])


async def test_an_escalation_after_ready_is_kept_for_the_test(start_supervisor: SupervisorStarter) -> None:
    harness = await start_supervisor([ChildSpec.task("a", forever)])
    record = await harness.fail("a")
    assert record.action == "escalate"
    assert harness.escalation is not None
    assert harness.escalation.error is record.error
    assert harness.supervisor.running() == []


async def test_worker_faults_need_a_worker_child(start_supervisor: SupervisorStarter) -> None:
    harness = await start_supervisor([ChildSpec.task("a", forever)])
    with pytest.raises(TypeError, match="'a' is not a worker child that has started"):
        await harness.kill_worker("a")


async def test_exit_worker_restarts_with_the_exit_code_recorded(start_supervisor: SupervisorStarter) -> None:
    harness = await start_supervisor([ChildSpec.in_worker("w", time.sleep, 3600)], POLICY)
    record = await harness.exit_worker("w", 42)
    assert isinstance(record.error, WorkerCrashed)
    assert record.error.exitcode == 42
    assert str(record) == "w failed: restart w"


async def test_a_nested_supervisor_gets_a_harness_of_its_own(
    start_supervisor: SupervisorStarter, autojump_clock: trio.testing.MockClock
) -> None:
    inner = SupervisorHarness(SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=1))
    tree = [
        ChildSpec.supervisor(
            "inner", inner.supervisor, inner.wrap([ChildSpec.task(n, forever) for n in "xy"])
        ),
        ChildSpec.task("top", forever),
    ]
    outer = await start_supervisor(tree, POLICY)
    assert str(await inner.fail("y")) == "y failed: restart x, y"
    assert str(await inner.fail("x")) == "x failed: escalate"  # the inner run is over...
    record = await outer.supervisor.wait_handled(1)  # ...and the outer one restarts it
    assert str(record) == "inner failed: restart inner"
    assert isinstance(record.error, ChildFailed)
    assert str(await inner.fail("x")) == "x failed: restart x, y"  # a fresh window in the new run
    assert str(await outer.fail("inner")) == "inner failed: restart inner"


async def test_worker_faults_in_virtual_time(
    start_supervisor: SupervisorStarter, autojump_clock: trio.testing.MockClock
) -> None:
    """Real worker processes under a MockClock: the window is virtual, the processes are not."""
    policy = SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1, within_secs=30)
    harness = await start_supervisor([ChildSpec.in_worker("w", time.sleep, 3600)], policy)
    await harness.kill_worker("w")
    await trio.sleep(31)  # virtual: the restart has left the window
    await harness.exit_worker("w", 5)
    record = await harness.kill_worker("w")
    assert_history(harness.supervisor, ["w failed: restart w", "w failed: restart w", "w failed: escalate"])
    assert record.time - harness.supervisor.history[1].time < 1  # no virtual time passed
    assert harness.escalation is not None
