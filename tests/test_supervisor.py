"""Supervision policy (sans-I/O decisions) and the trio supervisor that carries them out."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from nursery_pipes.runtime._policy import (
    FAIL_FAST,
    Escalate,
    Forget,
    RestartChildren,
    RestartHistory,
    RestartType,
    Strategy,
    SupervisionPolicy,
    decide,
)
from nursery_pipes.runtime._supervisor import ChildFailed, ChildSpec, Supervisor

ORDER = ["a", "b", "c", "d"]


def _decide(
    policy: SupervisionPolicy,
    child: str,
    *,
    failed: bool = True,
    history: RestartHistory | None = None,
    now: float = 0.0,
    kinds: dict[str, RestartType] | None = None,
    running: list[str] | None = None,
) -> Any:
    return decide(
        policy,
        order=ORDER,
        running=running if running is not None else [c for c in ORDER if c != child],
        restart_types=kinds or {},
        child=child,
        failed=failed,
        history=history if history is not None else RestartHistory(),
        now=now,
    )


def test_fail_fast_escalates_the_first_failure() -> None:
    decision = _decide(FAIL_FAST, "b")
    assert isinstance(decision, Escalate)
    assert decision.child == "b"
    assert "allows no restarts" in decision.reason


def test_normal_exit_of_transient_child_is_forgotten() -> None:
    assert _decide(FAIL_FAST, "b", failed=False) == Forget("b")


def test_temporary_child_failure_is_forgotten() -> None:
    assert _decide(FAIL_FAST, "b", kinds={"b": RestartType.TEMPORARY}) == Forget("b")


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, ("b",)),
        (Strategy.ONE_FOR_ALL, ("a", "b", "c", "d")),
        (Strategy.REST_FOR_ONE, ("b", "c", "d")),
    ],
)
def test_strategies_choose_what_to_restart(strategy: Strategy, expected: tuple[str, ...]) -> None:
    decision = _decide(SupervisionPolicy(strategy, max_restarts=3), "b")
    assert decision == RestartChildren(expected)


def test_finished_children_are_not_restarted() -> None:
    decision = _decide(SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=1), "c", running=["b"])
    assert decision == RestartChildren(("b", "c"))


def test_permanent_child_is_restarted_after_normal_exit() -> None:
    decision = _decide(
        SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1),
        "a",
        failed=False,
        kinds={"a": RestartType.PERMANENT},
    )
    assert decision == RestartChildren(("a",))


def test_restart_intensity_window() -> None:
    policy = SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=2, within_secs=10)
    history = RestartHistory()
    assert isinstance(_decide(policy, "a", history=history, now=0), RestartChildren)
    assert isinstance(_decide(policy, "a", history=history, now=1), RestartChildren)
    too_many = _decide(policy, "a", history=history, now=2)
    assert isinstance(too_many, Escalate)
    assert too_many.reason == "a failed after 2 restarts within 10 s (max_restarts=2)"
    assert too_many.restarts == 2
    # Once the window has passed, restarts are allowed again.
    assert isinstance(_decide(policy, "a", history=history, now=11.5), RestartChildren)


def test_policy_validates_its_numbers() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        SupervisionPolicy(max_restarts=-1)
    with pytest.raises(ValueError, match="within_secs"):
        SupervisionPolicy(within_secs=0)


# -- the trio supervisor ---------------------------------------------------------------------


class Script:
    """Children whose behaviour per start is scripted: 'ok', 'fail', 'hang'."""

    def __init__(self, plans: dict[str, list[str]]) -> None:
        self.plans = plans
        self.log: list[str] = []

    def spec(self, name: str, restart: RestartType = RestartType.TRANSIENT) -> ChildSpec:
        async def run(task_status: Any) -> None:
            step = self.plans[name].pop(0) if len(self.plans[name]) > 1 else self.plans[name][0]
            self.log.append(f"start {name}")
            try:
                await trio.sleep(1)
                task_status.started()
                await trio.sleep(1)
                if step == "fail":
                    raise RuntimeError(f"{name} broke")
                if step == "hang":
                    await trio.sleep_forever()
                self.log.append(f"done {name}")
            except trio.Cancelled:
                self.log.append(f"cancelled {name}")
                raise

        return ChildSpec(name, run, restart)


async def test_children_start_in_parallel_and_report_started_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script({"a": ["ok"], "b": ["ok"], "c": ["ok"]})
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(sup.run, [script.spec(n) for n in "abc"])
        assert trio.current_time() - t0 == pytest.approx(1)  # all three initialised concurrently
    assert sorted(script.log) == ["done a", "done b", "done c", "start a", "start b", "start c"]


async def test_fail_fast_cancels_siblings_and_raises_child_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script({"a": ["hang"], "b": ["fail"], "c": ["hang"]})
    with pytest.raises(ChildFailed) as info:
        await Supervisor().run([script.spec(n) for n in "abc"])
    assert info.value.child == "b"
    assert isinstance(info.value.error, RuntimeError)
    assert str(info.value.error) == "b broke"
    assert "cancelled a" in script.log
    assert "cancelled c" in script.log


async def test_one_for_one_restarts_only_the_failed_child(autojump_clock: trio.testing.MockClock) -> None:
    script = Script({"a": ["ok"], "b": ["fail", "fail", "ok"]})
    restarts: list[tuple[str, ...]] = []
    sup = Supervisor(
        SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=5),
        on_restart=lambda record: restarts.append(record.restarted),
    )
    await sup.run([script.spec("a"), script.spec("b")])
    assert restarts == [("b",), ("b",)]
    assert script.log.count("start a") == 1
    assert script.log.count("start b") == 3
    assert sup.restarts == 2


async def test_one_for_all_restarts_running_siblings(autojump_clock: trio.testing.MockClock) -> None:
    script = Script({"a": ["hang", "ok"], "b": ["fail", "ok"]})
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=1))
    await sup.run([script.spec("a"), script.spec("b")])
    assert script.log.count("cancelled a") == 1
    assert script.log.count("start a") == 2
    assert script.log.count("start b") == 2


async def test_restart_intensity_escalates(autojump_clock: trio.testing.MockClock) -> None:
    script = Script({"a": ["fail"]})
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=2, within_secs=60))
    with pytest.raises(
        ChildFailed, match=r"^a failed after 2 restarts within 60 s \(max_restarts=2\): a broke$"
    ):
        await sup.run([script.spec("a")])
    assert script.log.count("start a") == 3


async def test_failure_before_started_propagates_from_start(autojump_clock: trio.testing.MockClock) -> None:
    async def broken(task_status: Any) -> None:
        raise ValueError("init failed")

    async with trio.open_nursery() as nursery:
        with pytest.raises(ChildFailed) as info:
            await nursery.start(Supervisor().run, [ChildSpec("x", broken)])
    assert isinstance(info.value.error, ValueError)


async def test_outside_cancellation_reaches_every_child(autojump_clock: trio.testing.MockClock) -> None:
    script = Script({"a": ["hang"], "b": ["hang"]})
    with trio.move_on_after(10):
        await Supervisor().run([script.spec("a"), script.spec("b")])
    assert sorted(line for line in script.log if line.startswith("cancelled")) == [
        "cancelled a",
        "cancelled b",
    ]


def _reporting_child(sup: Supervisor, log: list[Any], *, fail_first: bool = True) -> ChildSpec:
    """Fails after 1 s, reports it, then needs 5 s (shielded) to stop — a worker deaf to the
    stop request — and raises the same error. Later runs (after a restart) succeed."""
    runs = 0

    async def run(task_status: Any) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await trio.sleep(1)
        if runs > 1 or not fail_first:
            return
        error = RuntimeError("bad broke")
        sup.report_failure("bad", error)
        log.append(("reported", trio.current_time()))
        with trio.CancelScope(shield=True):
            await trio.sleep(5)
        log.append(("stopped", trio.current_time()))
        raise error

    return ChildSpec("bad", run)


async def test_a_reported_failure_escalates_before_the_child_has_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    sup = Supervisor(on_escalate=lambda failed: log.append(("escalated", failed.child, trio.current_time())))

    async def sibling(task_status: Any) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            log.append(("sibling cancelled", trio.current_time()))

    with pytest.raises(ChildFailed) as info:
        await sup.run([_reporting_child(sup, log), ChildSpec("ok", sibling)])
    assert info.value.child == "bad"
    assert str(info.value.error) == "bad broke"
    assert log == [
        ("reported", 1),
        ("escalated", "bad", 1),  # decided when reported, not when the child ended
        ("sibling cancelled", 1),  # so siblings clean up while the failed child is being stopped
        ("stopped", 6),
    ]
    assert trio.current_time() == pytest.approx(6)  # but run() returns only once every child has ended


async def test_a_reported_failure_is_acted_on_once(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1))
    await sup.run([_reporting_child(sup, log)])  # the failing run's own end must not escalate
    assert sup.restarts == 1
    assert log == [("reported", 1), ("stopped", 6)]


async def test_duplicate_child_names_are_rejected() -> None:
    async def noop(task_status: Any) -> None:
        task_status.started()

    with pytest.raises(ValueError, match="unique"):
        await Supervisor().run([ChildSpec("x", noop), ChildSpec("x", noop)])
