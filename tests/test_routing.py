"""Executor routing: override → explicit mapping → class declaration → rules by priority → default.

Routing is sans-I/O: plain tests of ``route`` and of the table built from runtime.toml.
"""

from __future__ import annotations

from typing import Any

import pytest

from nursery_pipes import Manifest, ManifestError
from nursery_pipes._config import load_config
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
    assert a == Assignment("c", "inprocess", "declared by the node class (AudioChunkerNode.executor)")


def test_explicit_mapping_beats_declaration_and_rules() -> None:
    table = RoutingTable(explicit={"AudioChunkerNode": "multiprocess"})
    a = route("c", "AudioChunkerNode", declared="inprocess", table=table)
    assert a == Assignment("c", "multiprocess", "explicit mapping in runtime.toml [routing.explicit]")


def test_manifest_override_beats_everything_but_host() -> None:
    table = RoutingTable(explicit={"AudioChunkerNode": "multiprocess"})
    a = route("c", "AudioChunkerNode", declared="multiprocess", table=table, overrides={"c": "inprocess"})
    assert a == Assignment("c", "inprocess", "manifest override (metadata.multiprocess.executor_overrides)")
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
    assert a == Assignment("asr", "remote", "host gpu:50051 set in the manifest")
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
    plan = plan_session(Manifest.from_dict(doc, registry=registry), load_config())
    assert {k: (a.executor, a.reason) for k, a in plan.assignments.items()} == {
        "u": ("inprocess", "default executor"),
        "heavy": ("inprocess", "manifest override (metadata.multiprocess.executor_overrides)"),
        "light": ("inprocess", "declared by the node class (Light.executor)"),
    }
    del doc["metadata"]["multiprocess"]
    with pytest.raises(ManifestError) as info:
        plan_session(Manifest.from_dict(doc, registry=registry), load_config())
    [issue] = info.value.issues
    assert issue.path == "nodes[1]"
    assert "routes to the multiprocess executor (seed rule" in issue.message
