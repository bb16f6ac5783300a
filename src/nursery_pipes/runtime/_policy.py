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

Restart intensity: more than ``max_restarts`` restarts within ``within_secs``
escalates (the supervisor gives up and fails with the child's error).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(enum.Enum):
    PERMANENT = "permanent"
    """Always restarted, even after a normal exit."""
    TRANSIENT = "transient"
    """Restarted only after a failure; a normal exit means "done"."""
    TEMPORARY = "temporary"
    """Never restarted; its failure is forgotten, not escalated."""


@dataclass(frozen=True, slots=True)
class SupervisionPolicy:
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
    child: str
    reason: str


@dataclass(frozen=True, slots=True)
class RestartChildren:
    children: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Forget:
    """The child is done (normal exit, or a temporary child); nothing to do."""

    child: str


Decision = Escalate | RestartChildren | Forget


class RestartHistory:
    """Timestamps of recent restarts, to enforce the restart intensity."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def allows(self, policy: SupervisionPolicy, now: float) -> bool:
        while self._times and now - self._times[0] > policy.within_secs:
            self._times.popleft()
        return len(self._times) < policy.max_restarts

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
) -> Decision:
    """What to do now that ``child`` has ended (``failed`` or not).

    ``order`` is every child in start order; ``running`` those still alive.
    Records the restart in ``history`` when it decides to restart.
    """
    kind = restart_types.get(child, RestartType.TRANSIENT)
    if kind is RestartType.TEMPORARY or (kind is RestartType.TRANSIENT and not failed):
        return Forget(child)
    if not history.allows(policy, now):
        why = "failed" if failed else "exited"
        if policy.max_restarts == 0:
            return Escalate(child, f"{child} {why} and the policy allows no restarts")
        return Escalate(
            child, f"{child} {why}: more than {policy.max_restarts} restarts within {policy.within_secs:g} s"
        )
    history.record(now)
    alive = set(running) | {child}
    if policy.strategy is Strategy.ONE_FOR_ONE:
        targets: tuple[str, ...] = (child,)
    elif policy.strategy is Strategy.ONE_FOR_ALL:
        targets = tuple(c for c in order if c in alive)
    else:
        start = order.index(child)
        targets = tuple(c for c in order[start:] if c in alive)
    return RestartChildren(targets)
