"""Executor routing: override → explicit mapping → class declaration → rules by priority → default.

Routing is sans-I/O: plain tests of ``route`` and of the table built from runtime.toml.
"""

from __future__ import annotations

from typing import Any

import pytest

from nursery_pipes import Manifest, ManifestError, Runtime
from nursery_pipes._config import load_config
from nursery_pipes.executors import create_executors
from nursery_pipes.frames import Frame
from nursery_pipes.nodes import Assignment, Node, NodeRegistry, RoutingRule, RoutingTable, route
from nursery_pipes.nodes._routing import SEED_RULE
from nursery_pipes.runtime._plan import plan_session, routing_table

NO_RULES = RoutingTable(rules=())


def test_default_when_nothing_matches() -> None:
    a = route("n", "Thing", declared=None, table=NO_RULES)
    assert a == Assignment("n", "inprocess", "default executor")
    table = RoutingTable(rules=(), default="multiprocess")
    assert route("n", "Thing", declared=None, table=table).executor == "multiprocess"


def test_seed_rule_sends_star_node_types_to_multiprocess() -> None:
    table = RoutingTable()  # the seed rule is in the default rules
    assert table.rules == (SEED_RULE,)
    a = route("asr", "WhisperNode", declared=None, table=table)
    assert a.executor == "multiprocess"
    assert a.reason == "seed rule: Python node types named '*Node' (priority 0)"
    assert route("x", "Whisper", declared=None, table=table).reason == "default executor"
    assert route("x", "NodeWhisper", declared=None, table=table).executor == "inprocess"
    assert not SEED_RULE.matches("whispernode")  # case-sensitive


def test_class_declaration_beats_rules() -> None:
    a = route("c", "AudioChunkerNode", declared="inprocess", table=RoutingTable())
    assert a == Assignment(
        "c", "inprocess", "declared by the node class (AudioChunkerNode.executor)", requested=True
    )


def test_explicit_mapping_beats_declaration_and_rules() -> None:
    table = RoutingTable(explicit={"AudioChunkerNode": "multiprocess"})
    a = route("c", "AudioChunkerNode", declared="inprocess", table=table)
    assert a == Assignment(
        "c", "multiprocess", "explicit mapping in runtime.toml [routing.explicit]", requested=True
    )


def test_manifest_override_beats_everything_but_host() -> None:
    table = RoutingTable(explicit={"AudioChunkerNode": "multiprocess"})
    a = route("c", "AudioChunkerNode", declared="multiprocess", table=table, overrides={"c": "inprocess"})
    assert a == Assignment(
        "c", "inprocess", "manifest override (metadata.multiprocess.executor_overrides)", requested=True
    )
    # An override for another node changes nothing here.
    b = route("d", "AudioChunkerNode", declared=None, table=table, overrides={"c": "inprocess"})
    assert b.executor == "multiprocess"


def test_host_makes_a_node_remote() -> None:
    a = route(
        "asr",
        "WhisperNode",
        declared="inprocess",
        table=RoutingTable(),
        overrides={"asr": "inprocess"},
        host="gpu:50051",
    )
    assert a == Assignment("asr", "remote", "host gpu:50051 set in the manifest", requested=True)
    assert str(a) == "asr → remote (host gpu:50051 set in the manifest)"
    assert route("asr", "X", declared=None, table=NO_RULES, host="").executor == "inprocess"


def test_rules_by_priority_then_configured_order() -> None:
    low = RoutingRule("*Model*", "inprocess", priority=1, name="low")
    high = RoutingRule("Big*", "multiprocess", priority=5, name="high")
    first = RoutingRule("*Node", "inprocess", priority=3, name="first")
    second = RoutingRule("*Node", "multiprocess", priority=3, name="second")
    table = RoutingTable(rules=(low, first, second, high))
    assert table.ordered_rules() == [high, first, second, low]
    assert route("a", "BigModelNode", declared=None, table=table).reason == "high (priority 5)"
    assert route("a", "SmallModelNode", declared=None, table=table).reason == "first (priority 3)"  # stable
    assert route("a", "SmallModel", declared=None, table=table).reason == "low (priority 1)"
    flipped = RoutingTable(rules=(second, first))
    assert route("a", "XNode", declared=None, table=flipped).executor == "multiprocess"


def test_rule_patterns_and_descriptions() -> None:
    rule = RoutingRule("Audio?ain*", "inprocess", priority=-2)
    assert rule.matches("AudioGainNode")
    assert not rule.matches("AudioNode")
    assert rule.describe() == "rule 'Audio?ain*' (priority -2)"
    assert RoutingRule("[AB]*", "inprocess").matches("BNode")


# ---------------------------------------------------------------------------------------------
# The table built from runtime.toml


def test_routing_table_from_config() -> None:
    config = load_config(
        text="""
[routing]
default = "multiprocess"
explicit = { EnergyVADNode = "multiprocess" }
rules = [
  { pattern = "*Node", executor = "inprocess" },
  { pattern = "*Model*", executor = "multiprocess", priority = 20 },
]
"""
    )
    table = routing_table(config)
    assert table.default == "multiprocess"
    assert dict(table.explicit) == {"EnergyVADNode": "multiprocess"}
    assert table.ordered_rules() == [
        RoutingRule("*Model*", "multiprocess", 20),
        RoutingRule("*Node", "inprocess", 0),
        SEED_RULE,  # appended after the configured rules: a configured rule of equal priority wins
    ]
    assert route("x", "TTSNode", declared=None, table=table).reason == "rule '*Node' (priority 0)"
    assert route("x", "Thing", declared=None, table=table) == Assignment(
        "x", "multiprocess", "default executor"
    )


def test_seed_rule_can_be_switched_off() -> None:
    table = routing_table(load_config(text="[routing]\nseed_rule = false"))
    assert table.rules == ()
    assert route("x", "WhisperNode", declared=None, table=table).executor == "inprocess"
    assert routing_table(load_config()).rules == (SEED_RULE,)


# ---------------------------------------------------------------------------------------------
# Assignments are observable on a plan, with their reasons


class _Pass(Node[Any]):
    abstract = True

    def process(self, frame: Frame) -> Frame:
        return frame


class Undeclared(_Pass):
    """No executor declared: the rules decide."""


class HeavyNode(_Pass):
    """Declares nothing either, but its name matches the seed rule."""


class Light(_Pass):
    executor = "inprocess"


def test_plan_records_each_assignment_and_reason() -> None:
    registry = NodeRegistry()
    for cls in (Undeclared, HeavyNode, Light):
        registry.register(cls)
    doc = {
        "version": "v1",
        "metadata": {"name": "routes", "multiprocess": {"executor_overrides": {"heavy": "inprocess"}}},
        "nodes": [
            {"id": "u", "node_type": "Undeclared"},
            {"id": "heavy", "node_type": "HeavyNode"},
            {"id": "light", "node_type": "Light"},
        ],
        "connections": [{"from": "u", "to": "heavy"}, {"from": "heavy", "to": "light"}],
    }
    config = load_config()
    executors = create_executors(config)
    plan = plan_session(Manifest.from_dict(doc, registry=registry), config, executors=executors)
    assert {k: (a.executor, a.reason) for k, a in plan.assignments.items()} == {
        "u": ("inprocess", "default executor"),
        "heavy": ("inprocess", "manifest override (metadata.multiprocess.executor_overrides)"),
        "light": ("inprocess", "declared by the node class (Light.executor)"),
    }
    del doc["metadata"]["multiprocess"]
    only_inprocess = {"inprocess": executors["inprocess"]}
    with pytest.raises(ManifestError) as info:
        plan_session(Manifest.from_dict(doc, registry=registry), config, executors=only_inprocess)
    [issue] = info.value.issues
    assert issue.path == "nodes[1].node_type"
    assert "routes to the multiprocess executor (seed rule" in issue.message
    assert "which this runtime does not have (available: inprocess)" in issue.message


class AsyncHeavyNode(Node):
    """Matches the seed rule, but its hooks are async: no worker process can run it."""

    async def process(self, frame: Frame) -> Frame:
        return frame


def _async_plan(overrides: dict[str, str] | None = None) -> Any:
    registry = NodeRegistry()
    registry.register(AsyncHeavyNode)
    doc: dict[str, Any] = {
        "version": "v1",
        "metadata": {"name": "async", "multiprocess": {"executor_overrides": overrides or {}}},
        "nodes": [{"id": "a", "node_type": "AsyncHeavyNode"}],
        "connections": [],
    }
    config = load_config()
    return plan_session(
        Manifest.from_dict(doc, registry=registry), config, executors=create_executors(config)
    )


def test_a_rule_never_sends_a_node_where_it_cannot_run() -> None:
    """The seed rule picks multiprocess for *Node types; an async node goes to the default
    executor instead, and the reason says why."""
    assignment = _async_plan().assignments["a"]
    assert assignment.executor == "inprocess"
    assert assignment.reason == (
        "seed rule: Python node types named '*Node' (priority 0) chose multiprocess, which cannot run it "
        f"({__name__}.AsyncHeavyNode has async hooks (process), which run only in the supervisor's trio "
        "loop): default executor instead"
    )


@pytest.mark.parametrize("executor", ["multiprocess", "thread"])
def test_an_explicit_request_for_an_impossible_executor_is_an_error(executor: str) -> None:
    with pytest.raises(ManifestError) as info:
        _async_plan({"a": executor})
    [issue] = info.value.issues
    assert issue.path == "metadata.multiprocess.executor_overrides.a"
    assert f"node 'a' routes to {executor} (manifest override" in issue.message
    assert "AsyncHeavyNode has async hooks (process)" in issue.message


def test_an_executor_the_runtime_lacks_is_an_error_at_its_path() -> None:
    with pytest.raises(ManifestError) as info:
        Runtime().plan(
            {
                "version": "v1",
                "metadata": {"name": "x", "multiprocess": {"executor_overrides": {"a": "gpu"}}},
                "nodes": [{"id": "a", "node_type": "PassThrough"}],
                "connections": [],
            }
        )
    [issue] = info.value.issues
    assert issue.path == "metadata.multiprocess.executor_overrides.a"
    assert issue.message == (
        "node 'a' routes to the gpu executor (manifest override (metadata.multiprocess.executor_overrides)), "
        "which this runtime does not have (available: inprocess, multiprocess, remote, thread)"
    )


def test_route_asks_whether_the_chosen_executor_can_run_the_node() -> None:
    def unsupported(name: str) -> str | None:
        return "no GPU here" if name == "gpu" else None

    table = RoutingTable(rules=(RoutingRule("*Model", "gpu", name="models"),), default="thread")
    a = route("m", "BigModel", declared=None, table=table, unsupported=unsupported)
    assert a == Assignment(
        "m",
        "thread",
        "models (priority 0) chose gpu, which cannot run it (no GPU here): default executor instead",
    )
    assert not a.requested
    # a request is not second-guessed: the planner reports it
    b = route("m", "BigModel", declared=None, table=table, overrides={"m": "gpu"}, unsupported=unsupported)
    assert (b.executor, b.requested) == ("gpu", True)
