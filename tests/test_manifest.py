"""Manifest parsing and validation: every rule of product.md, all problems at once, with JSON paths.

Plain ``def`` tests (validation is sans-I/O), plus property-based tests: random valid
manifests parse into the graph they describe; one random mutation makes them fail at
the expected path; random JSON never raises anything but ManifestError.
"""

from __future__ import annotations

import copy
import json
import string
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nursery_pipes import Manifest, ManifestError
from nursery_pipes._errors import ManifestIssue
from nursery_pipes.frames import Frame, FrameKind
from nursery_pipes.manifest import Graph, MultiprocessConfig, SupervisionConfig
from nursery_pipes.nodes import Node, NodeRegistry, Params
from nursery_pipes.nodes._registry import builtin_registry

BUILTINS = builtin_registry()


def issues_of(doc: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """(path, message) of every issue; fails if the document is valid."""
    kwargs.setdefault("registry", BUILTINS)
    parse = Manifest.from_json if isinstance(doc, (str, bytes)) else Manifest.from_dict
    with pytest.raises(ManifestError) as info:
        parse(doc, **kwargs)
    return [(issue.path, issue.message) for issue in info.value.issues]


def paths_of(doc: Any, **kwargs: Any) -> list[str]:
    return [path for path, _ in issues_of(doc, **kwargs)]


def base() -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "demo"},
        "nodes": [
            {"id": "in", "node_type": "PassThrough"},
            {"id": "shout", "node_type": "TextTransformNode", "params": {"operation": "upper"}},
        ],
        "connections": [{"from": "in", "to": "shout"}],
    }


# ---------------------------------------------------------------------------------------------
# Stand-in node types for a fresh registry


class _AnyNode(Node[Any]):
    abstract = True

    def process(self, frame: Frame) -> Frame:
        return frame


class WhisperNode(_AnyNode):
    """Stand-in speech recognition node."""


class SpeechRecognitionNode(_AnyNode):
    """Stand-in for the remotemedia ASR node."""

    accepts = frozenset({FrameKind.AUDIO})
    produces = frozenset({FrameKind.TEXT, FrameKind.JSON})


class KnobParams(Params, kw_only=True):
    size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    mode: Literal["fast", "exact"] = "fast"
    gain: float = 1.0
    label: str = ""


class Knobs(_AnyNode):
    """Typed params with defaults."""

    Params = KnobParams


class NeedsParams(Params, kw_only=True):
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)]
    tags: list[str] = msgspec.field(default_factory=list)


class Needs(_AnyNode):
    """One required param."""

    Params = NeedsParams


class Plain(_AnyNode):
    """No params at all."""


def fresh_registry() -> NodeRegistry:
    registry = NodeRegistry()
    for cls in (WhisperNode, SpeechRecognitionNode, Knobs, Needs, Plain):
        registry.register(cls)
    registry.register(builtin_registry()["AudioChunkerNode"])
    return registry


STANDINS = fresh_registry()


# ---------------------------------------------------------------------------------------------
# Valid manifests


def test_valid_manifest_accessors() -> None:
    m = Manifest.from_dict(base(), registry=BUILTINS)
    assert m.name == "demo"
    assert [n.id for n in m.nodes] == ["in", "shout"]
    assert [(c.from_, c.to) for c in m.connections] == [("in", "shout")]
    assert (m.graph.sources, m.graph.sinks) == (("in",), ("shout",))
    assert m.node("shout").node_type == "TextTransformNode"
    params = m.params("shout")
    assert params.operation == "upper"  # type: ignore[attr-defined]
    assert params.suffix == ""  # type: ignore[attr-defined]  # default filled in
    assert m.multiprocess == MultiprocessConfig()
    assert m.supervision is None  # the server's default policy applies
    assert m.restart_types == {}
    assert m.extra_metadata == {}
    assert m.registry is BUILTINS
    with pytest.raises(KeyError):
        m.node("nope")
    assert repr(m) == "<Manifest 'demo': 2 nodes, 1 connections>"


def test_supervision_accessors_fill_in_left_out_keys() -> None:
    doc = base()
    doc["metadata"]["supervision"] = {"strategy": "rest_for_one"}
    doc["nodes"][1]["restart"] = "temporary"
    m = Manifest.from_dict(doc, registry=BUILTINS)
    assert m.supervision == SupervisionConfig(strategy="rest_for_one", max_restarts=3, within_secs=5.0)
    assert m.restart_types == {"shout": "temporary"}
    assert m.node("in").restart is None
    # The document keeps what was written (a left-out key stays out, not the defaults).
    assert m.to_dict()["metadata"]["supervision"] == {"strategy": "rest_for_one"}
    assert m.to_dict()["nodes"][1]["restart"] == "temporary"
    assert Manifest.from_dict(m.to_dict(), registry=BUILTINS).supervision == m.supervision


def test_an_empty_supervision_object_is_a_policy_of_defaults_and_null_is_none() -> None:
    doc = base()
    doc["metadata"]["supervision"] = {}
    m = Manifest.from_dict(doc, registry=BUILTINS)
    assert m.supervision == SupervisionConfig()
    assert m.to_dict()["metadata"]["supervision"] == {}  # survives a round trip as a policy
    doc["metadata"]["supervision"] = None
    assert Manifest.from_dict(doc, registry=BUILTINS).supervision is None


@pytest.mark.parametrize(
    ("supervision", "path", "message"),
    [
        (
            {"strategy": "one-for-one"},
            "metadata.supervision.strategy",
            'must be one of "one_for_one", "one_for_all", "rest_for_one", got "one-for-one" — '
            'did you mean "one_for_one"?',
        ),
        (
            {"strategy": "one_for_al"},
            "metadata.supervision.strategy",
            'must be one of "one_for_one", "one_for_all", "rest_for_one", got "one_for_al" — '
            'did you mean "one_for_all"?',
        ),
        (
            {"strategy": "simple_one_for_one"},
            "metadata.supervision.strategy",
            'must be one of "one_for_one", "one_for_all", "rest_for_one", got "simple_one_for_one" — '
            'did you mean "one_for_one"?',
        ),
        (
            {"strategy": "all"},
            "metadata.supervision.strategy",
            'must be one of "one_for_one", "one_for_all", "rest_for_one", got "all"',
        ),
        ({"max_restarts": -1}, "metadata.supervision.max_restarts", "must be ≥ 0, got -1"),
        ({"max_restarts": 1001}, "metadata.supervision.max_restarts", "must be ≤ 1000, got 1001"),
        (
            {"max_restarts": 2.5},
            "metadata.supervision.max_restarts",
            "must be an integer, got the number 2.5",
        ),
        (
            {"max_restarts": "3"},
            "metadata.supervision.max_restarts",
            'must be an integer, got the string "3"',
        ),
        ({"within_secs": 0}, "metadata.supervision.within_secs", "must be > 0, got 0"),
        ({"within_secs": 7200}, "metadata.supervision.within_secs", "must be ≤ 3600, got 7200"),
        ({"within_secs": "5s"}, "metadata.supervision.within_secs", 'must be a number, got the string "5s"'),
        (
            {"max_seconds": 5},
            "metadata.supervision.max_seconds",
            "unknown field 'max_seconds' (allowed: strategy, max_restarts, within_secs)",
        ),
        (
            {"within_sec": 5},
            "metadata.supervision.within_sec",
            "unknown field 'within_sec' — did you mean 'within_secs'?",
        ),
        ("one_for_one", "metadata.supervision", 'must be an object or null, got the string "one_for_one"'),
    ],
)
def test_supervision_rules(supervision: Any, path: str, message: str) -> None:
    doc = base()
    doc["metadata"]["supervision"] = supervision
    assert issues_of(doc) == [(path, message)]


def test_every_supervision_problem_at_once() -> None:
    doc = base()
    doc["metadata"]["supervision"] = {"strategy": "any", "max_restarts": -1, "within_secs": 0}
    doc["nodes"][0]["restart"] = "always"
    doc["nodes"][1]["restart"] = "Temporary"
    assert paths_of(doc) == [
        "metadata.supervision.max_restarts",
        "metadata.supervision.strategy",
        "metadata.supervision.within_secs",
        "nodes[0].restart",
        "nodes[1].restart",
    ]
    assert issues_of(doc)[-1] == (
        "nodes[1].restart",
        'must be one of "permanent", "transient", "temporary", null, got "Temporary" — '
        'did you mean "temporary"?',
    )


def test_example_manifest_file_validates(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "text_shout.json"
    m = Manifest.from_file(example, registry=BUILTINS)
    assert m.source == str(example)
    assert m.graph.sinks == ("shout",)


def test_remotemedia_example_manifest_validates() -> None:
    text = json.dumps(
        {
            "version": "v1",
            "metadata": {
                "name": "speech-demo",
                "description": "optional",
                "multiprocess": {
                    "max_processes_per_session": 10,
                    "channel_capacity": 100,
                    "init_timeout_secs": 30,
                    "python_executable": "python3",
                    "enable_backpressure": True,
                    "executor_overrides": {"asr": "multiprocess"},
                },
            },
            "nodes": [
                {"id": "chunker", "node_type": "AudioChunkerNode", "params": {"chunk_size": 1024}},
                {"id": "asr", "node_type": "SpeechRecognitionNode", "params": {}},
            ],
            "connections": [{"from": "chunker", "to": "asr"}],
        }
    )
    # Valid against the real built-ins (SpeechRecognitionNode is one) and against stand-ins alike.
    Manifest.from_json(text, registry=BUILTINS)
    m = Manifest.from_json(text, registry=STANDINS)
    mp = m.multiprocess
    assert (mp.max_processes_per_session, mp.channel_capacity, mp.init_timeout_secs) == (10, 100, 30)
    assert (mp.python_executable, mp.enable_backpressure) == ("python3", True)
    assert mp.executor_overrides == {"asr": "multiprocess"}
    assert m.description == "optional"
    assert m.params("chunker").chunk_size == 1024  # type: ignore[attr-defined]
    assert m.graph.edges == (("chunker", "asr"),)


def test_parse_accepts_every_source_form(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(base()))
    forms: list[Any] = [base(), json.dumps(base()), json.dumps(base()).encode(), path]
    for form in forms:
        assert Manifest.parse(form, registry=BUILTINS).name == "demo"
    m = Manifest.from_dict(base(), registry=BUILTINS)
    assert Manifest.parse(m) is m


def test_optional_fields_may_be_null() -> None:
    doc = base()
    doc["$schema"] = None
    doc["metadata"]["multiprocess"] = {
        "max_processes_per_session": None,
        "channel_capacity": None,
        "init_timeout_secs": None,
        "close_timeout_secs": None,
        "python_executable": None,
        "enable_backpressure": None,
    }
    doc["nodes"][0].update(host=None, capabilities={"gpu": None, "cpu": None, "memory_gb": None})
    doc["nodes"][1].update(runtime_hint=None, capabilities=None)
    m = Manifest.from_dict(doc, registry=BUILTINS)
    assert m.multiprocess.channel_capacity is None
    assert m.node("in").host is None


def test_full_node_fields() -> None:
    doc = base()
    doc["nodes"][0].update(
        capabilities={
            "gpu": {"type": "cuda", "min_memory_gb": 4, "required": False},
            "cpu": {"cores": 2, "arch": "x86_64"},
            "memory_gb": 1.5,
        },
        host="gpu-box.local:50051",
        is_streaming=True,
        runtime_hint="cpython",
        input_types=["audio", "any"],
        output_types=["text"],
    )
    doc["$schema"] = "https://nursery-pipes.dev/schema/manifest.v1.schema.json"
    m = Manifest.from_dict(doc, registry=BUILTINS)
    node = m.node("in")
    assert node.host == "gpu-box.local:50051"
    assert node.capabilities is not None
    assert node.capabilities.gpu is not None
    assert node.capabilities.gpu.type == "cuda"
    assert node.input_types == ["audio", "any"]
    assert "$schema" not in m.to_dict()


# ---------------------------------------------------------------------------------------------
# Invalid JSON


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"version": "v1",\n "metadata": {\n  "name": "x",\n }\n}',
            "line 4, column 2: trailing comma in object",
        ),
        ('{"version": "v1"', "line 1, column 17: unexpected end of input"),
        ("", "line 1, column 1: unexpected end of input"),
        ('{"a": 1}\n  trailing', "line 2, column 3: trailing characters"),
        ('{"name": "ééé", x}', "line 1, column 17: object keys must be strings"),
        (b'{"version": "v1",\n "metadata": {"name": "\xff"}}', "line 2, column 24: not valid UTF-8 text"),
        ('{"a": "\ud800"}', "line 1, column 8: not valid UTF-8 text"),
    ],
)
def test_invalid_json_names_line_and_column(text: str | bytes, message: str) -> None:
    [(path, got)] = issues_of(text)
    assert path == ""
    assert got.startswith("invalid JSON at ")
    assert message in got


def test_invalid_json_error_carries_source(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"version": \n')
    with pytest.raises(ManifestError) as info:
        Manifest.from_file(path, registry=BUILTINS)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "line 2, column 1" in str(info.value)


@pytest.mark.parametrize("make", [lambda p: p / "missing.json", lambda p: p])
def test_unreadable_manifest_file(tmp_path: Path, make: Any) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_file(make(tmp_path), registry=BUILTINS)
    [issue] = info.value.issues
    assert issue.message.startswith("cannot read manifest file: ")


@pytest.mark.parametrize("value", [[], None, 3, "text", True])
def test_document_must_be_an_object(value: Any) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(value, registry=BUILTINS)
    [(path, message)] = [(i.path, i.message) for i in info.value.issues]
    assert path == ""
    assert message.startswith("must be an object, got ")


# ---------------------------------------------------------------------------------------------
# One rule at a time


def test_missing_required_top_level_fields() -> None:
    assert issues_of({}) == [
        ("version", "missing required field 'version'"),
        ("metadata", "missing required field 'metadata'"),
        ("nodes", "missing required field 'nodes'"),
        ("connections", "missing required field 'connections'"),
    ]


@pytest.mark.parametrize(
    ("version", "message"),
    [("v2", 'must be "v1", got "v2"'), (1, 'must be "v1", got 1'), (None, 'must be "v1", got null')],
)
def test_wrong_version(version: Any, message: str) -> None:
    doc = base()
    doc["version"] = version
    assert issues_of(doc) == [("version", message)]


def test_missing_version() -> None:
    doc = base()
    del doc["version"]
    assert issues_of(doc) == [("version", "missing required field 'version'")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("x" * 256, "must be at most 255 characters long"),
        (7, "must be a string, got the number 7"),
    ],
)
def test_metadata_name(name: Any, message: str) -> None:
    doc = base()
    doc["metadata"]["name"] = name
    assert issues_of(doc) == [("metadata.name", message)]
    doc["metadata"]["name"] = "x" * 255
    Manifest.from_dict(doc, registry=BUILTINS)


def test_nodes_must_not_be_empty() -> None:
    doc = base()
    doc["nodes"], doc["connections"] = [], []
    assert issues_of(doc) == [("nodes", "must contain at least one node")]


def test_duplicate_node_ids() -> None:
    doc = base()
    doc["nodes"] += [{"id": "in", "node_type": "PassThrough"}, {"id": "shout", "node_type": "PassThrough"}]
    assert issues_of(doc) == [
        ("nodes[2].id", "duplicate node id 'in' (first used by nodes[0])"),
        ("nodes[3].id", "duplicate node id 'shout' (first used by nodes[1])"),
    ]


@pytest.mark.parametrize("bad_id", ["a b", "a.b", "a/b", "ä", "a\n", "\na", "", "a:b"])
def test_bad_node_id_characters(bad_id: str) -> None:
    doc = base()
    doc["nodes"][0]["id"] = bad_id
    doc["connections"] = []
    [(path, message)] = issues_of(doc)
    assert path == "nodes[0].id"
    assert (
        message
        == f"node id {json.dumps(bad_id, ensure_ascii=False)} may only contain letters, digits, '_' and '-'"
    )


def test_good_node_id_characters() -> None:
    doc = base()
    doc["nodes"][0]["id"] = "Az09_-"
    doc["connections"][0]["from"] = "Az09_-"
    Manifest.from_dict(doc, registry=BUILTINS)


def test_unknown_node_type_did_you_mean() -> None:
    doc = base()
    doc["nodes"][1]["node_type"] = "WisperNode"
    doc["nodes"][1]["params"] = {}
    assert issues_of(doc, registry=STANDINS) == [
        (
            "nodes[0].node_type",
            "unknown node_type 'PassThrough' (see `nursery-pipes nodes` for the registered types)",
        ),
        ("nodes[1].node_type", "unknown node_type 'WisperNode' — did you mean 'WhisperNode'?"),
    ]
    doc["nodes"][0]["node_type"] = "passthrough"
    assert issues_of(doc)[0] == (
        "nodes[0].node_type",
        "unknown node_type 'passthrough' — did you mean 'PassThrough'?",
    )


def test_empty_node_type() -> None:
    doc = base()
    doc["nodes"][0]["node_type"] = ""
    assert issues_of(doc) == [("nodes[0].node_type", "must not be empty")]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"size": "big"}, [("nodes[0].params.size", "Expected `int`, got `str`")]),
        ({"size": 0}, [("nodes[0].params.size", "Expected `int` >= 1, got 0")]),
        ({"size": 101}, [("nodes[0].params.size", "Expected `int` <= 100, got 101")]),
        ({"mode": "slow"}, [("nodes[0].params.mode", "Invalid enum value 'slow'")]),
        ({"gain": [1]}, [("nodes[0].params.gain", "Expected `float`, got `array`")]),
        ({"szie": 3}, [("nodes[0].params.szie", "unknown param 'szie' — did you mean 'size'?")]),
        (
            {"volume": 3},
            [("nodes[0].params.volume", "unknown param 'volume' (this node takes: gain, label, mode, size)")],
        ),
        (
            {"size": True, "lable": "x"},
            [
                ("nodes[0].params.lable", "unknown param 'lable' — did you mean 'label'?"),
                ("nodes[0].params.size", "Expected `int`, got `bool`"),
            ],
        ),
        ([1, 2], [("nodes[0].params", "must be an object, got an array")]),
        ("{}", [("nodes[0].params", 'must be an object, got the string "{}"')]),
    ],
)
def test_bad_params(params: Any, expected: list[tuple[str, str]]) -> None:
    doc = {
        "version": "v1",
        "metadata": {"name": "p"},
        "nodes": [{"id": "k", "node_type": "Knobs", "params": params}],
        "connections": [],
    }
    got = issues_of(doc, registry=STANDINS)
    assert [p for p, _ in got] == [p for p, _ in expected]
    for (_, message), (_, want) in zip(got, expected, strict=True):
        assert message.startswith(want), (message, want)


def test_required_params_and_nested_paths() -> None:
    doc = {
        "version": "v1",
        "metadata": {"name": "p"},
        "nodes": [
            {"id": "a", "node_type": "Needs"},
            {"id": "b", "node_type": "Needs", "params": {"threshold": 2, "tags": ["x", 3]}},
            {"id": "c", "node_type": "Plain", "params": {"x": 1}},
            {"id": "d", "node_type": "Needs", "params": {"threshold": 0.5}},
        ],
        "connections": [],
    }
    got = issues_of(doc, registry=STANDINS)
    assert got == [
        ("nodes[0].params.threshold", "missing required param 'threshold'"),
        ("nodes[1].params.tags[1]", "Expected `str`, got `int`"),
        ("nodes[1].params.threshold", "Expected `float` <= 1.0, got 2"),
        ("nodes[2].params.x", "unknown param 'x' (this node takes no params)"),
    ]


def test_params_cross_field_check() -> None:
    doc = base()
    doc["nodes"][1] = {
        "id": "shout",
        "node_type": "JsonTransformNode",
        "params": {"rename": {"a": "c", "b": "c"}},
    }
    doc["nodes"][0]["node_type"] = "Echo"
    [(path, message)] = issues_of(doc)
    assert path == "nodes[1].params"
    assert "rename maps both 'a' and 'b' to 'c'" in message


@pytest.mark.parametrize(
    ("connection", "path", "message"),
    [
        ({"from": "in", "to": "shuot"}, "connections[0].to", "unknown node 'shuot' — did you mean 'shout'?"),
        ({"from": "zz", "to": "shout"}, "connections[0].from", "unknown node 'zz' (nodes are: in, shout)"),
        ({"from": "", "to": "shout"}, "connections[0].from", "must not be empty"),
        ({"from": "in"}, "connections[0].to", "missing required field 'to'"),
        (
            {"from": "in", "to": "shout", "via": "x"},
            "connections[0].via",
            "unknown field 'via' (allowed: from, to)",
        ),
    ],
)
def test_bad_connections(connection: dict[str, Any], path: str, message: str) -> None:
    doc = base()
    doc["connections"] = [connection]
    assert issues_of(doc) == [(path, message)]


def test_duplicate_connection_and_kind_mismatch() -> None:
    doc = base()
    doc["nodes"][0]["node_type"] = "AudioChunkerNode"
    doc["connections"].append({"from": "in", "to": "shout"})
    assert issues_of(doc) == [
        (
            "connections[0]",
            "'in' (AudioChunkerNode) produces audio, but 'shout' (TextTransformNode) accepts only text",
        ),
        ("connections[1]", "duplicate connection in → shout (same as connections[0])"),
    ]


@pytest.mark.parametrize(
    ("nodes", "edges", "cycle"),
    [
        ("ab", [("a", "b"), ("b", "a")], "cycle: a → b → a"),
        ("a", [("a", "a")], "cycle: a → a"),
        ("abc", [("b", "c"), ("c", "a"), ("a", "b")], "cycle: a → b → c → a"),
        ("xabc", [("x", "a"), ("c", "b"), ("b", "c")], "cycle: b → c → b"),
        ("cba", [("a", "b"), ("b", "c"), ("c", "a")], "cycle: c → a → b → c"),
    ],
)
def test_cycles_are_named(nodes: str, edges: list[tuple[str, str]], cycle: str) -> None:
    doc = {
        "version": "v1",
        "metadata": {"name": "loop"},
        "nodes": [{"id": n, "node_type": "PassThrough"} for n in nodes],
        "connections": [{"from": a, "to": b} for a, b in edges],
    }
    assert issues_of(doc) == [("connections", cycle)]


@pytest.mark.parametrize(
    ("settings_", "path", "message"),
    [
        ({"channel_capacity": 0}, "channel_capacity", "must be ≥ 1, got 0"),
        ({"channel_capacity": 10001}, "channel_capacity", "must be ≤ 10000, got 10001"),
        ({"channel_capacity": "100"}, "channel_capacity", 'must be an integer or null, got the string "100"'),
        ({"channel_capacity": 5.0}, "channel_capacity", "must be an integer or null, got the number 5.0"),
        ({"init_timeout_secs": 0.5}, "init_timeout_secs", "must be ≥ 1, got 0.5"),
        ({"init_timeout_secs": 301}, "init_timeout_secs", "must be ≤ 300, got 301"),
        ({"close_timeout_secs": 0.5}, "close_timeout_secs", "must be ≥ 1, got 0.5"),
        ({"close_timeout_secs": 301}, "close_timeout_secs", "must be ≤ 300, got 301"),
        ({"max_processes_per_session": 0}, "max_processes_per_session", "must be ≥ 1, got 0"),
        (
            {"enable_backpressure": "yes"},
            "enable_backpressure",
            'must be a boolean or null, got the string "yes"',
        ),
        ({"warm_pool": 3}, "warm_pool", "unknown field 'warm_pool'"),
        (
            {"executor_overrides": {"in": "GPU 1"}},
            "executor_overrides.in",
            'executor names are lower-case words (inprocess, thread, multiprocess, ...), got "GPU 1"',
        ),
    ],
)
def test_multiprocess_settings_out_of_range(settings_: dict[str, Any], path: str, message: str) -> None:
    doc = base()
    doc["metadata"]["multiprocess"] = settings_
    [(got_path, got_message)] = issues_of(doc)
    assert got_path == f"metadata.multiprocess.{path}"
    assert got_message.startswith(message)


def test_multiprocess_bounds_are_inclusive() -> None:
    doc = base()
    for low_high in (
        {"channel_capacity": 1, "init_timeout_secs": 1, "close_timeout_secs": 1},
        {"channel_capacity": 10000, "init_timeout_secs": 300, "close_timeout_secs": 300},
    ):
        doc["metadata"]["multiprocess"] = low_high
        Manifest.from_dict(doc, registry=BUILTINS)


def test_override_keys_must_be_node_ids() -> None:
    doc = base()
    doc["metadata"]["multiprocess"] = {
        "executor_overrides": {"shuot": "inprocess", "zzz": "multiprocess", "in": "inprocess"}
    }
    assert issues_of(doc) == [
        (
            "metadata.multiprocess.executor_overrides.shuot",
            "'shuot' is not a node id of this manifest — did you mean 'shout'?",
        ),
        ("metadata.multiprocess.executor_overrides.zzz", "'zzz' is not a node id of this manifest"),
    ]


def test_max_processes_per_session_has_no_cap_until_a_runtime_plans_it() -> None:
    # A manifest is valid or not on its own; a runtime's cap (limits.max_processes_per_session)
    # is checked when it plans the manifest: tests/test_config.py, test_global_cap_wins_over_*.
    doc = base()
    doc["metadata"]["multiprocess"] = {"max_processes_per_session": 1000}
    assert Manifest.from_dict(doc, registry=BUILTINS).multiprocess.max_processes_per_session == 1000


@pytest.mark.parametrize(
    ("node_update", "path", "message"),
    [
        ({"host": "nohost"}, "nodes[0].host", 'host must be name:port, got "nohost"'),
        ({"host": "a b:80"}, "nodes[0].host", 'host must be name:port, got "a b:80"'),
        ({"host": "h:80\n"}, "nodes[0].host", "host must be name:port"),
        ({"capabilities": {"gpu": {"type": "tpu"}}}, "nodes[0].capabilities.gpu.type", "must be one of"),
        (
            {"capabilities": {"gpu": {"min_memory_gb": -1}}},
            "nodes[0].capabilities.gpu.min_memory_gb",
            "must be ≥ 0",
        ),
        ({"capabilities": {"cpu": {"cores": 0}}}, "nodes[0].capabilities.cpu.cores", "must be ≥ 1, got 0"),
        ({"capabilities": {"cpu": {"arch": "sparc"}}}, "nodes[0].capabilities.cpu.arch", "must be one of"),
        ({"capabilities": {"memory_gb": -0.5}}, "nodes[0].capabilities.memory_gb", "must be ≥ 0, got -0.5"),
        ({"capabilities": {"disk": 1}}, "nodes[0].capabilities.disk", "unknown field 'disk'"),
        ({"runtime_hint": "jvm"}, "nodes[0].runtime_hint", "must be one of"),
        ({"is_streaming": "yes"}, "nodes[0].is_streaming", "must be a boolean"),
        ({"input_types": ["sound"]}, "nodes[0].input_types[0]", "must be one of"),
        ({"restart": "always"}, "nodes[0].restart", 'must be one of "permanent", "transient", "temporary"'),
        ({"restart": 1}, "nodes[0].restart", "must be one of"),
        (
            {"restarts": "transient"},
            "nodes[0].restarts",
            "unknown field 'restarts' — did you mean 'restart'?",
        ),
        ({"param": {}}, "nodes[0].param", "unknown field 'param' — did you mean 'params'?"),
    ],
)
def test_node_field_rules(node_update: dict[str, Any], path: str, message: str) -> None:
    doc = base()
    doc["nodes"][0].update(node_update)
    [(got_path, got_message)] = issues_of(doc)
    assert got_path == path
    assert got_message.startswith(message)


def test_unknown_top_level_field() -> None:
    doc = base()
    doc["connection"] = []
    assert issues_of(doc) == [("connection", "unknown field 'connection' — did you mean 'connections'?")]


# ---------------------------------------------------------------------------------------------
# All problems at once, in document order


def test_many_problems_reported_at_once_in_document_order() -> None:
    doc = {
        "version": "v2",
        "metadata": {
            "name": "",
            "multiprocess": {"channel_capacity": 0, "executor_overrides": {"ghost": "inprocess"}},
        },
        "nodes": [
            {"id": "a", "node_type": "PassThrough"},
            {"id": "a", "node_type": "PasThrough"},
            {"id": "b c", "node_type": "AudioChunkerNode", "params": {"chunk_size": -1, "chunksize": 3}},
        ]
        + [{"id": f"n{i}", "node_type": "PassThrough"} for i in range(3, 11)]
        + [{"id": "last", "node_type": "TextTransformNode", "params": {"operation": "shout"}}],
        "connections": [{"from": "a", "to": "zz"}, {"from": "n3", "to": "n4"}, {"from": "n4", "to": "n3"}],
    }
    got = issues_of(doc)
    assert [path for path, _ in got] == [
        "version",
        "metadata.multiprocess.channel_capacity",
        "metadata.multiprocess.executor_overrides.ghost",
        "metadata.name",
        "nodes[1].id",
        "nodes[1].node_type",
        "nodes[2].id",
        "nodes[2].params.chunk_size",
        "nodes[2].params.chunksize",
        "nodes[11].params.operation",  # numerically after nodes[2], not between nodes[1] and nodes[2]
        "connections",
        "connections[0].to",
    ]
    messages = dict(got)
    assert messages["connections"] == "cycle: n3 → n4 → n3"
    assert messages["nodes[1].node_type"] == "unknown node_type 'PasThrough' — did you mean 'PassThrough'?"


def test_manifest_error_lists_every_issue() -> None:
    doc = base()
    doc["version"] = "v0"
    doc["connections"] = [{"from": "in", "to": "nowhere"}]
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(doc, registry=BUILTINS, source="pipe.json")
    err = info.value
    assert err.source == "pipe.json"
    assert isinstance(err, ValueError)
    assert err.issues == (
        ManifestIssue("version", 'must be "v1", got "v0"'),
        ManifestIssue("connections[0].to", "unknown node 'nowhere' (nodes are: in, shout)"),
    )
    assert str(err) == (
        "invalid manifest (pipe.json): 2 problems\n"
        '  - version: must be "v1", got "v0"\n'
        "  - connections[0].to: unknown node 'nowhere' (nodes are: in, shout)"
    )


def test_structural_and_semantic_problems_together() -> None:
    doc = base()
    doc["nodes"][0]["colour"] = "red"  # structural
    doc["connections"].append({"from": "shout", "to": "in"})  # semantic: a cycle
    assert paths_of(doc) == ["nodes[0].colour", "connections"]


# ---------------------------------------------------------------------------------------------
# Extra metadata and round trips


def test_unknown_metadata_keys_are_kept() -> None:
    doc = base()
    doc["metadata"].update(owner={"team": "audio", "oncall": ["x"]}, tags=["a", 1], created_at="2024-01-01")
    m = Manifest.from_dict(doc, registry=BUILTINS)
    assert m.extra_metadata == {"owner": {"team": "audio", "oncall": ["x"]}, "tags": ["a", 1]}
    out = m.to_dict()
    assert out["metadata"]["owner"] == {"team": "audio", "oncall": ["x"]}
    assert out["metadata"]["tags"] == ["a", 1]
    assert out["metadata"]["created_at"] == "2024-01-01"
    again = Manifest.from_json(m.to_json(), registry=BUILTINS)
    assert again.extra_metadata == m.extra_metadata


def test_to_json_from_json_round_trip() -> None:
    doc = base()
    doc["metadata"]["multiprocess"] = {"channel_capacity": 8, "executor_overrides": {"in": "inprocess"}}
    doc["nodes"][0]["capabilities"] = {"cpu": {"cores": 1}}
    m = Manifest.from_dict(doc, registry=BUILTINS)
    text = m.to_json()
    assert json.loads(text) == m.to_dict()
    back = Manifest.from_json(text, registry=BUILTINS)
    assert back.to_dict() == m.to_dict()
    assert back.graph == m.graph
    assert back.multiprocess == m.multiprocess
    assert m.to_dict()["nodes"][0]["params"] == {}
    assert m.to_json(indent=0).count("\n") < text.count("\n")


# ---------------------------------------------------------------------------------------------
# Property-based: random valid manifests, one mutation at a time, garbage

ID_ALPHABET = string.ascii_letters + string.digits + "_-"
node_ids = st.text(ID_ALPHABET, min_size=1, max_size=10)


def knob_params() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "size": st.integers(1, 100),
            "mode": st.sampled_from(["fast", "exact"]),
            "gain": st.floats(-10, 10, allow_nan=False) | st.integers(-10, 10),
            "label": st.text(max_size=5),
        },
    )


def node_specs() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.one_of(
        st.tuples(st.just("Plain"), st.just({})),
        st.tuples(st.just("Knobs"), knob_params()),
        st.tuples(
            st.just("Needs"),
            st.fixed_dictionaries(
                {"threshold": st.floats(0, 1)}, optional={"tags": st.lists(st.text(max_size=3), max_size=3)}
            ),
        ),
    )


@st.composite
def valid_manifests(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    ids = draw(st.lists(node_ids, min_size=1, max_size=8, unique=True))
    rank = draw(st.permutations(range(len(ids))))  # a topological order: edges only go up in rank
    pairs = [(a, b) for a in ids for b in ids if rank[ids.index(a)] < rank[ids.index(b)]]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12)) if pairs else []
    nodes = []
    for node_id in ids:
        node_type, params = draw(node_specs())
        node: dict[str, Any] = {"id": node_id, "node_type": node_type}
        if params or draw(st.booleans()):
            node["params"] = params
        nodes.append(node)
    metadata: dict[str, Any] = {"name": draw(st.text(min_size=1, max_size=20))}
    if draw(st.booleans()):
        metadata["multiprocess"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "channel_capacity": st.integers(1, 10000),
                    "init_timeout_secs": st.floats(1, 300),
                    "close_timeout_secs": st.floats(1, 300),
                    "max_processes_per_session": st.integers(1, 16),
                    "enable_backpressure": st.booleans(),
                    "executor_overrides": st.dictionaries(
                        st.sampled_from(ids), st.sampled_from(["inprocess", "multiprocess"])
                    ),
                },
            )
        )
    metadata.update(draw(st.dictionaries(st.sampled_from(["owner", "x-build", "labels"]), st.integers())))
    doc = {
        "version": "v1",
        "metadata": metadata,
        "nodes": nodes,
        "connections": [{"from": a, "to": b} for a, b in edges],
    }
    return doc, edges


@settings(max_examples=50, deadline=None)
@given(valid_manifests())
def test_property_valid_manifests_parse_into_their_graph(
    case: tuple[dict[str, Any], list[tuple[str, str]]],
) -> None:
    doc, edges = case
    m = Manifest.from_dict(copy.deepcopy(doc), registry=STANDINS)
    ids = [n["id"] for n in doc["nodes"]]
    assert m.graph == Graph(ids, edges)
    assert m.graph.edges == tuple(edges)
    assert m.graph.sources == tuple(i for i in ids if all(b != i for _, b in edges))
    assert m.graph.sinks == tuple(i for i in ids if all(a != i for a, _ in edges))
    for node in doc["nodes"]:
        params = msgspec.to_builtins(m.params(node["id"]))
        for key, value in node.get("params", {}).items():
            assert params[key] == value
    extra = {k: v for k, v in doc["metadata"].items() if k not in {"name", "multiprocess"}}
    assert m.extra_metadata == extra
    assert Manifest.from_json(m.to_json(), registry=STANDINS).to_dict() == m.to_dict()


def _mutations(doc: dict[str, Any], edges: list[tuple[str, str]], data: st.DataObject) -> tuple[str, str]:
    """Apply one random mutation to ``doc`` in place; return (mutation name, expected issue path)."""
    nodes = doc["nodes"]
    ids = [n["id"] for n in nodes]
    i = data.draw(st.integers(0, len(nodes) - 1), label="node")
    choices = [
        "drop_top",
        "drop_name",
        "drop_node_field",
        "duplicate_id",
        "break_id",
        "self_loop",
        "missing_target",
        "version",
        "unknown_type",
        "unknown_param",
        "override_key",
        "capacity",
    ]
    if edges:
        choices += ["back_edge", "drop_connection_field"]
    if any(n["node_type"] == "Knobs" for n in nodes):
        choices.append("bad_param_type")
    kind = data.draw(st.sampled_from(choices), label="mutation")
    if kind == "drop_top":
        key = data.draw(st.sampled_from(["version", "metadata", "nodes", "connections"]))
        del doc[key]
        return kind, key
    if kind == "drop_name":
        del doc["metadata"]["name"]
        return kind, "metadata.name"
    if kind == "drop_node_field":
        field = data.draw(st.sampled_from(["id", "node_type"]))
        del nodes[i][field]
        return kind, f"nodes[{i}].{field}"
    if kind == "duplicate_id":
        nodes.append({"id": ids[i], "node_type": "Plain"})
        return kind, f"nodes[{len(nodes) - 1}].id"
    if kind == "break_id":
        nodes[i]["id"] = ids[i] + data.draw(st.sampled_from([" ", ".", "/", "é", "\n", ":"]))
        return kind, f"nodes[{i}].id"
    if kind == "self_loop":
        doc["connections"].append({"from": ids[i], "to": ids[i]})
        return kind, "connections"
    if kind == "back_edge":
        a, b = data.draw(st.sampled_from(edges))
        doc["connections"].append({"from": b, "to": a})
        return kind, "connections"
    if kind == "missing_target":
        end = data.draw(st.sampled_from(["from", "to"]))
        conn = {"from": ids[i], "to": ids[i], end: "no such node!"}
        doc["connections"].append(conn)
        return kind, f"connections[{len(doc['connections']) - 1}].{end}"
    if kind == "drop_connection_field":
        k = data.draw(st.integers(0, len(doc["connections"]) - 1))
        end = data.draw(st.sampled_from(["from", "to"]))
        del doc["connections"][k][end]
        return kind, f"connections[{k}].{end}"
    if kind == "version":
        doc["version"] = data.draw(st.sampled_from(["v2", "V1", "", 1, None, "v1 "]))
        return kind, "version"
    if kind == "unknown_type":
        nodes[i]["node_type"] = "Nonexistent" + nodes[i]["node_type"]
        return kind, f"nodes[{i}].node_type"
    if kind == "unknown_param":
        nodes[i].setdefault("params", {})["zz_unknown"] = 1
        return kind, f"nodes[{i}].params.zz_unknown"
    if kind == "bad_param_type":
        k = next(n for n, node in enumerate(nodes) if node["node_type"] == "Knobs")
        nodes[k].setdefault("params", {})["size"] = data.draw(st.sampled_from(["3", 0, 101, 2.5, None, []]))
        return kind, f"nodes[{k}].params.size"
    if kind == "override_key":
        mp = doc["metadata"].setdefault("multiprocess", {})
        mp.setdefault("executor_overrides", {})["ghost node"] = "inprocess"
        return kind, "metadata.multiprocess.executor_overrides.ghost node"
    assert kind == "capacity"
    mp = doc["metadata"].setdefault("multiprocess", {})
    mp["channel_capacity"] = data.draw(st.sampled_from([0, -1, 10001, "100", 1.5, True]))
    return kind, "metadata.multiprocess.channel_capacity"


@settings(max_examples=100, deadline=None)
@given(valid_manifests(), st.data())
def test_property_one_mutation_is_reported_at_its_path(
    case: tuple[dict[str, Any], list[tuple[str, str]]], data: st.DataObject
) -> None:
    doc, edges = case
    kind, path = _mutations(doc, edges, data)
    paths = paths_of(doc, registry=STANDINS)
    assert path in paths, (kind, paths)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "metadata",
                    "nodes",
                    "connections",
                    "name",
                    "id",
                    "node_type",
                    "params",
                    "from",
                    "to",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_property_garbage_values_only_raise_manifest_error(value: Any) -> None:
    issues: tuple[ManifestIssue, ...] = ()
    try:
        Manifest.from_dict(value, registry=BUILTINS)
    except ManifestError as exc:
        issues = exc.issues or (ManifestIssue("?", ""),)
    assert all(isinstance(i.path, str) and i.message for i in issues)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_property_garbage_text_only_raises_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(data, registry=BUILTINS)


@settings(max_examples=40, deadline=None)
@given(valid_manifests(), st.integers(0, 200))
def test_property_truncated_manifest_text_fails_with_position(
    case: tuple[dict[str, Any], list[tuple[str, str]]], cut: int
) -> None:
    text = json.dumps(case[0], indent=1).encode()
    truncated = text[: min(cut, len(text) - 1)]
    with pytest.raises(ManifestError) as info:
        Manifest.from_json(truncated, registry=STANDINS)
    [issue] = info.value.issues
    assert issue.message.startswith("invalid JSON at line ")


# ---------------------------------------------------------------------------------------------
# Nesting: deep JSON is a validation issue with a path, never a RecursionError


def nested_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def json_set(depth: int) -> dict[str, Any]:
    """A JsonTransformNode manifest whose params nest exactly ``depth`` levels deep."""
    doc = base()
    doc["nodes"][1] = {"id": "shout", "node_type": "JsonTransformNode", "params": {"set": {"x": None}}}
    doc["nodes"][1]["params"]["set"]["x"] = nested_list(depth - 2)  # params {, set {, then the lists
    doc["connections"] = []
    return doc


DEEP = 10_000


def deep_text(doc: dict[str, Any]) -> str:
    """json.dumps, except that each "DEEP" string becomes a list nested DEEP levels deep (which
    json.dumps itself could not write: it recurses)."""
    return json.dumps(doc).replace('"DEEP"', "[" * DEEP + "]" * DEEP)


@pytest.mark.parametrize("form", ["dict", "json"])
def test_params_nested_ten_thousand_levels(form: str) -> None:
    doc = json_set(3)
    doc["nodes"][1]["params"]["set"]["x"] = "DEEP" if form == "json" else nested_list(DEEP)
    source = deep_text(doc) if form == "json" else doc
    assert issues_of(source) == [("nodes[1].params", "nested deeper than 64 levels")]


@pytest.mark.parametrize("form", ["dict", "json"])
def test_metadata_and_other_members_nested_too_deeply(form: str) -> None:
    doc = base()
    doc["metadata"]["labels"] = {"a": "DEEP" if form == "json" else nested_list(DEEP)}
    doc["connections"][0]["to"] = "DEEP" if form == "json" else nested_list(DEEP)
    if form == "json":
        # Text too deep to decode at all: the first such member is named (document order).
        assert issues_of(deep_text(doc)) == [("metadata.labels", "nested deeper than 64 levels")]
    else:
        assert issues_of(doc) == [
            ("metadata.labels", "nested deeper than 64 levels"),
            ("connections[0].to", "nested deeper than 64 levels"),
        ]


def test_a_document_that_is_only_brackets() -> None:
    assert issues_of("[" * DEEP + "]" * DEEP) == [("", "nested deeper than 64 levels")]
    assert issues_of('{"nodes": [' + "[" * DEEP) == [("nodes[0]", "nested deeper than 64 levels")]


def test_nesting_limit_is_inclusive_and_the_deepest_manifest_still_works() -> None:
    for form in (json.dumps, lambda d: d):
        m = Manifest.parse(form(json_set(64)), registry=BUILTINS)
        assert (
            Manifest.from_json(m.to_json(), registry=BUILTINS).node("shout").params == m.node("shout").params
        )
        assert issues_of(form(json_set(65))) == [("nodes[1].params", "nested deeper than 64 levels")]


def test_params_that_contain_themselves() -> None:
    doc = json_set(3)
    loop: list[Any] = []
    loop.append(loop)
    doc["nodes"][1]["params"]["set"]["x"] = loop
    assert issues_of(doc) == [("nodes[1].params", "nested deeper than 64 levels")]


def test_the_limit_leaves_room_on_a_busy_stack() -> None:
    """Members at the limit everywhere, plus structural and param errors (so the schema runs
    and messages quote values), validated with most of the stack already in use."""
    doc = json_set(64)
    doc["version"] = nested_list(64)
    doc["metadata"]["labels"] = nested_list(64)
    doc["nodes"][0]["params"] = {"x": nested_list(63)}
    doc["nodes"][1]["params"]["select"] = nested_list(63)

    def validate_at(depth: int) -> list[tuple[str, str]]:
        return validate_at(depth - 1) if depth else issues_of(doc)

    issues = validate_at(sys.getrecursionlimit() - 300)
    assert [path for path, _ in issues] == ["version", "nodes[0].params.x", "nodes[1].params.select[0]"]
