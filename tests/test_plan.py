"""runtime/_plan.py: the supervision policy and restart types a session gets. Sans-I/O.

Precedence (docs/design.md §2, "Configuration precedence"): the policy is taken whole from
the manifest's ``metadata.supervision``, else runtime.toml's ``[supervision]``, else
``FAIL_FAST``; a node's restart type from its ``restart``, else ``[supervision] restart``,
else transient. Without any of these settings a plan is exactly what it was before they
existed.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from nursery_pipes import Frame, Manifest, Node, ResourceLimitError, RuntimeConfig
from nursery_pipes._config import SupervisionDefaults, load_config
from nursery_pipes._errors import ConfigError
from nursery_pipes.cli._serve import apply_overrides
from nursery_pipes.nodes._registry import builtin_registry
from nursery_pipes.runtime import FAIL_FAST, RestartType, Runtime, Strategy, SupervisionPolicy
from nursery_pipes.runtime._plan import resolve_restart, resolve_supervision

REGISTRY = builtin_registry()


def manifest(supervision: Any = "absent", restarts: dict[str, Any] | None = None) -> Manifest:
    """in → mid → out (PassThrough), with ``metadata.supervision`` and ``restart`` per node as given."""
    metadata: dict[str, Any] = {"name": "supervised"}
    if supervision != "absent":
        metadata["supervision"] = supervision
    nodes: list[dict[str, Any]] = [{"id": n, "node_type": "PassThrough"} for n in ("in", "mid", "out")]
    for node in nodes:
        if restarts and node["id"] in restarts:
            node["restart"] = restarts[node["id"]]
    doc = {
        "version": "v1",
        "metadata": metadata,
        "nodes": nodes,
        "connections": [{"from": "in", "to": "mid"}, {"from": "mid", "to": "out"}],
    }
    return Manifest.from_dict(doc, registry=REGISTRY)


def policy(strategy: Strategy, max_restarts: int, within_secs: float) -> SupervisionPolicy:
    return SupervisionPolicy(strategy, max_restarts=max_restarts, within_secs=within_secs)


def restart_types(m: Manifest, config: RuntimeConfig) -> dict[str, RestartType]:
    return {spec.id: resolve_restart(spec, config) for spec in m.nodes}


# ---------------------------------------------------------------------------------------------
# Nothing set: today's behaviour


def test_without_any_setting_sessions_fail_fast_with_transient_nodes() -> None:
    plan = Runtime(RuntimeConfig(), registry=REGISTRY).plan(manifest())
    assert plan.supervision is FAIL_FAST
    assert plan.supervision == policy(Strategy.ONE_FOR_ALL, 0, 5.0)
    assert {nid: n.restart for nid, n in plan.nodes.items()} == dict.fromkeys(
        ("in", "mid", "out"), RestartType.TRANSIENT
    )


def test_null_metadata_supervision_is_the_same_as_none() -> None:
    assert resolve_supervision(manifest(None, {"in": None}), RuntimeConfig()) is FAIL_FAST
    assert restart_types(manifest(None, {"in": None}), RuntimeConfig())["in"] is RestartType.TRANSIENT


# ---------------------------------------------------------------------------------------------
# The manifest's policy


def test_the_manifests_policy_as_written() -> None:
    m = manifest({"strategy": "rest_for_one", "max_restarts": 7, "within_secs": 12})
    assert resolve_supervision(m, RuntimeConfig()) == policy(Strategy.REST_FOR_ONE, 7, 12.0)
    assert isinstance(resolve_supervision(m, RuntimeConfig()).within_secs, float)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ({}, policy(Strategy.ONE_FOR_ONE, 3, 5.0)),
        ({"strategy": "one_for_all"}, policy(Strategy.ONE_FOR_ALL, 3, 5.0)),
        ({"max_restarts": 0}, policy(Strategy.ONE_FOR_ONE, 0, 5.0)),
        ({"within_secs": 0.5}, policy(Strategy.ONE_FOR_ONE, 3, 0.5)),
    ],
)
def test_keys_a_manifest_leaves_out_take_the_defaults(written: dict[str, Any], expected: object) -> None:
    assert resolve_supervision(manifest(written), RuntimeConfig()) == expected


def test_a_manifest_policy_is_taken_whole_never_mixed_with_runtime_toml() -> None:
    """A manifest asking for one_for_one on a server whose default is one_for_all with 10
    restarts gets one_for_one with the *manifest's* defaults (3 in 5 s), not the server's 10:
    mixing the two would make a policy nobody wrote (and on a fail-fast server, max_restarts
    0 — a strategy that never restarts)."""
    config = load_config(text="[supervision]\nstrategy = 'one_for_all'\nmax_restarts = 10\nwithin_secs = 60")
    got = resolve_supervision(manifest({"strategy": "one_for_one"}), config)
    assert got == policy(Strategy.ONE_FOR_ONE, 3, 5.0)
    assert resolve_supervision(manifest({"strategy": "one_for_one"}), RuntimeConfig()).max_restarts == 3


# ---------------------------------------------------------------------------------------------
# runtime.toml's default policy


def test_runtime_toml_policy_applies_when_the_manifest_sets_none() -> None:
    config = load_config(text="[supervision]\nstrategy = 'rest_for_one'\nmax_restarts = 10\nwithin_secs = 60")
    assert resolve_supervision(manifest(), config) == policy(Strategy.REST_FOR_ONE, 10, 60.0)
    plan = Runtime(config, registry=REGISTRY).plan(manifest())
    assert plan.supervision == policy(Strategy.REST_FOR_ONE, 10, 60.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_restarts = 5", policy(Strategy.ONE_FOR_ONE, 5, 5.0)),
        ("max_restarts = 0", policy(Strategy.ONE_FOR_ONE, 0, 5.0)),
        ("strategy = 'one_for_all'", policy(Strategy.ONE_FOR_ALL, 3, 5.0)),
        ("within_secs = 30", policy(Strategy.ONE_FOR_ONE, 3, 30.0)),
    ],
)
def test_keys_runtime_toml_leaves_out_take_the_same_defaults(text: str, expected: object) -> None:
    config = load_config(text=f"[supervision]\n{text}")
    assert config.supervision.sets_policy
    assert resolve_supervision(manifest(), config) == expected


def test_a_default_restart_type_alone_sets_no_policy() -> None:
    config = load_config(text="[supervision]\nrestart = 'permanent'")
    assert not config.supervision.sets_policy
    assert resolve_supervision(manifest(), config) is FAIL_FAST
    assert set(restart_types(manifest(), config).values()) == {RestartType.PERMANENT}


def test_the_manifests_policy_beats_runtime_toml() -> None:
    config = load_config(text="[supervision]\nstrategy = 'rest_for_one'\nmax_restarts = 10")
    m = manifest({"strategy": "one_for_all", "max_restarts": 1, "within_secs": 2})
    assert resolve_supervision(m, config) == policy(Strategy.ONE_FOR_ALL, 1, 2.0)
    # max_restarts 0 is a policy too (present, not "unset"): it beats the server's 10.
    assert resolve_supervision(manifest({"max_restarts": 0}), config).max_restarts == 0


def test_environment_overrides_set_the_servers_policy() -> None:
    env = {
        "NURSERY_PIPES_SUPERVISION__STRATEGY": "one_for_all",
        "NURSERY_PIPES_SUPERVISION__MAX_RESTARTS": "4",
        "NURSERY_PIPES_SUPERVISION__WITHIN_SECS": "2.5",
        "NURSERY_PIPES_SUPERVISION__RESTART": "temporary",
    }
    config = apply_overrides(RuntimeConfig(), env=env)
    assert config.supervision == SupervisionDefaults(
        strategy="one_for_all", max_restarts=4, within_secs=2.5, restart="temporary"
    )
    assert resolve_supervision(manifest(), config) == policy(Strategy.ONE_FOR_ALL, 4, 2.5)
    one = apply_overrides(RuntimeConfig(), env={"NURSERY_PIPES_SUPERVISION__MAX_RESTARTS": "1"})
    assert resolve_supervision(manifest(), one) == policy(Strategy.ONE_FOR_ONE, 1, 5.0)
    with pytest.raises(ConfigError, match=r"Expected `int` >= 0 - at `\$.supervision.max_restarts`"):
        apply_overrides(RuntimeConfig(), env={"NURSERY_PIPES_SUPERVISION__MAX_RESTARTS": "-1"})
    with pytest.raises(ConfigError, match=r"unknown key 'intensity' in \[supervision\]"):
        apply_overrides(RuntimeConfig(), env={"NURSERY_PIPES_SUPERVISION__INTENSITY": "1"})


# ---------------------------------------------------------------------------------------------
# Restart types


def test_restart_type_node_beats_runtime_toml_beats_transient() -> None:
    m = manifest(restarts={"in": "permanent", "out": "temporary"})
    assert restart_types(m, RuntimeConfig()) == {
        "in": RestartType.PERMANENT,
        "mid": RestartType.TRANSIENT,
        "out": RestartType.TEMPORARY,
    }
    config = load_config(text="[supervision]\nrestart = 'temporary'")
    assert restart_types(m, config) == {
        "in": RestartType.PERMANENT,
        "mid": RestartType.TEMPORARY,
        "out": RestartType.TEMPORARY,
    }
    # ... and into the plan's nodes.
    plan = Runtime(config, registry=REGISTRY).plan(m)
    assert {nid: n.restart for nid, n in plan.nodes.items()} == restart_types(m, config)


def test_restart_types_alone_leave_the_servers_policy_in_force() -> None:
    """A manifest that names restart types but no policy runs under the server's default:
    on a default server that is FAIL_FAST, under which a temporary node's failure is still
    not escalated (``decide`` forgets it) and a transient one fails the session."""
    m = manifest(restarts={"out": "temporary"})
    assert resolve_supervision(m, RuntimeConfig()) is FAIL_FAST
    config = load_config(text="[supervision]\nmax_restarts = 2")
    assert resolve_supervision(m, config) == policy(Strategy.ONE_FOR_ONE, 2, 5.0)


# ---------------------------------------------------------------------------------------------
# Fused runs (fuse_chains): which multiprocess nodes share one worker


def fusing(
    connections: list[tuple[str, str]],
    *,
    executors: dict[str, str] | None = None,
    restarts: dict[str, str] | None = None,
    fuse: bool | None = True,
    config: RuntimeConfig | None = None,
) -> dict[str, tuple[str, ...]]:
    """Plan a graph of PassThrough nodes (multiprocess unless ``executors`` says otherwise);
    every node's ``chain``."""
    ids = list(dict.fromkeys(n for edge in connections for n in edge))
    multiprocess: dict[str, Any] = {
        "executor_overrides": {n: (executors or {}).get(n, "multiprocess") for n in ids}
    }
    if fuse is not None:
        multiprocess["fuse_chains"] = fuse
    nodes: list[dict[str, Any]] = [{"id": n, "node_type": "PassThrough"} for n in ids]
    for node in nodes:
        if restarts and node["id"] in restarts:
            node["restart"] = restarts[node["id"]]
    doc = {
        "version": "v1",
        "metadata": {"name": "fusing", "multiprocess": multiprocess},
        "nodes": nodes,
        "connections": [{"from": a, "to": b} for a, b in connections],
    }
    plan = Runtime(config or RuntimeConfig(), registry=REGISTRY).plan(
        Manifest.from_dict(doc, registry=REGISTRY)
    )
    processes = {n: node.processes for n, node in plan.nodes.items()}
    assert plan.process_count == sum(processes.values())
    for n, node in plan.nodes.items():  # a fused run takes its head's worker only
        alone_or_head = not node.chain or node.chain[0] == n
        assert processes[n] == int(node.executor == "multiprocess" and alone_or_head)
    return {n: node.chain for n, node in plan.nodes.items()}


LINE = [("a", "b"), ("b", "c"), ("c", "d")]


def test_fuse_chains_runs_a_line_of_multiprocess_nodes_as_one_worker() -> None:
    assert fusing(LINE) == dict.fromkeys("abcd", ("a", "b", "c", "d"))


def test_without_fuse_chains_nothing_is_fused() -> None:
    assert fusing(LINE, fuse=None) == dict.fromkeys("abcd", ())
    assert fusing(
        LINE, fuse=False, config=load_config(text="[multiprocess]\nfuse_chains = true\n")
    ) == dict.fromkeys("abcd", ())
    on = load_config(text="[multiprocess]\nfuse_chains = true\n")
    assert fusing(LINE, fuse=None, config=on) == dict.fromkeys("abcd", ("a", "b", "c", "d"))


def test_a_fan_out_or_a_fan_in_ends_a_fused_run() -> None:
    # a → b → {c, d}; c → e; d → e; e → f: b has two outputs, e two inputs.
    chains = fusing([("a", "b"), ("b", "c"), ("b", "d"), ("c", "e"), ("d", "e"), ("e", "f")])
    assert chains == {"a": ("a", "b"), "b": ("a", "b"), "c": (), "d": (), "e": ("e", "f"), "f": ("e", "f")}


def test_another_executor_or_restart_type_ends_a_fused_run_and_temporary_nodes_run_alone() -> None:
    assert fusing(LINE, executors={"c": "inprocess"}) == {"a": ("a", "b"), "b": ("a", "b"), "c": (), "d": ()}
    assert fusing(LINE, restarts={"c": "permanent"}) == {"a": ("a", "b"), "b": ("a", "b"), "c": (), "d": ()}
    assert fusing(LINE, restarts=dict.fromkeys("abcd", "permanent")) == dict.fromkeys(
        "abcd", ("a", "b", "c", "d")
    )
    assert fusing(LINE, restarts={"b": "temporary"}) == {"a": (), "b": (), "c": ("c", "d"), "d": ("c", "d")}


def test_a_fused_run_counts_one_process_against_the_limit() -> None:
    ids = [f"n{i}" for i in range(12)]
    edges = list(itertools.pairwise(ids))
    assert fusing(edges)["n0"] == tuple(ids)  # 12 nodes, 1 process: within the default 10
    with pytest.raises(ResourceLimitError, match="12 worker processes"):
        fusing(edges, fuse=False)


def test_a_fused_nodes_assignment_says_with_whom_and_who_runs_the_run() -> None:
    doc = {
        "version": "v1",
        "metadata": {
            "name": "fusing",
            "multiprocess": {
                "executor_overrides": {"a": "multiprocess", "b": "multiprocess"},
                "fuse_chains": True,
            },
        },
        "nodes": [{"id": n, "node_type": "PassThrough"} for n in "ab"],
        "connections": [{"from": "a", "to": "b"}],
    }
    plan = Runtime(RuntimeConfig(), registry=REGISTRY).plan(Manifest.from_dict(doc, registry=REGISTRY))
    assert plan.assignments["b"].executor == "multiprocess"
    assert plan.assignments["b"].reason == (
        "manifest override (metadata.multiprocess.executor_overrides); fused with a (one unit, run by a)"
    )


class Heavy(Node):
    """A node that keeps a process of its own even where runs are fused."""

    fusible = False

    def process(self, frame: Frame) -> Frame:
        return frame


def test_a_node_class_that_is_not_fusible_ends_the_runs_around_it() -> None:
    registry = builtin_registry()
    registry.register(Heavy)
    ids = ["a", "b", "heavy", "c", "d"]
    doc = {
        "version": "v1",
        "metadata": {
            "name": "fusing",
            "multiprocess": {"executor_overrides": dict.fromkeys(ids, "multiprocess"), "fuse_chains": True},
        },
        "nodes": [{"id": n, "node_type": "Heavy" if n == "heavy" else "PassThrough"} for n in ids],
        "connections": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }
    plan = Runtime(RuntimeConfig(), registry=registry).plan(Manifest.from_dict(doc, registry=registry))
    assert {n: node.chain for n, node in plan.nodes.items()} == {
        "a": ("a", "b"),
        "b": ("a", "b"),
        "heavy": (),
        "c": ("c", "d"),
        "d": ("c", "d"),
    }
    assert plan.process_count == 3
