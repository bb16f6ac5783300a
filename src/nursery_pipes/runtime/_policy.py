"""Supervision policy as data, and the decision it implies. Sans-I/O.

A supervisor asks one question whenever a child ends: *what now?*
:func:`decide` answers from the policy, the child's restart type and the
recent restart history — nothing else — so every answer is testable with
plain values and a fake clock.

Sessions use :data:`FAIL_FAST` (one-for-all, no restarts: the seed's model —
one crashed node fails the whole session). Other strategies are here so
restart behaviour can be added by changing data, not code:

================  ==========================================================
strategy          children restarted when one fails
================  ==========================================================
one_for_one       only the failed child
one_for_all       every child (in start order)
rest_for_one      the failed child and every child started after it
================  ==========================================================

Restart types, as in OTP: a *permanent* child is restarted whenever it ends,
a *transient* one only when it failed, a *temporary* one never — not even
when a sibling's failure stops it (one_for_all, rest_for_one): it is then
stopped for good (``RestartChildren.stopped``).

Restart intensity: more than ``max_restarts`` restarts within ``within_secs``
escalates (the supervisor gives up and fails with the child's error). The
window slides: a restart counts while it is at most ``within_secs`` old, so
with ``max_restarts=3`` the fourth failure within the window escalates and a
failure after a quiet ``within_secs`` is restarted again.

Every decision says why, in words (``reason``): the supervisor's history and
its hooks pass it on, so a log line or a test can tell *which* rule acted.

>>> policy = SupervisionPolicy(Strategy.REST_FOR_ONE, max_restarts=1, within_secs=5)
>>> window = RestartHistory()
>>> def b_fails(now):
...     return decide(policy, order=["a", "b", "c"], running=["a", "c"], restart_types={},
...                   child="b", failed=True, history=window, now=now)
>>> first = b_fails(0.0)
>>> first.children, first.reason
(('b', 'c'), 'b failed: rest_for_one restarts b, c (restart 1 of at most 1 within 5 s)')
>>> b_fails(1.0).reason
'b failed after 1 restart within 5 s (max_restarts=1)'
>>> b_fails(6.5).children  # the first restart is more than 5 s old: allowed again
('b', 'c')
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "FAIL_FAST",
    "Decision",
    "Escalate",
    "Forget",
    "RestartChildren",
    "RestartHistory",
    "RestartType",
    "Strategy",
    "SupervisionPolicy",
    "decide",
]


class Strategy(enum.Enum):
    """Which children a failure restarts (see the table above)."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(enum.Enum):
    """Whether a child that ended is started again."""

    PERMANENT = "permanent"
    """Always restarted, even after a normal exit."""
    TRANSIENT = "transient"
    """Restarted only after a failure; a normal exit means "done"."""
    TEMPORARY = "temporary"
    """Never restarted; its failure is forgotten, not escalated."""


@dataclass(frozen=True, slots=True)
class SupervisionPolicy:
    """What a supervisor does when a child fails: the strategy and the restart intensity.

    The default is :data:`FAIL_FAST`'s behaviour: no restarts, the first failure escalates.
    """

    strategy: Strategy = Strategy.ONE_FOR_ALL
    max_restarts: int = 0
    within_secs: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be ≥ 0, got {self.max_restarts}")
        if self.within_secs <= 0:
            raise ValueError(f"within_secs must be > 0, got {self.within_secs}")


FAIL_FAST = SupervisionPolicy(Strategy.ONE_FOR_ALL, max_restarts=0)


@dataclass(frozen=True, slots=True)
class Escalate:
    """Give up: too many restarts (or none allowed); the supervisor fails with the child's error."""

    child: str
    reason: str
    restarts: int = 0
    """Restarts within the window when it gave up (= ``max_restarts``)."""


@dataclass(frozen=True, slots=True)
class RestartChildren:
    """Stop ``children`` (in reverse start order), then start them again (in start order)."""

    children: tuple[str, ...]
    reason: str = field(default="", compare=False)
    stopped: tuple[str, ...] = ()
    """Temporary siblings the strategy stops: stopped with the others, never started again."""


@dataclass(frozen=True, slots=True)
class Forget:
    """The child is done (normal exit, or a temporary child); nothing to do."""

    child: str
    reason: str = field(default="", compare=False)


Decision = Escalate | RestartChildren | Forget


class RestartHistory:
    """Timestamps of recent restarts, to enforce the restart intensity."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def allows(self, policy: SupervisionPolicy, now: float) -> bool:
        return self.recent(policy, now) < policy.max_restarts

    def recent(self, policy: SupervisionPolicy, now: float) -> int:
        """Restarts at most ``within_secs`` old (older ones are dropped: the window slides)."""
        while self._times and now - self._times[0] > policy.within_secs:
            self._times.popleft()
        return len(self._times)

    def record(self, now: float) -> None:
        self._times.append(now)

    def __len__(self) -> int:
        return len(self._times)


def decide(
    policy: SupervisionPolicy,
    *,
    order: Sequence[str],
    running: Sequence[str],
    restart_types: Mapping[str, RestartType],
    child: str,
    failed: bool,
    history: RestartHistory,
    now: float,
    dependents: Mapping[str, Collection[str]] | None = None,
) -> Decision:
    """What to do now that ``child`` has ended (``failed`` or not).

    ``order`` is every child in start order; ``running`` those still alive.
    Records the restart in ``history`` when it decides to restart. ``dependents``, when
    given, says which children depend on each one (transitively): rest_for_one then
    restarts the failed child and its dependents — in a pipeline, the nodes downstream of
    it — instead of every child started after it (OTP's meaning, for a plain start order).
    """
    kind = restart_types.get(child, RestartType.TRANSIENT)
    why = "failed" if failed else "exited normally"
    if kind is RestartType.TEMPORARY:
        return Forget(child, f"{child} {why}; it is temporary: never restarted")
    if kind is RestartType.TRANSIENT and not failed:
        return Forget(child, f"{child} {why}; it is transient: done")
    if not history.allows(policy, now):
        if policy.max_restarts == 0:
            return Escalate(child, f"{child} {why} and the policy allows no restarts")
        n = len(history)
        return Escalate(
            child,
            f"{child} {why} after {n} restart{'s' * (n != 1)} within {policy.within_secs:g} s"
            f" (max_restarts={policy.max_restarts})",
            restarts=n,
        )
    history.record(now)
    alive = set(running) | {child}
    if policy.strategy is Strategy.ONE_FOR_ONE:
        targets: tuple[str, ...] = (child,)
    elif policy.strategy is Strategy.ONE_FOR_ALL:
        targets = tuple(c for c in order if c in alive)
    elif dependents is not None:
        rest = {child, *dependents.get(child, ())}
        targets = tuple(c for c in order if c in alive and c in rest)
    else:
        start = order.index(child)
        targets = tuple(c for c in order[start:] if c in alive)
    stopped = tuple(c for c in targets if c != child and restart_types.get(c) is RestartType.TEMPORARY)
    restarted = tuple(c for c in targets if c not in stopped)
    also = f"; stops {', '.join(stopped)} for good (temporary)" if stopped else ""
    reason = (
        f"{child} {why}: {policy.strategy.value} restarts {', '.join(restarted)}{also}"
        f" (restart {len(history)} of at most {policy.max_restarts} within {policy.within_secs:g} s)"
    )
    return RestartChildren(restarted, reason, stopped)
