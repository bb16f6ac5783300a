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
from nursery_pipes.runtime._supervisor import ChildFailed, ChildSpec, FailureRecord, Supervisor

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
    [record] = sup.history
    assert (str(record), record.time) == ("bad failed: restart bad", 1)  # decided when reported


async def test_duplicate_child_names_are_rejected() -> None:
    async def noop(task_status: Any) -> None:
        task_status.started()

    with pytest.raises(ValueError, match="unique"):
        await Supervisor().run([ChildSpec("x", noop), ChildSpec("x", noop)])


async def test_a_child_that_ends_before_started_does_not_hold_up_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def quits(task_status: Any) -> None:
        return  # a transient child that is done at once

    async def broken(task_status: Any) -> None:
        raise RuntimeError("init failed")

    async def ok(task_status: Any) -> None:
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(1):
            await nursery.start(
                sup.run,
                [ChildSpec("q", quits), ChildSpec("t", broken, RestartType.TEMPORARY), ChildSpec("ok", ok)],
            )
        assert sup.running() == ["ok"]
        assert [str(r) for r in sup.history] == ["t failed: forget"]
        nursery.cancel_scope.cancel()


# -- history and hooks -------------------------------------------------------------------------


class Children:
    """Task children that log what happens to them; each run of ``name`` does ``plans[name][i]``:
    'fail' (after 1 s), 'exit' (returns after 1 s), 'run' (forever). Every run initialises for 1 s."""

    def __init__(self, plans: dict[str, list[str]], log: list[str] | None = None) -> None:
        self.plans = plans
        self.runs: dict[str, int] = dict.fromkeys(plans, 0)
        self.log = log if log is not None else []

    def spec(self, name: str, restart: RestartType = RestartType.TRANSIENT) -> ChildSpec:
        async def run(task_status: Any) -> None:
            plan = self.plans[name]
            step = plan[min(self.runs[name], len(plan) - 1)]
            self.runs[name] += 1
            self.log.append(f"enter {name}")
            try:
                await trio.sleep(1)
                task_status.started()
                self.log.append(f"started {name}")
                if step == "run":
                    await trio.sleep_forever()
                await trio.sleep(1)
                if step == "fail":
                    raise RuntimeError(f"{name} broke")
            except trio.Cancelled:
                self.log.append(f"stopped {name}")
                raise

        return ChildSpec(name, run, restart)


async def test_hooks_fire_around_a_restart_in_order(autojump_clock: trio.testing.MockClock) -> None:
    log: list[str] = []
    kids = Children({"a": ["run"], "b": ["fail", "run"], "c": ["run"]}, log)

    async def on_restart(record: FailureRecord) -> None:
        await trio.sleep(0.5)  # an async hook is awaited before the children start again
        log.append(f"on_restart {','.join(record.restarted)} at {trio.current_time():g}")

    sup = Supervisor(
        SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=1),
        on_failure=lambda r: log.append(f"on_failure {r} at {r.time:g}"),
        on_restart=on_restart,
        on_restarted=lambda r: log.append(f"on_restarted {','.join(r.restarted)} at {trio.current_time():g}"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [kids.spec(n) for n in "abc"])
        record = await sup.wait_handled(1)
        nursery.cancel_scope.cancel()
    after = log[log.index("on_failure b failed: restart a, b, c at 2") :]
    assert after[:7] == [
        "on_failure b failed: restart a, b, c at 2",  # decided, before anything is stopped
        "stopped c",  # reverse start order (b has already ended)
        "stopped a",
        "on_restart a,b,c at 2.5",  # every one stopped, none started yet; the hook awaited
        "enter a",  # start order
        "enter b",
        "enter c",
    ]
    assert sorted(after[7:10]) == ["started a", "started b", "started c"]  # concurrently, 1 s
    assert after[10] == "on_restarted a,b,c at 3.5"  # once each has called started() again
    assert record == sup.history[0]
    assert (record.child, record.action, record.restarted, record.recent_restarts) == (
        "b",
        "restart",
        ("a", "b", "c"),
        1,
    )
    assert isinstance(record.error, RuntimeError)
    assert record.reason == "b failed: one_for_all restarts a, b, c (restart 1 of at most 1 within 5 s)"
    assert dict(sup.restart_counts) == {"a": 1, "b": 1, "c": 1}
    assert sup.restarts == 1


async def test_restarts_stop_in_reverse_and_enter_in_start_order_every_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # trio runs tasks started together in no fixed order: repeat, so an unordered start shows.
    log: list[str] = []
    kids = Children(
        {"a": ["run"], "b": ["run"], "c": ["fail"] * 8 + ["run"], "d": ["run"], "e": ["run"]}, log
    )
    sup = Supervisor(SupervisionPolicy(Strategy.REST_FOR_ONE, max_restarts=8, within_secs=100))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [kids.spec(n) for n in "abcde"])
        await sup.wait_handled(8)
        nursery.cancel_scope.cancel()
    assert [str(r) for r in sup.history] == ["c failed: restart c, d, e"] * 8
    steps = [line for line in log if line.startswith(("enter", "stopped c", "stopped d", "stopped e"))]
    assert steps[:5] == ["enter a", "enter b", "enter c", "enter d", "enter e"]
    one_restart = ["stopped e", "stopped d", "enter c", "enter d", "enter e"]  # c has ended by itself
    assert steps[5 : 5 + 8 * 5] == one_restart * 8
    assert kids.runs == {"a": 1, "b": 1, "c": 9, "d": 9, "e": 9}
    assert dict(sup.restart_counts) == {"c": 8, "d": 8, "e": 8}


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("kind", list(RestartType))
@pytest.mark.parametrize("ending", ["fail", "exit"])
async def test_restart_types_under_each_strategy(
    strategy: Strategy, kind: RestartType, ending: str, autojump_clock: trio.testing.MockClock
) -> None:
    kids = Children({"a": ["run"], "b": [ending, "run"], "c": ["run"]})
    sup = Supervisor(SupervisionPolicy(strategy, max_restarts=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [kids.spec("a"), kids.spec("b", kind), kids.spec("c")])
        await trio.sleep(5)  # b has ended (at 2 s) and been dealt with
        history = [str(r) for r in sup.history]
        running = sup.running()
        nursery.cancel_scope.cancel()
    restarted = {
        Strategy.ONE_FOR_ONE: "b",
        Strategy.ONE_FOR_ALL: "a, b, c",
        Strategy.REST_FOR_ONE: "b, c",
    }[strategy]
    if kind is RestartType.PERMANENT or (kind is RestartType.TRANSIENT and ending == "fail"):
        verb = "failed" if ending == "fail" else "exited"  # permanent: restarted even after a normal exit
        assert history == [f"b {verb}: restart {restarted}"]
        assert running == ["a", "b", "c"]
        assert kids.runs == {n: 1 + (n in restarted) for n in "abc"}
    elif ending == "fail":  # temporary: the failure is forgotten, the others go on untouched
        assert history == ["b failed: forget"]
        assert running == ["a", "c"]
        assert kids.runs == {"a": 1, "b": 1, "c": 1}
    else:  # transient or temporary, normal exit: done, nothing recorded
        assert history == []
        assert running == ["a", "c"]
        assert kids.runs == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_a_temporary_sibling_is_stopped_for_good(
    strategy: Strategy, autojump_clock: trio.testing.MockClock
) -> None:
    kids = Children({"a": ["run"], "b": ["fail", "run"], "t": ["run"], "c": ["run"]})
    sup = Supervisor(SupervisionPolicy(strategy, max_restarts=1))
    async with trio.open_nursery() as nursery:
        specs = [kids.spec("a"), kids.spec("b"), kids.spec("t", RestartType.TEMPORARY), kids.spec("c")]
        await nursery.start(sup.run, specs)
        record = await sup.wait_handled(1)
        running = sup.running()
        nursery.cancel_scope.cancel()
    assert record.stopped == ("t",)
    assert "stops t for good (temporary)" in record.reason
    if strategy is Strategy.ONE_FOR_ALL:
        assert str(record) == "b failed: restart a, b, c; stop t"
        assert running == ["a", "b", "c"]
    else:
        assert str(record) == "b failed: restart b, c; stop t"
        assert running == ["a", "b", "c"]
    assert kids.runs["t"] == 1
    assert "t" not in sup.restart_counts


# -- restart intensity, in virtual time --------------------------------------------------------


async def _failing_at(sup: Supervisor, times: list[float]) -> tuple[list[str], ChildFailed | None]:
    """Run one permanent child under ``sup`` that fails (at once) at each of ``times`` (from now)."""
    t0 = trio.current_time()
    fail_now = trio.Event()

    async def child() -> None:
        await fail_now.wait()
        raise RuntimeError("boom")

    escalation = None
    async with trio.open_nursery() as nursery:

        async def supervise(task_status: Any) -> None:
            nonlocal escalation
            try:
                await sup.run(
                    [ChildSpec.task("x", child, restart=RestartType.PERMANENT)], task_status=task_status
                )
            except ChildFailed as exc:
                escalation = exc

        await nursery.start(supervise)
        for n, at in enumerate(times, 1):
            await trio.sleep_until(t0 + at)
            current, fail_now = fail_now, trio.Event()  # the next run waits for the next one
            current.set()
            await sup.wait_handled(n)
            if escalation is not None:
                break
        nursery.cancel_scope.cancel()
    return [f"{r.time - t0:g} {r.action}" for r in sup.history], escalation


async def test_a_restart_storm_escalates_exactly_at_max_restarts_plus_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=3, within_secs=5))
    history, escalation = await _failing_at(sup, [1, 2, 3, 4, 4.5])
    assert history == ["1 restart", "2 restart", "3 restart", "4 escalate"]
    assert escalation is not None
    assert escalation.restarts == 3
    assert str(escalation) == "x failed after 3 restarts within 5 s (max_restarts=3): boom"
    assert [r.recent_restarts for r in sup.history] == [1, 2, 3, 3]


async def test_the_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=2, within_secs=5))
    # 1 and 2 are restarts; at 6.5 the restart at 1 is 5.5 s old (out), so is 2's at 7.5 ...
    history, escalation = await _failing_at(sup, [1, 2, 6.5, 7.5, 11.6, 12])
    assert history == ["1 restart", "2 restart", "6.5 restart", "7.5 restart", "11.6 restart", "12 escalate"]
    assert escalation is not None


async def test_a_restart_exactly_within_secs_old_still_counts(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1, within_secs=5))
    history, _ = await _failing_at(sup, [1, 6])
    assert history == ["1 restart", "6 escalate"]
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1, within_secs=5))
    history, _ = await _failing_at(sup, [1, 6.001])
    assert history == ["1 restart", "6.001 restart"]


# -- readiness, waiting, errors ----------------------------------------------------------------


async def test_ready_waits_for_a_child_restarted_while_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a is ready at 3 s; b fails at 4 s before it was ever ready: one_for_all restarts both.
    The supervisor is ready when the *new* runs are (a's at 7 s), not when the old ones were."""

    async def a(task_status: Any) -> None:
        await trio.sleep(3)
        task_status.started()
        await trio.sleep_forever()

    async def b(task_status: Any) -> None:
        nonlocal b_runs
        b_runs += 1
        if b_runs == 1:
            await trio.sleep(4)
            raise RuntimeError("init failed")
        task_status.started()
        await trio.sleep_forever()

    b_runs = 0
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec("a", a), ChildSpec("b", b)])
        assert trio.current_time() == pytest.approx(7)
        assert [str(r) for r in sup.history] == ["b failed: restart a, b"]
        nursery.cancel_scope.cancel()


async def test_wait_handled_refuses_to_wait_for_what_cannot_come(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = Supervisor()
    with pytest.raises(RuntimeError, match="not running and has handled 0 failure"):
        await sup.wait_handled(1)
    with pytest.raises(ValueError, match="1-based"):
        await sup.wait_handled(0)
    kids = Children({"a": ["exit"]})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run, [kids.spec("a")])
        with pytest.raises(RuntimeError, match="not running"):
            await sup.wait_handled(1)  # woken when the run ends without a failure


async def test_an_error_in_a_hook_ends_run_with_it_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    def broken_hook(record: FailureRecord) -> None:
        raise KeyError("hook bug")

    kids = Children({"a": ["run"], "b": ["fail"]})
    sup = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1), on_failure=broken_hook)
    with pytest.raises(KeyError, match="hook bug"):
        await sup.run([kids.spec("a"), kids.spec("b")])
    assert "stopped a" in kids.log


async def test_one_run_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    kids = Children({"a": ["run"]})
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [kids.spec("a")])
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run([kids.spec("a")])
        nursery.cancel_scope.cancel()


# -- nested supervisors ------------------------------------------------------------------------


async def test_a_nested_supervisors_escalation_is_its_parents_child_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner_kids = Children({"w": ["fail"], "slow": ["run"]})
    inner = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1, within_secs=60))
    outer = Supervisor(SupervisionPolicy(Strategy.ONE_FOR_ONE, max_restarts=1, within_secs=60))
    sibling = Children({"s": ["run"]})
    with pytest.raises(ChildFailed) as info:
        await outer.run(
            [
                ChildSpec.supervisor("inner", inner, [inner_kids.spec("w"), inner_kids.spec("slow")]),
                sibling.spec("s"),
            ]
        )
    # the inner supervisor escalated twice (one outer restart between), with a fresh window each run
    assert [str(r) for r in inner.history] == [
        "w failed: restart w",
        "w failed: escalate",
        "w failed: restart w",
        "w failed: escalate",
    ]
    assert [str(r) for r in outer.history] == ["inner failed: restart inner", "inner failed: escalate"]
    assert info.value.child == "inner"
    assert isinstance(info.value.error, ChildFailed)
    assert info.value.error.child == "w"
    assert str(info.value.error.error) == "w broke"
    assert sibling.runs == {"s": 1}  # one_for_one at the top: the sibling never restarted


async def test_a_nested_escalation_reaches_the_parent_when_decided(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The inner supervisor's other child takes 5 s to stop; the parent hears at once."""

    async def deaf(task_status: Any) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(5)

    inner = Supervisor()
    heard: list[float] = []
    outer = Supervisor(on_failure=lambda r: heard.append(trio.current_time()))
    kids = Children({"w": ["fail"]})
    with pytest.raises(ChildFailed):
        await outer.run([ChildSpec.supervisor("inner", inner, [kids.spec("w"), ChildSpec("deaf", deaf)])])
    assert heard == [2]  # when w failed, not when deaf had stopped
    assert trio.current_time() == pytest.approx(7)


def test_rest_for_one_with_dependents_restarts_what_depends_on_the_failed_child() -> None:
    """A pipeline src → (a, b) → join: when a fails, rest_for_one restarts a and join (downstream
    of a), not b — a parallel branch that merely starts after a."""
    policy = SupervisionPolicy(Strategy.REST_FOR_ONE, max_restarts=3)
    order = ["src", "a", "b", "join"]
    downstream = {"src": {"a", "b", "join"}, "a": {"join"}, "b": {"join"}, "join": set()}

    def restarted(dependents: Any) -> tuple[str, ...]:
        decision = decide(
            policy,
            order=order,
            running=order,
            restart_types={},
            child="a",
            failed=True,
            history=RestartHistory(),
            now=0.0,
            dependents=dependents,
        )
        assert isinstance(decision, RestartChildren)
        return decision.children

    assert restarted(downstream) == ("a", "join")
    assert restarted(None) == ("a", "b", "join")  # OTP: every child started after a
