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

A node with a ``host`` is remote and never reaches these rules.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Assignment", "RoutingRule", "RoutingTable", "route"]

Executor = Literal["inprocess", "multiprocess", "remote"]


@dataclass(frozen=True, slots=True)
class RoutingRule:
    pattern: str
    executor: Literal["inprocess", "multiprocess"]
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
    explicit: Mapping[str, Literal["inprocess", "multiprocess"]] = field(default_factory=dict)
    rules: Sequence[RoutingRule] = (SEED_RULE,)
    default: Literal["inprocess", "multiprocess"] = "inprocess"

    def ordered_rules(self) -> list[RoutingRule]:
        # sorted() is stable: equal priorities keep their configured order.
        return sorted(self.rules, key=lambda rule: -rule.priority)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a node runs and the reason, e.g. ``multiprocess: manifest override``."""

    node_id: str
    executor: Executor
    reason: str

    def __str__(self) -> str:
        return f"{self.node_id} → {self.executor} ({self.reason})"


def route(
    node_id: str,
    node_type: str,
    *,
    declared: Literal["inprocess", "multiprocess"] | None,
    table: RoutingTable,
    overrides: Mapping[str, Literal["inprocess", "multiprocess"]] | None = None,
    host: str | None = None,
) -> Assignment:
    """Decide the executor of one node."""
    if host:
        return Assignment(node_id, "remote", f"host {host} set in the manifest")
    if overrides and node_id in overrides:
        return Assignment(
            node_id, overrides[node_id], "manifest override (metadata.multiprocess.executor_overrides)"
        )
    if node_type in table.explicit:
        return Assignment(
            node_id, table.explicit[node_type], "explicit mapping in runtime.toml [routing.explicit]"
        )
    if declared is not None:
        return Assignment(node_id, declared, f"declared by the node class ({node_type}.executor)")
    for rule in table.ordered_rules():
        if rule.matches(node_type):
            return Assignment(node_id, rule.executor, rule.describe())
    return Assignment(node_id, table.default, "default executor")
