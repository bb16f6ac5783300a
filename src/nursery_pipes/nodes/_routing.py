"""Executor routing: which executor runs each node, and why. Sans-I/O.

Order (first match wins):

1. the manifest's per-node override (``metadata.multiprocess.executor_overrides``);
2. an explicit mapping — runtime.toml ``[routing.explicit]``, then the node
   class's own ``executor`` declaration;
3. pattern rules (fnmatch on the node type), highest priority first, then in
   the order given; the seed's rule ("``*Node`` Python nodes go to
   multiprocess") is one of them, at priority 0. Rules only ever see node
   classes that declare no executor, since a declaration is step 2;
4. the default (``[routing] default``, "inprocess" unless configured).

Steps 1 and 2 are *requests*: if the named executor cannot run the node, that
is an error for the planner to report. Steps 3 and 4 are *choices*: when the
chosen executor cannot run the node (an ``async def`` node matched by the
``*Node`` rule cannot run in a worker process), the node goes to the default
executor instead, and the assignment's reason says so. What an executor can
run is the executor's business: routing only asks (``unsupported``).

A node with a ``host`` is remote and never reaches these rules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["REMOTE", "Assignment", "RoutingRule", "RoutingTable", "route"]

REMOTE = "remote"
"""The executor of a node with a ``host``."""


@dataclass(frozen=True, slots=True)
class RoutingRule:
    pattern: str
    executor: str
    priority: int = 0
    name: str = ""

    def matches(self, node_type: str) -> bool:
        return fnmatch.fnmatchcase(node_type, self.pattern)

    def describe(self) -> str:
        label = self.name or f"rule {self.pattern!r}"
        return f"{label} (priority {self.priority})"


SEED_RULE = RoutingRule(
    pattern="*Node",
    executor="multiprocess",
    priority=0,
    name="seed rule: Python node types named '*Node'",
)


@dataclass(frozen=True)
class RoutingTable:
    explicit: Mapping[str, str] = field(default_factory=dict)
    rules: Sequence[RoutingRule] = (SEED_RULE,)
    default: str = "inprocess"

    def ordered_rules(self) -> list[RoutingRule]:
        # sorted() is stable: equal priorities keep their configured order.
        return sorted(self.rules, key=lambda rule: -rule.priority)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a node runs and the reason, e.g. ``multiprocess: manifest override``."""

    node_id: str
    executor: str
    reason: str
    requested: bool = False
    """Named explicitly (override, [routing.explicit], the class's declaration): if that
    executor cannot run the node, it is an error, not a fallback."""

    def __str__(self) -> str:
        return f"{self.node_id} → {self.executor} ({self.reason})"


def _can_run_anything(executor: str) -> str | None:
    return None


def route(
    node_id: str,
    node_type: str,
    *,
    declared: str | None,
    table: RoutingTable,
    overrides: Mapping[str, str] | None = None,
    host: str | None = None,
    unsupported: Callable[[str], str | None] = _can_run_anything,
) -> Assignment:
    """Decide the executor of one node. ``unsupported(name)`` says why that executor cannot
    run this node (None if it can)."""
    if host:
        return Assignment(node_id, REMOTE, f"host {host} set in the manifest", requested=True)
    if overrides and node_id in overrides:
        return Assignment(
            node_id,
            overrides[node_id],
            "manifest override (metadata.multiprocess.executor_overrides)",
            requested=True,
        )
    if node_type in table.explicit:
        return Assignment(
            node_id,
            table.explicit[node_type],
            "explicit mapping in runtime.toml [routing.explicit]",
            requested=True,
        )
    if declared is not None:
        return Assignment(
            node_id, declared, f"declared by the node class ({node_type}.executor)", requested=True
        )
    for rule in table.ordered_rules():
        if rule.matches(node_type):
            return _chosen(node_id, rule.executor, rule.describe(), table.default, unsupported)
    return Assignment(node_id, table.default, "default executor")


def _chosen(
    node_id: str, executor: str, why: str, default: str, unsupported: Callable[[str], str | None]
) -> Assignment:
    """A rule's choice, or the default executor when the chosen one cannot run the node."""
    problem = unsupported(executor) if executor != default else None
    if problem is None:
        return Assignment(node_id, executor, why)
    return Assignment(
        node_id,
        default,
        f"{why} chose {executor}, which cannot run it ({problem}): default executor instead",
    )
